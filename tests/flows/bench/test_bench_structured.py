"""`impetus bench structured --quick` end to end: one `impetus serve`, one MLflow run.

It needs the MLX engine (serving/engine/mlx_engine.py) and takes a few minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.settings import PROJECT_ROOT

pytestmark = pytest.mark.slow


def test_quick_structured_bench_logs_an_mlflow_run(tmp_path: Path, ready_models_dir: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "models").symlink_to(ready_models_dir, target_is_directory=True)
    env = {**os.environ, "IMPETUS_DATA_DIR": str(state)}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "bench", "structured", "--quick", "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout[out.stdout.index("{") :])
    assert "| none constrained |" in result["table"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    m = run.data.metrics
    for key in ("tps_none_constrained", "tps_half_constrained", "ratio", "cpu_ratio"):
        assert key in m and m[key] == m[key], key  # present, not NaN
    assert m["tps_half_constrained"] > 0
    assert run.data.params["grammar_library"] == "llguidance"
    experiment = mlflow.get_experiment_by_name("structured-bench")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
