"""The server SIGKILLed during an index run it owns, restarted, the run re-submitted: the
collection equals a clean run's (same point ids, same search results), and lineage, the API and
Prefect show the killed run as crashed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.settings import get_settings
from tests.faults.servers import impetus_serve, wait_run
from tests.faults.state import state, write_corpus
from tests.flows.conftest import link_models, use_data_dir
from tests.flows.test_ingest import V1

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def clean(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory, ready_models_dir: Path
) -> dict[str, Any]:
    """The corpus, and the state an uninterrupted ingest of it ends in."""
    from flows.ingest.flow import ingest

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("killed")
    corpus = write_corpus(root / "corpus", V1)
    ref = root / "ref"
    link_models(ref, ready_models_dir)
    try:
        use_data_dir(ref, mp)
        ingest([str(corpus)], collection="c")
        return {"corpus": corpus, "state": state()}
    finally:
        mp.undo()
        get_settings.cache_clear()


def test_server_killed_mid_index_then_resubmitted_matches_a_clean_run(
    clean: dict[str, Any], data_dir: Path, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    corpus: Path = clean["corpus"]
    body = {"paths": [str(corpus)], "collection": "c"}
    # Batches of two; killed at the lineage commit of the first: its points are written to the
    # store, lineage holds only the intent.
    with impetus_serve(
        tmp_path, [corpus], "killed", IMPETUS_TEST_CRASH_AT="record",
        IMPETUS_INGEST__BATCH_DOCUMENTS="2",
    ) as server:  # fmt: skip
        r = httpx.post(f"{server.url}/v1/rag/index", json=body, timeout=120)
        assert r.status_code == 202, r.text
        killed = r.json()["id"]
        assert server.proc.wait(timeout=300) == -9, "the crash hook should have SIGKILLed it"

    with impetus_serve(tmp_path, [corpus], "restarted") as server:
        job = httpx.get(f"{server.url}/v1/rag/runs/{killed}", timeout=30).json()
        assert job["status"] == "crashed", job
        assert job["crashed_at"] and "is gone" in job["error"], job
        r = httpx.post(f"{server.url}/v1/rag/index", json=body, timeout=120)
        assert r.status_code == 202, r.text
        done = wait_run(server, r.json()["id"])
        assert done["status"] == "completed", done
        assert done["summary"]["documents"]["failed"] == 0
        deadline = time.monotonic() + 60  # the Prefect side is set on a background thread
        with get_client(sync_client=True) as client:
            while (s := client.read_flow_run(killed).state) is None or s.type != StateType.CRASHED:
                assert time.monotonic() < deadline, s
                time.sleep(0.5)
    assert state() == clean["state"]
