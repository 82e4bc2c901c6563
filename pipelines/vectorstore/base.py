"""The vector store protocol: what ingestion, search and re-indexing code against.

A store holds named collections of points (id, vector, payload). Ids are the chunk ids
(`records.chunk_id_for`), so writing the same chunk twice overwrites it instead of duplicating it.
Every collection gets keyword payload indexes on `doc_id` and `source`, which deletes and filters
by document use. An alias is a second name for a collection; switching it is atomic, which is what
blue/green re-indexing relies on: every method that takes a collection name also takes an alias.

Implementations: `qdrant_edge.EdgeStore` (embedded, the default) and
`qdrant_server.QdrantStore` (qdrant-client: a server URL, or its local mode). `open_store(settings)`
in `pipelines.vectorstore` picks one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from pipelines.errors import ImpetusError

Distance = Literal["cosine", "dot", "euclid"]
# Payload field -> value (exact match) or list of values (match any).
Filter = Mapping[str, str | int | bool | Sequence[str]]

# Payload fields every collection indexes (keyword).
INDEXED_FIELDS = ("doc_id", "source")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class VectorStoreError(ImpetusError):
    """A vector store operation failed; the message says which and what to do."""


class StoreLockedError(VectorStoreError):
    """Another process already owns the embedded store (DESIGN.md: one writer per store)."""


class CollectionNotFound(VectorStoreError):
    """A collection or alias that does not exist."""


class InvalidCollectionName(VectorStoreError):
    """A collection or alias name that `check_name` refuses (the caller's mistake: HTTP 400)."""


@dataclass
class PointRecord:
    """One point: the chunk id, its vector and its payload."""

    id: str
    vector: np.ndarray | Sequence[float] | None
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result."""

    id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dim: int
    distance: Distance
    points: int


def check_name(name: str) -> str:
    """Collection and alias names: letters, digits, `_ . -`; nothing that escapes a directory."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: use letters, digits, '_', '.', '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return name


@runtime_checkable
class VectorStore(Protocol):
    """Collections of points with payload indexes, and atomic aliases."""

    def ensure_collection(self, name: str, dim: int, distance: Distance = "cosine") -> bool:
        """Create `name` (with payload indexes) unless it exists; True if created.

        An existing collection of another dimension or distance is an error."""
        ...

    def collection_info(self, name: str) -> CollectionInfo | None:
        """Dimension, distance and size of a collection or alias target; None if absent."""
        ...

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> int:
        """Insert or overwrite points by id; returns how many were written."""
        ...

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        doc_id: str | None = None,
    ) -> None:
        """Delete points by id, or every point of a document."""
        ...

    def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        k: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        """The `k` nearest points, best first."""
        ...

    def scroll(
        self, collection: str, filter: Filter | None = None, *, with_vectors: bool = False
    ) -> Iterator[PointRecord]:
        """Every point (optionally filtered), in id order."""
        ...

    def count(self, collection: str, filter: Filter | None = None) -> int:
        """Exact number of points (optionally filtered)."""
        ...

    def set_alias(self, alias: str, collection: str) -> None:
        """Point `alias` at physical `collection`, atomically (readers see old or new)."""
        ...

    def aliases(self) -> dict[str, str]:
        """alias -> physical collection."""
        ...

    def resolve(self, name: str) -> str:
        """The physical collection behind `name` (itself when it is not an alias)."""
        ...

    def collections(self) -> list[str]:
        """Physical collections, sorted."""
        ...

    def drop_collection(self, name: str) -> None:
        """Delete a physical collection; refuses one that an alias points to."""
        ...

    def optimize(self, collection: str) -> bool:
        """Build the vector index of a collection now; True if the store did work. A store that
        optimizes in the background on its own (a Qdrant server, qdrant-client) returns False."""
        ...

    def close(self) -> None:
        """Flush and release the store (and its lock, for an embedded one)."""
        ...
