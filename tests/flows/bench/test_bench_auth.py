"""`impetus bench auth --quick` end to end: an open and a keyed `impetus serve`, one MLflow run,
and the bench's key stays out of the user's key store."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_auth_bench_logs_an_mlflow_run(quick_bench: Any) -> None:
    state, result = quick_bench("auth")
    assert "| GET /v1/models p50 ms" in result["table"]
    # the keyed server's key lived in a temporary data_dir, not this one
    from pipelines.keys import KeyStore

    store = KeyStore.open(state)
    assert not store.any()
    store.close()

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    m = run.data.metrics
    for key in ("open_models_p50_ms", "keyed_models_p50_ms", "models_p50_added_ms",
                "open_chat_tps", "keyed_chat_tps", "chat_tps_ratio"):  # fmt: skip
        assert key in m and m[key] == m[key], key  # present, not NaN
    assert m["keyed_chat_tps"] > 0 and m["open_models_p50_ms"] > 0
    experiment = mlflow.get_experiment_by_name("auth-bench")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
