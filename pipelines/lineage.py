"""Lineage in DuckDB (data_dir/lineage.duckdb): every point traced to its chunk, document version,
pipeline version and the Prefect flow run that wrote it.

    from pipelines.lineage import Lineage
    with Lineage.open(settings) as lineage:
        lineage.trace("3c5e...")            # a chunk id (= point id) or a document's path

Tables (keyed by the *physical* collection, so blue/green versions of one collection coexist):

    runs               one row per flow run: status, pipeline version and its inputs, counts
    documents          a document's current indexed version (content hash + pipeline version),
                       or deleted
    document_versions  each (content hash, pipeline version) tried: indexed | quarantined | failed,
                       with the reason
    chunks             chunk id -> document version, position, text hash, tokens
    points             point id -> chunk, the run that wrote it, written_at, deleted_at
    quality_results    each Great Expectations suite run on a document: passed, failures

Crash safety comes from the order in which the flow calls this module: `record_chunks` (intent:
the points about to be written, `written_at` empty) → store upsert → `record_indexed` (commit:
the document's current version moves) → `stale_points` → store delete → `mark_deleted`. Whatever
step a process dies at, the next run finds the leftovers with `stale_points` (points not of their
document's current version, written or only intended) and the same deterministic ids, so it ends
in the state of an uninterrupted run. DuckDB admits one writer process (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipelines.errors import ImpetusError
from pipelines.records import Chunk, SourceDocument, doc_id_for

if TYPE_CHECKING:
    import duckdb

    from pipelines.settings import Settings

DocState = Literal["new", "changed", "unchanged"]
VersionStatus = Literal["indexed", "quarantined", "failed"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id VARCHAR PRIMARY KEY,
    collection VARCHAR,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    status VARCHAR,              -- running | completed | failed | crashed
    pipeline_version VARCHAR,
    version_inputs JSON,
    counts JSON
);
-- Who owns a running run (pipelines/owner.py) and, for a crashed one, when and why; added later,
-- so files made before them get them here.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS owner VARCHAR;     -- "host:pid:start time" of the writer
ALTER TABLE runs ADD COLUMN IF NOT EXISTS crashed_at TIMESTAMP;
ALTER TABLE runs ADD COLUMN IF NOT EXISTS crash_reason VARCHAR;
CREATE TABLE IF NOT EXISTS documents (
    collection VARCHAR,
    doc_id VARCHAR,
    source VARCHAR,
    content_hash VARCHAR,        -- the version currently indexed
    pipeline_version VARCHAR,
    deleted BOOLEAN,
    run_id VARCHAR,              -- the run that last changed this row
    updated_at TIMESTAMP,
    PRIMARY KEY (collection, doc_id)
);
CREATE TABLE IF NOT EXISTS document_versions (
    collection VARCHAR,
    doc_id VARCHAR,
    source VARCHAR,
    content_hash VARCHAR,
    pipeline_version VARCHAR,
    status VARCHAR,              -- indexed | quarantined | failed
    reason VARCHAR,
    chunks INTEGER,
    run_id VARCHAR,
    recorded_at TIMESTAMP,
    PRIMARY KEY (collection, doc_id, content_hash, pipeline_version)
);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id VARCHAR PRIMARY KEY,
    doc_id VARCHAR,
    content_hash VARCHAR,
    pipeline_version VARCHAR,
    idx INTEGER,
    text_hash VARCHAR,
    token_count INTEGER,
    run_id VARCHAR               -- the run that first produced it
);
CREATE TABLE IF NOT EXISTS points (
    collection VARCHAR,
    point_id VARCHAR,
    chunk_id VARCHAR,
    run_id VARCHAR,              -- the run that (last) wrote it
    written_at TIMESTAMP,        -- empty while only intended (crash between intent and upsert)
    deleted_at TIMESTAMP,
    PRIMARY KEY (collection, point_id)
);
CREATE TABLE IF NOT EXISTS quality_results (
    run_id VARCHAR,
    collection VARCHAR,
    doc_id VARCHAR,
    content_hash VARCHAR,
    stage VARCHAR,               -- chunks | vectors
    passed BOOLEAN,
    failures JSON,
    recorded_at TIMESTAMP
);
"""


class LineageError(ImpetusError):
    """The lineage database cannot be opened or does not know what was asked."""


class LineageLocked(LineageError):
    """Another live process holds the lineage database (DuckDB admits one writer process)."""


class LineageCorrupt(LineageError):
    """The lineage database is not a readable DuckDB file (truncated, overwritten)."""


def _open_error(path: Path, e: Exception) -> LineageError:
    """What went wrong opening `path`, said with the file and the command that recovers."""
    import re

    text = str(e)
    if "lock" in text.lower():
        holder = re.search(r"held in (.+?) \(PID (\d+)\)", text)
        # The program's name only: messages can reach clients, paths of the server must not.
        exe = Path(holder.group(1)).name if holder else ""
        who = f"process {holder.group(2)} ({exe})" if holder else "another process"
        return LineageLocked(
            f"the lineage database {path} is held by {who}: DuckDB admits one writer. Stop it, "
            "or send the work to the server that owns it (`impetus ingest` does); "
            "`impetus doctor` shows who holds what"
        )
    return LineageCorrupt(
        f"the lineage database {path} cannot be read ({text.removeprefix('IO Error: ')}). "
        "Run `impetus doctor --repair`: it moves the file aside and rebuilds lineage from the "
        "vector store"
    )


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Lineage:
    """The lineage database of one data_dir; one writer process at a time."""

    def __init__(self, path: Path | str, *, read_only: bool = False):
        import duckdb

        self.path = Path(path)
        try:
            if not read_only:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db: duckdb.DuckDBPyConnection = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as e:
            raise _open_error(self.path, e) from None
        if not read_only:
            try:
                self.db.execute(_SCHEMA)
            except duckdb.Error as e:
                self.db.close()
                raise _open_error(self.path, e) from None

    @classmethod
    def open(cls, settings: Settings, *, read_only: bool = False) -> Lineage:
        return cls(settings.data_dir / "lineage.duckdb", read_only=read_only)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        self.db.execute("BEGIN TRANSACTION")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- runs ----------------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        collection: str,
        pipeline_version: str,
        version_inputs: dict[str, Any] | None = None,
    ) -> None:
        """Open a run; any run still marked running was killed (one writer), so mark it crashed."""
        from pipelines.owner import this_process

        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status = 'crashed', crashed_at = ?, crash_reason = ? "
                "WHERE status = 'running' AND run_id <> ?",
                [_now(), "its process died: another run started on this data_dir", run_id],
            )
            db.execute(
                """INSERT INTO runs (run_id, collection, started_at, finished_at, status,
                       pipeline_version, version_inputs, counts, owner)
                   VALUES (?, ?, ?, NULL, 'running', ?, ?, NULL, ?)
                   ON CONFLICT (run_id) DO UPDATE SET status = 'running', finished_at = NULL,
                   owner = excluded.owner, crashed_at = NULL, crash_reason = NULL""",
                [
                    run_id,
                    collection,
                    _now(),
                    pipeline_version,
                    json.dumps(version_inputs or {}),
                    this_process(),
                ],
            )

    def mark_crashed(self, is_alive: Callable[[str | None], bool]) -> list[dict[str, Any]]:
        """Mark crashed each run still `running` whose owner (`owner` column) `is_alive` says is
        gone; returns those runs (run_id, collection, owner, crashed_at, crash_reason)."""
        rows = self.db.execute(
            "SELECT run_id, collection, owner FROM runs WHERE status = 'running'"
        ).fetchall()
        crashed = []
        for run_id, collection, owner in rows:
            if is_alive(owner):
                continue
            when = _now()
            why = (
                f"its process ({owner}) is gone; the run never finished"
                if owner
                else "its process is gone (no owner recorded); the run never finished"
            )
            self.db.execute(
                "UPDATE runs SET status = 'crashed', crashed_at = ?, crash_reason = ?, "
                "finished_at = coalesce(finished_at, ?) WHERE run_id = ? AND status = 'running'",
                [when, why, when, run_id],
            )
            crashed.append(
                {
                    "run_id": run_id,
                    "collection": collection,
                    "owner": owner,
                    "crashed_at": str(when),
                    "crash_reason": why,
                }
            )
        return crashed

    def finish_run(self, run_id: str, status: str, counts: dict[str, Any]) -> None:
        self.db.execute(
            "UPDATE runs SET status = ?, finished_at = ?, counts = ? WHERE run_id = ?",
            [status, _now(), json.dumps(counts), run_id],
        )

    # --- documents -----------------------------------------------------------------------------

    def classify(
        self, collection: str, docs: Sequence[SourceDocument], pipeline_version: str
    ) -> dict[str, DocState]:
        """new | changed | unchanged per doc id, against the currently indexed versions."""
        rows = self.db.execute(
            "SELECT doc_id, content_hash, pipeline_version FROM documents "
            "WHERE collection = ? AND NOT deleted",
            [collection],
        ).fetchall()
        current = {r[0]: (r[1], r[2]) for r in rows}
        states: dict[str, DocState] = {}
        for doc in docs:
            known = current.get(doc.doc_id)
            if known is None:
                states[doc.doc_id] = "new"
            elif known == (doc.content_hash, pipeline_version):
                states[doc.doc_id] = "unchanged"
            else:
                states[doc.doc_id] = "changed"
        return states

    def record_chunks(
        self, run_id: str, collection: str, chunks: Sequence[Chunk], pipeline_version: str
    ) -> None:
        """Intent, before the upsert: these chunks and the points about to be written."""
        with self._tx() as db:
            db.executemany(
                "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [
                    (
                        c.chunk_id,
                        c.doc_id,
                        c.content_hash,
                        pipeline_version,
                        c.index,
                        text_hash(c.text),
                        c.token_count,
                        run_id,
                    )
                    for c in chunks
                ],
            )
            db.executemany(
                """INSERT INTO points VALUES (?, ?, ?, ?, NULL, NULL)
                   ON CONFLICT (collection, point_id) DO UPDATE
                   SET run_id = excluded.run_id, deleted_at = NULL""",
                [(collection, c.chunk_id, c.chunk_id, run_id) for c in chunks],
            )

    def record_indexed(
        self,
        run_id: str,
        collection: str,
        doc: SourceDocument,
        pipeline_version: str,
        point_ids: Sequence[str],
        quality: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Commit, after the upsert: the points are written and this version is now current.

        `quality`: the document's suite results (`QualityResult.to_dict()` plus a `stage`)."""
        now = _now()
        with self._tx() as db:
            self._quality(db, run_id, collection, doc, quality)
            if point_ids:
                db.execute(
                    "UPDATE points SET written_at = ?, run_id = ? "
                    "WHERE collection = ? AND point_id IN (SELECT unnest(?))",
                    [now, run_id, collection, list(point_ids)],
                )
            self._version(
                db, run_id, collection, doc, pipeline_version, "indexed", None, len(point_ids)
            )
            db.execute(
                """INSERT INTO documents VALUES (?, ?, ?, ?, ?, FALSE, ?, ?)
                   ON CONFLICT (collection, doc_id) DO UPDATE SET source = excluded.source,
                   content_hash = excluded.content_hash,
                   pipeline_version = excluded.pipeline_version, deleted = FALSE,
                   run_id = excluded.run_id, updated_at = excluded.updated_at""",
                [
                    collection,
                    doc.doc_id,
                    doc.source,
                    doc.content_hash,
                    pipeline_version,
                    run_id,
                    now,
                ],
            )

    def record_failure(
        self,
        run_id: str,
        collection: str,
        doc: SourceDocument,
        pipeline_version: str,
        status: VersionStatus,
        reason: str,
        quality: Sequence[dict[str, Any]] = (),
    ) -> None:
        """A version that could not be indexed; the document's current version stays as it was."""
        with self._tx() as db:
            self._quality(db, run_id, collection, doc, quality)
            self._version(db, run_id, collection, doc, pipeline_version, status, reason, None)

    def _version(
        self,
        db: duckdb.DuckDBPyConnection,
        run_id: str,
        collection: str,
        doc: SourceDocument,
        pipeline_version: str,
        status: str,
        reason: str | None,
        chunks: int | None,
    ) -> None:
        db.execute(
            """INSERT INTO document_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (collection, doc_id, content_hash, pipeline_version) DO UPDATE
               SET status = excluded.status, reason = excluded.reason, chunks = excluded.chunks,
               run_id = excluded.run_id, recorded_at = excluded.recorded_at""",
            [
                collection,
                doc.doc_id,
                doc.source,
                doc.content_hash,
                pipeline_version,
                status,
                reason,
                chunks,
                run_id,
                _now(),
            ],
        )

    def _quality(
        self,
        db: duckdb.DuckDBPyConnection,
        run_id: str,
        collection: str,
        doc: SourceDocument,
        results: Sequence[dict[str, Any]],
    ) -> None:
        if results:
            db.executemany(
                "INSERT INTO quality_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        run_id,
                        collection,
                        doc.doc_id,
                        doc.content_hash,
                        r.get("stage") or r.get("suite"),
                        bool(r["passed"]),
                        json.dumps(r.get("failures", []), default=str),
                        _now(),
                    )
                    for r in results
                ],
            )

    def mark_missing(
        self, run_id: str, collection: str, roots: Iterable[str], present: Iterable[str]
    ) -> list[str]:
        """Mark deleted the documents under `roots` whose files are gone; returns their ids."""
        roots = [str(Path(r).resolve()) for r in roots]
        present_ids = set(present)
        rows = self.db.execute(
            "SELECT doc_id, source FROM documents WHERE collection = ? AND NOT deleted",
            [collection],
        ).fetchall()
        gone = [
            doc_id
            for doc_id, source in rows
            if doc_id not in present_ids
            and any(source == r or source.startswith(r.rstrip("/") + "/") for r in roots)
        ]
        if gone:
            self.db.execute(
                "UPDATE documents SET deleted = TRUE, run_id = ?, updated_at = ? "
                "WHERE collection = ? AND doc_id IN (SELECT unnest(?))",
                [run_id, _now(), collection, gone],
            )
        return gone

    # --- points --------------------------------------------------------------------------------

    def stale_points(self, collection: str) -> list[str]:
        """Points (written or only intended) not of their document's current version."""
        rows = self.db.execute(
            """SELECT p.point_id FROM points p JOIN chunks c ON c.chunk_id = p.chunk_id
               LEFT JOIN documents d ON d.collection = p.collection AND d.doc_id = c.doc_id
               WHERE p.collection = ? AND p.deleted_at IS NULL AND (
                   d.doc_id IS NULL OR d.deleted OR c.content_hash <> d.content_hash
                   OR c.pipeline_version <> d.pipeline_version)
               ORDER BY p.point_id""",
            [collection],
        ).fetchall()
        return [r[0] for r in rows]

    def mark_deleted(self, collection: str, point_ids: Sequence[str]) -> int:
        """Record that these points are gone from the store."""
        if not point_ids:
            return 0
        self.db.execute(
            "UPDATE points SET deleted_at = ? WHERE collection = ? "
            "AND point_id IN (SELECT unnest(?)) AND deleted_at IS NULL",
            [_now(), collection, list(point_ids)],
        )
        return len(point_ids)

    def live_points(self, collection: str) -> set[str]:
        """Points lineage says are in the store: written and not deleted."""
        rows = self.db.execute(
            "SELECT point_id FROM points WHERE collection = ? "
            "AND written_at IS NOT NULL AND deleted_at IS NULL",
            [collection],
        ).fetchall()
        return {r[0] for r in rows}

    def drop_collection(self, collection: str) -> None:
        """Record that a physical collection was dropped: its points and documents are gone."""
        now = _now()
        with self._tx() as db:
            db.execute(
                "UPDATE points SET deleted_at = ? WHERE collection = ? AND deleted_at IS NULL",
                [now, collection],
            )
            db.execute(
                "UPDATE documents SET deleted = TRUE, updated_at = ? WHERE collection = ?",
                [now, collection],
            )

    def last_run_at(self, collection: str) -> datetime | None:
        """When a run last started on a physical collection (orders versions for retention)."""
        row = self.db.execute(
            "SELECT max(started_at) FROM runs WHERE collection = ?", [collection]
        ).fetchone()
        return row[0] if row else None

    def current_documents(self, collection: str) -> list[tuple[str, str]]:
        """(doc_id, source) of the documents indexed in `collection`, not deleted."""
        return [
            (r[0], r[1])
            for r in self.db.execute(
                "SELECT doc_id, source FROM documents WHERE collection = ? AND NOT deleted "
                "ORDER BY source",
                [collection],
            ).fetchall()
        ]

    # --- reads ---------------------------------------------------------------------------------

    def runs(self, *, run_id: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        """The last `limit` runs, newest first (or the one `run_id`): collection, status,
        pipeline version, start and end, and the run's summary."""
        cols = {d[0] for d in self.db.execute("SELECT * FROM runs LIMIT 0").description}
        crash_cols = "crashed_at, crash_reason" if "crashed_at" in cols else "NULL, NULL"
        sql = (
            "SELECT run_id, collection, status, pipeline_version, started_at, finished_at, counts, "
            f"{crash_cols} FROM runs"
        )
        args: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args.append(run_id)
        sql += " ORDER BY started_at DESC LIMIT ?"
        args.append(limit)
        out = []
        for (
            rid,
            coll,
            status,
            version,
            started,
            finished,
            counts,
            crashed_at,
            crash_reason,
        ) in self.db.execute(sql, args).fetchall():
            row = {
                "run_id": rid,
                "collection": coll,
                "status": status,
                "pipeline_version": version,
                "started_at": str(started) if started else None,
                "finished_at": str(finished) if finished else None,
                "summary": json.loads(counts) if isinstance(counts, str) else counts,
            }
            if status == "crashed":
                row["crashed_at"] = str(crashed_at) if crashed_at else None
                row["error"] = crash_reason or "its process died before the run finished"
            out.append(row)
        return out

    def pipeline_versions(self) -> dict[str, str]:
        """Physical collection -> the pipeline version of its latest run."""
        rows = self.db.execute(
            "SELECT collection, arg_max(pipeline_version, started_at) FROM runs GROUP BY collection"
        ).fetchall()
        return {c: v for c, v in rows}

    def content_hashes(self, collection: str) -> dict[str, str]:
        """doc_id -> the content hash currently indexed, for the documents not deleted."""
        rows = self.db.execute(
            "SELECT doc_id, content_hash FROM documents WHERE collection = ? AND NOT deleted",
            [collection],
        ).fetchall()
        return {d: h for d, h in rows}

    def documents(self, source_suffix: str = "") -> list[dict[str, Any]]:
        """Document rows (collection, doc_id, source, content_hash, deleted) whose source ends
        with `source_suffix`."""
        return self._dicts(
            "SELECT collection, doc_id, source, content_hash, deleted FROM documents "
            "WHERE source LIKE ? ORDER BY source",
            ["%" + source_suffix],
        )

    def point_history(self, doc_id: str) -> list[dict[str, Any]]:
        """Every point ever written for a document's chunks: content_hash, written_at, deleted_at."""
        return self._dicts(
            "SELECT c.content_hash, p.written_at, p.deleted_at FROM points p "
            "JOIN chunks c ON c.chunk_id = p.chunk_id WHERE c.doc_id = ?",
            [doc_id],
        )

    # --- trace ---------------------------------------------------------------------------------

    def trace(self, chunk_id_or_path: str, collection: str | None = None) -> list[dict[str, Any]]:
        """The chain point → chunk → document version → run, for a chunk id or a document path.

        For a path: one chain per chunk of each of the document's versions that has points
        (current and deleted), plus one per version that failed or was quarantined."""
        try:
            chunk_ids: list[str] | None = [str(uuid.UUID(chunk_id_or_path))]
            doc_id = None
        except ValueError:
            chunk_ids = None
            doc_id = doc_id_for(str(Path(chunk_id_or_path).expanduser().resolve()))
        args: list[Any] = [chunk_ids] if chunk_ids else [doc_id]
        where = "c.chunk_id IN (SELECT unnest(?))" if chunk_ids else "c.doc_id = ?"
        if collection:
            where += " AND p.collection = ?"
            args.append(collection)
        rows = self._dicts(
            f"""SELECT p.point_id, p.collection, p.written_at, p.deleted_at, p.run_id AS point_run,
                   c.chunk_id, c.doc_id, c.content_hash, c.pipeline_version, c.idx, c.text_hash,
                   c.token_count, v.source, v.status, v.reason, v.chunks,
                   d.content_hash = c.content_hash AND d.pipeline_version = c.pipeline_version
                       AND NOT d.deleted AS is_current,
                   r.run_id, r.started_at, r.finished_at, r.status AS run_status
                FROM chunks c JOIN points p ON p.chunk_id = c.chunk_id
                LEFT JOIN document_versions v ON v.collection = p.collection
                    AND v.doc_id = c.doc_id AND v.content_hash = c.content_hash
                    AND v.pipeline_version = c.pipeline_version
                LEFT JOIN documents d ON d.collection = p.collection AND d.doc_id = c.doc_id
                LEFT JOIN runs r ON r.run_id = p.run_id
                WHERE {where}
                ORDER BY p.collection, p.written_at NULLS LAST, c.idx""",
            args,
        )
        chains: list[dict[str, Any]] = [
            {
                "point": {
                    "point_id": r["point_id"],
                    "collection": r["collection"],
                    "written_at": r["written_at"],
                    "deleted_at": r["deleted_at"],
                },
                "chunk": {
                    "chunk_id": r["chunk_id"],
                    "index": r["idx"],
                    "text_hash": r["text_hash"],
                    "token_count": r["token_count"],
                },
                "document_version": {
                    "doc_id": r["doc_id"],
                    "source": r["source"],
                    "content_hash": r["content_hash"],
                    "pipeline_version": r["pipeline_version"],
                    "status": r["status"],
                    "reason": r["reason"],
                    "current": bool(r["is_current"]),
                },
                "run": {
                    "run_id": r["run_id"] or r["point_run"],
                    "started_at": r["started_at"],
                    "finished_at": r["finished_at"],
                    "status": r["run_status"],
                },
            }
            for r in rows
        ]
        if doc_id is not None:
            failed = self._dicts(
                """SELECT v.*, r.started_at, r.finished_at, r.status AS run_status
                   FROM document_versions v LEFT JOIN runs r ON r.run_id = v.run_id
                   WHERE v.doc_id = ? AND v.status <> 'indexed' ORDER BY v.recorded_at""",
                [doc_id],
            )
            chains += [
                {
                    "point": None,
                    "chunk": None,
                    "document_version": {
                        k: f[k]
                        for k in (
                            "doc_id",
                            "source",
                            "content_hash",
                            "pipeline_version",
                            "status",
                            "reason",
                        )
                    }
                    | {"current": False},
                    "run": {
                        "run_id": f["run_id"],
                        "started_at": f["started_at"],
                        "finished_at": f["finished_at"],
                        "status": f["run_status"],
                    },
                }
                for f in failed
            ]
        if not chains:
            raise LineageError(
                f"no lineage for {chunk_id_or_path!r}: not a known chunk id or ingested path"
            )
        return chains

    def _dicts(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        cur = self.db.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
