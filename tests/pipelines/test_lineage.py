"""Lineage in a real DuckDB file: classification, intent → commit → stale points, trace."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.lineage import Lineage, LineageError
from pipelines.records import Chunk, SourceDocument, chunk_id_for

PV = "pv1"


def _doc(path: Path, text: str) -> SourceDocument:
    path.write_text(text)
    return SourceDocument.from_path(path)


def _chunks(doc: SourceDocument, n: int, pv: str = PV) -> list[Chunk]:
    return [
        Chunk(
            chunk_id_for(doc.doc_id, doc.content_hash, pv, i),
            doc.doc_id,
            doc.source,
            doc.content_hash,
            i,
            f"text {i}",
            3,
        )
        for i in range(n)
    ]


def _index(lin: Lineage, run: str, doc: SourceDocument, n: int, pv: str = PV) -> list[str]:
    chunks = _chunks(doc, n, pv)
    lin.record_chunks(run, "c", chunks, pv)
    ids = [c.chunk_id for c in chunks]
    lin.record_indexed(run, "c", doc, pv, ids)
    return ids


def test_a_changed_document_leaves_its_old_points_stale_until_deleted(tmp_path: Path) -> None:
    lin = Lineage(tmp_path / "lineage.duckdb")
    lin.start_run("r1", "c", PV)
    a = _doc(tmp_path / "a.txt", "one")
    assert lin.classify("c", [a], PV) == {a.doc_id: "new"}
    old = _index(lin, "r1", a, 2)
    assert lin.classify("c", [a], PV) == {a.doc_id: "unchanged"}
    assert lin.classify("c", [a], "pv2") == {a.doc_id: "changed"}
    lin.finish_run("r1", "completed", {})

    lin.start_run("r2", "c", PV)
    a2 = _doc(tmp_path / "a.txt", "two")
    assert lin.classify("c", [a2], PV) == {a.doc_id: "changed"}
    chunks = _chunks(a2, 3)
    lin.record_chunks("r2", "c", chunks, PV)
    # Crash here: the intended new points are stale (their version is not current yet).
    assert set(lin.stale_points("c")) == {c.chunk_id for c in chunks}
    assert lin.live_points("c") == set(old)
    lin.record_indexed("r2", "c", a2, PV, [c.chunk_id for c in chunks])
    assert set(lin.stale_points("c")) == set(old)
    lin.mark_deleted("c", old)
    assert lin.stale_points("c") == []
    assert lin.live_points("c") == {c.chunk_id for c in chunks}


def test_prune_marks_missing_documents_under_the_roots_only(tmp_path: Path) -> None:
    lin = Lineage(tmp_path / "lineage.duckdb")
    lin.start_run("r1", "c", PV)
    (tmp_path / "src").mkdir()
    (tmp_path / "other").mkdir()
    a = _doc(tmp_path / "src" / "a.txt", "a")
    b = _doc(tmp_path / "other" / "b.txt", "b")
    ids_a = _index(lin, "r1", a, 1)
    _index(lin, "r1", b, 1)
    assert lin.mark_missing("r1", "c", [str(tmp_path / "src")], present=[]) == [a.doc_id]
    assert lin.stale_points("c") == ids_a
    assert [d for d, _ in lin.current_documents("c")] == [b.doc_id]


def test_a_killed_run_is_marked_crashed_by_the_next(tmp_path: Path) -> None:
    lin = Lineage(tmp_path / "lineage.duckdb")
    lin.start_run("r1", "c", PV)
    lin.start_run("r2", "c", PV)
    status = {r["run_id"]: r["status"] for r in lin.runs()}
    assert status == {"r1": "crashed", "r2": "running"}


def test_trace_from_chunk_id_and_from_path(tmp_path: Path) -> None:
    lin = Lineage(tmp_path / "lineage.duckdb")
    lin.start_run("r1", "c", PV)
    a = _doc(tmp_path / "a.txt", "one")
    ids = _index(lin, "r1", a, 2)
    lin.finish_run("r1", "completed", {"chunks_embedded": 2})
    (chain,) = lin.trace(ids[1])
    assert chain["point"]["point_id"] == ids[1] and chain["point"]["collection"] == "c"
    assert chain["chunk"]["index"] == 1
    expected = {
        "source": a.source,
        "content_hash": a.content_hash,
        "pipeline_version": PV,
        "status": "indexed",
        "current": True,
    }
    assert expected.items() <= chain["document_version"].items()
    assert chain["run"]["run_id"] == "r1" and chain["run"]["status"] == "completed"

    lin.start_run("r2", "c", PV)
    bad = _doc(tmp_path / "a.txt", "two")
    lin.record_failure("r2", "c", bad, PV, "quarantined", "no chunks")
    chains = lin.trace(str(tmp_path / "a.txt"))
    assert len(chains) == 3
    assert chains[-1]["document_version"]["reason"] == "no chunks"
    with pytest.raises(LineageError):
        lin.trace(str(tmp_path / "never.txt"))


def test_one_writer_process(tmp_path: Path) -> None:
    import subprocess
    import sys

    held = Lineage(tmp_path / "l.duckdb")
    code = (
        "import sys; from pipelines.lineage import Lineage, LineageError\n"
        f"try: Lineage({str(tmp_path / 'l.duckdb')!r})\n"
        "except LineageError: sys.exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    held.close()
