"""Servers under test: a real uvicorn on a free 127.0.0.1 port, and the in-process server mode.

The in-process server serves the bundled LLM with the real MLX engine when
`serving/engine/mlx_engine.py` exists (set IMPETUS_TEST_FAKE_ENGINE=1 to use the fake), the bundled
embedding model with the real MLX encoder, and a few fake models (`fakes.FakeEngine`) for the
error paths a real engine cannot produce on demand (queue overflow).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flows.ingest.runner import PrefectIndexRunner
from pipelines.settings import Settings, load_settings
from serving.engine.base import Engine
from serving.engine.manager import EngineFactory, ModelManager, mlx_engine_factory
from serving.http.app import create_app
from serving.http.threaded import serve_in_thread
from tests.serving.fakes import FakeEngine, StoreWithFakes

# Fake LLMs every in-process server also serves; each load builds a fresh engine.
FAKE_LLMS: dict[str, Callable[[], FakeEngine]] = {
    "fake-llm": lambda: FakeEngine("fake-llm"),
    # two sequences at a time, 20 tokens/s: a third concurrent request overflows the queue
    "fake-slow": lambda: FakeEngine("fake-slow", token_delay=0.05, capacity=2),
    "fake-broken": lambda: FakeEngine("fake-broken", fail_after=2),
}


@dataclass
class RunningServer:
    """What the SDK tests need to know about a server under test."""

    mode: str
    base_url: str  # scheme://host:port, without /v1
    llm: str
    embedding_model: str
    # engines built so far by name, for servers that run them in this process (else None)
    engines: dict[str, Any] | None = None
    fake_models: bool = False  # the FAKE_LLMS are served
    extra: dict[str, Any] = field(default_factory=dict)


def real_engine_available() -> bool:
    """The MLX engine is always installed; IMPETUS_TEST_FAKE_ENGINE=1 asks for fakes instead."""
    return not os.environ.get("IMPETUS_TEST_FAKE_ENGINE")


def recording_factory(engines: dict[str, Any], fallback: EngineFactory | None) -> EngineFactory:
    """Fake engines for FAKE_LLMS, `fallback` (or a FakeEngine) for the rest; records each."""

    def factory(name: str, path: Path) -> Engine:
        if name in FAKE_LLMS or fallback is None:
            engine: Engine = FAKE_LLMS.get(name, lambda: FakeEngine(name))()
        else:
            engine = fallback(name, path)
        engines[name] = engine
        return engine

    return factory


def uvicorn_server(app: Any) -> AbstractContextManager[str]:
    """Run `app` under a real uvicorn on a free 127.0.0.1 port, in a thread; yields its URL."""
    return serve_in_thread(app)


def serving_settings(tmp: Path, **serve: Any) -> Settings:
    # The tests' corpora live in pytest's temporary folders (tmp is one of them): allowed roots.
    rag = {"index_roots": ["data/samples", str(tmp.parent)]}
    return load_settings(data_dir=tmp / "state", serve={"keepalive_s": 0.5, **serve}, rag=rag)


@contextmanager
def start_inprocess(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """`impetus serve`'s shape: create_app + ModelManager + uvicorn, all in this process."""
    models_dir: Path = request.getfixturevalue("ready_models_dir")
    tmp = request.getfixturevalue("tmp_path_factory").mktemp("serve")
    settings = serving_settings(tmp, queue_limit=8, max_batch_size=8)
    engines: dict[str, Any] = {}
    fallback = mlx_engine_factory(settings) if real_engine_available() else None
    manager = ModelManager(
        StoreWithFakes(models_dir, llms=list(FAKE_LLMS)),
        recording_factory(engines, fallback),
        default_model=settings.models.llm,
        idle_ttl_s=0,
    )
    # The real runner of index flows: tests/serving/http/test_rag_sdk.py indexes through it.
    app = create_app(
        settings, manager=manager, index_runner=PrefectIndexRunner(settings), preload_default=True
    )
    with uvicorn_server(app) as url:
        _wait_ready(url)
        yield RunningServer(
            mode="inprocess",
            base_url=url,
            llm=settings.models.llm,
            embedding_model=settings.models.embedding,
            engines=engines,
            fake_models=True,
        )


def _wait_ready(url: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/api/health/ready", timeout=5)
        if r.status_code == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready: {r.text}")
