"""`impetus bench apis --quick` end to end: one `impetus serve` (and one without prefix cache), the
three routes streamed, one MLflow run. It needs the MLX engine and takes a few minutes."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_apis_bench_logs_an_mlflow_run(quick_bench: Any) -> None:
    state, result = quick_bench("apis")
    assert "| 8 streams: aggregate tok/s |" in result["table"]
    assert "previous_response_id" in result["table"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    m = run.data.metrics
    for c in (1, 8):
        for route in ("chat", "responses", "messages"):
            assert m[f"c{c}_{route}_tps"] > 0, (c, route)
            assert m[f"c{c}_{route}_errors"] == 0, (c, route)
        for route in ("responses", "messages"):
            ratio = m[f"c{c}_{route}_tps_ratio"]
            assert ratio == ratio, (c, route)  # not NaN
    assert m["follow_up_ttft_cache_on_ms"] > 0 and m["follow_up_ttft_cache_off_ms"] > 0
    experiment = mlflow.get_experiment_by_name("apis-bench")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    children = mlflow.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(children) == 6  # a nested run per route and level
