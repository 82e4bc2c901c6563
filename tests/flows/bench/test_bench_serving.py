"""`impetus bench serving --quick` end to end: every side measured, one MLflow run with the metrics.

It starts `impetus serve` (twice: prefix cache on and off) and `mlx_lm.server` on 127.0.0.1, so it
needs the MLX engine (serving/engine/mlx_engine.py) and takes a few minutes.
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_quick_bench_logs_an_mlflow_run_with_every_metric(quick_bench: Any) -> None:
    state, result = quick_bench("serving")
    assert "| 4 streams: aggregate tok/s |" in result["table"]

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    m = run.data.metrics
    for key in (
        "decode_tps_ours",
        "decode_tps_mlx_lm",
        "decode_ratio",
        "c1_tps_ours",
        "c1_tps_mlx_lm",
        "c4_tps_ratio",
        "c4_ttft_p50_ms_ours",
        "c4_ttft_p95_ms_mlx_lm",
        "prefix_ttft_cache_on_ms",
        "prefix_ttft_cache_off_ms",
        "prefix_ttft_ratio",
        "launch_live_s",
        "launch_ready_s",
        "loadavg1_start",
    ):
        assert key in m, key
        assert m[key] == m[key], key  # not NaN
    assert m["decode_tps_ours"] > 0 and m["c4_tps_ours"] > 0
    assert run.data.params["quick"] == "True"
    assert run.info.experiment_id == mlflow.get_experiment_by_name("serving-bench").experiment_id
    assert m["c4_rounds"] == 1 and m["c4_pair_ratio_p50"] == pytest.approx(m["c4_tps_ratio"])


def test_rounds_pool_and_pair_back_to_back() -> None:
    """A level's rounds pool into one result; each round pairs one burst of either server."""
    from flows.bench.serving import LevelResult, paired_ratios

    ours, ref = LevelResult(1, 0, 0, 0.0), LevelResult(1, 0, 0, 0.0)
    for tokens, wall, ref_wall in ((64, 4.0, 5.0), (64, 4.0, 4.0), (32, 2.0, 1.0)):
        ours.add(LevelResult(1, 1, tokens, wall, [100.0]))
        ref.add(LevelResult(1, 1, tokens, ref_wall, [120.0]))
    assert (ours.requests, ours.completion_tokens, ours.wall_s) == (3, 160, 10.0)
    assert ours.tps == pytest.approx(16.0) and ref.tps == pytest.approx(16.0)
    assert ours.round_tps == [16.0, 16.0, 16.0]
    assert paired_ratios(ours, ref) == pytest.approx([1.25, 1.0, 0.5])


def test_failed_requests_show_their_kind_in_the_table() -> None:
    from flows.bench.serving import BenchConfig, LevelResult, _metrics, render_table

    def level(errors: dict[str, int]) -> list[LevelResult]:
        r = LevelResult(1, 0, 0, 0.0)
        r.add(LevelResult(1, 2, 64, 4.0, [100.0, 110.0], error_kinds=errors))
        return [r]

    decode = {"ours_tps": 10.0, "mlx_lm_tps": 10.0, "ours_tokens": 64, "mlx_lm_tokens": 64}
    prefix = {"first_ms": 900.0, "second_ms": 100.0}
    levels = {"impetus": level({}), "mlx-lm": level({"ReadError": 2})}
    m = _metrics(decode, levels, prefix, prefix, {"live_s": 1.0, "ready_s": 2.0}, {})
    table = render_table(m, BenchConfig(levels=(1,)))
    assert m["c1_errors_mlx_lm_ReadError"] == 2
    assert "| 1 stream: aggregate tok/s | 16.0 | 16.0 (2 failed: 2 ReadError) | 1.00× |" in table
