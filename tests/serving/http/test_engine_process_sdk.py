"""A server whose engine runs in a process of its own (`serve.engine_process: on`), through the
real `openai` and `anthropic` SDKs: `impetus serve`'s shape (create_app, ModelManager with the
production factory, uvicorn) on 127.0.0.1. Its engine's stats come from the child, and a child
that dies costs the requests it was serving, not the server: the next request loads the model in
a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from pipelines.models.store import ModelStore
from serving.engine.manager import ModelManager, mlx_engine_factory
from serving.engine.process import EngineProcess
from serving.http.app import create_app
from tests.serving.servers import serving_settings, uvicorn_server

pytest.importorskip("mlx_lm")

ASK: Any = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def served(
    ready_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ModelManager]]:
    settings = serving_settings(tmp_path_factory.mktemp("serve"), engine_process="on")
    manager = ModelManager(
        ModelStore(ready_models_dir),
        mlx_engine_factory(settings),
        default_model=settings.models.llm,
        idle_ttl_s=0,
    )
    app = create_app(settings, manager=manager, preload_default=True)
    with uvicorn_server(app) as url:
        yield url, manager


def engine_of(manager: ModelManager) -> Any:
    (resident,) = manager._resident.values()
    return resident.engine


def test_chat_streams_and_answers_from_the_engine_process(
    served: tuple[str, ModelManager],
) -> None:
    url, manager = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    model = manager.default_model
    assert model is not None
    stream = client.chat.completions.create(
        model=model, messages=ASK, max_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    whole = client.chat.completions.create(model=model, messages=ASK, max_tokens=6, temperature=0)
    assert whole.choices[0].message.content == streamed  # greedy: the same tokens either way
    assert whole.usage is not None and whole.usage.prompt_tokens > 5
    assert isinstance(engine_of(manager), EngineProcess)

    messages = anthropic.Anthropic(base_url=url, api_key="none").messages.create(
        model=model,
        max_tokens=6,
        messages=ASK,
    )
    assert messages.usage.output_tokens == 6 and messages.content[0].type == "text"

    metrics = httpx.get(f"{url}/api/metrics", timeout=10).text
    requests = [ln for ln in metrics.splitlines() if ln.startswith("impetus_engine_requests")]
    assert requests and float(requests[0].rsplit(" ", 1)[1]) >= 3  # counted in the child


def test_a_dead_engine_process_is_replaced_on_the_next_request(
    served: tuple[str, ModelManager],
) -> None:
    url, manager = served
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    model = manager.default_model
    assert model is not None
    first = engine_of(manager)
    first._process.kill()
    asyncio.run(asyncio.sleep(0.5))  # the reader sees the pipe close
    assert first.gone
    answer = client.chat.completions.create(model=model, messages=ASK, max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens == 3
    second = engine_of(manager)
    assert second is not first and second._process.pid != first._process.pid
    assert second._process.returncode is None
