"""Experiments: embedding models × Matryoshka dimensions, and LLM quantizations, as MLflow runs.

    impetus bench embeddings [--model NAME]... [--dims 256,128,64] [--compare-to RUN_ID|latest]
    impetus bench llm [--model NAME] [--bits 16 --bits 8 --bits 4] [--compare-to RUN_ID|latest]

Each bench is a Prefect flow that logs one MLflow run (experiment `embedding-bench` or
`llm-bench`, SQLite store at data_dir/mlflow.db) with one nested run per configuration: its
parameters and metrics, tagged `impetus_config` with the configuration's key. The parent run holds
the result table as Markdown, CSV and JSON and a plot. `--compare-to` reads an earlier run's
configurations, prints the deltas (pipelines/evaluation/regression.py) and makes the command fail when one
moved past the thresholds of settings `bench:`.

Embeddings: the labelled questions of a retrieval dataset (default data/eval/python-docs.jsonl over
the python-docs subset; data/eval/samples.jsonl over data/samples/ is the small one) against its
corpus, parsed and chunked as ingestion does. Per model the chunks and questions are embedded once
(throughput); per dimension the vectors are truncated and renormalised, written to a Qdrant Edge
collection in a scratch store under data_dir/bench/ (index size on disk after optimising), and the
questions searched dense (latency, hit@k, MRR@10, nDCG@10) and hybrid with BM25.

LLM: the registry model (`models.llm`) as 16-bit float, 8-bit and 4-bit, made by
`impetus models quantize` (mlx-lm's convert) when missing, each loaded as stored and measured by
pipelines/evaluation/llm.py: perplexity on a held-out text, prompt and decode tok/s, peak memory, and
agreement with the 16-bit model (teacher-forced argmax, and greedy completions of chat prompts).
On a CPU-only host MLX has no fast 16-bit or quantized matmul (the engine serves float32 there), so
the speeds measure MLX's CPU kernels, not what a Mac's GPU does; the quality metrics hold anywhere.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    import numpy as np

    from pipelines.embed.base import Embedder
    from pipelines.evaluation.llm import Measurement
    from pipelines.evaluation.retrieval import Question
    from pipelines.records import Chunk, ParsedDocument
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

EMBED_EXPERIMENT = "embedding-bench"
LLM_EXPERIMENT = "llm-bench"
PROJECT = Path(__file__).resolve().parents[1]
PYTHON_DOCS_DATASET = PROJECT / "data" / "eval" / "python-docs.jsonl"
SEARCH_K = 50  # chunks retrieved per question (collapsed to documents, as `impetus eval` does)


# -- shared: results, MLflow, comparison ---------------------------------------------------------


@dataclass
class BenchResult:
    """What a bench returns: its table, rows, MLflow run and (with --compare-to) comparison."""

    kind: str
    table: str
    rows: list[dict[str, Any]]
    run_id: str
    artifacts: str
    comparison: str | None = None
    baseline_run_id: str | None = None
    regressions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _markdown(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table of `rows`: columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    rule = "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"
    body = []
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (str(v) if fmt == "s" else format(v, fmt)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def _csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _machine() -> dict[str, Any]:
    """Where the figures come from (a shared, loaded machine gives other numbers)."""
    from pipelines.hardware import detect

    hw = detect()
    return {
        "host": f"{hw.os} {hw.machine} {hw.chip}".strip(),
        "mlx_device": hw.mlx_device,
        "blas": hw.blas,
        "cpu_count": hw.cpu_count,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def _log_bench(
    settings: Settings,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    configs: list[tuple[str, dict[str, Any], dict[str, float]]],
    artifacts: dict[str, str],
    figure: Any,
) -> str:
    """One parent run (params, artifacts, plot) with a nested run per configuration."""
    import mlflow

    from flows.bench.tracking import CONFIG_TAG, ROLE_TAG, use_experiment

    use_experiment(settings, experiment)
    with mlflow.start_run(run_name=run_name, tags={ROLE_TAG: "bench"}) as parent:
        mlflow.log_params({k: str(v) for k, v in params.items()})
        for key, cparams, metrics in configs:
            with mlflow.start_run(run_name=key, nested=True, tags={CONFIG_TAG: key}):
                mlflow.log_params({k: str(v) for k, v in cparams.items()})
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        for name, text in artifacts.items():
            mlflow.log_text(text, name)
        if figure is not None:
            mlflow.log_figure(figure, "results.png")
        return str(parent.info.run_id)


def _compare(
    settings: Settings,
    experiment: str,
    baseline: tuple[str, dict[str, dict[str, float]]] | None,
    configs: list[tuple[str, dict[str, Any], dict[str, float]]],
    result: BenchResult,
) -> None:
    """Fill `result.comparison` from the baseline run and log it on the new run."""
    if baseline is None:
        return
    from pipelines.evaluation import regression

    base_id, base_metrics = baseline
    current = {key: metrics for key, _, metrics in configs}
    deltas, notes = regression.compare(current, base_metrics, settings.bench)
    result.comparison = f"compared with run {base_id}\n\n" + regression.table(deltas, notes)
    result.baseline_run_id = base_id
    result.regressions = sum(d.failed for d in deltas)
    result.notes += notes
    import mlflow

    from flows.bench.tracking import use_experiment

    use_experiment(settings, experiment)
    with mlflow.start_run(run_id=result.run_id):
        mlflow.log_text(result.comparison, "comparison.md")
        mlflow.set_tags({"impetus_baseline": base_id, "impetus_regressions": result.regressions})


def _finish(
    settings: Settings,
    kind: str,
    experiment: str,
    run_name: str,
    params: dict[str, Any],
    configs: list[tuple[str, dict[str, Any], dict[str, float]]],
    rows: list[dict[str, Any]],
    table: str,
    figure: Any,
    baseline: tuple[str, dict[str, dict[str, float]]] | None,
    notes: list[str] | None = None,
) -> BenchResult:
    """Log the bench (table as Markdown, CSV and JSON, the plot), then compare with `baseline`."""
    artifacts = {
        "results.md": table,
        "results.csv": _csv(rows),
        "results.json": json.dumps(rows, indent=2),
    }
    run_id = _log_bench(settings, experiment, run_name, params, configs, artifacts, figure)
    result = BenchResult(
        kind, table, rows, run_id, str(settings.data_dir / "mlartifacts"), notes=notes or []
    )
    _compare(settings, experiment, baseline, configs, result)
    return result


def _baseline(
    settings: Settings, experiment: str, compare_to: str | None
) -> tuple[str, dict[str, dict[str, float]]] | None:
    """The baseline run, read before the bench starts so that a wrong id fails at once."""
    if compare_to is None:
        return None
    from flows.bench.tracking import bench_results

    return bench_results(settings, experiment, compare_to)


def _figure(
    panels: list[tuple[str, str, list[tuple[str, list[Any], list[float]]]]], kind: str
) -> Any:
    """A row of line/bar plots: each panel is (title, y label, [(series, xs, ys)])."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, ylabel, series) in zip(axes[0], panels, strict=True):
        for name, xs, ys in series:
            if kind == "line":
                ax.plot(xs, ys, marker="o", label=name)
            else:
                ax.bar([str(x) for x in xs], ys, label=name)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if kind == "line" and len(series) > 1:
            ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


@contextmanager
def _scratch(settings: Settings, name: str) -> Iterator[Path]:
    """A scratch folder under data_dir/bench/ removed afterwards."""
    path = settings.data_dir / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- embeddings ----------------------------------------------------------------------------------


@dataclass
class EmbeddingBenchConfig:
    """One `impetus bench embeddings` run; `quick_config()` is the CI-sized one."""

    models: tuple[str, ...] = ()  # registry embedding models; () means `models.embedding`
    dims: tuple[int, ...] = (0, 256, 128, 64)  # 0 means the model's full dimension
    dataset: str = str(PYTHON_DOCS_DATASET)
    corpus: str | None = None  # None: the python-docs subset (for the python-docs dataset)
    compare_to: str | None = None

    @classmethod
    def quick_config(cls, **kw: Any) -> EmbeddingBenchConfig:
        return cls(
            dims=(0, 128),
            dataset=str(PROJECT / "data" / "eval" / "samples.jsonl"),
            corpus=str(PROJECT / "data" / "samples"),
            **kw,
        )


@task(name="parse-corpus", cache_policy=NO_CACHE)
def parse_corpus(corpus: str) -> tuple[list[ParsedDocument], list[str]]:
    """Every document of the corpus parsed as ingestion parses it; failures are listed."""
    from pipelines.discover import discover_documents
    from pipelines.parse import parse_document

    found = discover_documents([corpus])
    parsed, failed = [], [f"{d.source}: {why}" for d, why in found.unreadable]
    for i, doc in enumerate(found.documents, 1):
        try:
            parsed.append(parse_document(doc))
        except Exception as exc:  # a document that fails is left out, as ingestion quarantines it
            failed.append(f"{doc.source}: {type(exc).__name__}: {exc}")
        if i % 50 == 0 or i == len(found.documents):
            log.info("bench.parse", done=i, total=len(found.documents))
    if not parsed:
        raise BenchError(f"no document of {corpus} could be parsed ({len(failed)} failed)")
    return parsed, failed


@task(name="chunk-and-embed", cache_policy=NO_CACHE)
def chunk_and_embed(
    settings: Settings, model: str, parsed: list[ParsedDocument], questions: list[Question]
) -> dict[str, Any]:
    """The corpus's chunks for `model`'s tokenizer, their vectors and the questions' vectors,
    with the embedding throughput (chunks/s and tokens/s, load excluded)."""
    from pipelines.chunk import chunk_document
    from pipelines.embed.dispatch import load_embedder

    embedder: Embedder = load_embedder(settings, model)
    chunks: list[Chunk] = []
    for p in parsed:
        chunks += chunk_document(p, embedder, settings, f"bench-{model}")
    texts = [c.text for c in chunks]
    batch = settings.embedding.batch_size
    step = batch * 8
    parts, tokens = [], 0
    t0 = time.perf_counter()
    for s in range(0, len(texts), step):
        out = embedder.encode(texts[s : s + step], batch_size=batch)
        parts.append(out.vectors)
        tokens += sum(out.token_counts)
        log.info("bench.embed", model=model, done=min(s + step, len(texts)), total=len(texts))
    seconds = time.perf_counter() - t0
    import numpy as np

    queries = embedder.encode([q.q for q in questions], batch_size=batch).vectors
    return {
        "chunks": chunks,
        "vectors": np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32),
        "queries": queries,
        "dim": embedder.dim,
        "backend": embedder.backend,
        "embed_chunks_per_s": len(texts) / seconds if seconds else 0.0,
        "embed_tokens_per_s": tokens / seconds if seconds else 0.0,
    }


@task(name="score-dimension", cache_policy=NO_CACHE)
def score_dimension(
    settings: Settings,
    scratch: Path,
    name: str,
    chunks: list[Chunk],
    vectors: np.ndarray,
    queries: np.ndarray,
    questions: list[Question],
    dim: int,
) -> dict[str, float]:
    """Index the vectors truncated to `dim` in a scratch collection; search every question."""
    from pipelines.embed.base import truncate_dims
    from pipelines.evaluation import retrieval as evaluate
    from pipelines.retrieve import Retriever
    from pipelines.vectorstore import upsert_chunks
    from pipelines.vectorstore.qdrant_edge import EdgeStore

    docs_vectors, query_vectors = truncate_dims(vectors, dim), truncate_dims(queries, dim)
    with EdgeStore(scratch / "vectors") as store:
        store.ensure_collection(name, dim)
        for s in range(0, len(chunks), 256):
            upsert_chunks(store, name, chunks[s : s + 256], docs_vectors[s : s + 256], "bench")
        store.optimize(name)
        # Allocated blocks, as `du` counts them: Qdrant preallocates sparse files (WAL, mmaps).
        index_bytes = sum(
            p.stat().st_blocks * 512
            for p in (scratch / "vectors" / "collections" / name).rglob("*")
            if p.is_file()
        )
        retriever = Retriever(store, settings.rag, data_dir=scratch)
        retriever.build_sparse_index(name)
        rows: dict[str, list[dict[str, float]]] = {"dense": [], "hybrid": []}
        latencies = []
        warm = query_vectors[0]
        retriever.search(questions[0].q, collection=name, k=SEARCH_K, mode="dense", vector=warm)
        for q, vec in zip(questions, query_vectors, strict=True):
            t0 = time.perf_counter()
            hits = retriever.search(q.q, collection=name, k=SEARCH_K, mode="dense", vector=vec)
            latencies.append((time.perf_counter() - t0) * 1000)
            rows["dense"].append(
                evaluate.score(evaluate.ranked_documents(h.source for h in hits), q.sources)
            )
            hits = retriever.search(q.q, collection=name, k=SEARCH_K, mode="hybrid", vector=vec)
            rows["hybrid"].append(
                evaluate.score(evaluate.ranked_documents(h.source for h in hits), q.sources)
            )
        store.drop_collection(name)
    out: dict[str, float] = {}
    for mode, scored in rows.items():
        for metric, value in evaluate.mean(scored).items():
            out[f"{mode}_{metric.replace('@', '_at_')}"] = value
    latencies.sort()
    out["dense_query_p50_ms"] = statistics.median(latencies)
    out["dense_query_p95_ms"] = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
    out["index_bytes"] = float(index_bytes)
    out["vector_bytes"] = float(docs_vectors.nbytes)
    return out


class BenchError(ImpetusError):
    """A bench cannot run as asked; the message says why."""


def _corpus_for(settings: Settings, cfg: EmbeddingBenchConfig) -> str:
    if cfg.corpus is not None:
        return cfg.corpus
    if Path(cfg.dataset).resolve() != PYTHON_DOCS_DATASET:
        raise BenchError(f"--corpus is needed with --dataset {cfg.dataset}")
    from pipelines.corpora import python_docs, python_docs_subset

    python_docs(settings.data_dir)
    return str(python_docs_subset(settings.data_dir))


EMBED_COLUMNS = (
    ("model", "model", "s"),
    ("dims", "dims", "d"),
    ("dense_ndcg_at_10", "dense nDCG@10", ".3f"),
    ("dense_hit_at_1", "dense hit@1", ".3f"),
    ("dense_mrr_at_10", "dense MRR@10", ".3f"),
    ("hybrid_ndcg_at_10", "hybrid nDCG@10", ".3f"),
    ("embed_chunks_per_s", "chunks/s", ".1f"),
    ("index_mb", "index MB", ".2f"),
    ("dense_query_p50_ms", "query p50 ms", ".2f"),
    ("dense_query_p95_ms", "query p95 ms", ".2f"),
)


@flow(name="bench-embeddings", validate_parameters=False)
def bench_embeddings(cfg: EmbeddingBenchConfig) -> BenchResult:
    """Retrieval quality, throughput, index size and query latency per model × dimension."""
    from pipelines.evaluation import retrieval as evaluate
    from pipelines.settings import get_settings

    settings = get_settings()
    models = cfg.models or (settings.models.embedding,)
    baseline = _baseline(settings, EMBED_EXPERIMENT, cfg.compare_to)
    questions = evaluate.load_dataset(Path(cfg.dataset))
    corpus = _corpus_for(settings, cfg)
    parsed, failed = parse_corpus(corpus)
    configs: list[tuple[str, dict[str, Any], dict[str, float]]] = []
    rows: list[dict[str, Any]] = []
    notes = [f"left out (could not be parsed): {f}" for f in failed]
    with _scratch(settings, "embeddings") as scratch:
        for m_i, model in enumerate(models):
            emb = chunk_and_embed(settings, model, parsed, questions)
            dims = sorted(
                {emb["dim"] if d in (0, None) or d >= emb["dim"] else d for d in cfg.dims},
                reverse=True,
            )
            notes += [
                f"{model}: {d} dims > its {emb['dim']}; measured at {emb['dim']}"
                for d in cfg.dims
                if d > emb["dim"]
            ]
            for dim in dims:
                metrics = score_dimension(
                    settings, scratch, f"m{m_i}_d{dim}", emb["chunks"], emb["vectors"],
                    emb["queries"], questions, dim,
                )  # fmt: skip
                metrics["embed_chunks_per_s"] = emb["embed_chunks_per_s"]
                metrics["embed_tokens_per_s"] = emb["embed_tokens_per_s"]
                key = f"{model}@{dim}"
                params = {"model": model, "dims": dim, "full_dims": emb["dim"], "backend": emb["backend"], "chunks": len(emb["chunks"])}  # fmt: skip
                configs.append((key, params, metrics))
                rows.append({**params, **metrics, "index_mb": metrics["index_bytes"] / 1e6})
                log.info(
                    "bench.embeddings.config",
                    config=key,
                    ndcg=round(metrics["dense_ndcg_at_10"], 3),
                )
    table = _markdown(rows, EMBED_COLUMNS) + (
        f"\n\n{len(questions)} questions ({Path(cfg.dataset).name}), {len(parsed)} documents, "
        f"{rows[0]['chunks'] if rows else 0} chunks of ≤ {settings.chunking.max_tokens} tokens; "
        f"search: top {SEARCH_K} chunks → documents; hybrid = dense + BM25 (RRF)"
    )

    def by_model(metric: str) -> list[tuple[str, list[Any], list[float]]]:
        return [
            (m, [r["dims"] for r in rows if r["model"] == m], [r[metric] for r in rows if r["model"] == m])
            for m in models
        ]  # fmt: skip

    figure = _figure(
        [
            ("dense nDCG@10 by dimensions", "nDCG@10", by_model("dense_ndcg_at_10")),
            ("index size", "MB", by_model("index_mb")),
            ("dense query latency p50", "ms", by_model("dense_query_p50_ms")),
        ],
        "line",
    )
    params = {
        "dataset": cfg.dataset,
        "corpus": corpus,
        "questions": len(questions),
        "documents": len(parsed),
        "documents_failed": len(failed),
        "models": ",".join(models),
        "dims": ",".join(str(d) for d in cfg.dims),
        "chunk_max_tokens": settings.chunking.max_tokens,
        "chunk_overlap_tokens": settings.chunking.overlap_tokens,
        "search_k": SEARCH_K,
        **_machine(),
    }
    return _finish(
        settings, "embeddings", EMBED_EXPERIMENT, "embeddings", params, configs, rows, table,
        figure, baseline, notes,
    )  # fmt: skip


# -- LLM quantizations ---------------------------------------------------------------------------


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
    from pipelines.evaluation import llm as llm_metrics
    from pipelines.settings import get_settings

    settings = get_settings()
    base = cfg.model or settings.models.llm
    baseline = _baseline(settings, LLM_EXPERIMENT, cfg.compare_to)
    bits = [16, *sorted({b for b in cfg.bits if b != 16}, reverse=True)]
    from pipelines.models.loading import resolve_compute

    compute = resolve_compute(cfg.compute)  # type: ignore[arg-type]
    text = llm_metrics.held_out_text(Path(cfg.text) if cfg.text else None)
    entries = [quantize(settings, base, b, cfg.group_size) for b in bits]
    reference = None
    windows = None
    configs: list[tuple[str, dict[str, Any], dict[str, float]]] = []
    rows: list[dict[str, Any]] = []
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
        configs.append((key, params, metrics))
        rows.append({**params, **metrics, "size_mb": entry["size"] / 1e6})
        log.info(
            "bench.llm.config",
            config=key,
            ppl=round(m.perplexity, 3),
            decode_tps=round(m.decode_tps, 2),
        )
    assert windows is not None
    table = _markdown(rows, LLM_COLUMNS) + (
        f"\n\nperplexity: {windows.shape[0]} windows × {windows.shape[1]} tokens of "
        f"{cfg.text or 'CPython pydoc topics'}; speed: {cfg.prompt_tokens}-token prompt, "
        f"{cfg.decode_tokens} tokens, median of {cfg.trials}; agreement with the 16-bit model: "
        f"teacher-forced top-1, and greedy prefix over {cfg.greedy_prompts} chat prompts × "
        f"{cfg.greedy_tokens} tokens"
    )
    labels = [f"{r['bits']}-bit" for r in rows]
    figure = _figure(
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
        **_machine(),
    }
    return _finish(
        settings, "llm", LLM_EXPERIMENT, f"llm {base}", params, configs, rows, table, figure,
        baseline,
    )  # fmt: skip
