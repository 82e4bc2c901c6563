"""Embedding models × Matryoshka dimensions on a labelled retrieval dataset, as MLflow runs.

    impetus bench embeddings [--model NAME]... [--dims 256,128,64] [--compare-to RUN_ID|latest]

The labelled questions of a retrieval dataset (default data/eval/python-docs.jsonl over the
python-docs subset; data/eval/samples.jsonl over data/samples/ is the small one) against its
corpus, parsed and chunked as ingestion does. Per model the chunks and questions are embedded once
(throughput); per dimension the vectors are truncated and renormalised, written to a Qdrant Edge
collection in a scratch store under data_dir/bench/ (index size on disk after optimising), and the
questions searched dense (latency, hit@k, MRR@10, nDCG@10) and hybrid with BM25.

One MLflow run (experiment `embedding-bench`, flows/bench/tracking.py) with a nested run per
model × dimension, tagged `impetus_config`; the parent holds the table as Markdown, CSV and JSON
and a plot. `--compare-to` reads an earlier run's configurations, prints the deltas
(pipelines/evaluation/regression.py) and makes the command fail when one moved past the
thresholds of settings `bench:`.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config, machine, markdown, plot
from pipelines.errors import ImpetusError
from pipelines.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import numpy as np

    from pipelines.embed.base import Embedder
    from pipelines.evaluation.retrieval import Question
    from pipelines.records import Chunk, ParsedDocument
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

EXPERIMENT = "embedding-bench"
PYTHON_DOCS_DATASET = PROJECT_ROOT / "data" / "eval" / "python-docs.jsonl"
SEARCH_K = 50  # chunks retrieved per question (collapsed to documents, as `impetus eval` does)


class BenchError(ImpetusError):
    """A bench cannot run as asked; the message says why."""


@contextmanager
def _scratch(settings: Settings, name: str) -> Iterator[Path]:
    """A scratch folder under data_dir/bench/ removed afterwards."""
    path = settings.data_dir / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


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
            dataset=str(PROJECT_ROOT / "data" / "eval" / "samples.jsonl"),
            corpus=str(PROJECT_ROOT / "data" / "samples"),
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
    from flows.bench.tracking import bench_results, log_bench
    from pipelines.evaluation import retrieval as evaluate
    from pipelines.settings import get_settings

    settings = get_settings()
    models = cfg.models or (settings.models.embedding,)
    baseline = bench_results(settings, EXPERIMENT, cfg.compare_to)
    questions = evaluate.load_dataset(Path(cfg.dataset))
    corpus = _corpus_for(settings, cfg)
    parsed, failed = parse_corpus(corpus)
    configs: list[Config] = []
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
                configs.append(
                    Config(key, params, metrics, {"index_mb": metrics["index_bytes"] / 1e6})
                )
                log.info(
                    "bench.embeddings.config",
                    config=key,
                    ndcg=round(metrics["dense_ndcg_at_10"], 3),
                )
    rows = [c.row for c in configs]
    table = markdown(rows, EMBED_COLUMNS) + (
        f"\n\n{len(questions)} questions ({Path(cfg.dataset).name}), {len(parsed)} documents, "
        f"{rows[0]['chunks'] if rows else 0} chunks of ≤ {settings.chunking.max_tokens} tokens; "
        f"search: top {SEARCH_K} chunks → documents; hybrid = dense + BM25 (RRF)"
    )

    def by_model(metric: str) -> list[tuple[str, list[Any], list[float]]]:
        return [
            (m, [r["dims"] for r in rows if r["model"] == m], [r[metric] for r in rows if r["model"] == m])
            for m in models
        ]  # fmt: skip

    figure = plot(
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
        **machine(),
    }
    result = BenchResult(
        "embeddings", EXPERIMENT, "embeddings", table, params, {}, configs, notes=notes
    )
    return log_bench(settings, result, figure=figure, baseline=baseline)
