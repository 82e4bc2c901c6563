"""Flows run against Prefect's test harness (a temporary server and SQLite database, started once
per session by the tests that ask for `prefect_harness`, tests/conftest.py); each test gets its
own data_dir, with the built-in models made ready once."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipelines.settings import PROJECT_ROOT, Settings, get_settings


def use_data_dir(data_dir: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    """Make `data_dir` (and env overrides) the settings that flows read at their edge."""
    monkeypatch.setenv("IMPETUS_DATA_DIR", str(data_dir))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture
def data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ready_models_dir: Path
) -> Iterator[Path]:
    path = tmp_path / "state"
    link_models(path, ready_models_dir)
    use_data_dir(path, monkeypatch)
    yield path
    get_settings.cache_clear()


def link_models(data_dir: Path, models: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(models, target_is_directory=True)


def run_cli(args: list[str], data_dir: Path, crash_at: str | None = None, **env: str) -> Any:
    """`impetus ARGS` in a subprocess on `data_dir`, talking to the harness's Prefect server."""
    from prefect.settings import PREFECT_API_URL

    full_env = {
        **os.environ,
        "IMPETUS_DATA_DIR": str(data_dir),
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        **env,
    }
    full_env.pop("IMPETUS_TEST_CRASH_AT", None)
    if crash_at:
        full_env["IMPETUS_TEST_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=PROJECT_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
