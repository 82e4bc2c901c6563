"""`impetus doctor`: check a data_dir's stores and lineage, and repair what can be repaired.

    report = diagnose(settings, repair=False)    # what is wrong, and what to do about it
    report = diagnose(settings, repair=True)     # ... and what it did

Checks, in order (each a `Finding`; a check that needs a store it cannot open is skipped):

- `leftovers`: files a killed process leaves in the embedded store (a dropped collection's
  `.trash-*` folder, a half-written `.aliases.json.*.tmp`); repair deletes them. Lock files
  themselves are flock/fcntl locks and die with their process, so a lock file left behind is not
  held and blocks nothing; a held one names its live process (pipelines/locks.py).
- `store`: the embedded vector store opens (not held by another live process).
- `lineage`: lineage.duckdb opens (not held, not corrupt); repair moves a corrupt file aside
  (`lineage.duckdb.corrupt-<time>`) and starts a new one, which the checks below then fill from
  the store's points (their payloads carry chunk, document and pipeline version).
- `runs`: runs left `running` by a process that is gone; repair marks them crashed (the caller,
  flows/commands/doctor.py, also sets their Prefect flow runs to Crashed).
- `aliases`: an alias pointing at a missing physical collection; repair points it at the newest
  other version of that collection, else recreates the target empty (its documents are then
  re-indexed by the next ingest).
- `lineage_without_points`: points lineage says are written that the store lacks; repair marks
  them deleted and their documents not indexed, so the next ingest of their sources redoes them.
- `points_without_lineage`: points in the store lineage has no row for; repair adopts those of a
  document's current version (or of a document lineage does not know) into lineage and deletes
  the others (an old version's, a pruned document's).

Point ids are deterministic, so after a repair the next `impetus ingest` of the same sources
converges to the state of a clean run.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.lineage import Lineage
    from pipelines.settings import Settings
    from pipelines.vectorstore import PointRecord, VectorStore


@dataclass
class Finding:
    """One check's outcome: `ok`, or a problem with what was done about it (`repaired`) or what
    the operator should do (`action`)."""

    check: str
    ok: bool
    detail: str
    repaired: str | None = None
    action: str | None = None
    items: list[Any] = field(default_factory=list)


@dataclass
class Report:
    data_dir: str
    repair: bool
    findings: list[Finding] = field(default_factory=list)
    # Runs this repair marked crashed: the caller sets their Prefect flow runs to Crashed.
    crashed_runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is left to do: every problem found was repaired."""
        return all(f.ok or f.repaired for f in self.findings)

    def add(self, check: str, ok: bool, detail: str, **kw: Any) -> Finding:
        finding = Finding(check, ok, detail, **kw)
        self.findings.append(finding)
        return finding

    def to_dict(self) -> dict[str, Any]:
        return {
            "data_dir": self.data_dir,
            "repair": self.repair,
            "ok": self.ok,
            "findings": [asdict(f) for f in self.findings],
            "crashed_runs": self.crashed_runs,
        }


def diagnose(
    settings: Settings,
    *,
    repair: bool = False,
    is_alive: Callable[[str | None], bool] | None = None,
) -> Report:
    """Run every check on `settings.data_dir`; with `repair`, repair what can be repaired."""
    from pipelines.owner import is_alive as owner_alive

    report = Report(str(settings.data_dir), repair)
    _leftovers(settings, report)
    store = _open_store(settings, report)
    lineage = _open_lineage(settings, report)
    try:
        if lineage is not None:
            _runs(lineage, report, is_alive or owner_alive)
        if store is not None and lineage is not None:
            _aliases(store, lineage, report)
            _points(store, lineage, report)
        elif store is None or lineage is None:
            report.add(
                "points",
                True,
                "skipped: the store and lineage must both open to compare them",
            )
    finally:
        if lineage is not None:
            lineage.close()
        if store is not None:
            store.close()
    return report


# --- opening ------------------------------------------------------------------------------------


def _leftovers(settings: Settings, report: Report) -> None:
    from pipelines.vectorstore import store_path

    root = store_path(settings)
    found = sorted(root.glob(".trash-*")) + sorted(root.glob(".aliases.json.*.tmp"))
    if not found:
        report.add("leftovers", True, f"no leftovers of killed processes in {root}")
        return
    names = [p.name for p in found]
    if report.repair:
        for p in found:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    report.add(
        "leftovers",
        False,
        f"{len(found)} leftover(s) of a killed process in {root}",
        repaired="deleted them" if report.repair else None,
        action=None if report.repair else "impetus doctor --repair",
        items=names,
    )


def _open_store(settings: Settings, report: Report) -> VectorStore | None:
    from pipelines.errors import ImpetusError
    from pipelines.vectorstore import create_store, store_path

    where = settings.vector_store.url or str(store_path(settings))
    try:
        store = create_store(settings)
    except ImpetusError as e:
        report.add("store", False, str(e), action="stop the process that holds it, then rerun")
        return None
    except Exception as e:  # a damaged shard: Qdrant's own error, named with its folder
        report.add(
            "store",
            False,
            f"the vector store at {where} cannot be opened: {type(e).__name__}: {e}",
            action="restore the folder from a backup, or move it aside and re-ingest",
        )
        return None
    report.add("store", True, f"the vector store at {where} opens")
    return store


def _open_lineage(settings: Settings, report: Report) -> Lineage | None:
    from pipelines.lineage import Lineage, LineageCorrupt, LineageError

    path = settings.data_dir / "lineage.duckdb"
    if not path.exists():
        report.add("lineage", True, f"no lineage database yet ({path})")
        return Lineage.open(settings) if report.repair else None
    try:
        lineage = Lineage.open(settings)
        try:
            check_readable(lineage)
        except LineageCorrupt:
            lineage.close()
            raise
    except LineageCorrupt as e:
        if not report.repair:
            report.add("lineage", False, str(e), action="impetus doctor --repair")
            return None
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        wal = path.with_name(path.name + ".wal")
        if wal.exists():
            os.replace(wal, aside.with_name(aside.name + ".wal"))
        report.add(
            "lineage",
            False,
            str(e),
            repaired=f"moved it aside to {aside.name} and started a new one, rebuilt from the "
            "store's points below",
        )
        return Lineage.open(settings)
    except LineageError as e:
        report.add("lineage", False, str(e), action="stop the process that holds it, then rerun")
        return None
    report.add("lineage", True, f"the lineage database {path} opens")
    return lineage


# --- checks -------------------------------------------------------------------------------------


def _runs(lineage: Lineage, report: Report, is_alive: Callable[[str | None], bool]) -> None:
    rows = lineage.db.execute(
        "SELECT run_id, owner FROM runs WHERE status = 'running' ORDER BY started_at"
    ).fetchall()
    dead = [run_id for run_id, owner in rows if not is_alive(owner)]
    if not dead:
        report.add("runs", True, f"no run left running by a dead process ({len(rows)} running)")
        return
    if report.repair:
        report.crashed_runs = lineage.mark_crashed(is_alive)
    report.add(
        "runs",
        False,
        f"{len(dead)} run(s) left running by a process that is gone",
        repaired="marked them crashed" if report.repair else None,
        action=None if report.repair else "impetus doctor --repair",
        items=dead,
    )


def _aliases(store: VectorStore, lineage: Lineage, report: Report) -> None:
    collections = set(store.collections())
    broken = {a: c for a, c in store.aliases().items() if c not in collections}
    if not broken:
        report.add("aliases", True, "every alias points at an existing collection")
        return
    done, left = [], []
    for alias, target in sorted(broken.items()):
        others = [c for c in collections if c.startswith(f"{alias}__")]
        others.sort(key=lambda c: str(lineage.last_run_at(c) or ""), reverse=True)
        if not report.repair:
            left.append(f"{alias} -> {target} (missing)")
        elif others:
            store.set_alias(alias, others[0])
            done.append(f"{alias} -> {others[0]} (was {target}, missing)")
        elif (dim := _dim_of(lineage, target)) is not None:
            store.ensure_collection(target, dim)
            done.append(f"{alias} -> {target} recreated empty; re-ingest its sources")
        else:
            left.append(f"{alias} -> {target} (missing; its dimension is unknown)")
    report.add(
        "aliases",
        False,
        f"{len(broken)} alias(es) point at a missing collection",
        repaired="; ".join(done) or None,
        action=f"impetus ingest PATH --collection ALIAS ({'; '.join(left)})" if left else None,
        items=sorted(broken),
    )


def _dim_of(lineage: Lineage, physical: str) -> int | None:
    row = lineage.db.execute(
        "SELECT version_inputs FROM runs WHERE collection = ? ORDER BY started_at DESC LIMIT 1",
        [physical],
    ).fetchone()
    try:
        return int(json.loads(row[0])["embedder"]["dim"]) if row else None
    except (KeyError, TypeError, ValueError):
        return None


def _points(store: VectorStore, lineage: Lineage, report: Report) -> None:
    in_store = set(store.collections())
    known = {
        r[0]
        for r in lineage.db.execute(
            "SELECT DISTINCT collection FROM points WHERE deleted_at IS NULL"
        ).fetchall()
    }
    missing: dict[str, list[str]] = {}
    orphans: dict[str, list[PointRecord]] = {}
    for coll in sorted(in_store | known):
        records = {p.id: p for p in store.scroll(coll)} if coll in in_store else {}
        rows = lineage.db.execute(
            "SELECT point_id, written_at IS NOT NULL FROM points "
            "WHERE collection = ? AND deleted_at IS NULL",
            [coll],
        ).fetchall()
        live = {pid for pid, written in rows if written}
        if gone := sorted(live - set(records)):
            missing[coll] = gone
        if strays := [records[p] for p in sorted(set(records) - {pid for pid, _ in rows})]:
            orphans[coll] = strays
    _missing(lineage, report, missing)
    _orphans(store, lineage, report, orphans)


def _missing(lineage: Lineage, report: Report, missing: dict[str, list[str]]) -> None:
    count = sum(len(v) for v in missing.values())
    if not count:
        report.add("lineage_without_points", True, "every point lineage records is in the store")
        return
    sources: set[str] = set()
    for coll, ids in missing.items():
        docs = [
            r[0]
            for r in lineage.db.execute(
                "SELECT DISTINCT c.doc_id FROM chunks c WHERE c.chunk_id IN "
                "(SELECT chunk_id FROM points WHERE collection = ? AND point_id IN "
                "(SELECT unnest(?)))",
                [coll, ids],
            ).fetchall()
        ]
        sources |= {
            r[0]
            for r in lineage.db.execute(
                "SELECT source FROM documents WHERE collection = ? AND doc_id IN (SELECT unnest(?))",
                [coll, docs],
            ).fetchall()
        }
        if report.repair:
            _in_tx(lineage, partial(_forget, collection=coll, point_ids=ids, doc_ids=docs))
    report.add(
        "lineage_without_points",
        False,
        f"{count} point(s) recorded in lineage are missing from the store "
        f"({', '.join(f'{c}: {len(v)}' for c, v in missing.items())})",
        repaired="marked them deleted and their documents not indexed; re-ingest: "
        + " ".join(sorted(sources))
        if report.repair
        else None,
        action=None if report.repair else "impetus doctor --repair, then impetus ingest PATH",
        items=sorted(sources),
    )


def _forget(db: Any, collection: str, point_ids: list[str], doc_ids: list[str]) -> None:
    now = _now()
    db.execute(
        "UPDATE points SET deleted_at = ? WHERE collection = ? AND point_id IN (SELECT unnest(?))",
        [now, collection, point_ids],
    )
    db.execute(
        "UPDATE documents SET deleted = TRUE, updated_at = ? "
        "WHERE collection = ? AND doc_id IN (SELECT unnest(?))",
        [now, collection, doc_ids],
    )


def _orphans(
    store: VectorStore, lineage: Lineage, report: Report, orphans: dict[str, list[PointRecord]]
) -> None:
    count = sum(len(v) for v in orphans.values())
    if not count:
        report.add("points_without_lineage", True, "every point in the store has lineage")
        return
    adopted = deleted = 0
    if report.repair:
        for coll, records in orphans.items():
            keep, drop = _sort_orphans(lineage, coll, records)
            if keep:
                _in_tx(lineage, partial(_adopt, collection=coll, points=keep))
            if drop:
                store.delete(coll, [p.id for p in drop])
            adopted, deleted = adopted + len(keep), deleted + len(drop)
    report.add(
        "points_without_lineage",
        False,
        f"{count} point(s) in the store have no lineage "
        f"({', '.join(f'{c}: {len(v)}' for c, v in orphans.items())})",
        repaired=f"adopted {adopted} of documents' current versions into lineage, deleted "
        f"{deleted} of old versions or pruned documents"
        if report.repair
        else None,
        action=None if report.repair else "impetus doctor --repair",
        items=sorted(p.id for v in orphans.values() for p in v)[:50],
    )


def _sort_orphans(
    lineage: Lineage, collection: str, records: list[PointRecord]
) -> tuple[list[PointRecord], list[PointRecord]]:
    """(points to adopt, points to delete): a document's current version is kept; a document
    lineage does not know keeps its most common version among the strays."""
    by_doc: dict[str, list[PointRecord]] = defaultdict(list)
    drop: list[PointRecord] = []
    for p in records:
        payload = p.payload or {}
        if payload.get("doc_id") and payload.get("content_hash") and payload.get("source"):
            by_doc[str(payload["doc_id"])].append(p)
        else:
            drop.append(p)
    keep: list[PointRecord] = []
    for doc_id, points in by_doc.items():
        row = lineage.db.execute(
            "SELECT content_hash, pipeline_version, deleted FROM documents "
            "WHERE collection = ? AND doc_id = ?",
            [collection, doc_id],
        ).fetchone()
        if row is not None and row[2]:
            drop += points
            continue
        if row is not None:
            current = (row[0], row[1])
        else:
            versions = Counter(_version(p) for p in points)
            current = versions.most_common(1)[0][0]
        for p in points:
            (keep if _version(p) == current else drop).append(p)
    return keep, drop


def _version(p: PointRecord) -> tuple[str, str]:
    payload = p.payload or {}
    return str(payload.get("content_hash")), str(payload.get("pipeline_version"))


def _adopt(db: Any, collection: str, points: list[PointRecord]) -> None:
    """Lineage rows for points found in the store: chunk, point, and (when lineage does not know
    the document) its current version, under one run that says a repair wrote them."""
    from pipelines.lineage import text_hash

    now = _now()
    run_id = str(uuid.uuid4())
    versions = Counter(_version(p)[1] for p in points)
    db.execute(
        "INSERT INTO runs (run_id, collection, started_at, finished_at, status, "
        "pipeline_version, version_inputs, counts) VALUES (?, ?, ?, ?, 'repaired', ?, ?, ?)",
        [
            run_id,
            collection,
            now,
            now,
            versions.most_common(1)[0][0],
            json.dumps({"repaired_by": "impetus doctor"}),
            json.dumps({"points_adopted": len(points)}),
        ],
    )
    per_doc: dict[str, list[PointRecord]] = defaultdict(list)
    for p in points:
        pl = p.payload or {}
        per_doc[str(pl["doc_id"])].append(p)
        db.execute(
            "INSERT INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                pl.get("chunk_id") or p.id,
                pl["doc_id"],
                pl["content_hash"],
                pl.get("pipeline_version"),
                pl.get("index"),
                text_hash(str(pl.get("text") or "")),
                pl.get("token_count"),
                run_id,
            ],
        )
        db.execute(
            """INSERT INTO points VALUES (?, ?, ?, ?, ?, NULL)
               ON CONFLICT (collection, point_id) DO UPDATE SET written_at = excluded.written_at,
               deleted_at = NULL, run_id = excluded.run_id""",
            [collection, p.id, pl.get("chunk_id") or p.id, run_id, now],
        )
    for doc_id, doc_points in per_doc.items():
        pl = doc_points[0].payload or {}
        known = db.execute(
            "SELECT 1 FROM documents WHERE collection = ? AND doc_id = ?", [collection, doc_id]
        ).fetchone()
        if known:
            continue
        db.execute(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, FALSE, ?, ?)",
            [collection, doc_id, pl["source"], pl["content_hash"], pl["pipeline_version"], run_id,
             now],
        )  # fmt: skip
        db.execute(
            """INSERT INTO document_versions VALUES (?, ?, ?, ?, ?, 'indexed', NULL, ?, ?, ?)
               ON CONFLICT (collection, doc_id, content_hash, pipeline_version) DO UPDATE
               SET status = 'indexed', chunks = excluded.chunks, run_id = excluded.run_id""",
            [collection, doc_id, pl["source"], pl["content_hash"], pl["pipeline_version"],
             len(doc_points), run_id, now],
        )  # fmt: skip


def _in_tx(lineage: Lineage, fn: Callable[[Any], None]) -> None:
    db = lineage.db
    db.execute("BEGIN TRANSACTION")
    try:
        fn(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC).replace(tzinfo=None)


def check_readable(lineage: Lineage) -> None:
    """Read every row of every table (DuckDB opens a truncated file and fails only when a query
    reaches a missing block); raise `LineageCorrupt` naming the file if any cannot be read."""
    import duckdb

    from pipelines.lineage import _open_error

    try:
        tables = [r[0] for r in lineage.db.execute("SHOW TABLES").fetchall()]
        for table in tables:
            lineage.db.execute(f'SELECT max(hash("{table}")) FROM "{table}"').fetchall()
    except duckdb.Error as e:
        raise _open_error(lineage.path, e) from None


def preflight(settings: Settings) -> None:
    """Raise the clear error of a lineage database that cannot be opened or read (corrupt, or
    held by another process) before a run starts, instead of a failure deep inside the run."""
    from pipelines.lineage import Lineage

    if (settings.data_dir / "lineage.duckdb").exists():
        with Lineage.open(settings) as lineage:
            check_readable(lineage)
