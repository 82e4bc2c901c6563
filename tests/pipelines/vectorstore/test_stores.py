"""One contract for every vector store: Qdrant Edge on disk, qdrant-client local mode on disk and
in memory. Real stores on tiny data, no fakes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipelines.settings import load_settings
from pipelines.vectorstore import (
    CollectionNotFound,
    PointRecord,
    StoreLockedError,
    VectorStore,
    VectorStoreError,
    create_store,
    prepare_collection,
)
from pipelines.vectorstore.qdrant_edge import EdgeStore
from pipelines.vectorstore.qdrant_server import QdrantStore

DIM = 8


def _make(kind: str, root: Path) -> VectorStore:
    if kind == "edge":
        return EdgeStore(root / "edge")
    if kind == "local":
        return QdrantStore(path=root / "qdrant")
    return QdrantStore(path=":memory:")


@pytest.fixture(params=["edge", "local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    s = _make(request.param, tmp_path)
    yield s
    s.close()


def _points(n: int, doc: str, seed: int = 0) -> list[PointRecord]:
    rng = np.random.default_rng(seed)
    return [
        PointRecord(
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}/{i}")),
            rng.standard_normal(DIM).astype(np.float32),
            {"doc_id": doc, "source": f"/docs/{doc}.md", "index": i},
        )
        for i in range(n)
    ]


def test_upsert_is_idempotent_and_search_finds_the_nearest(store: VectorStore) -> None:
    assert store.ensure_collection("c1", DIM) is True
    assert store.ensure_collection("c1", DIM) is False
    pts = _points(5, "a") + _points(3, "b", seed=1)
    assert store.upsert("c1", pts) == 8
    store.upsert("c1", pts)  # same ids: overwritten, not duplicated
    assert store.count("c1") == 8
    hits = store.search("c1", pts[2].vector, k=3)  # type: ignore[arg-type]
    assert hits[0].id == pts[2].id and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].payload["doc_id"] == "a"
    only_b = store.search("c1", pts[2].vector, k=10, filter={"doc_id": "b"})  # type: ignore[arg-type]
    assert {h.payload["doc_id"] for h in only_b} == {"b"} and len(only_b) == 3
    assert store.count("c1", {"source": ["/docs/a.md", "/docs/b.md"]}) == 8


def test_delete_by_id_and_by_document(store: VectorStore) -> None:
    store.ensure_collection("c1", DIM)
    a, b = _points(4, "a"), _points(2, "b", seed=1)
    store.upsert("c1", a + b)
    store.delete("c1", [a[0].id, a[1].id])
    assert store.count("c1", {"doc_id": "a"}) == 2
    store.delete("c1", doc_id="a")
    assert store.count("c1") == 2
    assert sorted(p.id for p in store.scroll("c1")) == sorted(p.id for p in b)


def test_scroll_pages_through_everything(store: VectorStore) -> None:
    store.ensure_collection("c1", DIM)
    pts = _points(600, "a")
    store.upsert("c1", pts)
    seen = [p.id for p in store.scroll("c1", {"doc_id": "a"})]
    assert len(seen) == 600 and set(seen) == {p.id for p in pts}
    first = next(iter(store.scroll("c1", with_vectors=True)))
    assert len(first.vector) == DIM  # type: ignore[arg-type]


def test_alias_switch_is_atomic_and_resolves_everywhere(store: VectorStore) -> None:
    store.ensure_collection("docs__v1", DIM)
    store.ensure_collection("docs__v2", DIM)
    store.upsert("docs__v1", _points(2, "old"))
    store.upsert("docs__v2", _points(3, "new"))
    store.set_alias("docs", "docs__v1")
    assert store.resolve("docs") == "docs__v1" and store.count("docs") == 2
    store.set_alias("docs", "docs__v2")
    assert store.aliases() == {"docs": "docs__v2"}
    assert store.count("docs") == 3
    assert store.collections() == ["docs__v1", "docs__v2"]
    with pytest.raises(VectorStoreError):
        store.drop_collection("docs__v2")  # an alias points at it
    store.drop_collection("docs__v1")
    assert store.collections() == ["docs__v2"]
    assert store.collection_info("docs").dim == DIM  # type: ignore[union-attr]


def test_dimension_mismatch_is_an_error(store: VectorStore) -> None:
    store.ensure_collection("c1", DIM)
    with pytest.raises(VectorStoreError, match="reindex"):
        store.ensure_collection("c1", DIM * 2)


def test_prepare_collection_makes_a_physical_collection_behind_an_alias(store: VectorStore) -> None:
    physical = prepare_collection(store, "default", DIM, "abcdef0123456789")
    assert physical == "default__abcdef012345"
    assert store.aliases() == {"default": physical}
    # A later pipeline version keeps ingesting into the aliased collection (reindex moves it).
    assert prepare_collection(store, "default", DIM, "ffff") == physical
    with pytest.raises(VectorStoreError, match="reindex"):
        prepare_collection(store, "default", DIM + 1, "ffff")


@pytest.mark.parametrize("kind", ["edge", "qdrant"])
def test_one_writer_per_embedded_store_and_data_survives_reopen(kind: str, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, vector_store={"kind": kind})
    first = create_store(settings)
    first.ensure_collection("c1", DIM)
    first.upsert("c1", _points(3, "a"))
    with pytest.raises(StoreLockedError):
        _second_process_opens(settings)
    first.close()
    again = create_store(settings)
    assert again.count("c1") == 3
    again.close()


def _second_process_opens(settings: object) -> None:
    """Open the same store from another process (locks are per process)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        error = pool.apply(_try_open, (settings,))
    if error == "StoreLockedError":
        raise StoreLockedError(error)
    raise AssertionError(f"second process opened the store: {error}")


def _try_open(settings: object) -> str:
    try:
        create_store(settings).close()  # type: ignore[arg-type]
    except StoreLockedError:
        return "StoreLockedError"
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return "opened"


def test_optimize_is_on_every_store(store: VectorStore) -> None:
    """`optimize` is part of the protocol: the Edge store runs its optimizers (True if any had
    work), the others optimize on their own and say False; a missing collection is an error."""
    store.ensure_collection("c", DIM)
    pts = _points(8, "a")
    store.upsert("c", pts)
    did = store.optimize("c")
    assert did is False or (did is True and isinstance(store, EdgeStore))
    hits = store.search("c", pts[3].vector, k=1)  # type: ignore[arg-type]
    assert hits[0].id == pts[3].id  # still answers after optimizing
    with pytest.raises(CollectionNotFound):
        store.optimize("missing")
