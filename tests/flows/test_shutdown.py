"""`impetus serve` stops cleanly and leaves no child behind, with an index run in progress.

Each test runs the real server in a subprocess (flows/bench/server.py) on a temporary data_dir,
indexes a generated folder inside an allowed root (`rag.index_roots`) two documents per batch,
so that a run takes long enough to be interrupted, and lets the server start its own Prefect API
server (flows/prefect_server.py), the child that must not outlive it:

- `POST /v1/rag/runs/{id}/cancel` stops the run between batches: `cancelled`, the collection
  holds exactly the points of the documents it committed, and a re-run converges;
- SIGINT cancels the run, drains, says what it cancelled, and exits within seconds;
- a second SIGINT exits at once (status 130);
- SIGKILL: the Prefect server notices its parent is gone and exits within a few seconds.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from flows.bench.server import Server, free_port, launch, serve_argv, tail
from tests.flows.conftest import link_models

pytestmark = pytest.mark.slow  # a server and its Prefect server per test (about a minute)

EXIT_WITHIN_S = 30.0  # SIGINT to exit, a batch in progress included, on a busy 2-core machine
ORPHAN_WITHIN_S = 5.0


def _write_docs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"doc{i:03d}.md").write_text(
            f"# Document {i}\n\nParagraph one of document {i}, about topic {i * 7}: a few "
            f"sentences to chunk and embed.\n\n## Section\n\nMore words for document {i}: "
            f"alpha beta gamma delta {i}.\n"
        )
    return folder


@contextmanager
def serving(tmp_path: Path, models: Path) -> Iterator[Server]:
    """`impetus serve` on a fresh data_dir whose index root is `tmp_path`."""
    data_dir = tmp_path / "state"
    link_models(data_dir, models)
    env = {
        **os.environ,
        "IMPETUS_DATA_DIR": str(data_dir),
        "IMPETUS_RAG__INDEX_ROOTS": f'["{tmp_path}"]',
        "IMPETUS_INGEST__BATCH_DOCUMENTS": "2",
        "IMPETUS_LOG__LEVEL": "info",
    }
    for var in ("PREFECT_API_URL", "IMPETUS_TEST_CRASH_AT"):  # the server starts its own
        env.pop(var, None)
    port = free_port()
    with launch(
        "serve", serve_argv(port), env, port=port, log_dir=tmp_path, ready_path=None,
        timeout_s=300, grace_s=30,
    ) as server:  # fmt: skip
        yield server


def _index(server: Server, folder: Path, collection: str) -> str:
    r = httpx.post(
        f"{server.url}/v1/rag/index",
        json={"paths": [str(folder)], "collection": collection},
        timeout=300,  # the first run starts the Prefect server
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def _run(server: Server, run_id: str) -> dict[str, Any]:
    r = httpx.get(f"{server.url}/v1/rag/runs/{run_id}", timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _wait(server: Server, run_id: str, done: Any, timeout: float = 300.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = _run(server, run_id)
        if done(run):
            return run
        assert run["status"] not in ("failed",), run
        assert time.monotonic() < deadline, f"gave up waiting: {run}\n{tail(server.log)}"
        time.sleep(0.3)


def _committed(run: dict[str, Any]) -> int:
    return int((run.get("progress") or {}).get("documents", {}).get("done", 0))


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


def _gone(procs: list[psutil.Process], within: float) -> list[psutil.Process]:
    """The processes still running after `within` seconds."""
    _, alive = psutil.wait_procs(procs, timeout=within)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def _points(server: Server, collection: str) -> int:
    status = httpx.get(f"{server.url}/v1/rag/status", timeout=30).json()
    (found,) = [c for c in status["collections"] if c["name"] == collection]
    return int(found["points"])


def test_cancel_then_rerun_converges_then_sigint_exits(
    tmp_path: Path, ready_models_dir: Path
) -> None:
    docs = _write_docs(tmp_path / "docs", 16)
    more = _write_docs(tmp_path / "more", 40)
    with serving(tmp_path, ready_models_dir) as server:
        run_id = _index(server, docs, "cx")
        _wait(server, run_id, lambda r: _committed(r) >= 2)  # a batch or more committed
        r = httpx.post(f"{server.url}/v1/rag/runs/{run_id}/cancel", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("cancelling", "cancelled")
        t = time.monotonic()
        run = _wait(server, run_id, lambda r: r["status"] == "cancelled", timeout=60)
        print(f"cancelled {time.monotonic() - t:.1f} s after the request")
        summary = run["summary"]
        assert summary["cancelled"] is True
        committed = summary["documents"]["new"]
        assert 0 < committed < 16
        # Nothing half-written: the collection holds the committed documents' points, no more.
        assert _points(server, "cx") == summary["points_upserted"] > 0
        # Cancelling a cancelled run is a no-op; an unknown run is a 404.
        again = httpx.post(f"{server.url}/v1/rag/runs/{run_id}/cancel", timeout=30)
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        missing = httpx.post(f"{server.url}/v1/rag/runs/no-such-run/cancel", timeout=30)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "run_id"

        # Re-running converges: the committed documents are skipped, the rest indexed.
        rerun = _wait(server, _index(server, docs, "cx"), lambda r: r["status"] == "completed")
        counts = rerun["summary"]["documents"]
        assert counts["unchanged"] == committed and counts["new"] == 16 - committed
        total = summary["points_upserted"] + rerun["summary"]["points_upserted"]
        assert _points(server, "cx") == total
        done = httpx.post(f"{server.url}/v1/rag/runs/{rerun['id']}/cancel", timeout=30)
        assert done.status_code == 409  # it has completed: nothing to cancel

        # SIGINT with a run in progress: cancelled, drained, exits.
        busy = _index(server, more, "cy")
        _wait(server, busy, lambda r: _committed(r) >= 2)
        children = _descendants(server.proc.pid)
        assert any("flows.prefect_server" in " ".join(c.cmdline()) for c in children)
        t = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=EXIT_WITHIN_S)
        took = time.monotonic() - t
        log = tail(server.log, 20000)
        print(f"exited {took:.1f} s after SIGINT")
        assert server.proc.returncode == 0, log
        assert f"Cancelled: index run {busy}" in log
        assert "shutdown.prefect_server" in log
        assert not _gone(children, ORPHAN_WITHIN_S)


def test_a_second_sigint_exits_at_once(tmp_path: Path, ready_models_dir: Path) -> None:
    docs = _write_docs(tmp_path / "docs", 40)
    with serving(tmp_path, ready_models_dir) as server:
        run_id = _index(server, docs, "c2")
        _wait(server, run_id, lambda r: r["status"] == "running")
        children = _descendants(server.proc.pid)
        server.proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the first one is being handled: draining
        t = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=5)
        took = time.monotonic() - t
        print(f"exited {took:.2f} s after the second SIGINT")
        assert server.proc.returncode == 130, tail(server.log)
        assert "exiting now" in tail(server.log)
        assert not _gone(children, ORPHAN_WITHIN_S)


def test_no_child_outlives_a_sigkill(tmp_path: Path, ready_models_dir: Path) -> None:
    docs = _write_docs(tmp_path / "docs", 8)
    with serving(tmp_path, ready_models_dir) as server:
        _index(server, docs, "c3")  # the server now has its Prefect server
        children = _descendants(server.proc.pid)
        assert children, "the server started no child"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        t = time.monotonic()
        alive = _gone(children, ORPHAN_WITHIN_S)
        print(f"{len(children)} children gone {time.monotonic() - t:.1f} s after the SIGKILL")
        assert not alive, [p.cmdline() for p in alive]
