"""The structured-output benchmark: what constrained decoding costs the continuous batch.

    impetus bench structured          # 8 streams, 2 rounds, 4 repetitions
    impetus bench structured --quick  # CI-sized

One `impetus serve` (the registry's `models.llm`, OpenBLAS preloaded as in `impetus bench
serving`), 8 concurrent streams that each send requests back to back, measured twice,
interleaved: with none constrained, and with half of them constrained to a JSON schema
(`response_format`). Goal: aggregate tok/s with half constrained ≥ 0.9× none constrained.

So that the comparison measures the grammar and nothing else, every request generates exactly
`max_tokens` tokens in both runs: the free requests ask for a long story, the constrained ones a
schema whose shortest valid document is longer than `max_tokens` (an array of at least 40
strings), so each ends by length, with the same number of prefills and decode steps.

One MLflow run (experiment `structured-bench`, flows/bench/tracking.py) holds the metrics, the
machine's load average and the table, with a nested run for each of none and half constrained.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.load import burst
from flows.bench.results import BenchResult, Config
from flows.bench.server import cpu_seconds

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "structured-bench"
REQUEST_TIMEOUT_S = 600.0

LONG_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "genre": {"enum": ["fable", "mystery", "adventure"]},
        "lines": {"type": "array", "items": {"type": "string", "maxLength": 80}, "minItems": 40},
    },
    "required": ["title", "genre", "lines"],
    "additionalProperties": False,
}
TOPICS = (
    "a lighthouse keeper", "the first snow", "a lost key", "a robot gardener", "an old map",
    "a night train", "a quiet library", "a stubborn goat",
)  # fmt: skip


@dataclass
class StructuredBenchConfig:
    streams: int = 8
    constrained: int = 4  # of the streams, in the "half" run
    max_tokens: int = 64
    rounds: int = 2  # requests each stream sends back to back, per run
    repeats: int = 4  # none/half pairs, interleaved; medians are reported
    quick: bool = False

    @classmethod
    def quick_config(cls) -> StructuredBenchConfig:
        return cls(max_tokens=16, rounds=1, repeats=1, quick=True)


def _body(i: int, constrained: bool, max_tokens: int) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": f"Write a long story about {topic}."}],
        "max_tokens": max_tokens,
        "temperature": 0.0,
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "story", "schema": LONG_SCHEMA},
        }
    return body


async def _run(server: Server, constrained: int, cfg: StructuredBenchConfig) -> dict[str, float]:
    """`cfg.streams` streams, the first `constrained` of them with a response_format."""
    streams = [[_body(i, i < constrained, cfg.max_tokens)] * cfg.rounds for i in range(cfg.streams)]
    cpu0 = cpu_seconds(server.proc.pid)
    b = await burst(server, streams, timeout_s=REQUEST_TIMEOUT_S)
    cpu = cpu_seconds(server.proc.pid) - cpu0
    if b.errors:
        raise RuntimeError(f"{b.errors} requests failed ({b.error_kinds}); see {server.log}")
    return {
        "tps": b.tps,
        "tokens_per_cpu_s": b.completion_tokens / cpu if cpu > 0 else float("nan"),
        "tokens": b.completion_tokens,
        "constrained_tokens": sum(b.stream_tokens[:constrained]),
        "wall_s": b.wall_s,
        "server_cpu_s": cpu,
    }


@task(cache_policy=NO_CACHE)
def measure(server: Server, cfg: StructuredBenchConfig) -> dict[str, list[dict[str, float]]]:
    """Warm up, then `repeats` pairs of (none, half) constrained runs, interleaved."""
    warm = StructuredBenchConfig(streams=2, constrained=1, max_tokens=8, rounds=1)
    asyncio.run(_run(server, 1, warm))
    runs: dict[str, list[dict[str, float]]] = {"none": [], "half": []}
    for _ in range(cfg.repeats):
        runs["none"].append(asyncio.run(_run(server, 0, cfg)))
        runs["half"].append(asyncio.run(_run(server, cfg.constrained, cfg)))
    return runs


@flow(name="bench-structured", log_prints=False)
def bench_structured(cfg: StructuredBenchConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or StructuredBenchConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("structured-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    with impetus_serve(settings, log_dir) as server:
        runs = measure(server, cfg)
    pairs = list(zip(runs["none"], runs["half"], strict=True))
    metrics = {
        "tps_none_constrained": statistics.median(r["tps"] for r in runs["none"]),
        "tps_half_constrained": statistics.median(r["tps"] for r in runs["half"]),
        # each repetition's half/none pair ran back to back: the median of their ratios
        "ratio": statistics.median(h["tps"] / n["tps"] for n, h in pairs),
        "cpu_tokens_per_s_none": statistics.median(r["tokens_per_cpu_s"] for r in runs["none"]),
        "cpu_tokens_per_s_half": statistics.median(r["tokens_per_cpu_s"] for r in runs["half"]),
        "cpu_ratio": statistics.median(
            h["tokens_per_cpu_s"] / n["tokens_per_cpu_s"] for n, h in pairs
        ),
        "tokens_per_run": statistics.median(r["tokens"] for r in runs["none"] + runs["half"]),
        "load_avg_1m": os.getloadavg()[0],
    }
    params = {
        "model": settings.models.llm,
        "streams": cfg.streams,
        "constrained": cfg.constrained,
        "max_tokens": cfg.max_tokens,
        "rounds": cfg.rounds,
        "repeats": cfg.repeats,
        "grammar_library": "llguidance",
        **machine(),
    }
    configs = [
        Config(kind, {"constrained": n}, {k: statistics.median(r[k] for r in runs[kind]) for k in runs[kind][0]})
        for kind, n in (("none", 0), ("half", cfg.constrained))
    ]  # fmt: skip
    result = BenchResult(
        "structured", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, configs, files=str(log_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def render_table(m: dict[str, float], cfg: StructuredBenchConfig) -> str:
    return "\n".join(
        [
            f"| {cfg.streams} concurrent streams, {cfg.max_tokens} tokens each, greedy "
            "| aggregate tok/s (wall) | tokens per server CPU-second |",
            "|---|---|---|",
            f"| none constrained | {m['tps_none_constrained']:.1f} "
            f"| {m['cpu_tokens_per_s_none']:.1f} |",
            f"| {cfg.constrained} of {cfg.streams} constrained (JSON schema) "
            f"| {m['tps_half_constrained']:.1f} | {m['cpu_tokens_per_s_half']:.1f} |",
            f"| half / none, median of paired runs (goal ≥ 0.9×) | {m['ratio']:.2f}× "
            f"| {m['cpu_ratio']:.2f}× |",
            f"| load average (1 min) at the end | {m['load_avg_1m']:.1f} | |",
        ]
    )
