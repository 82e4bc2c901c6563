"""What a fault test compares with a clean run: the store's points with lineage's view of them
(tests/flows/test_ingest.py's `snapshot`) and the hybrid search results of a few queries."""

from __future__ import annotations

from typing import Any

from pipelines.settings import get_settings
from tests.flows.test_ingest import snapshot, write_corpus

__all__ = ["QUERIES", "searches", "snapshot", "state", "write_corpus"]

QUERIES = ["vector stores and lineage", "Prefect flows and retries", "removed before the run"]


def searches(collection: str = "c") -> list[list[tuple[str, float]]]:
    """Hybrid search results (chunk id, score to 4 places) for `QUERIES` on the current data_dir."""
    from pipelines.embed.dispatch import load_embedder
    from pipelines.retrieve import Retriever
    from pipelines.vectorstore import create_store

    settings = get_settings()
    embedder = load_embedder(settings)
    store = create_store(settings)
    try:
        retriever = Retriever(
            store,
            settings.rag,
            data_dir=settings.data_dir,
            embed=lambda q: embedder.encode([q]).vectors[0],
        )
        return [
            [
                (h.chunk_id, round(h.score, 4))
                for h in retriever.search(q, collection=collection, k=5)
            ]
            for q in QUERIES
        ]
    finally:
        store.close()


def state(collection: str = "c") -> dict[str, Any]:
    """Points, documents and search results of `collection` on the current data_dir."""
    return {**snapshot(collection), "searches": searches(collection)}
