"""Retrieval evaluation as a Prefect flow: a labelled question set × dense, sparse and hybrid search.

    impetus eval retrieval --dataset data/eval/python-docs.jsonl --collection python-docs

Each mode retrieves `CHUNKS` chunks per question, collapsed to documents in rank order
(pipelines/evaluation/retrieval.py), and is scored with hit@1/5/10, MRR@10 and nDCG@10. One MLflow run
(experiment `retrieval-eval`, flows/bench/tracking.py) holds the parameters (dataset, collection,
pipeline settings, fusion weights), one metric per mode × measure, a nested run per mode and the
table.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config

if TYPE_CHECKING:
    from pipelines.evaluation.retrieval import Question
    from pipelines.retrieve import Retriever

EXPERIMENT = "retrieval-eval"
CHUNKS = 50  # chunks retrieved per question, so that ten distinct documents remain


@task(name="evaluate-mode", cache_policy=NO_CACHE)
def evaluate_mode(
    retriever: Retriever, questions: list[Question], vectors: Any, collection: str, mode: str
) -> dict[str, Any]:
    """Metrics of one search mode over every question (and the per-question ranks)."""
    from pipelines.evaluation import retrieval as evaluate

    rows = []
    for q, vec in zip(questions, vectors, strict=True):
        hits = retriever.search(q.q, collection=collection, k=CHUNKS, mode=mode, vector=vec)
        docs = evaluate.ranked_documents(h.source for h in hits)
        rows.append(evaluate.score(docs, q.sources))
    return {"mean": evaluate.mean(rows), "rows": rows}


@flow(name="eval-retrieval", validate_parameters=False)
def eval_retrieval(
    dataset: str, collection: str, modes: tuple[str, ...] = ("dense", "sparse", "hybrid")
) -> BenchResult:
    """Score each search mode on the labelled questions of `dataset` over `collection`."""
    from flows.bench.tracking import log_bench
    from pipelines.embed.dispatch import load_embedder
    from pipelines.evaluation import retrieval as evaluate
    from pipelines.retrieve import Retriever
    from pipelines.settings import get_settings
    from pipelines.vectorstore import open_store

    settings = get_settings()
    questions = evaluate.load_dataset(Path(dataset))
    embedder = load_embedder(settings)
    vectors = embedder.encode(
        [q.q for q in questions], batch_size=settings.embedding.batch_size
    ).vectors
    with open_store(settings) as store:
        retriever = Retriever(store, settings.rag, data_dir=settings.data_dir)
        physical = store.resolve(collection)
        points = store.count(collection)
        results = {m: evaluate_mode(retriever, questions, vectors, collection, m) for m in modes}
    means = {m: r["mean"] for m, r in results.items()}
    table = evaluate.table(means, len(questions))
    r = settings.rag
    params = {
        "dataset": dataset,
        "questions": len(questions),
        "collection": collection,
        "physical_collection": physical,
        "points": points,
        "embedding_model": settings.models.embedding,
        "chunk_max_tokens": settings.chunking.max_tokens,
        "chunk_overlap_tokens": settings.chunking.overlap_tokens,
        "candidates": r.candidates,
        "rrf_k": r.rrf_k,
        "dense_weight": r.dense_weight,
        "sparse_weight": r.sparse_weight,
        "bm25_k1": r.bm25_k1,
        "bm25_b": r.bm25_b,
    }
    configs = [
        Config(mode, {"mode": mode}, {k.replace("@", "_at_"): v for k, v in m.items()})
        for mode, m in means.items()
    ]
    metrics = {f"{c.key}_{k}": v for c in configs for k, v in c.metrics.items()}
    result = BenchResult(
        "eval-retrieval", EXPERIMENT, f"{Path(dataset).stem}:{collection}", table, params,
        metrics, configs,
    )  # fmt: skip
    return log_bench(settings, result)
