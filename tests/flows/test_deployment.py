"""prefect.yaml for real: a Prefect server on 127.0.0.1, a process work pool, `prefect deploy
--all`, `prefect deployment run ingest/nightly-reindex`, and a worker that executes that run once;
the run completes and its documents are in the collection.

Everything lives under tmp_path (PREFECT_HOME, data_dir); the server and the worker started here
are stopped here. About a minute on a laptop, most of it the server's start.
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

import httpx
import pytest
import yaml

from pipelines.settings import PROJECT_ROOT
from tests.flows.conftest import link_models

pytestmark = pytest.mark.slow

POOL = "impetus"
DEPLOYMENT = "ingest/nightly-reindex"
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group this test started, then SIGKILL what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Prefect server of our own on 127.0.0.1 (not the test harness: the worker and the flow
    run are other processes, as they are for a user); yields the environment that talks to it."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
    }
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the Prefect server did not start in 180 s"
            time.sleep(1)
        yield env
    finally:
        stop(server)
        log.close()


# Prefect 3.8.8's `prefect deploy`, after creating the deployment, asks the server for the pool's
# online workers with `"limit": null`, which its server rejects under pydantic 2.14 (422 on
# /work_pools/NAME/workers/filter), so the command exits 1 although the deployment was created.
KNOWN_DEPLOY_422 = "/workers/filter' - Response: {'exception_message': 'Invalid request received."


def prefect(args: list[str], env: dict[str, str], timeout: float = 180) -> str:
    proc = subprocess.run(
        [PREFECT, "--no-prompt", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode and args[0] == "deploy" and KNOWN_DEPLOY_422 in proc.stderr + proc.stdout:
        assert "successfully created" in proc.stdout, proc.stdout
        return proc.stdout
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_prefect_yaml_declares_a_nightly_cron_on_a_process_pool() -> None:
    config = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())
    (dep,) = [d for d in config["deployments"] if d["name"] == "nightly-reindex"]
    # the `ingest` flow that reads only rag.index_roots (flows/ingest/flow.py)
    assert dep["entrypoint"] == "flows/ingest/flow.py:ingest_in_roots"
    assert [s["cron"] for s in dep["schedules"]] == ["0 3 * * *"]
    assert dep["work_pool"]["name"] == POOL
    (step,) = config["pull"]
    assert "prefect.deployments.steps.set_working_directory" in step


def test_deploy_run_and_worker_complete_the_nightly_run(
    prefect_server: dict[str, str], tmp_path: Path, ready_models_dir: Path
) -> None:
    data_dir = tmp_path / "state"
    link_models(data_dir, ready_models_dir)
    env = {**prefect_server, "IMPETUS_DATA_DIR": str(data_dir)}
    api = env["PREFECT_API_URL"]

    prefect(["work-pool", "create", POOL, "--type", "process"], env)
    prefect(["deploy", "--all"], env)
    deployment = httpx.get(f"{api}/deployments/name/{DEPLOYMENT}", timeout=10).json()
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
    assert deployment["pull_steps"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(PROJECT_ROOT)}}
    ]

    out = prefect(["deployment", "run", DEPLOYMENT], env)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert match, out
    run_id = match.group(1)

    # The worker picks up the run due now (not tomorrow's 03:00 ones) and exits when it is done.
    worker = subprocess.run(
        [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--run-once"],
        cwd=tmp_path,  # the pull step, not the worker's cwd, puts the run in the checkout
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    assert run["state"]["type"] == "COMPLETED", worker.stdout[-3000:] + worker.stderr[-3000:]

    from pipelines.lineage import Lineage
    from pipelines.settings import load_settings

    with Lineage.open(load_settings(data_dir=data_dir), read_only=True) as lin:
        rows = [(r["run_id"], r["status"]) for r in lin.runs(run_id=run_id)]
        sources = {Path(s).name for _, s in lin.current_documents(_physical(data_dir))}
    assert rows == [(run_id, "completed")]
    samples = {p.name for p in (PROJECT_ROOT / "data" / "samples").iterdir()}
    assert sources == samples


def _physical(data_dir: Path) -> str:
    from pipelines.settings import load_settings
    from pipelines.vectorstore import create_store

    store = create_store(load_settings(data_dir=data_dir))
    try:
        return store.resolve("default")
    finally:
        store.close()
