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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`--dist loadgroup`), every test that talks to a Ray cluster runs on one
    worker: the session's Ray server (tests/serving/ray_server.py) then starts once, and two Ray
    clusters never compete for this machine's cores. The test that turns that server's keys on
    runs last."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        on_ray = callspec is not None and callspec.params.get("server") == "ray"
        if on_ray or "tests/serving/ray/" in item.nodeid:
            item.add_marker(pytest.mark.xdist_group("ray"))
    # test_ray_auth creates keys on the session's Ray server, which turns its auth on: last.
    last = [i for i in items if "tests/serving/ray/test_ray_auth.py" in i.nodeid]
    items[:] = [i for i in items if i not in last] + last
