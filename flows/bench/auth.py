"""What access control costs: the same server with keys and rate limits on, and with them off.

    impetus bench auth          # 3 rounds: 400 × GET /v1/models, then chat at 8 streams
    impetus bench auth --quick  # CI-sized

Two `impetus serve` processes run side by side on the same model and settings:
- `open`: `auth.mode off`, on loopback, so neither keys nor rate limits apply;
- `keyed`: `auth.mode on`, every request with an admin key whose own limit is high enough never to
  be reached, so each request pays the key lookup (SQLite), the rate-limit hit and window stats, the
  X-RateLimit-* headers and the request-log line, and nothing is refused.
The keyed server has a data_dir of its own (a temporary one whose models/ links to the real one),
so the bench's key never lands in the user's key store.

Traffic alternates between the two in rounds, so both see the same machine load:
1. the cheap route: `GET /v1/models` back to back on one keep-alive connection; latency p50/p99
   per server, and the p50 added by auth (goal ≤ 1 ms);
2. chat at 8 concurrent streams (greedy, fixed max_tokens); aggregate tok/s per server and the
   keyed/open ratio (goal ≥ 0.98: throughput within 2 %).
One MLflow run (experiment `auth-bench`) holds the metrics and the table.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.load import burst, cheap_latencies_ms
from flows.bench.results import BenchResult, Config

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "auth-bench"
SERVERS = ("open", "keyed")


@dataclass
class AuthBenchConfig:
    cheap_requests: int = 400  # per server per round
    streams: int = 8
    max_tokens: int = 32
    rounds: int = 3
    quick: bool = False

    @classmethod
    def quick_config(cls) -> AuthBenchConfig:
        return cls(cheap_requests=60, max_tokens=8, rounds=1, quick=True)


def _chat_tps(server: Server, cfg: AuthBenchConfig) -> float:
    body = {
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
        "max_tokens": cfg.max_tokens,
        "temperature": 0.0,
    }
    b = asyncio.run(burst(server, [[body]] * cfg.streams))
    if b.errors:
        raise RuntimeError(f"{server.name}: {b.errors} chat requests failed ({b.error_kinds})")
    return b.tps


@task(cache_policy=NO_CACHE)
def measure(servers: dict[str, Server], cfg: AuthBenchConfig) -> dict[str, dict[str, list[float]]]:
    """Warm both up, then `rounds` rounds, each: the cheap route on both, chat on both."""
    warm = AuthBenchConfig(cheap_requests=5, streams=2, max_tokens=4)
    for s in servers.values():
        cheap_latencies_ms(s, warm.cheap_requests)
        _chat_tps(s, warm)
    out: dict[str, dict[str, list[float]]] = {n: {"ms": [], "tps": []} for n in servers}
    for r in range(cfg.rounds):
        order = SERVERS if r % 2 == 0 else SERVERS[::-1]
        for name in order:
            out[name]["ms"] += cheap_latencies_ms(servers[name], cfg.cheap_requests)
        for name in order:
            out[name]["tps"].append(_chat_tps(servers[name], cfg))
    return out


def _keyed_data_dir(real: Path, root: Path) -> tuple[Path, str]:
    """A data_dir whose models/ is the real one, with one admin key; (its path, the token)."""
    from pipelines.keys import KeyStore

    state = root / "keyed-state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "models").symlink_to(real / "models", target_is_directory=True)
    store = KeyStore.open(state)
    try:
        _, token = store.create("bench-auth", "admin", rate_limit="1000000/minute")
    finally:
        store.close()
    return state, token


@flow(name="bench-auth", log_prints=False)
def bench_auth(cfg: AuthBenchConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from contextlib import ExitStack

    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or AuthBenchConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("auth-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="impetus-bench-auth-") as tmp, ExitStack() as stack:
        keyed_dir, token = _keyed_data_dir(settings.data_dir, Path(tmp))
        servers = {
            "open": stack.enter_context(
                impetus_serve(settings, log_dir, name="open", IMPETUS_AUTH__MODE="off")
            ),
            "keyed": stack.enter_context(
                impetus_serve(
                    settings, log_dir, name="keyed", IMPETUS_AUTH__MODE="on",
                    IMPETUS_DATA_DIR=str(keyed_dir),
                )
            ),
        }  # fmt: skip
        servers["keyed"].headers = {"Authorization": f"Bearer {token}"}
        runs = measure(servers, cfg)

    per: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        ms = sorted(r["ms"])
        per[name] = {
            "models_p50_ms": statistics.median(ms),
            "models_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "chat_tps": statistics.median(r["tps"]),
        }
    ratios = [k / o for o, k in zip(runs["open"]["tps"], runs["keyed"]["tps"], strict=True)]
    metrics = {
        **{f"{n}_{k}": v for n, m in per.items() for k, v in m.items()},
        "models_p50_added_ms": per["keyed"]["models_p50_ms"] - per["open"]["models_p50_ms"],
        "chat_tps_ratio": statistics.median(ratios),
        "load_avg_1m": os.getloadavg()[0],
    }
    params = {
        "model": settings.models.llm,
        "cheap_requests": cfg.cheap_requests,
        "streams": cfg.streams,
        "max_tokens": cfg.max_tokens,
        "rounds": cfg.rounds,
        **machine(),
    }
    configs = [Config(n, {"auth": n == "keyed"}, per[n]) for n in SERVERS]
    result = BenchResult(
        "auth", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, configs, files=str(log_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def render_table(m: dict[str, float], cfg: AuthBenchConfig) -> str:
    n = cfg.cheap_requests * cfg.rounds
    return "\n".join(
        [
            "| | no auth (`auth.mode off`) | key + rate limit | added / ratio | goal |",
            "|---|---|---|---|---|",
            f"| GET /v1/models p50 ms ({n} requests each) | {m['open_models_p50_ms']:.2f} "
            f"| {m['keyed_models_p50_ms']:.2f} | +{m['models_p50_added_ms']:.2f} ms | ≤ 1 ms |",
            f"| GET /v1/models p99 ms | {m['open_models_p99_ms']:.2f} "
            f"| {m['keyed_models_p99_ms']:.2f} | | |",
            f"| chat, {cfg.streams} streams × {cfg.max_tokens} tokens, aggregate tok/s "
            f"| {m['open_chat_tps']:.1f} | {m['keyed_chat_tps']:.1f} "
            f"| {m['chat_tps_ratio']:.3f}× | ≥ 0.98× |",
            f"| load average (1 min) at the end | {m['load_avg_1m']:.1f} | | | |",
        ]
    )
