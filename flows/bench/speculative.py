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

The measurement itself is flows/bench/speculative_probe.py (no Prefect: the GPU runner uses it too).
One MLflow run (experiment `speculative-bench`, flows/bench/tracking.py) holds the metrics, the
machine's load average and the table, with a nested run for each of chat, rag and streams.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from flows.bench.results import BenchResult, split_by_prefix
from flows.bench.speculative_probe import SpecBenchConfig

EXPERIMENT = "speculative-bench"


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
    metrics: dict[str, float] = run_probe(
        settings, "flows.bench.speculative_probe", "probe", args, 3600
    )
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
