"""Access control in Ray Serve mode: `impetus serve --ray` reads the data_dir's keys in its
ingress, so each role reaches exactly its routes there too, and a revocation holds at once.

Slow: its own `impetus serve --ray` (fake engines inside real Serve) on a data_dir with keys.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from pipelines.keys import ROLES, KeyStore
from serving.http.auth import ROUTES
from tests.serving.ray_server import (
    SERVE_ENV,
    free_port,
    server_process,
    state_dir,
    write_serve_config,
)

pytestmark = pytest.mark.slow

# (method, path, body) → the least role that reaches it (None: public)
CASES: list[tuple[str, str, dict[str, object] | None]] = [
    ("GET", "/api/health/live", None),
    ("GET", "/v1/models", None),
    ("GET", "/api/metrics", None),
    (
        "POST",
        "/v1/chat/completions",
        {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    ),
    ("POST", "/api/models/unload", {}),  # 400 once past auth: nothing is unloaded
    ("POST", "/v1/rag/index", {}),
    # the agent APIs and the uploads, through the same table
    (
        "POST",
        "/v1/messages/count_tokens",
        {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}]},
    ),
    ("POST", "/v1/responses/input_tokens", {"model": "fake-llm", "input": "hi"}),
    ("POST", "/tokenize", {"model": "fake-llm", "prompt": "hi"}),
    ("GET", "/v1/files", None),
    ("GET", "/v1/vector_stores", None),
    ("POST", "/v1/vector_stores", {"name": "ray-auth"}),  # admin only: an empty store
]


def test_roles_and_revocation_in_ray_mode(tmp_path: Path, ready_models_dir: Path) -> None:
    data_dir = state_dir(tmp_path, ready_models_dir)
    store = KeyStore.open(data_dir)
    tokens = {role: store.create(role, role)[1] for role in ROLES}
    port = free_port()
    config = write_serve_config(tmp_path / "serve.yaml", port, default_model="fake-llm")
    env = {**SERVE_ENV, "IMPETUS_DATA_DIR": str(data_dir)}
    argv = [sys.executable, "-m", "flows.cli", "serve", "--ray", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--serve-config", str(config)]
    with (
        server_process(argv, env, port, tmp_path / "server.log"),
        httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http,
    ):
        for method, path, body in CASES:
            needed = ROUTES[(method, path)].role
            r = http.request(method, path, json=body)
            assert (r.status_code == 401) == (needed is not None), (path, r.text)
            for role, token in tokens.items():
                r = http.request(method, path, json=body, headers={"x-api-key": token})
                allowed = needed is None or ROLES.index(role) >= ROLES.index(needed)
                assert (r.status_code not in (401, 403)) == allowed, (role, path, r.text)
                if allowed and needed is not None:
                    assert int(r.headers["x-ratelimit-remaining"]) >= 0
        store.revoke("user")
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {tokens['user']}"})
        assert r.status_code == 401 and "revoked" in r.text
