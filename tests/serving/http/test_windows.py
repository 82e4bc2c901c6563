"""Context windows, the same on every route (serving/engine/window.py), with the OpenAI SDK in
every server mode: /v1/models says each model's window, a prompt longer than it is a 400
`context_length_exceeded` naming both numbers, a max_tokens past it is clamped (finish
`length`), never refused.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from pipelines.models.store import ModelStore
from pipelines.settings import load_settings
from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.engine.window import ContextLengthError, fit_window
from serving.http.app import create_app
from tests.serving.servers import RunningServer, uvicorn_server


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def test_the_rule() -> None:
    assert fit_window(100, 32000, 8192, model="m", param="messages") == 8092
    assert fit_window(100, 16, 8192, model="m", param="messages") == 16
    with pytest.raises(ContextLengthError) as exc:
        fit_window(8192, 1, 8192, model="m", param="prompt")
    assert "8192" in str(exc.value) and exc.value.param == "prompt"
    copy = pickle.loads(pickle.dumps(exc.value))  # it crosses Ray in --ray mode
    assert (str(copy), copy.param, copy.context_window) == (str(exc.value), "prompt", 8192)


def _window(client: openai.OpenAI, server: RunningServer) -> int:
    card = client.models.retrieve(server.llm).model_extra or {}
    assert card["context_window"] == card["max_model_len"] == card["max_input_tokens"]
    return int(card["context_window"])


def test_models_say_the_window(client: openai.OpenAI, server: RunningServer) -> None:
    assert _window(client, server) == 8192  # SmolLM2-135M's max_position_embeddings
    embedder = client.models.retrieve(server.embedding_model).model_extra or {}
    assert embedder["context_window"] is None


def test_too_long_a_prompt_is_context_length_exceeded(
    client: openai.OpenAI, server: RunningServer
) -> None:
    window = _window(client, server)
    long = "hello " * (window + 50)
    for call in (
        lambda: client.chat.completions.create(
            model=server.llm, messages=[{"role": "user", "content": long}], max_tokens=4
        ),
        lambda: client.completions.create(model=server.llm, prompt=long, max_tokens=4),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert exc.value.code == "context_length_exceeded"
        message = exc.value.message
        assert str(window) in message and "context window" in message
        prompt_tokens = int(message.split("The prompt is ")[1].split()[0])
        assert prompt_tokens > window


# -- clamping: the real MLX engine with a 128-token window (an 8k prefill takes minutes here) ----

SMALL = 128


@pytest.fixture(scope="module")
def small(ready_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose LLM is the bundled model, on the real MLX engine, with a small window."""
    from serving.engine.mlx_engine import MLXEngine, MLXEngineConfig

    tmp = tmp_path_factory.mktemp("small-window")
    settings = load_settings(data_dir=tmp / "state", serve={"keepalive_s": 0.5})

    def factory(name: str, path: Path) -> Engine:
        return MLXEngine.load(path, name, config=MLXEngineConfig(max_context_tokens=SMALL))

    manager = ModelManager(ModelStore(ready_models_dir), factory, default_model=settings.models.llm)
    app = create_app(settings, manager=manager, preload_default=True)
    with uvicorn_server(app) as url:
        yield url


def _filled(url: str, model: str, left: int) -> str:
    """A user message whose chat prompt leaves `left` tokens of the window (sized by /tokenize)."""

    def count(text: str) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        r = httpx.post(f"{url}/tokenize", json=body, timeout=120)
        assert r.json()["max_model_len"] == SMALL
        return int(r.json()["count"])

    want = SMALL - left
    text = "hello" + " hello" * (want - count("hello"))
    return "hello" + " hello" * (want - count("hello") - (count(text) - want))


def test_max_tokens_past_the_window_is_clamped(small: str) -> None:
    model = load_settings().models.llm
    text = _filled(small, model, 5)
    chat = openai.OpenAI(base_url=f"{small}/v1", api_key="unused", max_retries=0, timeout=300)
    r = chat.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=32000
    )
    assert r.usage is not None and r.usage.prompt_tokens == SMALL - 5
    assert 0 < r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason in ("length", "stop")
    if r.choices[0].finish_reason == "length":
        assert r.usage.total_tokens == SMALL
    claude = anthropic.Anthropic(base_url=small, api_key="unused", max_retries=0, timeout=300)
    m = claude.messages.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=32000
    )
    prompt = m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0)
    assert prompt == SMALL - 5 and 0 < m.usage.output_tokens <= 5
    assert m.stop_reason in ("max_tokens", "end_turn")
    if m.stop_reason == "max_tokens":
        assert prompt + m.usage.output_tokens == SMALL
    # one token more than the window: refused, naming both numbers, on both APIs
    over = _filled(small, model, -1)
    with pytest.raises(openai.BadRequestError) as exc:
        chat.chat.completions.create(
            model=model, messages=[{"role": "user", "content": over}], max_tokens=1
        )
    assert exc.value.code == "context_length_exceeded"
    assert (
        f"The prompt is {SMALL + 1} tokens" in exc.value.message and str(SMALL) in exc.value.message
    )
    with pytest.raises(anthropic.BadRequestError) as aexc:
        claude.messages.create(
            model=model, messages=[{"role": "user", "content": over}], max_tokens=1
        )
    assert aexc.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
