"""What the dashboard's event stream costs: 50 WebSocket clients on /api/ws while 8 chat streams
run, against the same chat load without them, in one run.

    impetus bench ws                 # 2 minutes with the clients, 2 without, in 4 rounds
    impetus bench ws --minutes 1     # shorter phases on a busy machine

One `impetus serve` (the default model, auth off on loopback) serves both phases, in `rounds`
alternating segments (without, with, with, without, ...) so that both see the same machine load:
- `without`: 8 concurrent chat streams (greedy) back to back for the segment;
- `with`: the same load while 50 clients hold /api/ws open and read every message (they connect
  before the segment starts and leave after it).
Measured: chat throughput as the streamed content chunks (≈ tokens) received inside the segments
per second, per phase and their ratio (goal ≥ 0.95: within 5 %); for each client, the snapshots it
received against those the server sent while all 50 were connected (goal: every client every
snapshot); the server's RSS (psutil on its pid, each second) in the first and the last 30 s of the
time with clients (goal: within 5 %). One MLflow run (experiment `ws-bench`) holds the metrics and
the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "ws-bench"
PHASES = ("without", "with")
RSS_WINDOW_S = 30.0


@dataclass
class WsBenchConfig:
    minutes: float = 2.0  # per phase, over all rounds
    clients: int = 50
    streams: int = 8
    max_tokens: int = 64
    rounds: int = 4  # segments per phase, alternating, so both phases see the same machine load

    @property
    def segment_s(self) -> float:
        return self.minutes * 60 / self.rounds


@dataclass
class Phase:
    """What one phase measured, summed over its segments."""

    name: str
    wall_s: float = 0.0
    tokens: int = 0  # streamed content chunks received inside the segments (≈ tokens)
    errors: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds into phase, bytes)
    received: list[int] = field(default_factory=list)  # snapshots per client, all segments
    expected: int = 0  # snapshots sent while every client was connected, all segments
    client_errors: int = 0
    segment_tps: list[float] = field(default_factory=list)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


async def _chat(server: Server, cfg: WsBenchConfig, until: float) -> tuple[int, int]:
    """`cfg.streams` streams of chat requests back to back until `until`; the content chunks
    received before it (streams still open then are closed, which cancels them) and errors."""
    body = {
        "model": server.model,
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
        "max_tokens": cfg.max_tokens,
        "temperature": 0.0,
        "stream": True,
    }
    counts = {"tokens": 0, "errors": 0}
    limits = httpx.Limits(max_connections=cfg.streams + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one() -> None:
            url = server.url + "/v1/chat/completions"
            async with client.stream("POST", url, json=body, headers=server.headers) as r:
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {await r.aread()!r}")
                async for line in r.aiter_lines():
                    if time.monotonic() >= until:
                        return
                    if line.startswith("data: {"):
                        chunk = json.loads(line[6:])
                        for choice in chunk.get("choices") or []:
                            if (choice.get("delta") or {}).get("content"):
                                counts["tokens"] += 1

        async def stream() -> None:
            while time.monotonic() < until:
                try:
                    await asyncio.wait_for(one(), max(0.1, until - time.monotonic() + 5))
                except (httpx.HTTPError, RuntimeError, TimeoutError):
                    if time.monotonic() < until:
                        counts["errors"] += 1

        await asyncio.gather(*(stream() for _ in range(cfg.streams)))
    return counts["tokens"], counts["errors"]


async def _rss(pid: int, phase: Phase, offset: float, started: float, until: float) -> None:
    import psutil

    proc = psutil.Process(pid)
    while time.monotonic() < until:
        phase.rss.append((offset + time.monotonic() - started, proc.memory_info().rss))
        await asyncio.sleep(1.0)


async def _client(url: str, seqs: list[int], connected: asyncio.Event, stop: asyncio.Event) -> None:
    """One dashboard: reads every message, records the snapshots' seq numbers."""
    from websockets.asyncio.client import connect

    async with connect(url, subprotocols=["impetus.v1"], max_size=None) as ws:  # type: ignore[list-item]
        connected.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 1.0)
            except TimeoutError:
                continue
            msg = json.loads(raw)
            if msg.get("type") == "snapshot":
                seqs.append(int(msg["seq"]))


async def _segment(server: Server, phase: Phase, cfg: WsBenchConfig, clients: int) -> None:
    """One segment of a phase: `clients` WebSocket clients (0: none) connected first, then the
    chat load for `cfg.segment_s`, RSS sampled each second."""
    ws_url = server.url.replace("http://", "ws://", 1) + "/api/ws"
    stop = asyncio.Event()
    seqs: list[list[int]] = [[] for _ in range(clients)]
    flags = [asyncio.Event() for _ in seqs]
    tasks = [
        asyncio.create_task(_client(ws_url, s, f, stop)) for s, f in zip(seqs, flags, strict=True)
    ]
    if tasks:
        await asyncio.wait_for(asyncio.gather(*(f.wait() for f in flags)), 60)
        await asyncio.sleep(2.0)  # every client has its hello and a first snapshot
    first = [s[-1] if s else 0 for s in seqs]
    started = time.monotonic()
    until = started + cfg.segment_s
    offset = phase.wall_s
    (tokens, errors), _ = await asyncio.gather(
        _chat(server, cfg, until), _rss(server.proc.pid, phase, offset, started, until)
    )
    wall = time.monotonic() - started
    phase.tokens += tokens
    phase.errors += errors
    phase.wall_s += wall
    phase.segment_tps.append(tokens / wall)
    last = [s[-1] if s else 0 for s in seqs]
    stop.set()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            phase.client_errors += 1
    if seqs:
        # The window every client saw whole: after the latest first seq, to the earliest last.
        lo, hi = max(first) + 1, min(last)
        phase.expected += max(0, hi - lo + 1)
        got = [len({q for q in s if lo <= q <= hi}) for s in seqs]
        phase.received = [a + b for a, b in zip(phase.received or [0] * len(got), got, strict=True)]


@task(cache_policy=NO_CACHE)
def measure(server: Server, cfg: WsBenchConfig) -> dict[str, Phase]:
    """A short warm-up, then `rounds` rounds of a segment without and one with the clients,
    alternating which goes first."""
    phases = {name: Phase(name) for name in PHASES}

    async def run() -> None:
        warm = WsBenchConfig(minutes=0.1, clients=0, streams=2, max_tokens=4, rounds=1)
        await _segment(server, Phase("warm"), warm, 0)
        for r in range(cfg.rounds):
            order = PHASES if r % 2 == 0 else PHASES[::-1]
            for name in order:
                await _segment(server, phases[name], cfg, cfg.clients if name == "with" else 0)

    asyncio.run(run())
    return phases


def _rss_change(phase: Phase) -> tuple[float, float, float]:
    """Mean RSS (MiB) of the first and last 30 s, and the change in percent."""
    if not phase.rss:
        return float("nan"), float("nan"), float("nan")
    end = phase.rss[-1][0]
    head = [b for t, b in phase.rss if t <= RSS_WINDOW_S] or [phase.rss[0][1]]
    tail = [b for t, b in phase.rss if t >= end - RSS_WINDOW_S] or [phase.rss[-1][1]]
    a, b = statistics.mean(head) / 2**20, statistics.mean(tail) / 2**20
    return a, b, (b - a) / a * 100


@flow(name="bench-ws", log_prints=False)
def bench_ws(cfg: WsBenchConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or WsBenchConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("ws-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    with impetus_serve(settings, log_dir, name="ws", IMPETUS_AUTH__MODE="off") as server:
        phases = measure(server, cfg)

    w, wo = phases["with"], phases["without"]
    rss_first, rss_last, rss_change = _rss_change(w)
    missed = sum(max(0, w.expected - n) for n in w.received)
    metrics = {
        "without_chat_tps": wo.tps,
        "with_chat_tps": w.tps,
        "chat_tps_ratio": w.tps / wo.tps if wo.tps else float("nan"),
        "chat_tps_ratio_median_round": statistics.median(
            a / b for a, b in zip(w.segment_tps, wo.segment_tps, strict=True) if b
        ),
        "snapshots_expected": float(w.expected),
        "snapshots_min_per_client": float(min(w.received, default=0)),
        "snapshots_max_per_client": float(max(w.received, default=0)),
        "snapshots_missed_total": float(missed),
        "clients_complete": float(sum(n >= w.expected for n in w.received)),
        "rss_first_30s_mib": rss_first,
        "rss_last_30s_mib": rss_last,
        "rss_change_pct": rss_change,
        "chat_errors": float(w.errors + wo.errors),
        "client_errors": float(w.client_errors),
        "load_avg_1m": os.getloadavg()[0],
    }
    params = {
        "model": settings.models.llm,
        "minutes": cfg.minutes,
        "clients": cfg.clients,
        "streams": cfg.streams,
        "max_tokens": cfg.max_tokens,
        "rounds": cfg.rounds,
        "ws_interval_s": settings.serve.ws_interval_s,
        **machine(),
    }
    configs = [
        Config(p.name, {"clients": cfg.clients if p.name == "with" else 0},
               {"chat_tps": p.tps, "tokens": float(p.tokens)})
        for p in (wo, w)
    ]  # fmt: skip
    result = BenchResult(
        "ws", EXPERIMENT, f"{cfg.minutes:g}min", render_table(metrics, cfg), params, metrics,
        configs, files=str(log_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def render_table(m: dict[str, float], cfg: WsBenchConfig) -> str:
    n = cfg.clients
    return "\n".join(
        [
            f"| {cfg.minutes:g} min per phase in {cfg.rounds} alternating segments, "
            f"{cfg.streams} chat streams | without clients | with {n} WebSocket clients "
            "| ratio / change | goal |",
            "|---|---|---|---|---|",
            f"| chat aggregate tok/s (streamed chunks) | {m['without_chat_tps']:.1f} "
            f"| {m['with_chat_tps']:.1f} | {m['chat_tps_ratio']:.3f}× "
            f"(median of rounds {m['chat_tps_ratio_median_round']:.3f}×) | ≥ 0.95× |",
            f"| snapshots per client (of {m['snapshots_expected']:.0f} sent) | | "
            f"min {m['snapshots_min_per_client']:.0f}, max {m['snapshots_max_per_client']:.0f}; "
            f"{m['clients_complete']:.0f}/{n} complete | {m['snapshots_missed_total']:.0f} missed "
            "| every client every snapshot |",
            f"| server RSS MiB, first vs last 30 s with clients | | {m['rss_first_30s_mib']:.1f} → "
            f"{m['rss_last_30s_mib']:.1f} | {m['rss_change_pct']:+.2f} % | within ±5 % |",
            f"| errors (chat, clients) | | {m['chat_errors']:.0f}, {m['client_errors']:.0f} | | 0 |",
            f"| load average (1 min) at the end | {m['load_avg_1m']:.1f} | | | |",
        ]
    )
