"""Dense, sparse and hybrid retrieval give the same hits on both vector store adapters (Qdrant Edge
and qdrant-client's local mode), filter by source and doc_id, and keep the BM25 index in step
with the collection."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.retrieve import RetrievalError, Retriever
from pipelines.retrieve.bm25 import BM25Index, tokenize
from pipelines.retrieve.fusion import rrf
from pipelines.settings import RagSettings
from pipelines.vectorstore import PointRecord, VectorStore
from pipelines.vectorstore.qdrant_edge import EdgeStore
from pipelines.vectorstore.qdrant_server import QdrantStore

DIM = 8
TEXTS = [
    ("a.md", "Temporary directories are created with tempfile and removed automatically."),
    ("a.md", "The heapq module implements a priority queue on top of a list."),
    ("b.md", "Qdrant stores vectors; DuckDB keeps the lineage of every chunk."),
    ("b.md", "Reciprocal rank fusion merges the dense ranking and the BM25 ranking."),
    ("c.md", "A lighthouse keeper writes a log of ships passing in the night."),
]


def _vec(i: int) -> np.ndarray:
    """Chunk i's vector: its cosine to the query (e_0) falls strictly with i."""
    v = np.zeros(DIM, dtype=np.float32)
    v[0] = 1.0 - 0.15 * i
    v[1 + i % (DIM - 1)] = 1.0
    return v / np.linalg.norm(v)


def _query() -> np.ndarray:
    q = np.zeros(DIM, dtype=np.float32)
    q[0] = 1.0
    return q


def _points() -> list[PointRecord]:
    out = []
    for i, (src, text) in enumerate(TEXTS):
        cid = f"00000000-0000-4000-8000-{i:012d}"
        payload = {"chunk_id": cid, "doc_id": f"doc-{src}", "source": f"/corpus/{src}",
                   "title": src.upper(), "section": None, "text": text}  # fmt: skip
        out.append(PointRecord(cid, _vec(i), payload))
    return out


@pytest.fixture(params=["edge", "qdrant"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s: VectorStore = (
        EdgeStore(tmp_path / "vectors")
        if request.param == "edge"
        else QdrantStore(path=tmp_path / "qdrant")
    )
    s.ensure_collection("docs__v1", DIM)
    s.set_alias("docs", "docs__v1")
    s.upsert("docs", _points())
    yield s
    s.close()


def _retriever(store: VectorStore, tmp_path: Path, **rag: object) -> Retriever:
    return Retriever(
        store,
        RagSettings(**rag),
        data_dir=tmp_path,
        embed=lambda q: _query(),  # type: ignore[arg-type]
    )


def _ids(hits: list) -> list[str]:
    return [h.chunk_id[-1] for h in hits]


EXPECTED = {
    # dense: cosine to the query falls with the chunk's index
    "dense": ["0", "1", "2"],
    # sparse: only chunk 0 says "temporary"/"directories"; "queue" appears in chunk 1
    "sparse": ["0", "1"],
    "hybrid": ["0", "1", "2"],
}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_modes_agree_across_adapters(store: VectorStore, tmp_path: Path, mode: str) -> None:
    hits = _retriever(store, tmp_path).search(
        "temporary directory queue", collection="docs", k=3, mode=mode
    )
    assert _ids(hits) == EXPECTED[mode]
    top = hits[0]
    assert top.source == "/corpus/a.md" and top.title == "A.MD" and "tempfile" in top.text
    assert all(h.score > 0 for h in hits)


def test_filters_by_source_and_doc_id(store: VectorStore, tmp_path: Path) -> None:
    r = _retriever(store, tmp_path)
    for mode in ("dense", "sparse", "hybrid"):
        hits = r.search("ranking lineage", collection="docs", k=5, mode=mode,
                        filter={"source": "/corpus/b.md"})  # fmt: skip
        assert hits and {h.source for h in hits} == {"/corpus/b.md"}
        hits = r.search("lighthouse", collection="docs", k=5, mode=mode,
                        filter={"doc_id": ["doc-c.md", "doc-a.md"]})  # fmt: skip
        assert hits and {h.doc_id for h in hits} <= {"doc-c.md", "doc-a.md"}
    with pytest.raises(RetrievalError, match="cannot filter on 'title'"):
        r.search("x", collection="docs", filter={"title": "A"})
    with pytest.raises(RetrievalError, match="unknown search mode"):
        r.search("x", collection="docs", mode="fuzzy")


def test_sparse_index_is_persisted_and_follows_the_collection(
    store: VectorStore, tmp_path: Path
) -> None:
    r = _retriever(store, tmp_path)
    assert len(r.sparse_index("docs")) == len(TEXTS)
    path = tmp_path / "bm25" / "docs__v1"
    assert (path / "index.json").is_file()
    # a fresh retriever (another process) loads it instead of rebuilding
    assert len(BM25Index.load(path) or []) == len(TEXTS)
    # the collection grows: the count no longer matches, so the index is rebuilt
    extra = PointRecord("00000000-0000-4000-8000-000000000009", _vec(5),
                        {"chunk_id": "00000000-0000-4000-8000-000000000009", "source": "/corpus/d.md",
                         "doc_id": "doc-d.md", "text": "Zebras graze."})  # fmt: skip
    store.upsert("docs", [extra])
    fresh = _retriever(store, tmp_path)
    assert _ids(fresh.search("zebras", collection="docs", k=1, mode="sparse")) == ["9"]


def test_weights_steer_the_fusion(store: VectorStore, tmp_path: Path) -> None:
    # the query vector points at chunk 0, the words at chunk 3 only
    sparse_only = _retriever(store, tmp_path, dense_weight=0.0)
    assert _ids(sparse_only.search("reciprocal fusion", collection="docs", k=1))[0] == "3"
    dense_only = _retriever(store, tmp_path, sparse_weight=0.0)
    assert _ids(dense_only.search("reciprocal fusion", collection="docs", k=1))[0] == "0"


def test_rrf_and_tokenizer() -> None:
    fused = rrf([["a", "b", "c"], ["c", "a"]], [1.0, 1.0], k=60)
    assert [i for i, _ in fused] == ["a", "c", "b"]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert tokenize("How do I create Temporary files?") == ["create", "temporary", "file"]
