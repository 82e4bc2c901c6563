"""The speculative-decoding benchmark: prompt lookup (serving/engine/speculative.py) on vs off.

    impetus bench speculative          # 6 chat and 6 RAG prompts, 80 tokens; 16 streams, 2 rounds
    impetus bench speculative --quick  # CI-sized: 1 + 1 prompts, 12 tokens; 2 streams, 1 round

One MLX engine on the registry's `models.llm`, in a fresh process with the bench's BLAS (as
`impetus bench serving`'s decode probe), prefix cache off so that every run prefills alike; greedy
decoding, every request once with `speculative: "off"` and once with `"auto"`, back to back:
- single-stream decode tok/s (tokens after the first ÷ time from the first to the last) on chat
  prompts and on RAG prompts (a paragraph of data/samples as the context and a question whose
  grounded answer copies it), pooled over the prompts, and the median of the paired ratios;
  acceptance rate and tokens per verify step from the engine's `EngineStats`; whether the outputs
  were identical (they must be: greedy);
- aggregate tok/s of `streams` concurrent requests, off vs auto: with more than one sequence live
  the engine stays in the batch, so this measures that speculation costs the batch nothing.
Goals (issue 17): RAG single-stream ≥ 1.5×, 16 streams ≥ 1.0×.

One MLflow run (experiment `speculative-bench`, flows/bench/tracking.py) holds the metrics, the
machine's load average and the table, with a nested run for each of chat, rag and streams.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from prefect import flow

from flows.bench.prompts import chat_prompts, rag_prompts
from flows.bench.results import BenchResult, split_by_prefix

EXPERIMENT = "speculative-bench"
SPECS: tuple[Literal["off"], Literal["auto"]] = ("off", "auto")


@dataclass
class SpecBenchConfig:
    prompts: int = 6  # of each kind, chat and RAG
    max_tokens: int = 80
    streams: int = 16
    stream_tokens: int = 48
    rounds: int = 2  # off/auto pairs of the streams burst
    quick: bool = False

    @classmethod
    def quick_config(cls) -> SpecBenchConfig:
        return cls(prompts=1, max_tokens=12, streams=2, stream_tokens=8, rounds=1, quick=True)


# -- the probe (a fresh process) -----------------------------------------------------------------


def _probe(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess: one engine, the single-stream pairs, then the streams pairs."""
    from serving.engine.mlx_engine import MLXEngine

    cfg = SpecBenchConfig(**args["cfg"])
    engine = MLXEngine.load(Path(args["path"]), args["model"], prefix_cache_bytes=0)
    out: dict[str, Any] = {}
    try:
        asyncio.run(_generate(engine, chat_prompts(1)[0], "auto", 8))  # warm-up
        for kind, prompts in (
            ("chat", chat_prompts(cfg.prompts)),
            ("rag", rag_prompts(cfg.prompts)),
        ):
            out.update(_single_stream(engine, kind, prompts, cfg.max_tokens))
        out.update(_streams(engine, cfg))
    finally:
        asyncio.run(engine.close())
    return out


async def _generate(
    engine: Any, messages: list[dict[str, str]], spec: Literal["auto", "off"], max_tokens: int
) -> tuple[list[int], int, float]:
    """(tokens, completion tokens, seconds from the first token to the last)."""
    from serving.engine.base import GenerationRequest, SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, speculative=spec)
    request = GenerationRequest(f"bench-{time.time_ns()}", messages=messages, params=params)
    tokens: list[int] = []
    first = last = 0.0
    async for delta in engine.generate(request):
        if delta.token_ids:
            last = time.perf_counter()
            first = first or last
            tokens += delta.token_ids
    return tokens, len(tokens), last - first


def _single_stream(
    engine: Any, kind: str, prompts: list[list[dict[str, str]]], max_tokens: int
) -> dict[str, float]:
    totals = {"off": [0, 0.0], "auto": [0, 0.0]}
    ratios: list[float] = []
    mismatches = 0
    before = engine.stats()
    for messages in prompts:
        runs = {}
        for spec in SPECS:
            tokens, n, seconds = asyncio.run(_generate(engine, messages, spec, max_tokens))
            runs[spec] = (tokens, (n - 1) / seconds if seconds > 0 else float("nan"))
            totals[spec][0] += n - 1
            totals[spec][1] += seconds
        mismatches += runs["off"][0] != runs["auto"][0]
        ratios.append(runs["auto"][1] / runs["off"][1])
    after = engine.stats()
    drafted = after.speculative_drafted_tokens - before.speculative_drafted_tokens
    steps = after.speculative_steps - before.speculative_steps
    return {
        f"{kind}_tps_off": totals["off"][0] / totals["off"][1],
        f"{kind}_tps_auto": totals["auto"][0] / totals["auto"][1],
        f"{kind}_speedup": (totals["auto"][0] / totals["auto"][1])
        / (totals["off"][0] / totals["off"][1]),
        f"{kind}_speedup_median": statistics.median(ratios),
        f"{kind}_acceptance": (
            (after.speculative_accepted_tokens - before.speculative_accepted_tokens) / drafted
            if drafted
            else 0.0
        ),
        f"{kind}_tokens_per_step": (
            (after.speculative_emitted_tokens - before.speculative_emitted_tokens) / steps
            if steps
            else 0.0
        ),
        f"{kind}_greedy_mismatches": float(mismatches),
    }


def _streams(engine: Any, cfg: SpecBenchConfig) -> dict[str, float]:
    """Aggregate tok/s of `cfg.streams` concurrent requests (chat and RAG alternating)."""
    chats, rags = chat_prompts(cfg.streams), rag_prompts(cfg.streams)
    prompts = [rags[i] if i % 2 else chats[i] for i in range(cfg.streams)]

    async def burst(spec: Literal["auto", "off"]) -> float:
        started = time.perf_counter()
        done = await asyncio.gather(
            *(_generate(engine, p, spec, cfg.stream_tokens) for p in prompts)
        )
        return sum(n for _, n, _ in done) / (time.perf_counter() - started)

    tps: dict[str, list[float]] = {"off": [], "auto": []}
    for i in range(cfg.rounds):
        for spec in SPECS if i % 2 == 0 else SPECS[::-1]:
            tps[spec].append(asyncio.run(burst(spec)))
    pairs = zip(tps["off"], tps["auto"], strict=True)
    return {
        "streams_tps_off": statistics.median(tps["off"]),
        "streams_tps_auto": statistics.median(tps["auto"]),
        "streams_ratio": statistics.median(a / o for o, a in pairs),
    }


# -- the flow ------------------------------------------------------------------------------------


@flow(name="bench-speculative", log_prints=False)
def bench_speculative(cfg: SpecBenchConfig | None = None) -> BenchResult:
    """Measure in a fresh process, log one MLflow run, return the metrics and the table."""
    import os

    from flows.bench.results import machine
    from flows.bench.server import run_probe
    from flows.bench.tracking import log_bench
    from pipelines.models.store import ModelStore
    from pipelines.settings import get_settings

    cfg = cfg or SpecBenchConfig()
    settings = get_settings()
    model_path = ModelStore(settings.models_dir).resolve(settings.models.llm)
    args = {"model": settings.models.llm, "path": str(model_path), "cfg": asdict(cfg)}
    metrics: dict[str, float] = run_probe(settings, "flows.bench.speculative", "probe", args, 3600)
    metrics["load_avg_1m"] = os.getloadavg()[0]
    params = {**asdict(cfg), "model": settings.models.llm, **machine()}
    result = BenchResult(
        "speculative", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, split_by_prefix(metrics, ["chat", "rag", "streams"]),
    )  # fmt: skip
    return log_bench(settings, result)


def render_table(m: dict[str, float], cfg: SpecBenchConfig) -> str:
    rows = [
        f"| greedy, {cfg.prompts} prompts each | off tok/s | auto tok/s | auto / off "
        "(pooled; median of pairs) | acceptance | tokens per step | outputs differ |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, label in (("chat", "chat, single stream"), ("rag", "RAG, single stream")):
        rows.append(
            f"| {label}, {cfg.max_tokens} tokens | {m[f'{kind}_tps_off']:.1f} "
            f"| {m[f'{kind}_tps_auto']:.1f} | {m[f'{kind}_speedup']:.2f}× "
            f"({m[f'{kind}_speedup_median']:.2f}×) | {m[f'{kind}_acceptance']:.2f} "
            f"| {m[f'{kind}_tokens_per_step']:.2f} | {m[f'{kind}_greedy_mismatches']:.0f} |"
        )
    rows.append(
        f"| {cfg.streams} streams, {cfg.stream_tokens} tokens, aggregate "
        f"| {m['streams_tps_off']:.1f} | {m['streams_tps_auto']:.1f} "
        f"| {m['streams_ratio']:.2f}× (median of {cfg.rounds} pairs) | | | |"
    )
    rows.append(f"| load average (1 min) at the end | {m['load_avg_1m']:.1f} | | | | | |")
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "probe":
        print(json.dumps(_probe(json.loads(argv[1]))))
    else:
        raise SystemExit("usage: python -m flows.bench.speculative probe JSON")


if __name__ == "__main__":
    main(sys.argv[1:])
