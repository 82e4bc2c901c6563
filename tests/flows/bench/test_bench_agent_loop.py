"""`impetus bench agent-loop --quick` end to end: an `impetus serve` with both prefix-cache tiers,
three turns of an agent with tools, a restart (the newest cache files read at load), another
restart without that, one MLflow run with a nested run per turn."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_agent_loop_bench_logs_an_mlflow_run(quick_bench: Any) -> None:
    state, result = quick_bench("agent-loop")
    assert "| turns 2–3: TTFT p50 / max, ms" in result["table"]
    m = result["metrics"]
    assert m["cold_ttft_ms"] > 0 and m["warm_ttft_p50_ms"] > 0 and m["restart_ttft_ms"] > 0
    assert m["restart_disk_hits"] == 1  # the turn after the restart read its prefix from disk
    assert m["restart_cached_tokens"] > m["cold_prompt_tokens"]
    assert m["restart_preloaded_bytes"] > 0  # ... at load
    assert m["ondemand_disk_hits"] == 1 and m["ondemand_ttft_ms"] > 0  # ... or when it needed it
    assert m["ondemand_cached_tokens"] > m["restart_cached_tokens"]
    assert "| after another restart without it, turn 5 (" in result["table"]
    assert 0 < m["memory_bytes_max"] <= m["memory_cap_bytes"]
    assert 0 < m["folder_bytes_max"] <= m["disk_cap_bytes"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    assert run.data.metrics["warm_ratio"] == m["warm_ratio"]
    children = mlflow.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    assert len(children) == 5  # three turns and the one after each restart
