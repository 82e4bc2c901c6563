"""qdrant-client: a Qdrant server at a URL, or the client's local mode on disk (tests, one Mac).

Aliases are Qdrant's own: `set_alias` sends delete + create in one `update_collection_aliases`
call, which the server applies atomically. The local mode holds a file lock on its directory, so
it too admits one process.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.vectorstore.base import (
    INDEXED_FIELDS,
    CollectionInfo,
    CollectionNotFound,
    Distance,
    Filter,
    Hit,
    PointRecord,
    StoreLockedError,
    VectorStoreError,
    check_name,
)

_BATCH = 256


class QdrantStore:
    """A `VectorStore` over `qdrant_client.QdrantClient`."""

    def __init__(self, *, url: str | None = None, path: Path | str | None = None, **kwargs: Any):
        from qdrant_client import QdrantClient, models

        self._m = models
        try:
            if url:
                self.client = QdrantClient(url=url, **kwargs)
            elif path is None or str(path) == ":memory:":
                self.client = QdrantClient(location=":memory:")
            else:
                Path(path).mkdir(parents=True, exist_ok=True)
                self.client = QdrantClient(path=str(path), **kwargs)
        except RuntimeError as e:
            if "already accessed by another instance" in str(e):
                raise StoreLockedError(
                    f"the Qdrant local store at {path} is open in another process (one writer "
                    "per embedded store); use a Qdrant server url to share it"
                ) from e
            raise

    # --- collections ---------------------------------------------------------------------------

    def ensure_collection(self, name: str, dim: int, distance: Distance = "cosine") -> bool:
        m = self._m
        check_name(name)
        created = False
        if not self.client.collection_exists(name):
            self.client.create_collection(
                name, vectors_config=m.VectorParams(size=dim, distance=_distance(m, distance))
            )
            created = True
        info = self.collection_info(name)
        assert info is not None
        if (info.dim, info.distance) != (dim, distance):
            raise VectorStoreError(
                f"collection {name!r} holds {info.dim}-d {info.distance} vectors, not "
                f"{dim}-d {distance}; re-index into a new collection (`impetus reindex`)"
            )
        schema = self.client.get_collection(self.resolve(name)).payload_schema or {}
        for field in INDEXED_FIELDS:
            if field not in schema:
                with warnings.catch_warnings():
                    # Local mode keeps no payload indexes and says so; a server does.
                    warnings.simplefilter("ignore", UserWarning)
                    self.client.create_payload_index(
                        name, field, field_schema=m.PayloadSchemaType.KEYWORD, wait=True
                    )
        return created

    def collection_info(self, name: str) -> CollectionInfo | None:
        physical = self.resolve(name)
        if not self.client.collection_exists(physical):
            return None
        params = self.client.get_collection(physical).config.params.vectors
        assert isinstance(params, self._m.VectorParams)
        distance = str(params.distance.value).lower()  # Cosine | Dot | Euclid
        return CollectionInfo(physical, int(params.size), distance, self.count(physical))  # type: ignore[arg-type]

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def drop_collection(self, name: str) -> None:
        users = [a for a, c in self.aliases().items() if c == name]
        if users:
            raise VectorStoreError(
                f"collection {name!r} is the target of alias {users[0]!r}; switch it first"
            )
        self.client.delete_collection(name)

    def optimize(self, collection: str) -> bool:
        """Nothing to do: Qdrant's optimizers run in the background (a server), or the local
        mode has no vector index to build."""
        self._check(collection)
        return False

    # --- points --------------------------------------------------------------------------------

    def _check(self, collection: str) -> str:
        physical = self.resolve(collection)
        if not self.client.collection_exists(physical):
            raise CollectionNotFound(
                f"collection {collection!r} does not exist; ingest documents into it first"
            )
        return physical

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> int:
        m = self._m
        physical = self._check(collection)
        for start in range(0, len(points), _BATCH):
            batch = [
                m.PointStruct(id=p.id, vector=_as_list(p.vector), payload=p.payload)
                for p in points[start : start + _BATCH]
            ]
            self.client.upsert(physical, points=batch, wait=True)
        return len(points)

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        doc_id: str | None = None,
    ) -> None:
        m = self._m
        physical = self._check(collection)
        if ids:
            self.client.delete(physical, m.PointIdsList(points=list(ids)), wait=True)
        if doc_id is not None:
            selector = m.FilterSelector(filter=self._filter({"doc_id": doc_id}))
            self.client.delete(physical, selector, wait=True)

    def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        k: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        result = self.client.query_points(
            self._check(collection),
            query=_as_list(vector),
            limit=k,
            query_filter=self._filter(filter),
            with_payload=True,
        )
        return [Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in result.points]

    def scroll(
        self, collection: str, filter: Filter | None = None, *, with_vectors: bool = False
    ) -> Iterator[PointRecord]:
        physical = self._check(collection)
        offset: Any = None
        while True:
            records, offset = self.client.scroll(
                physical,
                scroll_filter=self._filter(filter),
                limit=_BATCH,
                offset=offset,
                with_payload=True,
                with_vectors=with_vectors,
            )
            for r in records:
                vector: Any = r.vector if with_vectors else None
                yield PointRecord(str(r.id), vector, dict(r.payload or {}))
            if offset is None:
                return

    def count(self, collection: str, filter: Filter | None = None) -> int:
        physical = self._check(collection)
        return int(self.client.count(physical, count_filter=self._filter(filter), exact=True).count)

    def _filter(self, filter: Filter | None) -> Any:
        if not filter:
            return None
        m = self._m
        must: list[Any] = []
        for key, value in filter.items():
            if isinstance(value, str | int | bool):
                match: Any = m.MatchValue(value=value)
            else:
                match = m.MatchAny(any=list(value))
            must.append(m.FieldCondition(key=key, match=match))
        return m.Filter(must=must)

    # --- aliases -------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        return {a.alias_name: a.collection_name for a in self.client.get_aliases().aliases}

    def resolve(self, name: str) -> str:
        return self.aliases().get(name, name)

    def set_alias(self, alias: str, collection: str) -> None:
        m = self._m
        check_name(alias)
        if not self.client.collection_exists(collection) or collection in self.aliases():
            raise CollectionNotFound(f"cannot alias {alias!r} to missing {collection!r}")
        ops: list[Any] = []
        if alias in self.aliases():
            ops.append(m.DeleteAliasOperation(delete_alias=m.DeleteAlias(alias_name=alias)))
        ops.append(
            m.CreateAliasOperation(
                create_alias=m.CreateAlias(collection_name=collection, alias_name=alias)
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=ops)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> QdrantStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _distance(m: Any, distance: Distance) -> Any:
    return {"cosine": m.Distance.COSINE, "dot": m.Distance.DOT, "euclid": m.Distance.EUCLID}[
        distance
    ]


def _as_list(vector: Any) -> list[float]:
    return np.asarray(vector, dtype=np.float32).ravel().tolist()
