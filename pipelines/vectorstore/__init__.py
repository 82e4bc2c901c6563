"""Vector store adapters and what ingestion asks of them.

    from pipelines.vectorstore import open_store
    with open_store(settings) as store:
        store.search("default", vector, k=5)

`vector_store.kind` picks the adapter: `edge` (Qdrant Edge, embedded under data_dir, the default)
or `qdrant` (qdrant-client: a server at `vector_store.url`, else its local mode on disk).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.vectorstore.base import (
    CollectionInfo,
    CollectionNotFound,
    Hit,
    InvalidCollectionName,
    PointRecord,
    StoreLockedError,
    VectorStore,
    VectorStoreError,
)

if TYPE_CHECKING:
    from pipelines.records import Chunk
    from pipelines.settings import Settings

__all__ = [
    "CollectionInfo",
    "CollectionNotFound",
    "Hit",
    "InvalidCollectionName",
    "PointRecord",
    "StoreLockedError",
    "VectorStore",
    "VectorStoreError",
    "chunk_payload",
    "open_store",
    "physical_name",
    "prepare_collection",
    "upsert_chunks",
]


def store_path(settings: Settings) -> Path:
    """Directory of the embedded store for these settings."""
    vs = settings.vector_store
    if vs.path is not None:
        path = vs.path.expanduser()
        return path if path.is_absolute() else settings.data_dir / path
    return settings.data_dir / ("vectors" if vs.kind == "edge" else "qdrant")


def create_store(settings: Settings) -> VectorStore:
    """The store named by `settings.vector_store`; the caller closes it."""
    vs = settings.vector_store
    if vs.kind == "edge":
        from pipelines.vectorstore.qdrant_edge import EdgeStore

        return EdgeStore(store_path(settings))
    from pipelines.vectorstore.qdrant_server import QdrantStore

    if vs.url:
        return QdrantStore(url=vs.url)
    return QdrantStore(path=store_path(settings))


@contextmanager
def open_store(settings: Settings) -> Iterator[VectorStore]:
    """The configured store, closed (and its lock released) on exit."""
    store = create_store(settings)
    try:
        yield store
    finally:
        store.close()


def physical_name(collection: str, pipeline_version: str) -> str:
    """The physical collection that holds `collection` built by one pipeline version."""
    return f"{collection}__{pipeline_version[:12]}"


def prepare_collection(store: VectorStore, collection: str, dim: int, pipeline_version: str) -> str:
    """The physical collection to ingest `collection` into, created (with its alias) if new.

    A new logical collection becomes a physical one named after the pipeline version plus an
    alias, so that `impetus reindex` can later build another one and switch the alias."""
    aliases = store.aliases()
    if collection in aliases:
        physical = aliases[collection]
    elif collection in store.collections():
        physical = collection  # made by hand, without an alias: use it as it is
    else:
        physical = physical_name(collection, pipeline_version)
        store.ensure_collection(physical, dim)
        store.set_alias(collection, physical)
        return physical
    info = store.collection_info(physical)
    if info is not None and info.dim != dim:
        raise VectorStoreError(
            f"collection {collection!r} holds {info.dim}-dimensional vectors but the embedding "
            f"model makes {dim}-dimensional ones; run `impetus reindex --collection {collection}`"
        )
    store.ensure_collection(physical, dim)
    return physical


def chunk_payload(chunk: Chunk, pipeline_version: str) -> dict[str, Any]:
    """What a point carries: enough to cite and filter without a lineage lookup."""
    return {
        "chunk_id": chunk.chunk_id,
        "doc_id": chunk.doc_id,
        "source": chunk.source,
        "content_hash": chunk.content_hash,
        "pipeline_version": pipeline_version,
        "index": chunk.index,
        "text": chunk.text,
        "token_count": chunk.token_count,
        "title": chunk.title,
        "section": chunk.section,
        "page_number": chunk.metadata.get("page_number"),
    }


def upsert_chunks(
    store: VectorStore,
    collection: str,
    chunks: Sequence[Chunk],
    vectors: np.ndarray,
    pipeline_version: str,
) -> int:
    """Write one document's embedded chunks as points whose ids are the chunk ids."""
    if len(chunks) != len(vectors):
        raise VectorStoreError(f"{len(chunks)} chunks but {len(vectors)} vectors")
    points = [
        PointRecord(c.chunk_id, np.asarray(v, dtype=np.float32), chunk_payload(c, pipeline_version))
        for c, v in zip(chunks, vectors, strict=True)
    ]
    return store.upsert(collection, points)
