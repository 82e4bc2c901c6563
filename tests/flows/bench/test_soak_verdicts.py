"""The soak's resource verdicts on synthetic samples (no server): a leak fails `rss_flat`, the
live KV buffers of one batch (a single high sample) do not, nor does the allocator's step in a
short run; uncounted MLX arrays fail `mlx_uncounted_flat`, a batch's KV that the engines count
does not; fds and threads judge the final window against the warm-up."""

from __future__ import annotations

from flows.bench.soak import SoakConfig, minute_medians, resources
from flows.bench.soak_load import Record

MB = 2**20


def record(rss_mb: list[float], fds: float = 30, threads: float = 40) -> Record:
    """One sample every 5 s from t = 0, with the given RSS values."""
    rec = Record()
    rec.samples = [
        {"t": 5.0 * i, "rss_bytes": v * MB, "fds": fds, "threads": threads, "loadavg1": 1.0}
        for i, v in enumerate(rss_mb)
    ]
    return rec


def judge(rec: Record, minutes: float = 3) -> dict[str, tuple[bool, str]]:
    verdicts: dict[str, tuple[bool, str]] = {}
    resources(rec, SoakConfig(minutes=minutes), verdicts)
    return verdicts


def test_one_batchs_peak_is_not_a_leak() -> None:
    rss = [1000.0] * 12 + [1800.0] * 25  # warm-up (1 min of a 3-min run), then the plateau
    rss[20] = rss[30] = 1990.0  # two samples with a full batch of long prompts: +10.6 %
    verdicts = judge(record(rss))
    assert verdicts["rss_flat"][0], verdicts["rss_flat"]
    assert "single samples 1800–1990 MB" in verdicts["rss_flat"][1]


def test_a_level_that_grows_fails() -> None:
    rss = [1000.0] * 12 + [1800.0] * 12 + [1800.0 + 40 * i for i in range(13)]  # +480 MB
    verdicts: dict[str, tuple[bool, str]] = {}
    m = resources(record(rss), SoakConfig(minutes=3), verdicts)
    assert not verdicts["rss_flat"][0], verdicts["rss_flat"]
    assert m["rss_dev_low_pct"] == 0 and m["rss_dev_high_pct"] > 10  # the last minute's median


def test_a_short_runs_allocator_step_passes_and_a_long_runs_band_is_tighter() -> None:
    # the CI run of 2026-12-06: RSS stepped 1532 → 1655 MB (+8 %) from minute 1 to minute 2
    short = [1000.0] * 12 + [1532.0] * 12 + [1655.0] * 13
    verdicts = judge(record(short))
    assert verdicts["rss_flat"][0] and "band ±10%" in verdicts["rss_flat"][1]
    # 30 minutes: 5 of warm-up, then the same step at minute 15 is judged at ±5 %
    long = [1000.0] * 60 + [1532.0] * 120 + [1655.0] * 181
    verdicts = judge(record(long), minutes=30)
    assert not verdicts["rss_flat"][0] and "band ±5%" in verdicts["rss_flat"][1]


def mlx(rec: Record, uncounted_mb: list[float]) -> Record:
    """MLX counters on each sample: weights 300 MB and a batch KV that swings (both counted by
    the engines), plus `uncounted_mb` that nothing counts."""
    for i, (x, u) in enumerate(zip(rec.samples, uncounted_mb, strict=True)):
        counted = (300.0 + 150 * (i % 3)) * MB
        x |= {"engines_bytes": counted, "mlx_active_bytes": counted + u * MB}
    return rec


def test_uncounted_mlx_arrays_that_grow_fail_and_a_counted_batch_does_not() -> None:
    rss = [1500.0] * 37
    flat = judge(mlx(record(rss), [200.0] * 37))
    assert flat["mlx_uncounted_flat"][0], flat["mlx_uncounted_flat"]
    leak = [200.0] * 24 + [200.0 + 16 * i for i in range(13)]  # +192 MB, RSS flat
    verdicts = judge(mlx(record(rss), leak))
    assert verdicts["rss_flat"][0]
    assert not verdicts["mlx_uncounted_flat"][0], verdicts["mlx_uncounted_flat"]
    assert "reference 200 MB + 64" in verdicts["mlx_uncounted_flat"][1]


def test_minute_medians_join_a_short_tail() -> None:
    cfg = SoakConfig(minutes=3)
    after = [{"t": 60.0 + 5 * i, "rss_bytes": float(i)} for i in range(26)]  # 2 min 10 s
    assert minute_medians(after, cfg) == [5.5, 18.5]


def test_fds_that_keep_growing_fail() -> None:
    rec = record([1000.0] * 37)
    for x in rec.samples[-12:]:
        x["fds"] = 50.0
    verdicts = judge(rec)
    assert verdicts["rss_flat"][0] and verdicts["threads_flat"][0]
    assert not verdicts["fds_flat"][0], verdicts["fds_flat"]
