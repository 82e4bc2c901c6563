"""A model that does not fit the memory budget: 507 `insufficient_memory` for a load and for a
request naming it, and the resident models untouched (still resident, a stream in flight on one
of them finishes whole, the next requests are served).

tests/serving/http/test_app_errors.py already checks the 507's shape; this adds what it left out,
on a real uvicorn server with the real `ModelManager` and fake engines (no second real LLM is
bundled whose size would exceed a budget that the first fits)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import serving_settings, uvicorn_server

ENGINES = {"resident": {}, "streaming": {"token_delay": 0.05}, "huge": {}}


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    def factory(name: str, path: Path) -> Engine:
        return FakeEngine(name, **ENGINES[name])  # type: ignore[arg-type]

    manager = ModelManager(
        StoreWithFakes(
            tmp_path, llms=list(ENGINES), embedders=["fake-embed"], sizes={"huge": 10**15},
            builtins=False,
        ),
        factory,
        default_model="resident",
        memory_budget_bytes=1 << 30,
    )  # fmt: skip
    app = create_app(
        serving_settings(tmp_path),
        manager=manager,
        embedder_factory=FakeEmbedder,
        index_runner=FakeIndexRunner(),
        preload_default=True,
    )
    with uvicorn_server(app) as u:
        yield u


def resident(http: httpx.Client) -> set[str]:
    return {m["id"] for m in http.get("/v1/models").json()["data"] if m.get("loaded")}


def chat(http: httpx.Client, model: str, **body: Any) -> httpx.Response:
    messages = [{"role": "user", "content": "hi"}]
    return http.post("/v1/chat/completions", json={"model": model, "messages": messages, **body})


def test_a_model_over_the_budget_is_507_and_resident_models_are_untouched(url: str) -> None:
    http = httpx.Client(base_url=url, timeout=30)
    assert http.post("/api/models/load", json={"model": "streaming"}).status_code == 200
    before = resident(http)
    assert before == {"resident", "streaming"}

    streamed: list[str] = []

    def stream() -> None:
        with httpx.Client(base_url=url, timeout=30) as c, c.stream(
            "POST",
            "/v1/chat/completions",
            json={"model": "streaming", "stream": True, "max_tokens": 30,
                  "messages": [{"role": "user", "content": "hi"}]},
        ) as r:  # fmt: skip
            streamed.extend(line for line in r.iter_lines() if line.startswith("data: "))

    t = threading.Thread(target=stream)
    t.start()
    for r in (http.post("/api/models/load", json={"model": "huge"}), chat(http, "huge")):
        assert r.status_code == 507, r.text
        error = r.json()["error"]
        assert error["code"] == "insufficient_memory" and "budget" in error["message"]
        assert "Traceback" not in r.text
    t.join(timeout=60)

    assert resident(http) == before
    assert streamed and streamed[-1] == "data: [DONE]" and '"error"' not in "".join(streamed)
    assert chat(http, "resident", max_tokens=4).status_code == 200
    assert chat(http, "streaming", max_tokens=4).status_code == 200
