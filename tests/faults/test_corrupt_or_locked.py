"""A corrupt or locked store or lineage database at start: a clear error that names the file and
the command that recovers (never a traceback), and `impetus doctor [--repair]`, whose repairs end
in a clean run's state: stale locks and leftovers, an alias pointing at a missing collection,
lineage rows without points and points without lineage, a corrupt lineage rebuilt from the store.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flows.ingest.flow import ingest
from pipelines.doctor import diagnose
from pipelines.lineage import Lineage
from pipelines.settings import PROJECT_ROOT, get_settings
from pipelines.vectorstore import create_store
from tests.faults.state import state, write_corpus
from tests.flows.conftest import run_cli
from tests.flows.test_ingest import V1

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

HOLD_STORE = """
import sys, time
from pipelines.vectorstore.qdrant_edge import EdgeStore
store = EdgeStore(sys.argv[1]); print("held", flush=True); time.sleep(600)
"""
HOLD_LINEAGE = """
import sys, time, duckdb
db = duckdb.connect(sys.argv[1]); print("held", flush=True); time.sleep(600)
"""


@contextmanager
def holder(code: str, path: Path) -> Iterator[subprocess.Popen[str]]:
    """A live process holding `path` (the store's folder or the lineage file); killed at exit."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def findings(report: Any) -> dict[str, Any]:
    return {f["check"]: f for f in report["findings"]}


def doctor_cli(data_dir: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = run_cli(["doctor", "--json", *args], data_dir)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def clean(data_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """data_dir with V1 ingested into `c`, and that state."""
    corpus = write_corpus(tmp_path / "corpus", V1)
    ingest([str(corpus)], collection="c")
    return {"corpus": corpus, "state": state()}


def test_corrupt_lineage_is_a_clear_error_and_doctor_rebuilds_it_from_the_store(
    clean: dict[str, Any], data_dir: Path
) -> None:
    db = data_dir / "lineage.duckdb"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])  # truncated, as by a full disk or a bad copy

    proc = run_cli(["ingest", str(clean["corpus"]), "-c", "c"], data_dir)
    assert proc.returncode == 1
    assert f"error: the lineage database {db} cannot be read" in proc.stderr, proc.stderr
    assert "impetus doctor --repair" in proc.stderr and "Traceback" not in proc.stderr

    code, report = doctor_cli(data_dir)
    assert code == 1 and findings(report)["lineage"]["action"] == "impetus doctor --repair"
    code, report = doctor_cli(data_dir, "--repair")
    assert code == 0, report
    found = findings(report)
    assert "moved it aside" in found["lineage"]["repaired"]
    assert "adopted" in found["points_without_lineage"]["repaired"]
    assert list(data_dir.glob("lineage.duckdb.corrupt-*"))

    assert state() == clean["state"]  # lineage and store agree, same documents and search
    again = ingest([str(clean["corpus"])], collection="c")
    assert again["documents"]["unchanged"] == 3 and again["points_upserted"] == 0


def test_held_store_and_lineage_name_the_live_holder_and_the_command(
    clean: dict[str, Any], data_dir: Path
) -> None:
    with holder(HOLD_STORE, data_dir / "vectors") as proc:
        out = run_cli(["ingest", str(clean["corpus"]), "-c", "c"], data_dir)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert f"is open in process {proc.pid}" in out.stderr, out.stderr
        assert "impetus doctor" in out.stderr
        report = diagnose(get_settings()).to_dict()
        assert f"process {proc.pid}" in findings(report)["store"]["detail"]
        assert not report["ok"]
    with holder(HOLD_LINEAGE, data_dir / "lineage.duckdb") as proc:
        out = run_cli(["lineage", "runs"], data_dir)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert (
            f"the lineage database {data_dir / 'lineage.duckdb'} is held by process {proc.pid}"
            in out.stderr
        )
        report = diagnose(get_settings()).to_dict()
        assert f"process {proc.pid}" in findings(report)["lineage"]["detail"]


def test_stale_lock_and_leftovers_of_a_killed_process(
    clean: dict[str, Any], data_dir: Path
) -> None:
    with holder(HOLD_STORE, data_dir / "vectors") as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    (data_dir / "vectors" / ".trash-0123").mkdir()
    (data_dir / "vectors" / ".aliases.json.4242.tmp").write_text("{")
    assert (data_dir / "vectors" / ".lock").exists()  # the lock file stays, its lock is gone

    report = diagnose(get_settings()).to_dict()
    assert findings(report)["store"]["ok"] and not findings(report)["leftovers"]["ok"]
    report = diagnose(get_settings(), repair=True).to_dict()
    assert report["ok"] and findings(report)["leftovers"]["repaired"]
    assert not list((data_dir / "vectors").glob(".trash-*"))
    assert state() == clean["state"]


def test_alias_to_a_missing_collection_and_points_vs_lineage_are_repaired(
    clean: dict[str, Any], data_dir: Path
) -> None:
    settings = get_settings()
    store = create_store(settings)
    try:
        physical = store.resolve("c")
        points = sorted(p.id for p in store.scroll("c"))
        store.delete("c", points[:2])  # lineage rows without points
    finally:
        store.close()
    with Lineage.open(settings) as lin:  # points without lineage
        lin.db.execute("DELETE FROM points WHERE point_id IN (SELECT unnest(?))", [points[-2:]])

    report = diagnose(settings).to_dict()
    found = findings(report)
    assert not report["ok"]
    assert not found["lineage_without_points"]["ok"] and not found["points_without_lineage"]["ok"]
    report = diagnose(settings, repair=True).to_dict()
    assert report["ok"], report
    again = ingest([str(clean["corpus"])], collection="c")
    assert again["documents"]["failed"] == 0 and again["points_upserted"] > 0
    assert state() == clean["state"]

    # The alias's collection disappears (a folder deleted by hand): recreated, then refilled.
    import shutil

    shutil.rmtree(data_dir / "vectors" / "collections" / physical)
    report = diagnose(settings, repair=True).to_dict()
    assert report["ok"], report
    assert "recreated empty" in findings(report)["aliases"]["repaired"]
    again = ingest([str(clean["corpus"])], collection="c")
    assert again["documents"]["new"] == 3
    assert state() == clean["state"]
