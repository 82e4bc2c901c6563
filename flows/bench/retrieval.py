"""Search latency on the embedded store: dense, sparse and hybrid over 100k synthetic chunks.

    impetus bench retrieval                  # 100k chunks, 300 queries per mode
    impetus bench retrieval --chunks 10000   # smaller

Chunks are random unit vectors (the embedding model's dimension) with texts of Zipf-distributed
words from a synthetic vocabulary, written to a fresh Qdrant Edge store under
data_dir/bench/retrieval (removed afterwards) and optimized (HNSW) as the ingest flow does; no model runs, so the numbers are the store's and
the BM25 index's. Query vectors are given, as the server has them after embedding the question
(the embedding itself is reported apart: one MiniLM query on this machine). Latencies are
per-query wall times in this process after a warm-up; p50/p95 go to MLflow (experiment
`retrieval-bench`, a nested run per mode) with the table.
"""

from __future__ import annotations

import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, split_by_prefix

EXPERIMENT = "retrieval-bench"
MODES = ("dense", "sparse", "hybrid")


@dataclass
class RetrievalBenchConfig:
    chunks: int = 100_000
    dim: int = 384
    words_per_chunk: int = 120
    vocabulary: int = 30_000
    queries: int = 300
    words_per_query: int = 4
    k: int = 10
    seed: int = 0


def _vocab(n: int) -> list[str]:
    rng = np.random.default_rng(1)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    return ["".join(rng.choice(letters, size=int(rng.integers(3, 10)))) for _ in range(n)]


def _zipf_words(rng: np.random.Generator, vocab: list[str], n: int) -> list[str]:
    ranks = np.minimum(rng.zipf(1.1, size=n), len(vocab)) - 1
    return [vocab[int(r)] for r in ranks]


@task(name="build-synthetic-store", cache_policy=NO_CACHE)
def build_store(cfg: RetrievalBenchConfig, root: Any) -> dict[str, float]:
    """Write the synthetic chunks; returns the seconds spent writing."""
    from pipelines.vectorstore import PointRecord
    from pipelines.vectorstore.qdrant_edge import EdgeStore

    rng = np.random.default_rng(cfg.seed)
    vocab = _vocab(cfg.vocabulary)
    t0 = time.perf_counter()
    with EdgeStore(root) as store:
        store.ensure_collection("bench", cfg.dim)
        batch = 2048
        for start in range(0, cfg.chunks, batch):
            n = min(batch, cfg.chunks - start)
            vecs = rng.standard_normal((n, cfg.dim)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            points = []
            for i in range(n):
                cid = f"00000000-0000-4000-8000-{start + i:012d}"
                text = " ".join(_zipf_words(rng, vocab, cfg.words_per_chunk))
                payload = {"chunk_id": cid, "doc_id": f"d{(start + i) // 20}",
                           "source": f"/synthetic/doc{(start + i) // 20}.txt", "text": text}  # fmt: skip
                points.append(PointRecord(cid, vecs[i], payload))
            store.upsert("bench", points)
    return {"write_s": time.perf_counter() - t0}


def _percentiles(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=20)
    return statistics.median(samples), qs[18]


@task(name="measure-search", cache_policy=NO_CACHE)
def measure(cfg: RetrievalBenchConfig, root: Any) -> dict[str, float]:
    """p50/p95 per mode, plus the one-time BM25 build and the store's open."""
    from pipelines.retrieve import Retriever
    from pipelines.settings import RagSettings
    from pipelines.vectorstore.qdrant_edge import EdgeStore

    rng = np.random.default_rng(cfg.seed + 1)
    vocab = _vocab(cfg.vocabulary)
    queries = [" ".join(_zipf_words(rng, vocab, cfg.words_per_query)) for _ in range(cfg.queries)]
    vecs = rng.standard_normal((cfg.queries, cfg.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    store = EdgeStore(root)
    try:
        retriever = Retriever(store, RagSettings(), data_dir=root)
        out["open_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.optimize("bench")  # what the ingest flow does after a run: the HNSW index
        out["optimize_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        retriever.build_sparse_index("bench")
        out["bm25_build_s"] = time.perf_counter() - t0
        for mode in ("dense", "sparse", "hybrid"):
            for q, v in zip(queries[:20], vecs[:20], strict=True):  # warm-up
                retriever.search(q, collection="bench", k=cfg.k, mode=mode, vector=v)
            times = []
            for q, v in zip(queries, vecs, strict=True):
                t = time.perf_counter()
                retriever.search(q, collection="bench", k=cfg.k, mode=mode, vector=v)
                times.append((time.perf_counter() - t) * 1000)
            out[f"{mode}_p50_ms"], out[f"{mode}_p95_ms"] = _percentiles(times)
    finally:
        store.close()
    return out


def _query_embedding_ms() -> float | None:
    """One query through the default embedder (what the server adds before a search)."""
    try:
        from pipelines.embed.dispatch import load_embedder
        from pipelines.settings import get_settings

        emb = load_embedder(get_settings())
    except Exception:
        return None
    emb.encode(["warm up"])
    times = []
    for i in range(20):
        t = time.perf_counter()
        emb.encode([f"how do I create a temporary directory {i}"])
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _table(cfg: RetrievalBenchConfig, m: dict[str, float]) -> str:
    rows = [
        f"Search over {cfg.chunks:,} chunks ({cfg.dim}-d, Qdrant Edge, BM25 in numpy), "
        f"k={cfg.k}, {cfg.queries} queries per mode",
        "",
        "| mode | p50 ms | p95 ms | goal |",
        "|---|---:|---:|---|",
    ]
    for mode in ("dense", "sparse", "hybrid"):
        goal = "p50 < 20 ms" if mode == "hybrid" else ""
        rows.append(f"| {mode} | {m[f'{mode}_p50_ms']:.2f} | {m[f'{mode}_p95_ms']:.2f} | {goal} |")
    rows.append("")
    rows.append(
        f"write {m['write_s']:.0f} s; HNSW optimize {m['optimize_s']:.0f} s; "
        f"BM25 build {m['bm25_build_s']:.1f} s"
        + (
            f"; one query embedding (MiniLM) {m['embed_query_ms']:.1f} ms"
            if "embed_query_ms" in m
            else ""
        )
    )
    return "\n".join(rows)


@flow(name="bench-retrieval", validate_parameters=False)
def bench_retrieval(cfg: RetrievalBenchConfig) -> BenchResult:
    """Build the synthetic store, measure the three modes, log to MLflow, remove the store."""
    from flows.bench.results import machine
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    settings = get_settings()
    root = settings.data_dir / "bench" / "retrieval"
    shutil.rmtree(root, ignore_errors=True)
    try:
        metrics = build_store(cfg, root)
        metrics.update(measure(cfg, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    emb = _query_embedding_ms()
    if emb is not None:
        metrics["embed_query_ms"] = emb
    modes = split_by_prefix(metrics, MODES, {m: {"mode": m} for m in MODES})
    result = BenchResult(
        "retrieval", EXPERIMENT, f"{cfg.chunks}", _table(cfg, metrics),
        {**asdict(cfg), **machine()}, metrics, modes,
    )  # fmt: skip
    return log_bench(settings, result)
