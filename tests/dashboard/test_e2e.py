"""The dashboard end to end: Playwright (serving/dashboard/e2e/) in Debian's Chromium against a
real `impetus serve` subprocess that serves the built app, with the bundled models, the samples
indexed (so grounded answers carry citations) and two keys (admin, readonly), which turn auth on.

Needs the build (`make setup`, or `cd serving/dashboard && npm ci && npm run build`), node and
/usr/bin/chromium (the Makefile installs both when missing); skipped with the reason otherwise.
Playwright's list and JUnit reports, its traces on failure, and a screenshot of every page at
1280x800 go to the test's output folder (printed), and the list output to the test log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.bench.server import launch, serve_argv, tail

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "serving" / "dashboard"
CHROMIUM = os.environ.get("IMPETUS_CHROMIUM", "/usr/bin/chromium")
PORTS = range(8650, 8700)  # this suite's ports on 127.0.0.1
E2E_TIMEOUT_S = 600


def _free_port() -> int:
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def _impetus(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"impetus {' '.join(args)}: {out.stderr[-2000:]}"
    return out.stdout


def _missing() -> str | None:
    if not (APP / "dist" / "index.html").is_file():
        return "the dashboard is not built (make setup)"
    if not (APP / "node_modules" / "@playwright" / "test").is_dir():
        return "serving/dashboard/node_modules is missing (make setup)"
    if shutil.which("node") is None:
        return "node is not installed (make setup)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (make setup installs Debian's chromium)"
    return None


def _index_samples(url: str, key: str) -> None:
    """data/samples into the default collection through the running server (its embedder is
    already loaded: much faster than a second process), so grounded answers have citations."""
    headers = {"Authorization": f"Bearer {key}"}
    r = httpx.post(
        f"{url}/v1/rag/index", json={"paths": ["data/samples"]}, headers=headers, timeout=60
    )
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        run = httpx.get(f"{url}/v1/rag/runs/{run_id}", headers=headers, timeout=30).json()
        if run["status"] in ("completed", "failed", "cancelled"):
            assert run["status"] == "completed", run
            return
        time.sleep(0.5)
    pytest.fail("indexing data/samples did not finish in 5 minutes")


@pytest.mark.slow
def test_dashboard_end_to_end(
    tmp_path: Path,
    ready_models_dir: Path,
    prefect_harness: None,
) -> None:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from prefect.settings import PREFECT_API_URL

    data_dir = tmp_path / "state"
    data_dir.mkdir()
    (data_dir / "models").symlink_to(ready_models_dir, target_is_directory=True)
    env = {
        **os.environ,
        "IMPETUS_DATA_DIR": str(data_dir),
        "IMPETUS_LOG__LEVEL": "warning",
        # The admin key drives the whole suite: well past the default 60 requests a minute.
        "IMPETUS_RATE_LIMITS__ENABLED": "false",
        # The index run goes to the session's Prefect harness, not to a child server of its own
        # (the server's own child is tested in tests/flows/test_shutdown.py).
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
    }
    admin = json.loads(
        _impetus(["keys", "create", "--name", "e2e-admin", "--role", "admin", "--json"], env)
    )["key"]
    viewer = json.loads(
        _impetus(["keys", "create", "--name", "e2e-viewer", "--role", "readonly", "--json"], env)
    )["key"]

    out = tmp_path / "playwright"
    port = _free_port()
    with launch(
        "impetus-serve", serve_argv(port), env, port=port, log_dir=tmp_path, cwd=ROOT, timeout_s=300
    ) as server:
        _index_samples(server.url, admin)
        # Node and Chromium without the OpenBLAS preload `make test` gives the Python side: in
        # them it breaks thread creation (node: "pthread_create: Invalid argument").
        browser_env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        e2e_env = {
            **browser_env,
            "IMPETUS_BASE_URL": server.url,
            "IMPETUS_ADMIN_KEY": admin,
            "IMPETUS_READONLY_KEY": viewer,
            "IMPETUS_E2E_OUTPUT": str(out),
            "IMPETUS_CHROMIUM": CHROMIUM,
            "CI": "1",
        }
        npx = shutil.which("npx") or "npx"
        run = subprocess.run(
            [npx, "playwright", "test", "--output", str(out / "artifacts")],
            cwd=APP,
            env=e2e_env,
            capture_output=True,
            text=True,
            timeout=E2E_TIMEOUT_S,
        )
        print(run.stdout[-20000:])
        print(run.stderr[-5000:], file=sys.stderr)
        print(f"playwright output: {out}")
        assert run.returncode == 0, (
            f"playwright failed (above); server log tail:\n{tail(server.log)}"
        )
    shots = sorted(p.name for p in (out / "screenshots").glob("*.png"))
    for page in ("chat", "knowledge", "models", "metrics", "experiments", "hardware", "keys"):
        assert f"{page}.png" in shots, shots
