"""A run left `running` by a process that died is marked crashed at the next start: in lineage
(with when and why), in Prefect (its flow run set to Crashed) and in `impetus lineage runs`; a run
whose process still lives is left alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ingest.recovery import recover_crashed_runs
from pipelines.lineage import Lineage
from pipelines.owner import this_process
from pipelines.settings import PROJECT_ROOT, get_settings
from tests.flows.conftest import run_cli

pytestmark = pytest.mark.usefixtures("prefect_harness")

# A process that opens a run in lineage and dies without finishing it, as a SIGKILLed one does.
DIES_MID_RUN = """
import os, sys
from pipelines.lineage import Lineage
lineage = Lineage(sys.argv[1])
lineage.start_run(sys.argv[2], "c__0123456789ab", "v1", {"embedder": {"dim": 384}})
lineage.close()
os._exit(0)
"""


def running_flow_run() -> str:
    """An `ingest` flow run in Prefect's Running state (what a killed server leaves behind)."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from flows.ingest.flow import ingest

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(ingest, parameters={"paths": [], "collection": "c"})
        client.set_flow_run_state(run.id, Running(), force=True)
        return str(run.id)


def test_a_run_whose_process_died_is_marked_crashed_in_lineage_and_prefect(
    data_dir: Path,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    dead, alive = running_flow_run(), running_flow_run()
    db = data_dir / "lineage.duckdb"
    proc = subprocess.run(
        [sys.executable, "-c", DIES_MID_RUN, str(db), dead], cwd=PROJECT_ROOT, timeout=120
    )
    assert proc.returncode == 0
    with Lineage(db) as lin:  # a run of a live process (this one): not to be touched
        lin.db.execute(
            "INSERT INTO runs (run_id, collection, started_at, status, owner) "
            "VALUES (?, 'c__0123456789ab', now(), 'running', ?)",
            [alive, this_process()],
        )

    crashed = recover_crashed_runs(get_settings())

    assert [r["run_id"] for r in crashed] == [dead]
    with Lineage(db, read_only=True) as lin:
        (row,) = lin.runs(run_id=dead)
        (live,) = lin.runs(run_id=alive)
    assert row["status"] == "crashed" and row["crashed_at"] and "is gone" in row["error"]
    assert live["status"] == "running"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(dead).state
        assert state is not None and state.type == StateType.CRASHED, state
        assert "is gone" in (state.message or "")
        other = client.read_flow_run(alive).state
        assert other is not None and other.type == StateType.RUNNING
    # A second start finds nothing more to do.
    assert recover_crashed_runs(get_settings()) == []

    out = run_cli(["lineage", "runs", "--json"], data_dir)
    assert out.returncode == 0, out.stderr[-2000:]
    listed = {r["run_id"]: r for r in json.loads(out.stdout)}
    assert listed[dead]["status"] == "crashed" and "is gone" in listed[dead]["error"]
    text = run_cli(["lineage", "runs"], data_dir)
    assert text.returncode == 0 and f"{dead}  crashed" in text.stdout, text.stdout
    assert "Traceback" not in out.stderr + text.stderr
