"""Shared fixtures: settings on a temporary data_dir, and the default models made ready once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import telemetry
from pipelines.settings import Settings, load_settings

telemetry.disable()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings whose state lives in a fresh temporary data_dir."""
    return load_settings(data_dir=tmp_path / "state")


@pytest.fixture(scope="session")
def ready_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir where the built-in models are ready.

    `make setup` imports them into the default data_dir; reuse that when it is there, else import
    once for the session (a clean checkout running pytest directly).
    """
    from pipelines.models.store import ModelStore

    default = load_settings().models_dir
    store = ModelStore(default)
    if all(e.status == "ready" for e in store.entries()):
        return default
    root = tmp_path_factory.mktemp("models")
    ModelStore(root).import_defaults()
    return root
