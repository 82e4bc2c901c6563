"""Access control on a real uvicorn server (the real app, fake engines), through the `openai` SDK
and plain HTTP: the route table covers every route, each role reaches exactly its routes,
revocation and expiry hold at the next request, rate limits answer 429 with their headers, and
no secret reaches a log line or a database file.

Keys are made by a second `KeyStore` on the same data_dir, as `impetus keys` would in its own
process while the server runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from pipelines.keys import ROLES, KeyStore
from pipelines.settings import load_settings
from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from serving.http.auth import ROUTES, access_of, app_routes
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import uvicorn_server

# A body and path for each route that passes validation where it is cheap, or fails it (400/422)
# after auth, so that the status tells "reached" (anything but 401/403) from "refused".
PATH_ARGS = {"{model_id}": "fake-llm", "{run_id}": "no-such-run"}
BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {
        "model": "fake-llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/completions": {"model": "fake-llm", "prompt": "hi", "max_tokens": 2},
    "/v1/embeddings": {"model": "fake-embed", "input": "hi"},
    "/v1/messages": {
        "model": "fake-llm",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
    },
    "/v1/messages/count_tokens": {
        "model": "fake-llm",
        "messages": [{"role": "user", "content": "hi"}],
    },
    "/tokenize": {"model": "fake-llm", "prompt": "hi"},
    "/detokenize": {"model": "fake-llm", "tokens": [1, 2]},
}


def _code(r: httpx.Response) -> str:
    """The error's code; Anthropic's routes (/v1/messages) answer in Anthropic's shape."""
    error = r.json()["error"]
    anthropic = {"authentication_error": "auth_required", "permission_error": "permission_denied"}
    return str(error["code"]) if "code" in error else anthropic[error["type"]]


class Server:
    def __init__(self, url: str, data_dir: Path, app: Any) -> None:
        self.url = url
        self.app = app
        self.keys = KeyStore.open(data_dir)  # the operator's `impetus keys`, another connection
        self.http = httpx.Client(base_url=url, timeout=30)

    def sdk(self, token: str = "none", **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=token, max_retries=0, **kw)

    def call(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        for name, value in PATH_ARGS.items():
            path = path.replace(name, value)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = BODIES.get(path, {}) if method == "POST" else None
        return self.http.request(method, path, json=body, headers=headers, **kw)


def _manager(tmp: Path) -> ModelManager:
    def factory(name: str, path: Path) -> Engine:
        return FakeEngine(name)

    return ModelManager(
        StoreWithFakes(tmp, llms=["fake-llm"], embedders=["fake-embed"], builtins=False),
        factory,
        default_model="fake-llm",
    )


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Any]:
    """Start servers on fresh data_dirs with settings overrides; stopped at the test's end."""
    from contextlib import ExitStack

    stack = ExitStack()

    def start(name: str = "s", **overrides: Any) -> Server:
        data_dir = tmp_path / name
        settings = load_settings(data_dir=data_dir, serve={"keepalive_s": 0.5}, **overrides)
        app = create_app(
            settings,
            manager=_manager(tmp_path),
            embedder_factory=FakeEmbedder,
            index_runner=FakeIndexRunner(),
            preload_default=True,
        )
        url = stack.enter_context(uvicorn_server(app))
        return Server(url, data_dir, app)

    with stack:
        yield start


@pytest.fixture
def srv(server_factory: Any) -> Server:
    # failed_auth high: these tests present bad keys on purpose, from one address
    return server_factory(rate_limits={"failed_auth": "1000/minute"})


def _reached(r: httpx.Response) -> bool:
    assert "Traceback" not in r.text
    return r.status_code not in (401, 403)


def test_every_route_is_in_the_table_and_none_answers_without_a_key(srv: Server) -> None:
    routes = app_routes(srv.app)
    assert routes == set(ROUTES), (
        f"routes missing from serving/http/auth.py ROUTES: {sorted(routes - set(ROUTES))}; "
        f"stale entries: {sorted(set(ROUTES) - routes)}"
    )
    public = {route for route, access in ROUTES.items() if access.role is None}
    assert public == {("GET", "/api/health/live"), ("GET", "/api/health/ready")}
    # No key yet, loopback: auth is off (today's behaviour), every route answers.
    assert all(_reached(srv.call(m, p)) for m, p in routes)
    srv.keys.create("first", "admin")  # the first key turns auth on at once
    for method, path in sorted(routes):
        r = srv.call(method, path)
        if (method, path) in public:
            assert r.status_code == 200, (method, path, r.text)
        else:
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert _code(r) == "auth_required"


def test_each_role_reaches_exactly_its_routes(srv: Server) -> None:
    tokens = {role: srv.keys.create(role, role)[1] for role in ROLES}
    for method, path in sorted(ROUTES):
        needed = access_of(method, path).role
        for role, token in tokens.items():
            r = srv.call(method, path, token)
            allowed = needed is None or ROLES.index(role) >= ROLES.index(needed)
            assert _reached(r) == allowed, (role, method, path, r.status_code, r.text)
            if not allowed:
                assert r.status_code == 403 and _code(r) == "permission_denied"
                assert int(r.headers["x-ratelimit-remaining"]) >= 0  # refused, still counted


def test_the_openai_sdk_with_each_role(srv: Server) -> None:
    _, user = srv.keys.create("app", "user")
    _, reader = srv.keys.create("dash", "readonly")
    chat = srv.sdk(user).chat.completions.create(
        model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert chat.choices[0].message.content
    assert srv.sdk(user).embeddings.create(model="fake-embed", input="hi").data
    assert "fake-llm" in [m.id for m in srv.sdk(reader).models.list()]
    with pytest.raises(openai.PermissionDeniedError):
        srv.sdk(reader).embeddings.create(model="fake-embed", input="hi")
    with pytest.raises(openai.AuthenticationError):
        srv.sdk("sk-wrong").models.list()
    # x-api-key (the Anthropic SDK's header) works as well as Authorization: Bearer
    r = srv.http.get("/v1/models", headers={"x-api-key": reader})
    assert r.status_code == 200


def test_revocation_expiry_and_rotation_hold_at_the_next_request(srv: Server) -> None:
    _, token = srv.keys.create("temp", "user")
    client = srv.sdk(token)
    assert client.models.list().data
    srv.keys.revoke("temp")
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.models.list()

    _, short = srv.keys.create("short", "user", expires_in=timedelta(seconds=1))
    assert srv.sdk(short).models.list().data
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError, match="expired"):
        srv.sdk(short).models.list()

    _, old = srv.keys.create("rot", "user")
    _, new = srv.keys.rotate("rot")
    with pytest.raises(openai.AuthenticationError):
        srv.sdk(old).models.list()
    assert srv.sdk(new).models.list().data


def _limit_headers(r: httpx.Response) -> tuple[int, int, int]:
    h = r.headers
    return (
        int(h["x-ratelimit-limit"]),
        int(h["x-ratelimit-remaining"]),
        int(h["x-ratelimit-reset"]),
    )


def test_a_keys_own_limit_answers_429_with_retry_after(srv: Server) -> None:
    _, token = srv.keys.create("tight", "user", rate_limit="3/minute")
    client = srv.sdk(token)
    for left in (2, 1, 0):
        raw = client.chat.completions.with_raw_response.create(
            model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        limit, remaining, reset = _limit_headers(raw.http_response)
        assert (limit, remaining) == (3, left) and 0 < reset <= 60
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(
            model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    r = exc.value.response
    assert r.status_code == 429 and exc.value.code == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert _limit_headers(r)[:2] == (3, 0)
    # a streamed answer carries the headers too
    _, other = srv.keys.create("streamer", "user")
    with srv.http.stream(
        "POST",
        "/v1/chat/completions",
        json={**BODIES["/v1/chat/completions"], "stream": True},
        headers={"Authorization": f"Bearer {other}"},
    ) as stream:
        assert stream.status_code == 200 and _limit_headers(stream)[:2] == (60, 59)


def test_the_61st_inference_request_in_a_minute_is_429_by_default(server_factory: Any) -> None:
    """Defaults (60/minute inference) for a key without a limit of its own."""
    srv = server_factory("defaults")
    _, token = srv.keys.create("plain", "user")
    url = "/v1/embeddings"
    for i in range(60):
        r = srv.call("POST", url, token)
        assert r.status_code == 200, r.text
        assert _limit_headers(r)[:2] == (60, 59 - i)
    r = srv.call("POST", url, token)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["retry-after"]) >= 1 and _limit_headers(r)[:2] == (60, 0)
    # the read-only class has its own bucket (120/minute)
    r = srv.call("GET", "/v1/models", token)
    assert r.status_code == 200 and _limit_headers(r)[:2] == (120, 119)
    # the public probes are never limited
    assert srv.call("GET", "/api/health/live").status_code == 200


def test_no_limit_for_the_machines_own_user_without_keys(server_factory: Any) -> None:
    """Auth off on loopback (no key exists): the local user's own load is never throttled."""
    srv = server_factory("local")
    for _ in range(61):
        r = srv.call("POST", "/v1/embeddings")
        assert r.status_code == 200 and "x-ratelimit-limit" not in r.headers


def test_failed_authentications_are_limited_per_address(server_factory: Any) -> None:
    srv = server_factory("brute", rate_limits={"failed_auth": "3/minute"})
    _, token = srv.keys.create("real", "user")
    guess = token[:-4] + "AAAA"
    assert [srv.call("GET", "/v1/models", guess).status_code for _ in range(3)] == [401] * 3
    blocked = srv.call("GET", "/v1/models", guess)
    assert blocked.status_code == 429 and "failed authentications" in blocked.text
    assert int(blocked.headers["retry-after"]) >= 1


def test_checks_in_a_worker_thread_as_with_a_remote_limit_store(srv: Server) -> None:
    """What a redis:// `rate_limits.storage_uri` makes the guard do (no Redis here)."""
    srv.app.state.guard.blocking = True
    _, token = srv.keys.create("threaded", "readonly")
    r = srv.call("GET", "/v1/models", token)
    assert r.status_code == 200 and _limit_headers(r)[:2] == (120, 119)
    assert srv.call("GET", "/v1/models").status_code == 401
    assert srv.call("POST", "/v1/embeddings", token).status_code == 403


def test_the_request_log_feeds_usage(srv: Server) -> None:
    _, token = srv.keys.create("counted", "user")
    client = srv.sdk(token)
    client.chat.completions.create(
        model="fake-llm", messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    client.models.list()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the log is written in batches, every 0.5 s
        rows = {r["name"]: r for r in srv.keys.usage()}
        if rows.get("counted", {}).get("requests") == 2:
            break
        time.sleep(0.1)
    row = rows["counted"]
    assert row["requests"] == 2 and row["errors"] == 0 and row["tokens"] > 0
    assert srv.keys.get("counted").last_used is not None


def test_no_secret_in_any_log_line_or_database_file(
    srv: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    import structlog

    from pipelines import log

    # The server's own logging (pipelines/log.py, JSON lines), put back afterwards.
    saved = structlog.get_config(), logging.getLogger().handlers[:], logging.getLogger().level
    log.configure("debug", "json")
    caplog.set_level(logging.DEBUG)
    try:
        _exercise_and_grep(srv, tmp_path, caplog, capfd)
    finally:
        structlog.configure(**saved[0])
        logging.getLogger().handlers[:] = saved[1]
        logging.getLogger().setLevel(saved[2])


def _exercise_and_grep(
    srv: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    _, token = srv.keys.create("watched", "admin")
    secret = token.split("_", 2)[2]
    wrong = token[:-4] + "AAAA"
    for headers in (
        {"Authorization": f"Bearer {token}"},
        {"x-api-key": token},
        {"Authorization": f"Bearer {wrong}"},
        {"x-api-key": secret},
    ):
        srv.http.get("/v1/models", headers=headers)
        srv.http.post("/api/models/load", json={"model": "fake-llm"}, headers=headers)
        srv.http.post("/v1/rag/index", json={"paths": [str(tmp_path)]}, headers=headers)
    srv.keys.revoke("watched")
    srv.http.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    time.sleep(1)  # the request log's next batch
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "audit.model_load" in logged and "audit.auth_failed" in logged
    assert "watched" in logged  # events name the key...
    for needle in (secret, secret[:16], wrong.split("_", 2)[2]):
        assert needle not in logged  # ...never its secret
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert needle.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("host", "mode", "insecure", "keys", "refused"),
    [
        ("127.0.0.1", "auto", False, False, False),
        ("::1", "off", False, False, False),
        ("localhost", "on", False, False, False),
        ("0.0.0.0", "auto", False, False, True),
        ("192.168.1.20", "on", False, False, True),
        ("0.0.0.0", "auto", False, True, False),
        ("0.0.0.0", "off", False, True, True),
        ("0.0.0.0", "off", True, False, False),
        ("0.0.0.0", "auto", True, False, False),
    ],
)
def test_start_rules(host: str, mode: str, insecure: bool, keys: bool, refused: bool) -> None:
    from serving.http.auth import startup_problem

    settings = load_settings(auth={"mode": mode, "insecure": insecure})
    assert (startup_problem(settings, host, keys) is not None) == refused
