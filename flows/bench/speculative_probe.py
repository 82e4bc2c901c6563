"""The measurement of `impetus bench speculative` (flows/bench/speculative.py), without Prefect,
so that the GPU runner (flows/bench/gpu/runner.py) can run it where Prefect is not installed:

    python -m flows.bench.speculative_probe probe JSON   # {"model", "path", "cfg"} → metrics JSON
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flows.bench.prompts import chat_prompts, rag_prompts

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


def probe(args: dict[str, Any]) -> dict[str, Any]:
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


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "probe":
        print(json.dumps(probe(json.loads(argv[1]))))
    else:
        raise SystemExit("usage: python -m flows.bench.speculative_probe probe JSON")


if __name__ == "__main__":
    main(sys.argv[1:])
