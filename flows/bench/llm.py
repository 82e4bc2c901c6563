"""LLM quantizations: the registry model as 16-bit float, 8-bit and 4-bit, as MLflow runs.

    impetus bench llm [--model NAME] [--bits 16 --bits 8 --bits 4] [--compare-to RUN_ID|latest]

Each quantization is made by `impetus models quantize` (mlx-lm's convert) when missing, loaded as
stored and measured by pipelines/evaluation/llm.py: perplexity on a held-out text, prompt and
decode tok/s, peak memory, and agreement with the 16-bit model (teacher-forced argmax, and greedy
completions of chat prompts). On a CPU-only host MLX has no fast 16-bit or quantized matmul (the
engine serves float32 there), so the speeds measure MLX's CPU kernels, not what a Mac's GPU does;
the quality metrics hold anywhere.

One MLflow run (experiment `llm-bench`, flows/bench/tracking.py) with a nested run per
quantization; `--compare-to` as in `impetus bench embeddings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config, machine, markdown, plot

if TYPE_CHECKING:
    import numpy as np

    from pipelines.evaluation.llm import Measurement
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

EXPERIMENT = "llm-bench"


@dataclass
class LLMBenchConfig:
    """One `impetus bench llm` run; `quick_config()` is the CI-sized one."""

    model: str | None = None  # a registry LLM; None means `models.llm`
    bits: tuple[int, ...] = (16, 8, 4)  # 16 (the reference) is always measured
    group_size: int = 64
    text: str | None = None  # held-out text file; None: CPython's pydoc topics
    ppl_windows: int = 8
    ppl_length: int = 256
    prompt_tokens: int = 256
    decode_tokens: int = 64
    trials: int = 3
    greedy_prompts: int = 8
    greedy_tokens: int = 32
    compute: str = "auto"  # auto: float32 on a CPU-only host (pipelines/models/loading.py)
    compare_to: str | None = None

    @classmethod
    def quick_config(cls, **kw: Any) -> LLMBenchConfig:
        return cls(
            ppl_windows=1, ppl_length=64, prompt_tokens=32, decode_tokens=4, trials=1,
            greedy_prompts=2, greedy_tokens=4, **kw,
        )  # fmt: skip


@task(name="quantize", cache_policy=NO_CACHE)
def quantize(settings: Settings, model: str, bits: int, group_size: int) -> dict[str, Any]:
    """The registry's `bits` version of `model`, made with mlx-lm's convert if missing."""
    from pipelines.models.store import ModelStore

    entry = ModelStore(settings.models_dir).quantize(model, bits, group_size=group_size)
    return entry.to_dict()


@task(name="measure-llm", cache_policy=NO_CACHE)
def measure_llm(
    path: str, cfg: LLMBenchConfig, windows: np.ndarray | None, text: str
) -> Measurement:
    from pipelines.evaluation import llm as llm_metrics

    return llm_metrics.measure(
        Path(path),
        windows=windows,
        text=text,
        ppl_windows=cfg.ppl_windows,
        ppl_length=cfg.ppl_length,
        prompt_tokens=cfg.prompt_tokens,
        decode_tokens=cfg.decode_tokens,
        trials=cfg.trials,
        prompts=llm_metrics.CHAT_PROMPTS[: cfg.greedy_prompts],
        greedy_tokens=cfg.greedy_tokens,
        compute=cfg.compute,  # type: ignore[arg-type]
    )


LLM_COLUMNS = (
    ("model", "model", "s"),
    ("bits", "bits", "d"),
    ("compute", "computes in", "s"),
    ("size_mb", "size MB", ".0f"),
    ("decode_tps", "decode tok/s", ".1f"),
    ("prompt_tps", "prompt tok/s", ".1f"),
    ("peak_memory_mb", "peak MB", ".0f"),
    ("perplexity", "perplexity", ".3f"),
    ("token_agreement", "top-1 agree", ".3f"),
    ("greedy_agreement", "greedy agree", ".3f"),
)


@flow(name="bench-llm", validate_parameters=False)
def bench_llm(cfg: LLMBenchConfig) -> BenchResult:
    """Decode/prompt speed, memory, perplexity and agreement with 16-bit, per quantization."""
    from flows.bench.tracking import bench_results, log_bench
    from pipelines.evaluation import llm as llm_metrics
    from pipelines.settings import get_settings

    settings = get_settings()
    base = cfg.model or settings.models.llm
    baseline = bench_results(settings, EXPERIMENT, cfg.compare_to)
    bits = [16, *sorted({b for b in cfg.bits if b != 16}, reverse=True)]
    from pipelines.models.loading import resolve_compute

    compute = resolve_compute(cfg.compute)  # type: ignore[arg-type]
    text = llm_metrics.held_out_text(Path(cfg.text) if cfg.text else None)
    entries = [quantize(settings, base, b, cfg.group_size) for b in bits]
    reference = None
    windows = None
    configs: list[Config] = []
    for b, entry in zip(bits, entries, strict=True):
        if windows is None:
            from mlx_lm.utils import load_tokenizer

            windows = llm_metrics.token_windows(
                load_tokenizer(Path(entry["path"])), text, cfg.ppl_windows, cfg.ppl_length
            )
        m = measure_llm(entry["path"], cfg, windows, text)
        if reference is None:
            reference = m
        metrics = m.metrics()
        metrics["token_agreement"] = llm_metrics.token_agreement(reference.argmax, m.argmax)
        metrics["greedy_agreement"] = llm_metrics.greedy_agreement(reference.greedy, m.greedy)
        metrics["size_bytes"] = float(entry["size"])
        key = f"{base}@{b}bit"
        params = {
            "model": entry["name"], "base_model": base, "bits": b,
            "group_size": "" if b == 16 else cfg.group_size, "source": entry["source"],
            "compute": compute,
        }  # fmt: skip
        configs.append(Config(key, params, metrics, {"size_mb": entry["size"] / 1e6}))
        log.info(
            "bench.llm.config",
            config=key,
            ppl=round(m.perplexity, 3),
            decode_tps=round(m.decode_tps, 2),
        )
    assert windows is not None
    rows = [c.row for c in configs]
    table = markdown(rows, LLM_COLUMNS) + (
        f"\n\nperplexity: {windows.shape[0]} windows × {windows.shape[1]} tokens of "
        f"{cfg.text or 'CPython pydoc topics'}; speed: {cfg.prompt_tokens}-token prompt, "
        f"{cfg.decode_tokens} tokens, median of {cfg.trials}; agreement with the 16-bit model: "
        f"teacher-forced top-1, and greedy prefix over {cfg.greedy_prompts} chat prompts × "
        f"{cfg.greedy_tokens} tokens"
    )
    labels = [f"{r['bits']}-bit" for r in rows]
    figure = plot(
        [
            ("decode speed", "tok/s", [("decode", labels, [r["decode_tps"] for r in rows])]),
            ("perplexity", "perplexity", [("ppl", labels, [r["perplexity"] for r in rows])]),
            ("peak memory", "MB", [("peak", labels, [r["peak_memory_mb"] for r in rows])]),
        ],
        "bar",
    )
    params = {
        "base_model": base,
        "bits": ",".join(str(b) for b in bits),
        "group_size": cfg.group_size,
        "compute": compute,
        "text": cfg.text or "pydoc_data.topics",
        "ppl_windows": cfg.ppl_windows,
        "ppl_length": cfg.ppl_length,
        "prompt_tokens": cfg.prompt_tokens,
        "decode_tokens": cfg.decode_tokens,
        "trials": cfg.trials,
        "greedy_prompts": cfg.greedy_prompts,
        "greedy_tokens": cfg.greedy_tokens,
        **machine(),
    }
    result = BenchResult("llm", EXPERIMENT, f"llm {base}", table, params, {}, configs)
    return log_bench(settings, result, figure=figure, baseline=baseline)
