"""What tracing costs: the same server with OpenTelemetry tracing on (exporting to a local OTLP
sink) and off (the default), side by side.

    impetus bench tracing          # 8 rounds of 300 × GET /v1/models, then 16 of chat at 8 streams
    impetus bench tracing --quick  # CI-sized

Two `impetus serve` processes run on the same model and settings:
- `off`: no `telemetry.otlp_endpoint` (the default: no provider, no spans, no exporter);
- `on`: `telemetry.otlp_endpoint` set to a sink in this process (127.0.0.1), so every request
  records its spans (server, auth, validation, queue wait, prefill, decode, delivery, FastAPI's
  operation spans) and the batch exporter sends them over OTLP/HTTP as protobuf, as it would
  to a collector. The sink decodes and counts the spans, so a run proves they were sent.
Traffic alternates between the two in rounds (the order flipping each round), so both see the
same machine load; the chat rounds start once `on` has exported the cheap phase's spans (else
chat would pay for exporting thousands of spans of another route):
1. the cheap route: `GET /v1/models` back to back on one keep-alive connection; p50 per server
   and the p50 tracing adds (what a request pays, resolvable where chat's noise is not);
2. chat at 8 concurrent streams (greedy, fixed max_tokens); aggregate tok/s per server and the
   on/off ratio per round, whose median is the bench's figure (goal ≥ 0.98: within 2 %), and the
   server's CPU time per generated token (from /proc: less sensitive than wall time to whatever
   else the machine runs).
One MLflow run (experiment `tracing-bench`) holds the metrics and the table.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.load import burst, cheap_latencies_ms
from flows.bench.results import BenchResult, Config

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "tracing-bench"
SERVERS = ("off", "on")


@dataclass
class TracingBenchConfig:
    cheap_requests: int = 300  # per server per round
    streams: int = 8
    max_tokens: int = 32
    rounds: int = 8  # of the cheap route
    chat_rounds: int = 16
    quick: bool = False

    @classmethod
    def quick_config(cls) -> TracingBenchConfig:
        return cls(cheap_requests=40, max_tokens=8, rounds=1, chat_rounds=1, quick=True)


@dataclass
class SinkStats:
    """What the OTLP sink received."""

    posts: int = 0
    spans: int = 0
    bytes: int = 0
    names: set[str] = field(default_factory=set)


@contextmanager
def otlp_sink() -> Iterator[tuple[str, SinkStats]]:
    """An OTLP/HTTP traces endpoint on 127.0.0.1 that decodes and counts what it is sent; yields
    its base URL (what `telemetry.otlp_endpoint` takes) and its running counts."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    stats = SinkStats()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            spans = [s.name for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
            with lock:
                stats.posts += 1
                stats.bytes += len(body)
                stats.spans += len(spans)
                stats.names.update(spans)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-sink", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", stats
    finally:
        server.shutdown()
        server.server_close()


def _chat(server: Server, cfg: TracingBenchConfig) -> tuple[float, float]:
    """One burst of chat streams: (aggregate tok/s, the server's CPU ms per generated token)."""
    from flows.bench.server import cpu_seconds

    body = {
        "messages": [{"role": "user", "content": "Tell a long story about a lighthouse."}],
        "max_tokens": cfg.max_tokens,
        "temperature": 0.0,
    }
    cpu = cpu_seconds(server.proc.pid)
    b = asyncio.run(burst(server, [[body]] * cfg.streams))
    cpu = cpu_seconds(server.proc.pid) - cpu
    if b.errors:
        raise RuntimeError(f"{server.name}: {b.errors} chat requests failed ({b.error_kinds})")
    return b.tps, cpu * 1000 / max(b.completion_tokens, 1)


@task(cache_policy=NO_CACHE)
def measure(
    servers: dict[str, Server], cfg: TracingBenchConfig, sink: SinkStats
) -> tuple[dict[str, dict[str, list[float]]], int]:
    """Warm both up; `rounds` rounds of the cheap route on both; once `on` has exported those
    spans, `chat_rounds` rounds of chat on both (the order flipping each round). Returns each
    server's figures and the spans `on` exported for the chat rounds."""
    warm = TracingBenchConfig(cheap_requests=5, streams=2, max_tokens=4)
    for s in servers.values():
        cheap_latencies_ms(s, warm.cheap_requests)
        _chat(s, warm)
    out: dict[str, dict[str, list[float]]] = {n: {"ms": [], "tps": [], "cpu": []} for n in servers}
    for r in range(cfg.rounds):
        for name in SERVERS if r % 2 == 0 else SERVERS[::-1]:
            out[name]["ms"] += cheap_latencies_ms(servers[name], cfg.cheap_requests)
    # The cheap phase recorded thousands of spans; `on` exports them in batches every few
    # seconds. Chat starts when they are out, or their export would be counted as chat's.
    before_chat = drained(sink)
    for r in range(cfg.chat_rounds):
        for name in SERVERS if r % 2 == 0 else SERVERS[::-1]:
            tps, cpu_ms = _chat(servers[name], cfg)
            out[name]["tps"].append(tps)
            out[name]["cpu"].append(cpu_ms)
    return out, drained(sink) - before_chat


def drained(sink: SinkStats, quiet_s: float = 6.0, limit_s: float = 60.0) -> int:
    """Spans received once none has arrived for `quiet_s` (the batch exporter sends every 5 s)."""
    deadline = time.monotonic() + limit_s
    seen, since = sink.spans, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet_s:
        time.sleep(0.5)
        if sink.spans != seen:
            seen, since = sink.spans, time.monotonic()
    return seen


@flow(name="bench-tracing", log_prints=False)
def bench_tracing(cfg: TracingBenchConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from contextlib import ExitStack

    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or TracingBenchConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("tracing-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    with otlp_sink() as (endpoint, sink), ExitStack() as stack:
        # Off must really be off: whatever the environment says, no endpoint.
        servers = {
            "off": stack.enter_context(
                impetus_serve(settings, log_dir, name="off", IMPETUS_TELEMETRY__OTLP_ENDPOINT="")
            ),
            "on": stack.enter_context(
                impetus_serve(
                    settings, log_dir, name="on", IMPETUS_TELEMETRY__OTLP_ENDPOINT=endpoint
                )
            ),
        }
        runs, chat_spans = measure(servers, cfg, sink)
        stack.close()  # stop both servers: `on` flushes its last spans as it stops
    if not sink.spans:
        raise RuntimeError(
            f"the OTLP sink received no spans from the `on` server: see {log_dir / 'on.log'}"
        )

    per: dict[str, dict[str, float]] = {}
    for name, r in runs.items():
        ms = sorted(r["ms"])
        per[name] = {
            "models_p50_ms": statistics.median(ms),
            "models_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
            "chat_tps": statistics.median(r["tps"]),
            "chat_cpu_ms_per_token": statistics.median(r["cpu"]),
        }
    ratios = [on / off for off, on in zip(runs["off"]["tps"], runs["on"]["tps"], strict=True)]
    metrics = {
        **{f"{n}_{k}": v for n, m in per.items() for k, v in m.items()},
        "models_p50_added_ms": per["on"]["models_p50_ms"] - per["off"]["models_p50_ms"],
        "chat_tps_ratio": statistics.median(ratios),
        "chat_tps_ratio_min": min(ratios),
        "chat_tps_ratio_max": max(ratios),
        "chat_cpu_ratio": statistics.median(
            on / off for off, on in zip(runs["off"]["cpu"], runs["on"]["cpu"], strict=True)
        ),
        "spans_exported": float(sink.spans),
        "chat_spans_exported": float(chat_spans),
        "otlp_posts": float(sink.posts),
        "otlp_bytes": float(sink.bytes),
        "load_avg_1m": os.getloadavg()[0],
    }
    params = {
        "model": settings.models.llm,
        "cheap_requests": cfg.cheap_requests,
        "streams": cfg.streams,
        "max_tokens": cfg.max_tokens,
        "rounds": cfg.rounds,
        "chat_rounds": cfg.chat_rounds,
        "span_names": ",".join(sorted(sink.names)),
        **machine(),
    }
    configs = [Config(n, {"tracing": n == "on"}, per[n]) for n in SERVERS]
    result = BenchResult(
        "tracing", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, configs, files=str(log_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def render_table(m: dict[str, float], cfg: TracingBenchConfig) -> str:
    n = cfg.cheap_requests * cfg.rounds
    return "\n".join(
        [
            "| | tracing off (default) | tracing on, OTLP to a local sink | added / ratio | goal |",
            "|---|---|---|---|---|",
            f"| GET /v1/models p50 ms ({n} requests each) | {m['off_models_p50_ms']:.2f} "
            f"| {m['on_models_p50_ms']:.2f} | +{m['models_p50_added_ms']:.2f} ms | |",
            f"| GET /v1/models p99 ms | {m['off_models_p99_ms']:.2f} "
            f"| {m['on_models_p99_ms']:.2f} | | |",
            f"| chat, {cfg.streams} streams × {cfg.max_tokens} tokens, aggregate tok/s "
            f"(median of {cfg.chat_rounds} rounds) | {m['off_chat_tps']:.1f} | {m['on_chat_tps']:.1f} "
            f"| {m['chat_tps_ratio']:.3f}× (rounds {m['chat_tps_ratio_min']:.3f}–"
            f"{m['chat_tps_ratio_max']:.3f}) | ≥ 0.98× |",
            f"| server CPU ms per generated token (median) | {m['off_chat_cpu_ms_per_token']:.1f} "
            f"| {m['on_chat_cpu_ms_per_token']:.1f} | {m['chat_cpu_ratio']:.3f}× | |",
            f"| spans the sink received (OTLP posts, bytes) | | {m['spans_exported']:.0f} "
            f"({m['otlp_posts']:.0f}, {m['otlp_bytes']:.0f}) | | |",
            f"| of which recorded and exported during the chat rounds | | "
            f"{m['chat_spans_exported']:.0f} | | |",
            f"| load average (1 min) at the end | {m['load_avg_1m']:.1f} | | | |",
        ]
    )
