"""Retrieval over a collection: dense (vector search), sparse (BM25) and hybrid (RRF of both).

    retriever = Retriever(store, settings.rag, data_dir=settings.data_dir, embed=embed_query)
    hits = retriever.search("temporary directory", collection="default", k=5, mode="hybrid")

The store answers dense queries (whichever adapter: Qdrant Edge or qdrant-client); BM25 runs on
a local index of the same collection's chunk texts (`bm25.py`), so all three modes return the
same hits whichever adapter holds the data. Filters are payload matches (`source`, `doc_id`:
a value or a list of values). `embed(text) -> vector` comes in through the constructor; a caller
that has already embedded the query (the server, which batches embeddings) passes `vector=`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipelines import tracing
from pipelines.errors import ImpetusError
from pipelines.retrieve.bm25 import BM25Index, index_dir, prune_indexes
from pipelines.retrieve.fusion import rrf

if TYPE_CHECKING:
    from pipelines.settings import RagSettings
    from pipelines.vectorstore import VectorStore

SearchMode = Literal["hybrid", "dense", "sparse"]
MODES: tuple[SearchMode, ...] = ("hybrid", "dense", "sparse")
FILTER_KEYS = ("source", "doc_id")

__all__ = ["MODES", "BM25Index", "RetrievalError", "Retriever", "SearchHit", "SearchMode"]


class RetrievalError(ImpetusError):
    """A search could not be run as asked (bad mode or filter); the message says what to send."""


@dataclass(frozen=True)
class SearchHit:
    """One retrieved chunk. `score`: cosine (dense), BM25 (sparse) or fused RRF (hybrid)."""

    chunk_id: str
    source: str
    title: str | None
    section: str | None
    score: float
    text: str
    doc_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_payload(cls, chunk_id: str, score: float, payload: Mapping[str, Any]) -> SearchHit:
        return cls(
            chunk_id=str(payload.get("chunk_id") or chunk_id),
            source=str(payload.get("source") or ""),
            title=payload.get("title"),
            section=payload.get("section"),
            score=float(score),
            text=str(payload.get("text") or ""),
            doc_id=payload.get("doc_id"),
        )


def check_filter(filter: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Only `source` and `doc_id`, each a string or a list of strings."""
    if not filter:
        return None
    out: dict[str, Any] = {}
    for key, value in filter.items():
        if key not in FILTER_KEYS:
            raise RetrievalError(
                f"cannot filter on {key!r}: filter on {' or '.join(FILTER_KEYS)} "
                "(a value or a list of values)"
            )
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            out[key] = list(value)
        else:
            raise RetrievalError(f"filter {key!r} must be a string or a list of strings")
    return out


class Retriever:
    """Dense, sparse and hybrid search over one store; BM25 indexes cached per physical collection."""

    def __init__(
        self,
        store: VectorStore,
        settings: RagSettings,
        *,
        data_dir: Path,
        embed: Callable[[str], np.ndarray] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.root = data_dir / "bm25"
        self._embed = embed
        self._indexes: dict[str, tuple[float, BM25Index]] = {}
        self._lock = threading.Lock()

    # -- the BM25 side -----------------------------------------------------------------------------

    def build_sparse_index(self, collection: str) -> BM25Index:
        """(Re)build and save the BM25 index of `collection` from the store's payloads.

        Only the process that owns the store calls this (the ingest flow after a run, or a
        reader that finds no index)."""
        physical = self.store.resolve(collection)
        index = BM25Index.build(
            self.store.scroll(physical), k1=self.settings.bm25_k1, b=self.settings.bm25_b
        )
        path = index_dir(self.root, physical)
        index.save(path)
        prune_indexes(self.root, self.store.collections())
        with self._lock:
            self._indexes[physical] = (_mtime(path), index)
        return index

    def sparse_index(self, collection: str) -> BM25Index:
        """The collection's BM25 index: cached, reloaded when its file changes, built if absent
        or stale (its point count differs from the store's, or its BM25 parameters changed)."""
        physical = self.store.resolve(collection)
        path = index_dir(self.root, physical)
        mtime = _mtime(path)
        with self._lock:
            cached = self._indexes.get(physical)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        index = BM25Index.load(path)
        s = self.settings
        if (
            index is None
            or index.params.get("points") != self.store.count(physical)
            or (index.params.get("k1"), index.params.get("b")) != (s.bm25_k1, s.bm25_b)
        ):
            return self.build_sparse_index(physical)
        with self._lock:
            self._indexes[physical] = (mtime, index)
        return index

    # -- searching ---------------------------------------------------------------------------------

    def dense(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        k: int,
        filter: Mapping[str, Any] | None = None,
    ) -> list[SearchHit]:
        hits = self.store.search(collection, vector, k=k, filter=filter)
        return [SearchHit.from_payload(h.id, h.score, h.payload) for h in hits]

    def sparse(
        self, collection: str, query: str, k: int, filter: Mapping[str, Any] | None = None
    ) -> list[SearchHit]:
        index = self.sparse_index(collection)
        return [
            SearchHit.from_payload(index.meta[h.index]["chunk_id"], h.score, index.meta[h.index])
            for h in index.search(query, k, filter)
        ]

    def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        filter: Mapping[str, Any] | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
    ) -> list[SearchHit]:
        """The `k` best chunks for `query`, best first."""
        s = self.settings
        collection = collection or s.collection
        k = k or s.top_k
        mode = mode or s.search_mode
        if mode not in MODES:
            raise RetrievalError(f"unknown search mode {mode!r}: use one of {', '.join(MODES)}")
        flt = check_filter(filter)
        # Each step in a span (pipelines/tracing.py: nothing unless tracing is on).
        if mode == "sparse":
            with tracing.span("sparse", {"impetus.k": k}):
                return self.sparse(collection, query, k, flt)
        if vector is None:
            if self._embed is None:
                raise RetrievalError("dense search needs an embedder or a query vector")
            with tracing.span("embed"):
                vector = self._embed(query)
        if mode == "dense":
            with tracing.span("dense", {"impetus.k": k}):
                return self.dense(collection, vector, k, flt)
        n = max(k, s.candidates)
        with tracing.span("dense", {"impetus.k": n}):
            dense = self.dense(collection, vector, n, flt)
        with tracing.span("sparse", {"impetus.k": n}):
            sparse = self.sparse(collection, query, n, flt)
        with tracing.span("fuse", {"impetus.k": k}):
            by_id = {h.chunk_id: h for h in (*sparse, *dense)}
            fused = rrf(
                [[h.chunk_id for h in dense], [h.chunk_id for h in sparse]],
                [s.dense_weight, s.sparse_weight],
                k=s.rrf_k,
            )
            return [_rescored(by_id[cid], score) for cid, score in fused[:k]]


def _rescored(hit: SearchHit, score: float) -> SearchHit:
    return SearchHit(hit.chunk_id, hit.source, hit.title, hit.section, score, hit.text, hit.doc_id)


def _mtime(path: Path) -> float:
    try:
        return (path / "index.json").stat().st_mtime_ns / 1e9
    except FileNotFoundError:
        return -1.0
