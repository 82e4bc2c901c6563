"""Qdrant Edge (`qdrant-edge-py`): the embedded vector store, on disk under data_dir.

Layout of the store's directory:

    collections/<name>/   one EdgeShard per physical collection (its own WAL and segments)
    aliases.json          {"alias": "physical collection"}
    .lock                 held (flock) by the one process that owns the store

Qdrant Edge is a single shard with no notion of collections or aliases, so both live here: a
collection is a shard directory, and the aliases are a small JSON pointer file replaced atomically
(write a temporary file, fsync, `os.replace`), so a reader sees the old mapping or the new one,
never a torn one, and a crash mid-switch leaves the old one. Each shard's WAL makes an update
durable once `update()` returns; Qdrant Edge also locks the WAL, and the `.lock` file turns a second
process into a clear `StoreLockedError` up front (DESIGN.md: one writer per embedded store).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

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
_DISTANCES: dict[str, str] = {"cosine": "Cosine", "dot": "Dot", "euclid": "Euclid"}


class EdgeStore:
    """A directory of Qdrant Edge shards, one per collection, with aliases in a JSON pointer."""

    def __init__(self, root: Path):
        import qdrant_edge

        self._q = qdrant_edge
        self.root = Path(root)
        (self.root / "collections").mkdir(parents=True, exist_ok=True)
        self._lock_file: IO[str] | None = _lock(self.root / ".lock")
        self._shards: dict[str, Any] = {}
        self._mutex = threading.RLock()

    # --- collections ---------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        return self.root / "collections" / check_name(name)

    def _exists(self, name: str) -> bool:
        return (self._dir(name) / "edge_config.json").is_file()

    def _shard(self, name: str) -> Any:
        physical = self.resolve(name)
        with self._mutex:
            shard = self._shards.get(physical)
            if shard is None:
                if not self._exists(physical):
                    raise CollectionNotFound(
                        f"collection {name!r} does not exist in {self.root}; "
                        "ingest documents into it first (`impetus ingest PATH --collection ...`)"
                    )
                _check_room(self.root)
                shard = self._q.EdgeShard.load(str(self._dir(physical)))
                self._shards[physical] = shard
            return shard

    def ensure_collection(self, name: str, dim: int, distance: Distance = "cosine") -> bool:
        q = self._q
        with self._mutex:
            created = False
            if not self._exists(name):
                _check_room(self.root)
                config = q.EdgeConfig(
                    vectors=q.EdgeVectorParams(
                        size=dim, distance=getattr(q.Distance, _DISTANCES[distance])
                    )
                )
                self._shards[name] = q.EdgeShard.create(str(self._dir(name)), config)
                created = True
            info = self.collection_info(name)
            assert info is not None
            if (info.dim, info.distance) != (dim, distance):
                raise VectorStoreError(
                    f"collection {name!r} holds {info.dim}-d {info.distance} vectors, not "
                    f"{dim}-d {distance}; re-index into a new collection (`impetus reindex`)"
                )
            shard = self._shard(name)
            # Also repairs a collection whose creation was interrupted before its indexes.
            present = set(shard.info().payload_schema)
            for field in INDEXED_FIELDS:
                if field not in present:
                    shard.update(
                        q.UpdateOperation.create_field_index(field, q.PayloadSchemaType.Keyword)
                    )
            return created

    def collection_info(self, name: str) -> CollectionInfo | None:
        physical = self.resolve(name)
        if not self._exists(physical):
            return None
        config = json.loads((self._dir(physical) / "edge_config.json").read_text())
        vec = config["vectors"][""]
        distance = {v: k for k, v in _DISTANCES.items()}[vec["distance"]]
        return CollectionInfo(physical, int(vec["size"]), distance, self.count(physical))  # type: ignore[arg-type]

    def collections(self) -> list[str]:
        return sorted(p.name for p in (self.root / "collections").iterdir() if self._exists(p.name))

    def drop_collection(self, name: str) -> None:
        with self._mutex:
            users = [a for a, c in self.aliases().items() if c == name]
            if users:
                raise VectorStoreError(
                    f"collection {name!r} is the target of alias {users[0]!r}; switch it first"
                )
            shard = self._shards.pop(name, None)
            if shard is not None:
                shard.close()
            if self._dir(name).exists():
                # Rename first (atomic), so a crash mid-delete never leaves a half collection.
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                os.replace(self._dir(name), trash)
                shutil.rmtree(trash, ignore_errors=True)

    # --- points --------------------------------------------------------------------------------

    def upsert(self, collection: str, points: Sequence[PointRecord]) -> int:
        q = self._q
        shard = self._shard(collection)
        for start in range(0, len(points), _BATCH):
            batch = [
                q.Point(p.id, _as_list(p.vector), p.payload) for p in points[start : start + _BATCH]
            ]
            shard.update(q.UpdateOperation.upsert_points(batch))
        return len(points)

    def delete(
        self,
        collection: str,
        ids: Sequence[str] | None = None,
        *,
        doc_id: str | None = None,
    ) -> None:
        q = self._q
        shard = self._shard(collection)
        if ids:
            ids = list(ids)
            for start in range(0, len(ids), _BATCH):
                shard.update(q.UpdateOperation.delete_points(ids[start : start + _BATCH]))
        if doc_id is not None:
            flt = self._filter({"doc_id": doc_id})
            shard.update(q.UpdateOperation.delete_points_by_filter(flt))

    def search(
        self,
        collection: str,
        vector: np.ndarray | Sequence[float],
        k: int = 10,
        filter: Filter | None = None,
    ) -> list[Hit]:
        q = self._q
        request = q.SearchRequest(
            query=q.Query.Nearest(_as_list(vector)),
            limit=k,
            filter=self._filter(filter),
            with_payload=True,
        )
        hits = self._shard(collection).search(request)
        return [Hit(str(h.id), float(h.score), dict(h.payload or {})) for h in hits]

    def scroll(
        self, collection: str, filter: Filter | None = None, *, with_vectors: bool = False
    ) -> Iterator[PointRecord]:
        q = self._q
        shard = self._shard(collection)
        offset: Any = None
        while True:
            records, offset = shard.scroll(
                q.ScrollRequest(
                    offset=offset,
                    limit=_BATCH,
                    filter=self._filter(filter),
                    with_payload=True,
                    with_vector=with_vectors,
                )
            )
            for r in records:
                yield PointRecord(
                    str(r.id), r.vector if with_vectors else None, dict(r.payload or {})
                )
            if offset is None:
                return

    def count(self, collection: str, filter: Filter | None = None) -> int:
        q = self._q
        return int(
            self._shard(collection).count(q.CountRequest(exact=True, filter=self._filter(filter)))
        )

    def _filter(self, filter: Filter | None) -> Any:
        if not filter:
            return None
        q = self._q
        must = []
        for key, value in filter.items():
            if isinstance(value, str | int | bool):
                match: Any = q.MatchValue(value)
            else:
                match = q.MatchAny(list(value))
            must.append(q.FieldCondition(key=key, match=match))
        return q.Filter(must=must)

    def optimize(self, collection: str) -> bool:
        """Run the shard's segment optimizers now (HNSW index, merges, vacuum); True if any ran.

        Qdrant Edge has no background optimizer: without this a collection stays in plain
        segments that every search scans in full (about 90 ms at 100k 384-d points here)."""
        return bool(self._shard(collection).optimize())

    # --- aliases -------------------------------------------------------------------------------

    def aliases(self) -> dict[str, str]:
        path = self.root / "aliases.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def resolve(self, name: str) -> str:
        return self.aliases().get(name, name)

    def set_alias(self, alias: str, collection: str) -> None:
        with self._mutex:
            check_name(alias)
            if not self._exists(collection):
                raise CollectionNotFound(f"cannot alias {alias!r} to missing {collection!r}")
            if self._exists(alias):
                raise VectorStoreError(f"{alias!r} is a collection; an alias needs another name")
            aliases = self.aliases()
            aliases[alias] = collection
            _write_atomic(self.root / "aliases.json", json.dumps(aliases, indent=2, sort_keys=True))

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            for shard in self._shards.values():
                shard.flush()
                shard.close()
            self._shards.clear()
            if self._lock_file is not None:
                self._lock_file.close()  # releases the flock
                self._lock_file = None

    def __enter__(self) -> EdgeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# Free bytes a shard needs to be created or loaded: loading maps a new appendable segment whose
# 32 MiB vector file is written in full (measured: +43 MiB on a 36-point collection), and a write
# into a mapped page of a full filesystem is a SIGBUS that kills the process, not an error.
SHARD_ROOM_BYTES = 64 << 20


def _check_room(root: Path) -> None:
    from pipelines.diskspace import DiskFullError, free_bytes

    free = free_bytes(root)
    if free < SHARD_ROOM_BYTES:
        raise DiskFullError(
            f"the disk holding {root} is full ({free >> 20} MiB free; opening a collection of "
            f"the embedded store needs about {SHARD_ROOM_BYTES >> 20} MiB). Free space there (or "
            "move data_dir), then try again"
        )


def _as_list(vector: Any) -> list[float]:
    return np.asarray(vector, dtype=np.float32).ravel().tolist()


def _lock(path: Path) -> IO[str]:
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        from pipelines.locks import describe, lock_holder

        raise StoreLockedError(
            f"the vector store at {path.parent} is open in {describe(lock_holder(path))} (one "
            f"writer per embedded store; lock file {path.name}): stop it, or send the work to it "
            "(POST /v1/rag/index), or set vector_store.kind=qdrant with a server url; "
            "`impetus doctor` shows who holds what"
        ) from None
    return f


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
