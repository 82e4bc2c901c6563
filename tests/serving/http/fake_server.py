"""The real app with small fakes behind it (tests/serving/fakes.py), under a real uvicorn on a free
127.0.0.1 port: for tests of the HTTP layer that need no model (security, fuzzing)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from pipelines.settings import Settings, load_settings
from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import uvicorn_server


@dataclass
class FakeServer:
    url: str
    settings: Settings
    app: FastAPI


def fake_app(settings: Settings, engine: type[FakeEngine] = FakeEngine) -> FastAPI:
    """`create_app` over a registry of one fake LLM and one fake embedder (no built-ins)."""

    def factory(name: str, path: Path) -> Engine:
        return engine(name)

    manager = ModelManager(
        StoreWithFakes(
            settings.data_dir / "fake-models",
            llms=["fake-llm"],
            embedders=["fake-embed"],
            builtins=False,
        ),
        factory,
        default_model="fake-llm",
    )
    return create_app(
        settings,
        manager=manager,
        embedder_factory=FakeEmbedder,
        index_runner=FakeIndexRunner(),
        preload_default=True,
    )


@contextmanager
def fake_servers(root: Path) -> Iterator[Any]:
    """`start(name, engine=..., **settings_overrides) -> FakeServer`; all stop at the block's end."""
    with ExitStack() as stack:

        def start(
            name: str = "s", engine: type[FakeEngine] = FakeEngine, **overrides: Any
        ) -> FakeServer:
            serve = {"keepalive_s": 0.5, **overrides.pop("serve", {})}
            settings = load_settings(data_dir=root / name, serve=serve, **overrides)
            app = fake_app(settings, engine)
            return FakeServer(stack.enter_context(uvicorn_server(app)), settings, app)

        yield start
