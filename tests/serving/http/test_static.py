"""The dashboard's build served at / (serving/http/static.py) by the real app under uvicorn, from a
tiny fake build in a temporary folder (`serve.dashboard_dir`), never the real one: files and
their cache headers, the SPA fallback for HTML navigations only, the API's paths untouched, the
dashboard's CSP beside /docs' own, no way out of the folder, and the page shown without a build.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.http.static import DASHBOARD_CSP
from tests.serving.http.fake_server import fake_servers

INDEX = '<!doctype html><html><head><script type="module" src="/assets/app-3f2a1b.js"></script></head><body><div id="root"></div></body></html>'
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("static")
    dist = root / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX)
    (dist / "assets" / "app-3f2a1b.js").write_text("console.log('impetus')")
    (dist / "favicon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "secret.txt").write_text("not for clients")
    (root / "empty").mkdir()
    with fake_servers(root) as start:
        built = start("built", serve={"dashboard_dir": str(dist)})
        missing = start("missing", serve={"dashboard_dir": str(root / "empty")})
        yield {"built": built.url, "missing": missing.url}


def test_index_and_assets_with_their_cache_headers(servers: dict[str, Any]) -> None:
    url = servers["built"]
    for headers in (HTML, {"Accept": "*/*"}):
        r = httpx.get(url + "/", headers=headers)
        assert r.status_code == 200 and r.text == INDEX
        assert r.headers["content-type"].startswith("text/html")
        assert r.headers["cache-control"] == "no-cache"
        assert r.headers["content-security-policy"] == DASHBOARD_CSP
        assert r.headers["x-frame-options"] == "DENY"
    js = httpx.get(url + "/assets/app-3f2a1b.js")
    assert js.status_code == 200 and "impetus" in js.text
    assert "javascript" in js.headers["content-type"]
    assert js.headers["cache-control"] == "public, max-age=31536000, immutable"
    icon = httpx.get(url + "/favicon.svg")
    assert icon.status_code == 200 and icon.headers["cache-control"] == "public, max-age=300"
    head = httpx.head(url + "/")
    assert head.status_code == 200 and head.content == b""


def test_spa_fallback_for_html_navigations_only(servers: dict[str, Any]) -> None:
    url = servers["built"]
    page = httpx.get(url + "/knowledge/collections/default", headers=HTML)
    assert page.status_code == 200 and page.text == INDEX
    assert page.headers["cache-control"] == "no-cache"
    # not HTML: a missing file is a 404 in the API's error shape, not index.html
    for path in ("/assets/gone-123.js", "/chat"):
        r = httpx.get(url + path, headers={"Accept": "application/json"})
        assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_api_paths_are_never_the_dashboards(servers: dict[str, Any]) -> None:
    url = servers["built"]
    for path in ("/v1/nope", "/api/nope", "/api", "/v1"):
        r = httpx.get(url + path, headers=HTML)
        assert r.status_code == 404 and "error" in r.json(), path
    assert httpx.get(url + "/v1/models", headers=HTML).json()["object"] == "list"
    assert httpx.get(url + "/v1/chat/completions", headers=HTML).status_code == 405
    docs = httpx.get(url + "/docs", headers=HTML)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert docs.headers["content-security-policy"] != DASHBOARD_CSP  # its own policy
    assert httpx.post(url + "/", headers=HTML).status_code in (404, 405)


def test_no_file_outside_the_build(servers: dict[str, Any]) -> None:
    host, port = servers["built"].removeprefix("http://").split(":")
    for raw in ("/../secret.txt", "/assets/../../secret.txt", "/%2e%2e/secret.txt"):
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", raw, headers=HTML)
        body = conn.getresponse().read()
        conn.close()
        assert b"not for clients" not in body, raw


def test_a_page_that_says_how_to_build_when_there_is_no_build(servers: dict[str, Any]) -> None:
    url = servers["missing"]
    r = httpx.get(url + "/", headers=HTML)
    assert r.status_code == 200 and "npm run build" in r.text and "make setup" in r.text
    assert r.headers["content-security-policy"] == DASHBOARD_CSP
    assert httpx.get(url + "/models", headers=HTML).text == r.text
    assert httpx.get(url + "/assets/app.js").status_code == 404
    # a foreign Host is still refused before anything is served (DNS rebinding)
    assert httpx.get(url + "/", headers={**HTML, "Host": "evil.example"}).status_code == 400


def test_default_dist_is_the_checkouts(tmp_path: Path) -> None:
    from serving.http.static import DashboardMiddleware, default_dist

    assert default_dist().parts[-3:] == ("serving", "dashboard", "dist")
    assert DashboardMiddleware(app=lambda *a: None, dist=None).dist == default_dist().resolve()  # type: ignore[arg-type]


def test_serve_prints_the_dashboard_url(tmp_path: Path) -> None:
    from flows.commands.serve import dashboard_line
    from pipelines.settings import load_settings

    s = load_settings(data_dir=tmp_path / "state", serve={"dashboard_dir": str(tmp_path)})
    assert "make setup" in dashboard_line(s, "127.0.0.1", 8000)
    (tmp_path / "index.html").write_text(INDEX)
    assert dashboard_line(s, "0.0.0.0", 8123) == "Dashboard: http://localhost:8123/"
    assert dashboard_line(s, "::1", 8123) == "Dashboard: http://[::1]:8123/"
