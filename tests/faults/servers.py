"""`impetus serve` processes for fault tests: on this data_dir, talking to the Prefect test
harness, on a free port of 127.0.0.1; stopped (and their process group killed) whatever happens."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from flows.bench.server import HOST, Server, bench_env, launch, serve_argv
from pipelines.settings import PROJECT_ROOT, get_settings

# Helpers of this project get port ranges; outside them (CI) any free port does.
PORTS = range(int(os.environ.get("IMPETUS_TEST_PORT_BASE", "8800")), 8850)


def free_port() -> int:
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    from flows.bench.server import free_port as any_port

    return any_port()


@contextmanager
def impetus_serve(
    log_dir: Path, roots: list[Path], name: str = "impetus", **env: str
) -> Iterator[Server]:
    """A live server (not waiting for the LLM: the tests here use RAG routes only)."""
    from prefect.settings import PREFECT_API_URL

    settings = get_settings()
    port = free_port()
    extra = {
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "IMPETUS_RAG__INDEX_ROOTS": json.dumps([str(r) for r in roots]),
        **env,
    }
    full = bench_env(settings, **extra)
    if "IMPETUS_TEST_CRASH_AT" not in env:
        full.pop("IMPETUS_TEST_CRASH_AT", None)
    with launch(
        name,
        serve_argv(port),
        full,
        port=port,
        log_dir=log_dir,
        ready_path=None,
        timeout_s=300,
        grace_s=30,
        cwd=PROJECT_ROOT,
    ) as server:
        yield server


def wait_run(server: Server, run_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """Poll GET /v1/rag/runs/{id} until the run is no longer pending or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = httpx.get(f"{server.url}/v1/rag/runs/{run_id}", timeout=30).json()
        if job["status"] not in ("pending", "running"):
            return dict(job)
        assert time.monotonic() < deadline, f"run {run_id} still {job['status']}"
        time.sleep(0.5)
