"""Access control in Ray Serve mode: `impetus serve --ray` reads the data_dir's keys in its
ingress, so each role reaches exactly its routes there too, and a revocation holds at once.

It runs on the session's Ray server (tests/serving/ray_server.py) and turns its keys on, so it
runs after every other test of the session (tests/conftest.py orders it last): one Ray cluster
per session is what this two-core machine affords.
"""

from __future__ import annotations

import httpx
import pytest

from pipelines.keys import ROLES, KeyStore
from serving.http.auth import ROUTES
from tests.serving.servers import RunningServer

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


def test_roles_and_revocation_in_ray_mode(ray_server: RunningServer) -> None:
    store = KeyStore.open(ray_server.extra["data_dir"])
    tokens = {role: store.create(f"ray-{role}", role)[1] for role in ROLES}
    with httpx.Client(base_url=ray_server.base_url, timeout=120) as http:
        for i, (method, path, body) in enumerate(CASES):
            needed = ROUTES[(method, path)].role
            if i < 7:  # without a key (failed authentications are limited to 10 a minute)
                r = http.request(method, path, json=body)
                assert (r.status_code == 401) == (needed is not None), (path, r.text)
            for role, token in tokens.items():
                r = http.request(method, path, json=body, headers={"x-api-key": token})
                allowed = needed is None or ROLES.index(role) >= ROLES.index(needed)
                assert (r.status_code not in (401, 403)) == allowed, (role, path, r.text)
                if allowed and needed is not None:
                    assert int(r.headers["x-ratelimit-remaining"]) >= 0
        store.revoke("ray-user")
        r = http.get("/v1/models", headers={"Authorization": f"Bearer {tokens['user']}"})
        assert r.status_code == 401 and "revoked" in r.text
    store.close()
