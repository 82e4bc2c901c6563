"""OpenAI's vector stores over Impetus collections: a vector store IS a collection, its id the
collection's name, so `file_search`'s `vector_store_ids` and `rag_collection` name the same thing.

A vector store created through the API is recorded (pipelines/uploads.py) and becomes a
collection in the store at its first index run; every collection of the store is listed too.
Adding a file starts an index run of that upload (the server's own runner, like POST
/v1/rag/index) and the vector_store.file's status follows the run. Search is the hybrid
retriever; results name documents by `file_ref` (serving/services/files.py).
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

import anyio

from pipelines.errors import ImpetusError
from pipelines.uploads import StoreFile
from pipelines.vectorstore.base import check_name
from serving.services.files import file_ref

if TYPE_CHECKING:
    from pipelines.retrieve import SearchHit
    from serving.services.rag import RagService


class VectorStoreNotFound(ImpetusError):
    """No collection or API-created vector store with that id (404)."""


class VectorStoreBusy(ImpetusError):
    """An index run into the vector store is in progress (409)."""


_RUN_STATUS = {"pending": "in_progress", "running": "in_progress"}


def _points(store: Any, physical: str) -> int:
    info = store.collection_info(physical)
    return info.points if info else 0


class VectorStores:
    """The vector store routes' logic, over one app's `RagService`."""

    def __init__(self, rag: RagService) -> None:
        self.rag = rag

    # -- stores ---------------------------------------------------------------------------------

    def _collections(self) -> dict[str, str]:
        """Collection name -> physical collection, of the store this server owns; an empty one
        that was not created through the API (a deleted vector store) is left out."""
        store = self.rag.retriever().store
        aliases = store.aliases()
        names = dict(aliases)
        targets = set(aliases.values())
        for c in store.collections():
            if c not in targets and "__" not in c:
                names[c] = c
        created = self.rag.uploads().vector_stores()
        return {
            name: physical
            for name, physical in names.items()
            if name in created or _points(store, physical)
        }

    def _documents(self, physical: str | None) -> list[tuple[str, str]]:
        if physical is None:
            return []
        lin = self.rag._lineage()
        if lin is None:
            return []
        with lin:
            return lin.current_documents(physical)

    def _object(
        self, vs_id: str, physical: str | None, created: dict[str, tuple[str, dict[str, Any], int]]
    ) -> dict[str, Any]:
        """OpenAI's `vector_store` object of a collection (or an API-created store)."""
        name, metadata, created_at = created.get(vs_id, (vs_id, {}, 0))
        files = self._files(vs_id, physical)
        counts = {s: 0 for s in ("in_progress", "completed", "failed", "cancelled")}
        for f in files:
            counts[f["status"]] += 1
        usage = sum(int(f["usage_bytes"]) for f in files)  # the uploads' sizes
        return {
            "id": vs_id,
            "object": "vector_store",
            "name": name,
            "created_at": created_at,
            "last_active_at": created_at,
            "status": "in_progress" if counts["in_progress"] else "completed",
            "usage_bytes": usage,
            "file_counts": {**counts, "total": sum(counts.values())},
            "metadata": metadata or {},
            "expires_after": None,
            "expires_at": None,
        }

    def all(self) -> list[dict[str, Any]]:
        collections = self._collections()
        created = self.rag.uploads().vector_stores()
        ids = sorted(set(collections) | set(created))
        return [self._object(i, collections.get(i), created) for i in ids]

    def get(self, vs_id: str) -> dict[str, Any]:
        collections = self._collections()
        created = self.rag.uploads().vector_stores()
        if vs_id not in collections and vs_id not in created:
            raise VectorStoreNotFound(
                f"no vector store {vs_id!r}; GET /v1/vector_stores lists them"
            )
        return self._object(vs_id, collections.get(vs_id), created)

    def create(self, name: str | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
        """A new (empty) vector store: id = `name` when it is a valid collection name not yet
        taken, else vs_<hex> with `name` as its display name."""
        vs_id = "vs_" + secrets.token_hex(12)
        if name:
            try:
                check_name(name)
                if (
                    name not in self._collections()
                    and name not in self.rag.uploads().vector_stores()
                ):
                    vs_id = name
            except ImpetusError:
                pass
        self.rag.uploads().add_vector_store(vs_id, name or vs_id, metadata)
        return self.get(vs_id)

    def delete(self, vs_id: str) -> dict[str, Any]:
        """Delete the collection's points (and lineage's record of them) and forget the store."""
        self.get(vs_id)
        if any(j.active and j.collection == vs_id for j in self._runs()):
            raise VectorStoreBusy(f"an index run into {vs_id!r} is in progress; retry when it ends")
        physical = self._collections().get(vs_id)
        if physical is not None:
            store = self.rag.retriever().store
            docs = self._documents(physical)
            for doc_id, _ in docs:
                store.delete(physical, doc_id=doc_id)
            lin = self.rag._lineage()
            if lin is not None:
                with lin:
                    lin.drop_collection(physical)
        self.rag.uploads().delete_vector_store(vs_id)
        return {"id": vs_id, "object": "vector_store.deleted", "deleted": True}

    def _runs(self) -> list[Any]:
        return self.rag.runner.runs() if self.rag.runner is not None else []

    # -- files ----------------------------------------------------------------------------------

    async def add_file(self, vs_id: str, file_id: str) -> dict[str, Any]:
        """Start an index run of upload `file_id` into the collection `vs_id`."""
        uploads = await anyio.to_thread.run_sync(self.rag.uploads)
        rec = await anyio.to_thread.run_sync(uploads.get, file_id)
        if vs_id not in uploads.vector_stores():
            await anyio.to_thread.run_sync(self.get, vs_id)  # 404 unless a collection
        check_name(vs_id)
        job = await self.rag.start_index([], vs_id, False, [file_id])
        row = StoreFile(vs_id, file_id, job.id, "in_progress", None, rec.bytes, int(time.time()))
        await anyio.to_thread.run_sync(uploads.put_store_file, row)
        return self._file_object(row)

    def _refresh(self, row: StoreFile) -> StoreFile:
        """The row with its run's outcome, saved once the run ended."""
        if row.status != "in_progress" or self.rag.runner is None or row.run_id is None:
            return row
        job = self.rag.runner.get(row.run_id)
        if job is None or job.active:
            return row
        failed = job.status == "failed" or bool(
            (job.summary or {}).get("documents", {}).get("failed")
        )
        row.status = "failed" if failed else "completed"
        if failed:
            row.last_error = self.rag.roots.scrub(
                job.error or "the file could not be parsed or indexed", self.rag.settings.data_dir
            )
        self.rag.uploads().put_store_file(row)
        return row

    def _file_object(self, row: StoreFile) -> dict[str, Any]:
        return {
            "id": row.file_id,
            "object": "vector_store.file",
            "vector_store_id": row.vector_store_id,
            "created_at": row.created_at,
            "status": row.status,
            "last_error": (
                {"code": "invalid_file", "message": row.last_error} if row.last_error else None
            ),
            "usage_bytes": row.bytes,
            "attributes": {},
            "chunking_strategy": {"type": "other"},
        }

    def _files(self, vs_id: str, physical: str | None) -> list[dict[str, Any]]:
        """Files added through the API (with their run's status), then the collection's other
        documents (indexed from root paths: completed)."""
        rows = [self._refresh(r) for r in self.rag.uploads().store_files(vs_id)]
        out = {r.file_id: self._file_object(r) for r in rows}
        for _, source in self._documents(physical):
            fid, _ = file_ref(source, self.rag.roots)
            if fid not in out:
                row = StoreFile(vs_id, fid, None, "completed", None, 0, 0)
                out[fid] = self._file_object(row)
        return list(out.values())

    def files(self, vs_id: str) -> list[dict[str, Any]]:
        self.get(vs_id)
        return self._files(vs_id, self._collections().get(vs_id))

    def file(self, vs_id: str, file_id: str) -> dict[str, Any]:
        for f in self.files(vs_id):
            if f["id"] == file_id:
                return f
        raise VectorStoreNotFound(f"no file {file_id!r} in vector store {vs_id!r}")

    # -- search ---------------------------------------------------------------------------------

    async def search(
        self, vs_id: str, query: str, k: int, filters: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The hybrid retriever's hits as vector_store.search results (none yet: empty)."""
        await anyio.to_thread.run_sync(self.get, vs_id)
        where = await anyio.to_thread.run_sync(self._filter, filters)
        if vs_id not in await anyio.to_thread.run_sync(self._collections):
            return []  # created, nothing indexed yet
        hits = await self.rag.search(query, collection=vs_id, k=k, filter=where)
        return [self._result(h) for h in hits]

    def _result(self, hit: SearchHit) -> dict[str, Any]:
        file_id, filename = file_ref(hit.source, self.rag.roots)
        attributes: dict[str, Any] = {
            "chunk_id": hit.chunk_id,
            "source": self.rag.roots.display(hit.source),
        }
        if hit.title:
            attributes["title"] = hit.title
        if hit.section:
            attributes["section"] = hit.section
        return {
            "file_id": file_id,
            "filename": filename,
            "score": hit.score,
            "attributes": attributes,
            "content": [{"type": "text", "text": hit.text}],
        }

    def _filter(self, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        """OpenAI's comparison filter `{"type": "eq"|"in", "key", "value"}` (or an `and` of
        them) onto the retriever's: keys `source` (as results show it), `doc_id`, and `file_id`
        of an upload; other keys are a 400 from the retriever."""
        if not filters:
            return None
        out: dict[str, Any] = {}
        uploads = self.rag.uploads()

        def upload_source(file_id: Any) -> str:
            return str(uploads.path(uploads.get(str(file_id))).resolve())

        def add(f: dict[str, Any]) -> None:
            kind, key, value = f.get("type"), str(f.get("key")), f.get("value")
            if kind == "and":
                for sub in f.get("filters") or []:
                    add(sub)
            elif kind in ("eq", "in") and key == "file_id":
                values = value if isinstance(value, list) else [value]
                out["source"] = [upload_source(v) for v in values]
            elif kind in ("eq", "in"):
                out[key] = value
            else:
                _unsupported(kind)

        add(filters)
        return out


def _unsupported(kind: Any) -> None:
    from pipelines.retrieve import RetrievalError

    raise RetrievalError(
        f"filter type {kind!r} is not supported here: use eq or in (or and of them) on "
        "source, doc_id or file_id"
    )
