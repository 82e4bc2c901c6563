"""Browser-facing hardening on a real uvicorn server (the real app, fake engines): the Host
allow-list against DNS rebinding, the Origin allow-list and CORS, the security headers, /docs
under its Content-Security-Policy, X-Request-ID in every log line of a request, and error bodies
that never name the server's folders.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.http.security import HostPolicy, host_name, same_origin
from tests.serving.http.fake_server import FakeServer, fake_servers
from tests.serving.servers import RunningServer


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    with fake_servers(tmp_path) as start:
        yield start


@pytest.fixture
def srv(start: Any) -> FakeServer:
    server: FakeServer = start()
    return server


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


def _is_api_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (
        error["code"] == code
        and error["message"]
        and set(error)
        == {
            "message",
            "type",
            "param",
            "code",
        }
    )


# -- Host ------------------------------------------------------------------------------------------


def test_loopback_names_pass_and_a_rebound_name_gets_400_on_every_route(srv: FakeServer) -> None:
    port = _port(srv.url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            "LOCALHOST",
            "127.0.0.2",
        ):
            assert http.get("/api/health/live", headers={"Host": host}).status_code == 200, host
        for path in ("/api/health/live", "/api/health/ready", "/v1/models", "/docs", "/nope"):
            r = http.get(path, headers={"Host": f"attacker.example:{port}"})
            _is_api_error(r, 400, "invalid_request")
            assert "attacker.example" in r.json()["error"]["message"]
            assert r.headers["x-content-type-options"] == "nosniff"
        r = http.post(
            "/v1/rag/index", json={"paths": ["/etc"]}, headers={"Host": "rebind.attacker.example"}
        )
        _is_api_error(r, 400, "invalid_request")


def test_allowed_hosts_setting(start: Any) -> None:
    srv = start(serve={"allowed_hosts": ["impetus.lan", "*.example.com"]})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for host, status in (
            ("impetus.lan", 200),
            ("IMPETUS.LAN.:8000", 200),
            ("a.b.example.com", 200),
            ("example.com", 400),
            ("impetus.lan.evil", 400),
        ):
            assert http.get("/v1/models", headers={"Host": host}).status_code == status, host


def test_host_policy_by_bind_address() -> None:
    specific = HostPolicy.build("192.168.1.20", [])
    assert specific.allows("192.168.1.20:8000") and specific.allows("localhost:8000")
    assert not specific.allows("192.168.1.21") and not specific.allows("my-mac.local")
    wildcard = HostPolicy.build("0.0.0.0", [])
    import socket

    me = socket.gethostname().lower()
    for host in (me, f"{me.split('.')[0]}.local:8000", "10.1.2.3:8000", "[fe80::1]:8000", "[::1]"):
        assert wildcard.allows(host), host
    assert not wildcard.allows("attacker.example")
    assert HostPolicy.build("::", []).allows("10.0.0.1")
    assert HostPolicy.build("127.0.0.1", ["*"]).allows("anything.example")
    assert host_name("[::1]:80") == "::1" and host_name("Example.COM.:80") == "example.com"
    assert host_name("fe80::1") == "fe80::1"  # a bare IPv6 address has no port
    assert same_origin("http://localhost:8000", "localhost:8000")
    assert not same_origin("http://localhost:8001", "localhost:8000")


# -- Origin and CORS -------------------------------------------------------------------------------


def test_foreign_origins_are_refused_and_the_own_origin_passes(srv: FakeServer) -> None:
    port = _port(srv.url)
    body = {"model": "fake-llm"}
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        own = {"Origin": f"http://127.0.0.1:{port}"}
        assert http.post("/api/models/load", json=body, headers=own).status_code == 200
        for origin in ("http://attacker.example", "null", f"http://127.0.0.1:{int(port) + 1}"):
            r = http.post("/api/models/load", json=body, headers={"Origin": origin})
            _is_api_error(r, 403, "permission_denied")
            assert "access-control-allow-origin" not in r.headers
            preflight = http.options(
                "/v1/chat/completions",
                headers={
                    "Origin": origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
            )
            assert preflight.status_code == 403
            assert "access-control-allow-origin" not in preflight.headers


def test_cors_origins_get_preflights_and_exposed_headers(start: Any) -> None:
    dev = "http://localhost:5173"
    srv = start(
        serve={"cors_origins": [dev]},
        auth={"mode": "on"},
        rate_limits={"inference": "1000/minute", "read": "1000/minute"},
    )
    from pipelines.keys import KeyStore

    keys = KeyStore.open(srv.settings.data_dir)
    _, token = keys.create("browser", "user")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        preflight = http.options(
            "/v1/chat/completions",
            headers={
                "Origin": dev,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, x-request-id",
            },
        )
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == dev
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "fake-llm",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 2,
            },
            headers={"Origin": dev, "Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == dev
        exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {
            "x-request-id",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
            "x-ratelimit-reset",
        } <= exposed
        assert "x-ratelimit-remaining" in r.headers
        other = http.get("/v1/models", headers={"Origin": "http://localhost:5174"})
        _is_api_error(other, 403, "permission_denied")
    keys.close()


# -- headers and /docs -----------------------------------------------------------------------------


def test_security_headers_on_every_response_and_csp_on_html(srv: FakeServer) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        responses = {
            "json": http.get("/v1/models"),
            "error": http.get("/v1/models/nope"),
            "text": http.get("/api/metrics"),
            "html": http.get("/docs"),
            "asset": http.get("/docs/assets/swagger-ui.css"),
        }
    for kind, r in responses.items():
        assert r.headers["x-content-type-options"] == "nosniff", kind
        assert r.headers["referrer-policy"] == "no-referrer", kind
        assert r.headers["x-frame-options"] == "DENY", kind
        assert ("content-security-policy" in r.headers) == (kind == "html"), kind
    assert responses["asset"].status_code == 200


def test_docs_page_runs_only_its_own_scripts_under_its_csp(srv: FakeServer) -> None:
    """Every script of /docs is allowed by its CSP (served here, or the one hashed inline
    script), every asset it names is served, and nothing is loaded from another host."""
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        page = http.get("/docs")
        csp = dict(
            (d.split()[0], d.split()[1:])
            for d in page.headers["content-security-policy"].split("; ")
        )
        assert csp["frame-ancestors"] == ["'none'"] and csp["default-src"] == ["'self'"]
        html = page.text
        for script in re.findall(r"<script>(.*?)</script>", html, re.DOTALL):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp["script-src"]
        urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        for url in urls:
            assert http.get(url).status_code == 200, url
        assert "'unsafe-eval'" not in csp["script-src"]


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_docs_render_in_a_real_browser_under_the_csp(srv: FakeServer, tmp_path: Path) -> None:
    """Headless Chromium enforces the page's CSP: Swagger UI must still run its scripts, fetch
    /openapi.json and draw one block per operation."""
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        paths = http.get("/openapi.json").json()["paths"]
    operations = sum(len(methods) for methods in paths.values())
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{srv.url}/docs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        # the tests' preloaded OpenBLAS is not for the browser (its GPU process dies of it)
        env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
    )
    assert dom.stdout.count('class="opblock-summary-path"') == operations, dom.stderr[-3000:]


# -- X-Request-ID ----------------------------------------------------------------------------------


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    """The server's own logging (pipelines/log.py, JSON lines), written to a buffer; put back
    afterwards."""
    import structlog

    from pipelines import log

    saved = structlog.get_config(), logging.getLogger().handlers[:], logging.getLogger().level
    log.configure("debug", "json")
    buffer = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        structlog.configure(**saved[0])
        logging.getLogger().handlers[:] = saved[1]
        logging.getLogger().setLevel(saved[2])


def test_request_id_is_echoed_generated_or_replaced(srv: FakeServer) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        given = "trace-1234.abcd:5678"
        assert (
            http.get("/v1/models", headers={"X-Request-ID": given}).headers["x-request-id"] == given
        )
        made = http.get("/v1/models").headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        assert http.get("/v1/models").headers["x-request-id"] != made
        bad_ids = [b"x" * 129, b"a b", b"<script>", "caf\u00e9".encode()]
        for bad in bad_ids:
            r = http.get("/v1/models", headers=[(b"X-Request-ID", bad)])
            assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
        refused = http.get("/v1/models", headers={"Host": "evil.example", "X-Request-ID": given})
        assert refused.headers["x-request-id"] == given  # refusals carry it too


def test_every_log_line_of_a_request_carries_its_id(start: Any, json_logs: io.StringIO) -> None:
    srv = start(auth={"mode": "on"}, rate_limits={"failed_auth": "1000/minute"})
    from pipelines.keys import KeyStore

    keys = KeyStore.open(srv.settings.data_dir)
    _, admin = keys.create("ops", "admin")
    # The default model's load at start logs without a request id (no request caused it): it
    # must be over before the capture starts, or its last line lands among the requests'.
    deadline = time.monotonic() + 30
    while "model.load.done" not in json_logs.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    json_logs.seek(0)
    json_logs.truncate()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        # audit.model_load, then the embedder pool's load lines (one on a worker thread)
        loaded = http.post(
            "/api/models/load",
            json={"model": "fake-embed"},
            headers={"Authorization": f"Bearer {admin}", "X-Request-ID": "req-load-1"},
        )
        assert loaded.status_code == 200, loaded.text
        # audit.auth_failed
        failed = http.get(
            "/v1/models",
            headers={"Authorization": "Bearer imp_bad_key", "X-Request-ID": "req-bad-2"},
        )
        assert failed.status_code == 401
    keys.close()
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines() if line.startswith("{")]
    ours = [x for x in lines if x.get("logger", "").startswith(("serving.", "pipelines."))]
    by_id: dict[str, list[str]] = {}
    for line in ours:
        by_id.setdefault(line.get("request_id", "<none>"), []).append(line["event"])
    assert set(by_id) == {"req-load-1", "req-bad-2"}, by_id
    assert {"audit.model_load", "embedder.load.start", "embedder.load.done"} <= set(
        by_id["req-load-1"]
    )
    assert by_id["req-bad-2"] == ["audit.auth_failed"]


# -- no server paths in error bodies -----------------------------------------------------------------


def test_no_response_body_names_the_data_directory(tmp_path: Path) -> None:
    """A set of bad requests, with the vector store held by another process (so the store's
    errors, which name its folder for the CLI, reach the API): no body names data_dir or
    carries a traceback."""
    from pipelines.settings import load_settings
    from pipelines.vectorstore import create_store

    settings = load_settings(data_dir=tmp_path / "held")
    holder = create_store(settings)  # this test is "the other process"
    try:
        with fake_servers(tmp_path) as start:
            srv = start("held")
            _bad_requests_name_no_path(srv)
    finally:
        holder.close()


def _bad_requests_name_no_path(srv: FakeServer) -> None:
    data_dir = srv.settings.data_dir
    chat = {"model": "fake-llm", "messages": [{"role": "user", "content": "x"}]}
    bad: list[tuple[str, str, Any]] = [
        ("POST", "/v1/chat/completions", {**chat, "model": "missing"}),
        ("POST", "/v1/chat/completions", {**chat, "messages": "x"}),
        ("POST", "/v1/chat/completions", {**chat, "rag_mode": True}),
        ("POST", "/v1/embeddings", {"model": "fake-llm", "input": "x"}),
        ("POST", "/v1/rag/search", {"query": "x"}),
        ("POST", "/v1/rag/search", {"query": "x", "collection": "nope"}),
        ("POST", "/v1/rag/search", {"query": "x", "mode": "weird"}),
        ("POST", "/v1/rag/index", {"paths": [str(data_dir)]}),
        ("POST", "/v1/rag/index", {"paths": [str(data_dir / "nothing-here")]}),
        ("POST", "/v1/rag/index", {"paths": []}),
        ("GET", "/v1/rag/runs/nope", None),
        ("POST", "/api/models/load", {"model": "../../etc/passwd"}),
        ("GET", "/v1/models/%2e%2e%2f%2e%2e", None),
        ("POST", "/nope", {"x": 1}),
    ]
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        responses = [http.request(m, p, json=b) for m, p, b in bad]
        responses.append(http.post("/v1/chat/completions", content=b"{not json"))
        responses.append(http.get("/v1/rag/status"))
        responses.append(http.get("/api/health/status"))
    assert any("<data_dir>" in r.text for r in responses)  # the store's error, redacted
    roots = {str(data_dir), str(data_dir.resolve())}
    for r in responses:
        assert r.status_code < 500 or r.json()["error"]["code"] == "rag_index_error", r.text
        assert "Traceback" not in r.text and 'File "' not in r.text, r.text
        assert not any(root in r.text for root in roots), r.text


# -- both serve modes ------------------------------------------------------------------------------


def test_both_serve_modes_check_hosts_and_set_headers(server: RunningServer) -> None:
    """`impetus serve` and `impetus serve --ray` (whose proxy sets X-Request-ID too)."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        ok = http.get("/v1/models", headers={"X-Request-ID": "both-modes-1"})
        assert ok.status_code == 200
        assert ok.headers["x-content-type-options"] == "nosniff"
        assert ok.headers.get_list("x-request-id") == ["both-modes-1"]  # once, not twice
        rebound = http.get("/api/health/ready", headers={"Host": "rebind.attacker.example"})
        _is_api_error(rebound, 400, "invalid_request")
        foreign = http.post(
            "/v1/rag/index", json={"paths": ["/etc"]}, headers={"Origin": "http://evil.example"}
        )
        _is_api_error(foreign, 403, "permission_denied")
