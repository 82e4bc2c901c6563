"""What the Ray Serve replicas of the Ray-mode tests import by path (`RayAppArgs.*_factory`).

The replicas run in Ray worker processes, so the test collaborators reach them as import paths,
the way a user would name another engine in configs/serve.yaml: the registry with the fake
models of servers.FAKE_LLMS, and an engine factory that builds fakes for those and the real
MLX engine (when it exists) for the bundled model.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.models.store import ModelStore
from pipelines.settings import Settings, load_settings
from serving.engine.base import Engine
from tests.serving.fakes import FakeEngine, StoreWithFakes
from tests.serving.servers import FAKE_LLMS, real_engine_available


def store(settings: Settings) -> ModelStore:
    """The registry plus the fake LLMs."""
    return StoreWithFakes(settings.models_dir, llms=list(FAKE_LLMS))


def engine_factory(name: str, path: Path) -> Engine:
    """FakeEngine for the fake models; the MLX engine (or a FakeEngine without one) otherwise."""
    if name in FAKE_LLMS:
        return FAKE_LLMS[name]()
    if not real_engine_available():
        return FakeEngine(name)
    from serving.engine.manager import mlx_engine_factory

    # The replica's settings come from the same IMPETUS_* environment as the server's.
    engine: Engine = mlx_engine_factory(load_settings())(name, path)
    return engine
