"""The dashboard's built files at `/` (serving/dashboard/dist, or `serve.dashboard_dir`), with the
SPA fallback of docs/api.md "Dashboard", as an ASGI middleware in front of the API's routes.

A GET or HEAD whose path is not the API's (`/api/*`, `/v1/*`, `/docs*`, `/openapi.json`,
`/tokenize`, `/detokenize`) gets the build's file at that path if there is one (hashed files under
`/assets/` cached for a year, `immutable`; others for five minutes), else, when it asks for HTML
(a browser navigating to `/chat`, say) or is `/`, `index.html` with `no-cache`, so that a new build
is picked up at the next load. Anything else falls through to the API (a JSON 404). Without a
build, such requests get a page that says how to make one. The files are public (the app asks for
a key itself), so no auth; the Host/Origin checks and security headers still apply
(SecurityMiddleware sits outside this one), with `DASHBOARD_CSP` on the HTML: the app's own
scripts only, inline styles (React sets style attributes), images from here or data:/blob:
URLs, and fetches and WebSockets to this server only ('self' matches ws:/wss: of the same host
in CSP Level 3 browsers). /docs keeps its own policy (serving/http/docs.py).
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

API_PREFIXES = ("/api/", "/v1/", "/docs")
API_PATHS = frozenset({"/api", "/v1", "/openapi.json", "/tokenize", "/detokenize"})
DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
ASSETS_CACHE = "public, max-age=31536000, immutable"
FILE_CACHE = "public, max-age=300"
MISSING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Impetus: dashboard not built</title></head>
<body>
<h1>Impetus is running; its dashboard is not built yet</h1>
<p>The API answers under <a href="/docs">/docs</a>. To build the dashboard, run
<code>make setup</code> in the checkout, or
<code>cd serving/dashboard &amp;&amp; npm ci &amp;&amp; npm run build</code>,
then reload this page.</p>
</body></html>
"""


def default_dist() -> Path:
    from pipelines.settings import PROJECT_ROOT

    return PROJECT_ROOT / "serving" / "dashboard" / "dist"


def is_api_path(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIXES)


def _accepts_html(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return b"text/html" in value
    return False


class DashboardMiddleware:
    """Serves the dashboard's build (see the module's docstring); the API passes through."""

    def __init__(self, app: ASGIApp, dist: Path | None = None) -> None:
        self.app = app
        self.dist = (dist or default_dist()).resolve()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or is_api_path(path)
            or "\x00" in path
        ):
            await self.app(scope, receive, send)
            return
        response = self._response(path, page=path == "/" or _accepts_html(scope))
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _response(self, path: str, page: bool) -> Response | None:
        index = self.dist / "index.html"
        if not index.is_file():
            if not page:
                return None
            return HTMLResponse(
                MISSING_PAGE,
                headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP},
            )
        if path != "/":
            try:
                file = (self.dist / path.lstrip("/")).resolve()
            except (OSError, ValueError):
                file = None
            if file is not None and file.is_file() and file.is_relative_to(self.dist):
                cache = ASSETS_CACHE if path.startswith("/assets/") else FILE_CACHE
                if file.name == "index.html":
                    cache = "no-cache"
                return FileResponse(
                    file, headers={"Cache-Control": cache, "Content-Security-Policy": DASHBOARD_CSP}
                )
        if not page:
            return None
        return FileResponse(
            index,
            media_type="text/html",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": DASHBOARD_CSP},
        )
