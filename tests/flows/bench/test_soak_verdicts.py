"""The soak's resource verdicts on synthetic samples (no server): a leak fails `rss_flat`, the
live KV buffers of one batch (a single high sample) do not; fds and threads judge the final
window against the warm-up."""

from __future__ import annotations

from flows.bench.soak import SoakConfig, resources, rss_minute_medians
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


def judge(rec: Record) -> dict[str, tuple[bool, str]]:
    verdicts: dict[str, tuple[bool, str]] = {}
    resources(rec, SoakConfig(minutes=3), verdicts)
    return verdicts


def test_one_batchs_peak_is_not_a_leak() -> None:
    rss = [1000.0] * 12 + [1800.0] * 25  # warm-up (1 min of a 3-min run), then the plateau
    rss[20] = rss[30] = 1990.0  # two samples with a full batch of long prompts: +10.6 %
    verdicts = judge(record(rss))
    assert verdicts["rss_flat"][0], verdicts["rss_flat"]
    assert "single samples 1800–1990 MB" in verdicts["rss_flat"][1]


def test_a_level_that_grows_fails() -> None:
    rss = [1000.0] * 12 + [1800.0] * 12 + [1800.0 + 20 * i for i in range(13)]  # +240 MB
    verdicts: dict[str, tuple[bool, str]] = {}
    m = resources(record(rss), SoakConfig(minutes=3), verdicts)
    assert not verdicts["rss_flat"][0], verdicts["rss_flat"]
    assert m["rss_dev_low_pct"] == 0 and m["rss_dev_high_pct"] > 5  # the last minute's median


def test_minute_medians_join_a_short_tail() -> None:
    cfg = SoakConfig(minutes=3)
    after = [{"t": 60.0 + 5 * i, "rss_bytes": float(i)} for i in range(26)]  # 2 min 10 s
    assert rss_minute_medians(after, cfg) == [5.5, 18.5]


def test_fds_that_keep_growing_fail() -> None:
    rec = record([1000.0] * 37)
    for x in rec.samples[-12:]:
        x["fds"] = 50.0
    verdicts = judge(rec)
    assert verdicts["rss_flat"][0] and verdicts["threads_flat"][0]
    assert not verdicts["fds_flat"][0], verdicts["fds_flat"]
