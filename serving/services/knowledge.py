"""What the dashboard's Knowledge page reads: collections with their versions and sizes, documents
with their status, a chunk's lineage, and the folders an index run may read. It only reads what
lineage (pipelines/lineage.py, DuckDB) and the vector store already record; every path leaves
here relative to its index root (pipelines/roots.py), never absolute.

Blocking (DuckDB, the store, the disk): call these in a worker thread.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    from pipelines.lineage import Lineage
    from serving.services.rag import RagService

log = structlog.get_logger(__name__)

MAX_FOLDERS = 500  # per root: the picker lists folders, it is not a file browser
MAX_DEPTH = 4


class ChunkNotFound(ImpetusError):
    """No lineage for this chunk id (404)."""


@contextmanager
def _lineage(rag: RagService) -> Iterator[Lineage | None]:
    """The lineage database when it exists (None before the first index run)."""
    from pipelines.lineage import Lineage

    if not (rag.settings.data_dir / "lineage.duckdb").is_file():
        yield None
        return
    try:
        lin = Lineage.open(rag.settings)
    except Exception as e:  # held by another process: the page shows less, it does not fail
        log.warning("knowledge.lineage_unavailable", error=str(e))
        yield None
        return
    with lin:
        yield lin


def _dir_size(path: Path) -> int | None:
    if not path.is_dir():
        return None
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with suppress(OSError):
                total += (Path(root) / name).stat().st_size
    return total


def _collection_size(rag: RagService, physical: str) -> int | None:
    """Bytes on disk of an embedded store's collection (None for a remote Qdrant)."""
    from pipelines.vectorstore import store_path

    vs = rag.settings.vector_store
    if vs.url:
        return None
    base = store_path(rag.settings)
    for candidate in (base / "collections" / physical, base / "collection" / physical):
        size = _dir_size(candidate)
        if size is not None:
            return size
    return None


def collections(rag: RagService) -> list[dict[str, Any]]:
    """Each collection (alias) with its physical versions, points, documents and size."""
    status = rag.status()
    rows = status["collections"]
    created: dict[str, Any] = {}
    documents: dict[str, int] = {}
    with _lineage(rag) as lin:
        if lin is not None:
            for coll, started in lin.db.execute(
                "SELECT collection, min(started_at) FROM runs GROUP BY collection"
            ).fetchall():
                created[coll] = started
            for coll, n in lin.db.execute(
                "SELECT collection, count(*) FROM documents WHERE NOT deleted GROUP BY collection"
            ).fetchall():
                documents[coll] = n
    store = rag.retriever().store if status["store"].get("owned") else None
    out = []
    for row in rows:
        physical = row["physical"]
        names = sorted({*row.get("versions", []), physical})
        versions = []
        for name in names:
            info = store.collection_info(name) if store is not None else None
            versions.append(
                {
                    "name": name,
                    "created_at": str(created[name]) if created.get(name) else None,
                    "active": name == physical,
                    "points": info.points if info is not None else None,
                }
            )
        out.append(
            {
                "name": row["name"],
                "physical": physical,
                "points": row["points"],
                "documents": documents.get(physical),
                "pipeline_version": row.get("pipeline_version"),
                "versions": versions,
                "size_bytes": _collection_size(rag, physical),
            }
        )
    return out


def _physical(rag: RagService, name: str) -> str:
    """The physical collection an alias names (CollectionNotFound when neither exists)."""
    from pipelines.vectorstore import CollectionNotFound
    from pipelines.vectorstore.base import check_name

    store = rag.retriever().store
    check_name(name)
    physical = store.aliases().get(name, name)
    if physical not in store.collections():
        raise CollectionNotFound(
            f"no collection {name!r}; GET /api/rag/collections lists them, `impetus ingest` makes one"
        )
    return physical


def documents(rag: RagService, name: str) -> list[dict[str, Any]]:
    """A collection's documents, each with the status of its latest version: indexed,
    quarantined or failed (with the reason lineage recorded), or deleted."""
    physical = _physical(rag, name)
    with _lineage(rag) as lin:
        if lin is None:
            return []
        rows = lin.db.execute(
            """SELECT v.doc_id, arg_max(v.source, v.recorded_at), arg_max(v.content_hash, v.recorded_at),
                      arg_max(v.status, v.recorded_at), arg_max(v.reason, v.recorded_at),
                      arg_max(v.chunks, v.recorded_at), arg_max(v.pipeline_version, v.recorded_at),
                      max(v.recorded_at), any_value(d.deleted)
               FROM document_versions v LEFT JOIN documents d
                 ON d.collection = v.collection AND d.doc_id = v.doc_id
               WHERE v.collection = ?
               GROUP BY v.doc_id ORDER BY 2""",
            [physical],
        ).fetchall()
    out = []
    for doc_id, source, content_hash, status, reason, chunks, version, at, deleted in rows:
        out.append(
            {
                "doc_id": doc_id,
                "source": rag.roots.display(source or ""),
                "content_hash": content_hash,
                "status": "deleted" if deleted and status == "indexed" else status,
                "reason": rag.roots.scrub(reason, rag.settings.data_dir) if reason else None,
                "chunks": chunks,
                "pipeline_version": version,
                "updated_at": str(at) if at else None,
            }
        )
    return out


def chunk(rag: RagService, chunk_id: str, prefect_ui_url: str | None) -> dict[str, Any]:
    """A chunk's text (from the store) and lineage: document version, pipeline version, run."""
    from pipelines.lineage import LineageError

    try:
        chunk_id = str(uuid.UUID(chunk_id))
    except ValueError:
        raise ChunkNotFound(f"{chunk_id!r} is not a chunk id (a UUID, as citations give)") from None
    with _lineage(rag) as lin:
        if lin is None:
            raise ChunkNotFound("no lineage yet: nothing has been indexed on this server")
        try:
            chains = lin.trace(chunk_id)
        except LineageError:
            raise ChunkNotFound(f"no chunk {chunk_id!r} in this server's lineage") from None
        live = [c for c in chains if c["point"] and not c["point"]["deleted_at"]]
        chain = (live or chains)[0]
        doc = chain["document_version"]
        hashes = [
            r[0]
            for r in lin.db.execute(
                "SELECT content_hash FROM document_versions WHERE doc_id = ? AND collection = ? "
                "AND status = 'indexed' GROUP BY content_hash ORDER BY min(recorded_at)",
                [doc["doc_id"], chain["point"]["collection"]],
            ).fetchall()
        ]
    physical = chain["point"]["collection"]
    aliases = {p: a for a, p in rag.retriever().store.aliases().items()}
    run_id = chain["run"]["run_id"]
    return {
        "chunk_id": chunk_id,
        "collection": aliases.get(physical, physical),
        "text": _chunk_text(rag, physical, doc["doc_id"], chunk_id),
        "source": rag.roots.display(doc["source"] or ""),
        "index": chain["chunk"]["index"],
        "token_count": chain["chunk"]["token_count"],
        "document": {
            "doc_id": doc["doc_id"],
            "path": rag.roots.display(doc["source"] or ""),
            "content_hash": doc["content_hash"],
            "version": hashes.index(doc["content_hash"]) + 1
            if doc["content_hash"] in hashes
            else None,
            "status": doc["status"],
            "current": doc["current"],
        },
        "pipeline_version": doc["pipeline_version"],
        "flow_run_id": run_id,
        "flow_run_url": f"{prefect_ui_url}/runs/flow-run/{run_id}"
        if prefect_ui_url and run_id
        else None,
        "run_status": chain["run"]["status"],
        "indexed_at": str(chain["point"]["written_at"]) if chain["point"]["written_at"] else None,
    }


def _chunk_text(rag: RagService, physical: str, doc_id: str, chunk_id: str) -> str | None:
    try:
        for point in rag.retriever().store.scroll(physical, {"doc_id": doc_id}):
            if str(point.id) == chunk_id:
                text = point.payload.get("text")
                return str(text) if text is not None else None
    except Exception as e:  # a deleted collection: the lineage still answers
        log.info("knowledge.chunk_text_unavailable", error=str(e))
    return None


def roots(rag: RagService) -> list[dict[str, Any]]:
    """The index roots (uploads aside: those are indexed by file id) and their folders, as
    `display` names them: `samples`, `samples/guides`, ... (hidden folders left out)."""
    out = []
    for root in rag.roots.roots:
        if root == rag.roots.uploads or not root.is_dir():
            continue
        folders = [root.name]
        truncated = False
        for current, dirs, _ in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            depth = len(Path(current).relative_to(root).parts)
            if depth >= MAX_DEPTH:
                dirs[:] = []
            for d in dirs:
                if len(folders) >= MAX_FOLDERS:
                    truncated = True
                    break
                folders.append(str(Path(root.name) / Path(current).relative_to(root) / d))
            if truncated:
                break
        out.append({"path": root.name, "folders": folders, "truncated": truncated})
    return out
