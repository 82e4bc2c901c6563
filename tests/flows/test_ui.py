"""`impetus ui prefect|mlflow` (flows/commands/ui.py) and the flow runs that report to its
Prefect server (flows/prefect_env.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from flows.prefect_env import prefect_env, ui_server_file
from pipelines.settings import Settings


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def prefect_api() -> Iterator[str]:
    """A stand-in for Prefect's /api/health on a free 127.0.0.1 port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/api"
    httpd.shutdown()


def test_flow_runs_report_to_the_ui_server_while_it_answers(
    settings: Settings, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("PREFECT_API_URL", "PREFECT_HOME"):
        # setenv first so that teardown restores the session's value (or absence): prefect_env
        # sets these directly, and a delenv of an absent variable records nothing to undo.
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    prefect_env(settings)
    assert "PREFECT_API_URL" not in os.environ  # no UI server: Prefect's temporary one
    ui_server_file(settings).write_text(prefect_api + "\n")
    monkeypatch.delenv("PREFECT_HOME")
    prefect_env(settings)
    assert os.environ["PREFECT_API_URL"] == prefect_api
    assert os.environ["PREFECT_HOME"] == str(settings.data_dir / "prefect")


def test_a_recorded_server_that_is_gone_is_ignored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "")
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.setenv("PREFECT_HOME", str(settings.data_dir / "prefect"))
    (settings.data_dir / "prefect").mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui_server_file(settings).write_text(f"http://127.0.0.1:{port}/api\n")
    prefect_env(settings)
    assert "PREFECT_API_URL" not in os.environ


@pytest.mark.slow
def test_ui_mlflow_serves_the_data_dirs_store_and_prints_its_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "IMPETUS_DATA_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        ["impetus", "ui", "mlflow", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith(f"mlflow UI on http://127.0.0.1:{port} (store {tmp_path}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        else:
            pytest.fail("the MLflow UI did not answer")
        assert (tmp_path / "state" / "mlflow.db").is_file()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
