"""The soak: a long mixed load on one `impetus serve`, with verdicts on what a long-running local
server must not do (fail requests, lose streams, stall cheap routes, grow).

    impetus bench soak --minutes 30 --streams 50     # the release figure (docs/benchmarks.md)
    impetus bench soak --minutes 3 --streams 12      # what `make test` runs (tests/flows)

The sample documents are ingested into the collection `soak` first (pipeline functions, no
server; unchanged documents are skipped), then one server is started on 127.0.0.1 (auth off: the
load never leaves the machine), one full batch of grounded-chat calls (16, or S if fewer) primes
it (RSS keeps the KV buffers' high-water mark: the warm-up must reach it), and S clients run the
mix of flows/bench/soak_load.py for N minutes. Time 0 is the clients' start: priming is sampled and
reported (route `prime`, negative times) but takes nothing from the N minutes or the warm-up. Recorded: every call's outcome and latency by route; every `sample_s` the server
process's RSS, open file descriptors and threads, and `/api/metrics`' prefix-cache bytes and
queue depth. One MLflow run (experiment `soak-bench`): the summary as metrics, the samples as
stepped metrics, a nested run per route, the plot, the samples and the error messages.

Verdicts (each a metric `verdict_<name>`, 1 = passed; any failure makes the command exit 1):

- `no_5xx`, `no_lost_streams`: zero 5xx answers; zero streams that ended without their final
  event and were not cut by their client (a connection dropped mid-stream counts as lost);
- `no_other_errors`: zero transport errors (refused, reset, timed out), error events inside
  streams, good requests refused with a 4xx, and bad requests accepted;
- `<route>_p95`: for health (`/api/health/live`), models and metrics, the p95 latency of every
  whole minute (the last window, if shorter, joins the one before) under 200 ms;
- `rss_flat`: the RSS level of every whole minute from the end of the warm-up (5 minutes, or the
  first third of a shorter run) to the end, the median of its samples, within ±5 % of the
  reference, the median of all the samples after the warm-up; ±10 % when the warm-up is shorter
  than 5 minutes. Single samples swing with the live KV buffers of the batch running at that
  instant (±10 % at 12 clients on a busy 2-core machine, and back): they are reported
  (`rss_sample_dev_*_pct`), a leak is judged on levels. The level itself steps up for the first
  minutes: glibc's malloc keeps the high-water mark of the buffers freed into its heaps, which
  the first batches that hold more than any before it raise (three 3-minute runs stepped +4 to
  +7 % in minutes 1-3 while MLX's uncounted memory stayed flat; the 30-minute runs settled by
  minute 5), so a short run's band is wider and the next verdict is the exact one;
- `mlx_uncounted_flat`: MLX's active memory less what the engines count (weights, the batch's
  KV, the prefix cache; both from one `/api/health/status` read), per whole minute after the
  warm-up as above, at most the reference plus max(64 MB, 5 %). Arrays that something holds
  without counting them (the leak the soak first found: prefix-cache entries that kept whole
  batch buffers alive) grow it; the allocator does not;
- `fds_flat`, `threads_flat`: the maximum over the final window (the last minute, or the last
  third of a shorter run) at most the warm-up's maximum plus a slack (fds: max(8, 10 %), threads:
  max(4, 10 %)): connections come and go, a leak only grows.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config
from flows.bench.serving import percentile
from flows.bench.soak_load import CHEAP, MIX, LoadPlan, Record, run_load

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "soak-bench"
COLLECTION = "soak"
P95_BOUND_MS = 200.0
RSS_BAND = 0.05  # after a 5-minute warm-up
RSS_BAND_SHORT = 0.10  # after a shorter one (the allocator's level still steps: see `rss_flat`)
UNCOUNTED_SLACK = (64 * 2**20, 0.05)  # bytes, share of the reference
ROUTES = (*(r for r, _ in MIX), "bad", "prime")
ERRORS = ("5xx", "transport", "lost", "stream_error", "4xx_unexpected", "bad_accepted")


@dataclass
class SoakConfig:
    """What one soak does; the defaults are the release run's."""

    minutes: float = 30.0
    streams: int = 50
    max_tokens: int = 8
    cut_share: float = 0.1
    bad_share: float = 0.1
    sample_s: float = 5.0
    corpus: str = ""  # empty: data/samples
    seed: int = 0
    only: tuple[str, ...] = ()  # a subset of the mix's routes (flows/bench/soak_load.py MIX)
    kv_cache_mb: int = 0  # the server's serve.kv_cache_bytes in MiB; 0: the configured one

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warmup_s(self) -> float:
        return min(300.0, self.seconds / 3)

    @property
    def final_s(self) -> float:
        return min(60.0, self.seconds / 3)

    @property
    def rss_band(self) -> float:
        return RSS_BAND if self.warmup_s >= 300 else RSS_BAND_SHORT


@task(cache_policy=NO_CACHE)
def prepare_collection(paths: list[str], collection: str) -> dict[str, Any]:
    """The corpus ingested into `collection` with the pipeline functions (Prefect tasks off): the
    server opens the store after this returns, so there is one writer at a time."""
    from flows.ingest.flow import IngestInputs, run_ingest
    from pipelines.settings import get_settings

    inputs = IngestInputs(get_settings(), tasks=False)
    summary = run_ingest(inputs, paths, collection, False, run_id=f"soak-{time.time_ns()}")
    return {"documents": summary["documents"], "chunks_embedded": summary["chunks_embedded"]}


@task(cache_policy=NO_CACHE)
def soak_load(server: Server, plan: LoadPlan) -> Record:
    return asyncio.run(run_load(server, plan))


@flow(name="bench-soak", log_prints=False)
def bench_soak(cfg: SoakConfig | None = None) -> BenchResult:
    """Ingest, serve, load, judge; log one MLflow run; return the table, metrics and verdicts."""
    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import PROJECT_ROOT, get_settings

    cfg = cfg or SoakConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("soak-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    corpus = cfg.corpus or str(PROJECT_ROOT / "data" / "samples")
    t0 = time.monotonic()
    ingested = prepare_collection([corpus], COLLECTION)
    t_ingest = time.monotonic() - t0
    plan = LoadPlan(
        cfg.streams, cfg.seconds, COLLECTION, settings.models.embedding, cfg.max_tokens,
        cfg.cut_share, cfg.bad_share, sample_s=cfg.sample_s, seed=cfg.seed,
        only=cfg.only,
    )  # fmt: skip
    load_start = os.getloadavg()
    env: dict[str, Any] = {"IMPETUS_AUTH__MODE": "off"}
    if cfg.kv_cache_mb:
        env["IMPETUS_SERVE__KV_CACHE_BYTES"] = str(cfg.kv_cache_mb << 20)
    kv_cache_bytes = cfg.kv_cache_mb << 20 or settings.serve.kv_cache_bytes
    with impetus_serve(settings, log_dir, name="impetus-soak", **env) as server:
        started = (server.live_s, server.ready_s)
        rec = soak_load(server, plan)
        t_stop = time.monotonic()
    t_stop = time.monotonic() - t_stop
    metrics, verdicts = judge(rec, cfg)
    metrics |= {
        "server_live_s": started[0], "server_ready_s": started[1],
        "loadavg1_start": load_start[0], "loadavg5_start": load_start[1],
        "loadavg1_end": os.getloadavg()[0], "chunks_embedded": ingested["chunks_embedded"],
        "ingest_s": t_ingest, "server_stop_s": t_stop,
    }  # fmt: skip
    params = {**{k: str(v) for k, v in asdict(cfg).items()}, "model": settings.models.llm}
    params |= machine() | {"corpus": corpus, "kv_cache_bytes": str(kv_cache_bytes)}
    configs = [
        Config(r, {"route": r}, {k[len(r) + 1 :]: v for k, v in metrics.items()
                                 if k.startswith(f"{r}_") and not k.startswith(f"{r}_p95_w")})
        for r in ROUTES
    ]  # fmt: skip
    result = BenchResult(
        "soak", EXPERIMENT, f"{cfg.minutes:g}min-{cfg.streams}streams",
        render_table(metrics, verdicts, cfg), params, metrics, configs, files=str(log_dir),
    )  # fmt: skip
    result.notes += [
        f"verdict failed: {name}: {why}" for name, (ok, why) in verdicts.items() if not ok
    ]
    result.notes += [f"{n}× {d}" for d, n in rec.details.most_common(12)]
    log_bench(settings, result, figure=draw(rec, metrics, cfg))
    log_series(settings, result.run_id, rec, metrics, log_dir)
    return result


# -- verdicts -----------------------------------------------------------------------------------


def windows(rec: Record, cfg: SoakConfig, route: str) -> list[list[float]]:
    """Latencies of `route` per whole minute of the run (a short tail joins the last minute)."""
    n = max(1, int(cfg.seconds // 60))
    out: list[list[float]] = [[] for _ in range(n)]
    for c in rec.calls:
        if c.route == route and c.outcome == "ok":
            out[min(max(int(c.t // 60), 0), n - 1)].append(c.ms)
    return out


def judge(rec: Record, cfg: SoakConfig) -> tuple[dict[str, float], dict[str, tuple[bool, str]]]:
    """The summary metrics, and each verdict as (passed, the figures it was decided on)."""
    m: dict[str, float] = {"calls": float(len(rec.calls)), "duration_s": cfg.seconds}
    by_kind = {k: 0 for k in ("ok", "cut", "4xx", *ERRORS)}
    for route in ROUTES:
        calls = [c for c in rec.calls if c.route == route]
        ms = [c.ms for c in calls if c.outcome in ("ok", "4xx")]
        m[f"{route}_calls"] = float(len(calls))
        for kind in by_kind:
            n = sum(c.outcome == kind for c in calls)
            m[f"{route}_{kind}"] = float(n)
            by_kind[kind] += n
        for q in (50, 95, 99):
            m[f"{route}_p{q}_ms"] = percentile(ms, q)
        m[f"{route}_max_ms"] = max(ms, default=float("nan"))
    m |= {f"total_{k}": float(v) for k, v in by_kind.items()}
    verdicts: dict[str, tuple[bool, str]] = {
        "no_5xx": (by_kind["5xx"] == 0, f"{by_kind['5xx']} 5xx"),
        "no_lost_streams": (by_kind["lost"] == 0, f"{by_kind['lost']} lost, {by_kind['cut']} cut"),
    }
    other = {k: by_kind[k] for k in (*ERRORS[3:], "transport")}
    verdicts["no_other_errors"] = (
        not any(other.values()),
        ", ".join(f"{v} {k}" for k, v in other.items()),
    )
    for route in CHEAP:
        p95s = [percentile(w, 95) for w in windows(rec, cfg, route)]
        for i, p in enumerate(p95s):
            m[f"{route}_p95_w{i}_ms"] = p
        worst = max((p for p in p95s if p == p), default=float("nan"))
        m[f"{route}_worst_minute_p95_ms"] = worst
        verdicts[f"{route}_p95"] = (
            worst < P95_BOUND_MS, f"worst minute's p95 {worst:.0f} ms (bound {P95_BOUND_MS:.0f})"
        )  # fmt: skip
    m.update(resources(rec, cfg, verdicts))
    m["verdicts_failed"] = float(sum(not ok for ok, _ in verdicts.values()))
    m |= {f"verdict_{k}": float(ok) for k, (ok, _) in verdicts.items()}
    return m, verdicts


def minute_medians(
    after: list[dict[str, float]], cfg: SoakConfig, key: str = "rss_bytes"
) -> list[float]:
    """The level of `key` (RSS by default) in every whole minute after the warm-up (a shorter
    tail joins the minute before): the median of its samples. One 5-s sample is the live KV
    buffers of whatever batch was running (±10 % at 12 clients on a busy 2-core machine); a leak
    moves the level."""
    start = cfg.warmup_s
    n = max(1, int((cfg.seconds - start) // 60))
    minutes: list[list[float]] = [[] for _ in range(n)]
    for x in after:
        minutes[min(int((x["t"] - start) // 60), n - 1)].append(x[key])
    return [statistics.median(v) for v in minutes if v]


def resources(
    rec: Record, cfg: SoakConfig, verdicts: dict[str, tuple[bool, str]]
) -> dict[str, float]:
    """RSS, fds and threads against the warm-up (adds their verdicts); prefix cache and queue."""
    m: dict[str, float] = {}
    s = rec.samples
    warm = [x for x in s if x["t"] < cfg.warmup_s]
    after = [x for x in s if x["t"] >= cfg.warmup_s]
    ref_samples = [x["rss_bytes"] for x in after]
    final = [x for x in s if x["t"] >= cfg.seconds - cfg.final_s]
    mb = 1 / 2**20
    if not (warm and after and ref_samples and final):
        verdicts["samples"] = (False, f"too few samples ({len(s)}) to judge resources")
        return m
    ref = statistics.median(ref_samples)
    raw_lo, raw_hi = min(x["rss_bytes"] for x in after), max(x["rss_bytes"] for x in after)
    levels = minute_medians(after, cfg)
    lo, hi = min(levels), max(levels)
    m |= {
        "rss_start_mb": s[0]["rss_bytes"] * mb, "rss_ref_mb": ref * mb,
        "rss_after_min_mb": raw_lo * mb, "rss_after_max_mb": raw_hi * mb, "rss_end_mb": s[-1]["rss_bytes"] * mb,
        "rss_level_min_mb": lo * mb, "rss_level_max_mb": hi * mb,
        "rss_dev_low_pct": 100 * (lo / ref - 1), "rss_dev_high_pct": 100 * (hi / ref - 1),
        "rss_sample_dev_low_pct": 100 * (raw_lo / ref - 1), "rss_sample_dev_high_pct": 100 * (raw_hi / ref - 1),
    }  # fmt: skip
    band = cfg.rss_band
    verdicts["rss_flat"] = (
        (1 - band) * ref <= lo and hi <= (1 + band) * ref,
        f"minute medians after warm-up {lo * mb:.0f}–{hi * mb:.0f} MB vs reference {ref * mb:.0f} MB "
        f"({m['rss_dev_low_pct']:+.1f} %/{m['rss_dev_high_pct']:+.1f} %, band ±{band:.0%}); "
        f"single samples {raw_lo * mb:.0f}–{raw_hi * mb:.0f} MB",
    )
    m |= uncounted(after, cfg, verdicts)
    for key, floor in (("fds", 8.0), ("threads", 4.0)):
        w = max(x[key] for x in warm)
        f = max(x[key] for x in final)
        slack = max(floor, 0.1 * w)
        m |= {f"{key}_warmup_max": w, f"{key}_final_max": f, f"{key}_max": max(x[key] for x in s)}
        verdicts[f"{key}_flat"] = (
            f <= w + slack, f"final max {f:.0f} vs warm-up max {w:.0f} + {slack:.0f}"
        )  # fmt: skip
    for key in ("prefix_cache_bytes", "queue_depth", "batch_size", "children", "loop_lag_ms",
                "mlx_active_bytes", "mlx_cache_bytes", "engines_bytes", "kv_cache_bytes",
                "kv_cache_waits"):  # fmt: skip
        vals = [x[key] for x in s if key in x]
        if vals:
            m[f"{key}_max"] = max(vals)
            m[f"{key}_end"] = vals[-1]
    m["loadavg1_mean"] = statistics.fmean(x["loadavg1"] for x in s)
    m["loadavg1_max"] = max(x["loadavg1"] for x in s)
    return m


def uncounted(
    after: list[dict[str, float]], cfg: SoakConfig, verdicts: dict[str, tuple[bool, str]]
) -> dict[str, float]:
    """MLX's active memory that no engine counts, per minute after the warm-up, against the
    median of all its samples (adds `mlx_uncounted_flat`; nothing without MLX's counters)."""
    vals = [
        {"t": x["t"], "v": x["mlx_active_bytes"] - x["engines_bytes"]}
        for x in after
        if "mlx_active_bytes" in x and "engines_bytes" in x
    ]
    if not vals:
        return {}
    mb = 1 / 2**20
    ref = statistics.median(x["v"] for x in vals)
    levels = minute_medians(vals, cfg, "v")
    slack = max(UNCOUNTED_SLACK[0], UNCOUNTED_SLACK[1] * abs(ref))
    verdicts["mlx_uncounted_flat"] = (
        max(levels) <= ref + slack,
        f"minute medians after warm-up {min(levels) * mb:.0f}–{max(levels) * mb:.0f} MB vs "
        f"reference {ref * mb:.0f} MB + {slack * mb:.0f}",
    )
    return {
        "mlx_uncounted_ref_mb": ref * mb,
        "mlx_uncounted_level_min_mb": min(levels) * mb,
        "mlx_uncounted_level_max_mb": max(levels) * mb,
    }


# -- reporting ----------------------------------------------------------------------------------


def render_table(
    m: dict[str, float], verdicts: dict[str, tuple[bool, str]], cfg: SoakConfig
) -> str:
    """Per route: calls by outcome and latency; then resources; then the verdicts (Markdown)."""
    rows = [
        "| route | calls | ok | cut | 4xx (bad) | errors | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in ROUTES:
        if not m.get(f"{r}_calls"):
            continue
        errs = ", ".join(f"{int(m[f'{r}_{k}'])} {k}" for k in ERRORS if m[f"{r}_{k}"]) or "0"
        rows.append(
            f"| {r} | {m[f'{r}_calls']:.0f} | {m[f'{r}_ok']:.0f} | {m[f'{r}_cut']:.0f} | "
            f"{m[f'{r}_4xx']:.0f} | {errs} | {m[f'{r}_p50_ms']:.0f} | {m[f'{r}_p95_ms']:.0f} | "
            f"{m[f'{r}_p99_ms']:.0f} | {m[f'{r}_max_ms']:.0f} |"
        )
    rows += ["", "| resource | value |", "|---|---|"]

    def row(label: str, text: str) -> None:
        rows.append(f"| {label} | {text} |")

    if "rss_ref_mb" in m:
        row(
            "RSS start → reference → end, MB",
            f"{m['rss_start_mb']:.0f} → {m['rss_ref_mb']:.0f} → {m['rss_end_mb']:.0f}",
        )
        row(
            "RSS after warm-up, minute medians min–max MB (single samples)",
            f"{m['rss_level_min_mb']:.0f}–{m['rss_level_max_mb']:.0f} "
            f"({m['rss_after_min_mb']:.0f}–{m['rss_after_max_mb']:.0f})",
        )
        if "mlx_uncounted_ref_mb" in m:
            row(
                "MLX active less what the engines count: reference; minute medians min–max, MB",
                f"{m['mlx_uncounted_ref_mb']:.0f}; {m['mlx_uncounted_level_min_mb']:.0f}–"
                f"{m['mlx_uncounted_level_max_mb']:.0f}",
            )
        for key in ("fds", "threads"):
            row(
                f"{key}: warm-up max / final max / max",
                f"{m[f'{key}_warmup_max']:.0f} / {m[f'{key}_final_max']:.0f} / {m[f'{key}_max']:.0f}",
            )
    if "prefix_cache_bytes_max" in m:
        row(
            "prefix cache max / end, MB",
            f"{m['prefix_cache_bytes_max'] / 2**20:.0f} / {m['prefix_cache_bytes_end'] / 2**20:.0f}",
        )
        row(
            "queue depth max / batch size max",
            f"{m['queue_depth_max']:.0f} / {m['batch_size_max']:.0f}",
        )
    if "kv_cache_bytes_max" in m:
        row(
            "batch KV cache max / end, MB; requests that waited for room",
            f"{m['kv_cache_bytes_max'] / 2**20:.0f} / {m['kv_cache_bytes_end'] / 2**20:.0f}; "
            f"{m.get('kv_cache_waits_end', 0):.0f}",
        )
    if "loop_lag_ms_max" in m:
        row("client event-loop lag max, ms", f"{m['loop_lag_ms_max']:.0f}")
    if "loadavg1_mean" in m:
        row(
            "load average (1 min) mean / max", f"{m['loadavg1_mean']:.1f} / {m['loadavg1_max']:.1f}"
        )
    rows += ["", "| verdict | passed | figures |", "|---|---|---|"]
    for name, (ok, why) in verdicts.items():
        rows.append(f"| {name} | {'yes' if ok else '**NO**'} | {why} |")
    rows.append(f"\n{cfg.streams} clients, {cfg.minutes:g} min, warm-up {cfg.warmup_s / 60:g} min")
    return "\n".join(rows)  # fmt: skip


def draw(rec: Record, m: dict[str, float], cfg: SoakConfig) -> Any:
    """Six panels over the run's minutes: RSS (with the ±5 % band), fds, threads, prefix cache and
    queue depth, the cheap routes' per-minute p95, and calls/errors so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = rec.samples
    t = [x["t"] / 60 for x in s]
    fig, ax = plt.subplots(2, 3, figsize=(15, 7))
    ax[0][0].plot(t, [x["rss_bytes"] / 2**20 for x in s], label="server RSS")
    for key, label in (("mlx_active_bytes", "MLX active"), ("mlx_cache_bytes", "MLX cache"),
                       ("engines_bytes", "engines count")):  # fmt: skip
        ax[0][0].plot(t, [x.get(key, 0) / 2**20 for x in s], label=label, lw=0.8)
    ax[0][0].legend(fontsize=7)
    if "rss_ref_mb" in m:
        for k in (1 - cfg.rss_band, 1 + cfg.rss_band):
            ax[0][0].axhline(m["rss_ref_mb"] * k, ls="--", c="grey", lw=0.8)
    ax[0][0].axvline(cfg.warmup_s / 60, ls=":", c="k", lw=0.8)
    ax[0][0].set_title(f"RSS, MB (band ±{cfg.rss_band:.0%} after warm-up)")
    ax[0][1].plot(t, [x["fds"] for x in s])
    ax[0][1].set_title("open file descriptors")
    ax[0][2].plot(t, [x["threads"] for x in s])
    ax[0][2].set_title("threads")
    ax[1][0].plot(t, [x.get("prefix_cache_bytes", 0) / 2**20 for x in s], label="prefix cache MB")
    ax[1][0].plot(t, [x.get("queue_depth", 0) for x in s], label="queue depth")
    ax[1][0].plot(t, [x.get("batch_size", 0) for x in s], label="batch size")
    ax[1][0].legend(fontsize=8)
    ax[1][0].set_title("engine")
    for route in CHEAP:
        ys = [percentile(w, 95) for w in windows(rec, cfg, route)]
        ax[1][1].plot([i + 0.5 for i in range(len(ys))], ys, marker="o", label=route)
    ax[1][1].axhline(P95_BOUND_MS, ls="--", c="r", lw=0.8)
    ax[1][1].legend(fontsize=8)
    ax[1][1].set_title("p95 per minute, ms")
    ax[1][2].plot(t, [x["calls"] for x in s], label="calls")
    ax[1][2].plot(t, [x["errors"] for x in s], label="errors")
    ax[1][2].plot(t, [x["loadavg1"] * 100 for x in s], label="load avg ×100")
    ax[1][2].legend(fontsize=8)
    ax[1][2].set_title("calls and errors so far")
    for a in ax.flat:
        a.set_xlabel("minutes")
        a.grid(alpha=0.3)
    fig.tight_layout()
    plt.close(fig)
    return fig


SERIES = {  # sample key → (MLflow metric, scale)
    "rss_bytes": ("series_rss_mb", 1 / 2**20),
    "fds": ("series_fds", 1.0),
    "threads": ("series_threads", 1.0),
    "children_rss_bytes": ("series_children_rss_mb", 1 / 2**20),
    "prefix_cache_bytes": ("series_prefix_cache_mb", 1 / 2**20),
    "kv_cache_bytes": ("series_kv_cache_mb", 1 / 2**20),
    "mlx_active_bytes": ("series_mlx_active_mb", 1 / 2**20),
    "mlx_cache_bytes": ("series_mlx_cache_mb", 1 / 2**20),
    "engines_bytes": ("series_engines_mb", 1 / 2**20),
    "queue_depth": ("series_queue_depth", 1.0),
    "batch_size": ("series_batch_size", 1.0),
    "loadavg1": ("series_loadavg1", 1.0),
    "inflight": ("series_inflight", 1.0),
    "errors": ("series_errors", 1.0),
    "loop_lag_ms": ("series_loop_lag_ms", 1.0),
}


def log_series(settings: Any, run_id: str, rec: Record, m: dict[str, float], log_dir: Path) -> None:
    """The samples as stepped metrics (step = sample number, timestamp = when it was taken), the
    per-minute p95s as stepped metrics (step = minute), the samples as CSV and the error
    messages, into the run log_bench made."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from flows.bench.results import to_csv

    client = MlflowClient()
    wall0 = int((time.time() - (time.monotonic() - rec.started)) * 1000)
    batch: list[Metric] = []
    for step, x in enumerate(rec.samples):
        ts = wall0 + int(x["t"] * 1000)
        for key, (name, scale) in SERIES.items():
            if key in x:
                batch.append(Metric(name, x[key] * scale, ts, step))
    for route in CHEAP:
        i = 0
        while f"{route}_p95_w{i}_ms" in m:
            v = m[f"{route}_p95_w{i}_ms"]
            if v == v:
                batch.append(Metric(f"series_{route}_p95_ms", v, wall0 + i * 60_000, i))
            i += 1
    for start in range(0, len(batch), 900):
        client.log_batch(run_id, metrics=batch[start : start + 900])
    samples_csv = to_csv(rec.samples)
    (log_dir / "samples.csv").write_text(samples_csv)
    client.log_text(run_id, samples_csv, "samples.csv")
    errors = "\n".join(f"{n}\t{d}" for d, n in rec.details.most_common()) or "none\n"
    client.log_text(run_id, errors, "errors.tsv")
