"""`impetus keys` and the start rules of `impetus serve`, as an operator runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.settings import PROJECT_ROOT


def impetus(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, "IMPETUS_DATA_DIR": str(data_dir), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_create_list_rotate_revoke_usage(tmp_path: Path) -> None:
    created = impetus(
        tmp_path, "keys", "create", "--name", "ci", "--role", "user", "--expires", "30d"
    )
    token = ok(created).strip()
    assert token.startswith("imp_") and "only time" in created.stderr
    secret = token.split("_", 2)[2]
    assert secret not in created.stderr

    listed: list[dict[str, Any]] = json.loads(ok(impetus(tmp_path, "keys", "list", "--json")))
    assert [(k["name"], k["role"], k["status"]) for k in listed] == [("ci", "user", "active")]
    assert listed[0]["expires"] is not None
    assert secret not in json.dumps(listed) and "hash" not in listed[0]
    assert "ci" in ok(impetus(tmp_path, "keys", "list"))

    rotated = json.loads(ok(impetus(tmp_path, "keys", "rotate", "ci", "--json")))
    assert rotated["key"] != token and rotated["id"] == listed[0]["id"]
    revoked = json.loads(ok(impetus(tmp_path, "keys", "revoke", "ci", "--json")))
    assert revoked["status"] == "revoked"
    assert json.loads(ok(impetus(tmp_path, "keys", "usage", "--json"))) == []

    bad = impetus(tmp_path, "keys", "create", "--name", "x", "--role", "root")
    assert bad.returncode != 0 and "Unknown role" in bad.stderr and "Traceback" not in bad.stderr
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("extra", [[], ["--ray"]])
def test_serve_off_loopback_refuses_to_start_without_keys(tmp_path: Path, extra: list[str]) -> None:
    port = str(_free_port())
    result = impetus(tmp_path, "serve", "--host", "0.0.0.0", "--port", port, *extra)
    assert result.returncode != 0
    assert "impetus keys create" in result.stderr and "--insecure" in result.stderr
    assert "Uvicorn running" not in result.stderr and "serving on" not in result.stderr


def test_serve_off_loopback_with_auth_off_refuses_too(tmp_path: Path) -> None:
    ok(impetus(tmp_path, "keys", "create", "--name", "admin", "--role", "admin"))
    port = str(_free_port())
    result = impetus(
        tmp_path, "serve", "--host", "0.0.0.0", "--port", port, IMPETUS_AUTH__MODE="off"
    )
    assert result.returncode != 0 and "auth.mode is off" in result.stderr
