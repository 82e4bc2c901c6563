"""`impetus bench structured --quick` end to end: one `impetus serve`, one MLflow run.

It needs the MLX engine (serving/engine/mlx_engine.py) and takes a few minutes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_structured_bench_logs_an_mlflow_run(quick_bench: Any) -> None:
    state, result = quick_bench("structured")
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
