"""While the server drains (serving/http/shutdown.py), a request in flight finishes and new ones get
503 `shutting_down` with Retry-After, in OpenAI's shape and in Anthropic's on /v1/messages;
/api/health/live still answers. The real `impetus serve` around it: tests/flows/test_shutdown.py.

A small app of fake engines (a slow one keeps a stream in flight) under a real uvicorn, driven by
the real openai and anthropic SDKs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest
from fastapi import FastAPI

from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.shutdown import Shutdown
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import serving_settings, uvicorn_server


@pytest.fixture
def app_url(tmp_path: Path) -> Iterator[tuple[FastAPI, str]]:
    from serving.http.app import create_app

    def factory(name: str, path: Path) -> Engine:
        return FakeEngine(name, token_delay=0.05)  # 20 tokens/s: a stream stays in flight

    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["slow"], embedders=["fake-embed"], builtins=False),
        factory,
        default_model="slow",
    )
    app = create_app(
        serving_settings(tmp_path),
        manager=manager,
        embedder_factory=FakeEmbedder,
        index_runner=FakeIndexRunner(),
        preload_default=True,
    )
    with uvicorn_server(app) as url:
        yield app, url


def test_draining_refuses_new_requests_and_finishes_those_in_flight(
    app_url: tuple[FastAPI, str],
) -> None:
    app, url = app_url
    shutdown: Shutdown = app.state.shutdown
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    an = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    words: list[str] = []

    def stream() -> None:
        for chunk in oa.chat.completions.create(
            model="slow",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=40,
            stream=True,
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                words.append(chunk.choices[0].delta.content)

    in_flight = threading.Thread(target=stream)
    in_flight.start()
    deadline = time.monotonic() + 30
    while not words and time.monotonic() < deadline:
        time.sleep(0.02)
    assert words, "the stream did not start"

    assert shutdown.begin() == []  # no index run to cancel
    assert shutdown.pending() == ["1 request(s) in flight"]

    with pytest.raises(openai.InternalServerError) as caught:
        oa.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 503
    assert caught.value.response.headers["Retry-After"] == "1"
    assert caught.value.code == "shutting_down"
    with pytest.raises(anthropic.APIStatusError) as refused:
        an.messages.create(model="slow", max_tokens=4, messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 503
    assert refused.value.body["type"] == "error"  # type: ignore[index]
    assert refused.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    assert httpx.get(f"{url}/api/health/live").status_code == 200
    assert httpx.get(f"{url}/api/health/ready").status_code == 503

    in_flight.join(timeout=30)
    assert not in_flight.is_alive() and len(words) > 10  # the stream ran to its end
    deadline = time.monotonic() + 5  # the server ends the response just after the client
    while shutdown.pending() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert shutdown.pending() == []
