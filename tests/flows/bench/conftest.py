"""What the quick-bench CLI tests share: `impetus bench KIND --quick --json` on a fresh data_dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.settings import PROJECT_ROOT


@pytest.fixture
def quick_bench(tmp_path: Path, ready_models_dir: Path, prefect_harness: None) -> Any:
    """Run a quick bench in a subprocess; returns (its data_dir, its JSON result). Its flow runs
    on the session's Prefect harness: on its own, each bench would start Prefect's temporary
    server on a fresh database (~15-20 s of CPU apiece, here)."""
    from prefect.settings import PREFECT_API_URL

    def run(kind: str) -> tuple[Path, dict[str, Any]]:
        state = tmp_path / "state"
        state.mkdir(exist_ok=True)
        if not (state / "models").exists():
            (state / "models").symlink_to(ready_models_dir, target_is_directory=True)
        out = subprocess.run(
            [sys.executable, "-m", "flows.cli", "bench", kind, "--quick", "--json"],
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "IMPETUS_DATA_DIR": str(state),
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            },
            capture_output=True,
            text=True,
            timeout=1500,
            check=False,
        )
        assert out.returncode == 0, out.stderr[-4000:]
        return state, json.loads(out.stdout[out.stdout.index("{") :])

    return run
