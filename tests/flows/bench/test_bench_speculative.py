"""`impetus bench speculative --quick` end to end: one engine in a probe process, one MLflow run.

It needs the MLX engine (serving/engine/mlx_engine.py); its figures are logged, never asserted.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_speculative_bench_logs_an_mlflow_run(quick_bench: Any) -> None:
    state, result = quick_bench("speculative")
    assert "| RAG, single stream" in result["table"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    m = run.data.metrics
    for key in ("rag_speedup", "rag_acceptance", "rag_tokens_per_step", "streams_ratio"):
        assert key in m and m[key] == m[key], key  # present, not NaN
    # greedy: speculation never changes an output
    assert m["chat_greedy_mismatches"] == m["rag_greedy_mismatches"] == 0
    assert m["rag_tokens_per_step"] >= 1.0
    experiment = mlflow.get_experiment_by_name("speculative-bench")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
