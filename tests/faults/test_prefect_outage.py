"""The Prefect API goes away during a scheduled run: the run is not lost.

A real Prefect server (PREFECT_HOME and its SQLite database under tmp_path, a port of 9000-9049),
`prefect deploy --all` of prefect.yaml, `nightly-reindex` started and picked up by a real process
worker. The run pauses at `finish` (IMPETUS_TEST_PAUSE_AT, flows/ingest/crash.py), its work
done; the test stops the server and lets the run go on, so it proposes Completed with no API;
after OUTAGE_S seconds it starts the server again on the same port and database. The deployment's run must end Completed and the
collection must equal a clean run's (same point ids, same search results).
docs/decisions/prefect-api-outage.md says why this holds and what would not.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.settings import PROJECT_ROOT, get_settings
from tests.faults.state import state
from tests.flows.conftest import link_models
from tests.flows.test_deployment import DEPLOYMENT, POOL, PREFECT, prefect

pytestmark = pytest.mark.slow

PORTS = range(9000, 9050)  # this test's range on 127.0.0.1; nothing outside it
# Longer than one API call's retries under Prefect's defaults (5 retries, 2+4+8+16+32 s, +-20 %
# jitter: at most ~75 s), so the run would end Failed without prefect.yaml's job variables.
OUTAGE_S = float(os.environ.get("IMPETUS_TEST_OUTAGE_S", "80"))
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 9000-9049")


class Processes:
    """Every process this test starts, each in its own process group; all stopped at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        self.servers: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            args,
            cwd=cwd or self.logs,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.started.append(proc)
        if name == "server":
            self.servers.append(proc)
        return proc

    def tail(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 30) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `grace` seconds."""
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        """Clients first (the worker, the clean run), newest first, then the servers: a Prefect
        server asked to stop waits up to 30 s for the worker's open connections. The test is
        over: a worker that has not exited 3 s after SIGTERM is killed (one that lived through
        the outage did not exit in 30 s, on SIGINT either)."""
        newest_first = list(reversed(self.started))
        for proc in sorted(newest_first, key=lambda p: p in self.servers):
            self.stop(proc, grace=30 if proc in self.servers else 3)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    p = Processes(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def _start_server(procs: Processes, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = procs.start(
        "server",
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
    )
    deadline = time.monotonic() + 180
    while True:
        assert server.poll() is None, procs.tail("server")
        try:
            if httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "the Prefect server did not start in 180 s"
        time.sleep(0.5)


def _wait_for(check: Any, timeout: float, what: str, logs: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f} s\n{logs}")


def test_nightly_run_survives_the_prefect_api_going_away(
    procs: Processes, tmp_path: Path, ready_models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    data_dir = tmp_path / "state"
    link_models(data_dir, ready_models_dir)
    pause = tmp_path / "paused"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),  # the database survives the restart
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "IMPETUS_DATA_DIR": str(data_dir),
    }
    for key in ("IMPETUS_TEST_CRASH_AT", "IMPETUS_TEST_FILL_AT"):
        env.pop(key, None)
    server = _start_server(procs, env, port)
    prefect(["work-pool", "create", POOL, "--type", "process"], env)
    prefect(["deploy", "--all"], env)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", prefect(["deployment", "run", DEPLOYMENT], env))
    assert match
    run_id = match.group(1)

    # The clean run: the same flow on a fresh data_dir, with the API up throughout (started now,
    # beside the deployment's run, to keep the test short).
    clean_dir = tmp_path / "clean"
    link_models(clean_dir, ready_models_dir)
    clean = procs.start(
        "clean",
        [sys.executable, "-m", "flows.cli", "ingest", "data/samples", "-c", "default", "--prune"],
        {**env, "IMPETUS_DATA_DIR": str(clean_dir)},
        cwd=PROJECT_ROOT,
    )

    worker_env = {
        **env,
        "IMPETUS_TEST_PAUSE_AT": "finish",
        "IMPETUS_TEST_PAUSE_FILE": str(pause),
    }
    worker = procs.start(
        "worker",
        [PREFECT, "worker", "start", "--pool", POOL, "--type", "process"],
        worker_env,
    )
    _wait_for(pause.exists, 120, "the run reaching `finish`", procs.tail("worker"))
    assert clean.wait(timeout=180) == 0, procs.tail("clean")

    # The outage: the server goes away; the run goes on and proposes Completed with no API.
    procs.stop(server)
    pause.unlink()
    time.sleep(OUTAGE_S)
    _start_server(procs, env, port)

    def final() -> dict[str, Any] | None:
        try:
            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()
        except httpx.HTTPError:
            return None
        return run if run["state"]["type"] in FINAL else None

    run = _wait_for(final, 120 + OUTAGE_S, "a final state of the run", procs.tail("worker"))
    attempts = run["run_count"]
    assert run["state"]["type"] == "COMPLETED", (run["state"], procs.tail("worker"))
    # Completed by its first attempt: the process waited for the API, nothing had to re-run it.
    assert attempts == 1
    assert worker.poll() is None, procs.tail("worker")  # the worker lived through the outage
    print(f"run {run_id}: {run['state']['name']} after {attempts} attempt(s)")

    monkeypatch.setenv("IMPETUS_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    after_outage = state("default")

    monkeypatch.setenv("IMPETUS_DATA_DIR", str(clean_dir))
    get_settings.cache_clear()
    try:
        assert after_outage == state("default")
    finally:
        get_settings.cache_clear()
