"""Stopping the server cleanly: while it drains, new requests get 503 `shutting_down` with
Retry-After; the requests in flight finish; what else it waits for (index runs) is asked to stop.

`Shutdown` is the app's coordinator (`app.state.shutdown`): `begin()` turns draining on and runs
the hooks that stop background work (they say what they stopped), `pending()` says what is still
running, `force()` runs the hooks of a second Ctrl-C (kill the children now). `DrainMiddleware`
counts the HTTP requests in flight and refuses new ones while draining, except
`GET /api/health/live` (the process still answers; `/api/health/ready` is refused, so a balancer
stops sending). Who receives the signals is the uvicorn server of `impetus serve`
(serving/http/graceful.py).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.http.errors import APIError

log = structlog.get_logger(__name__)

Hook = Callable[[], list[str]]  # does its part, returns what it did or waits for, in words
LIVE = "/api/health/live"


class Shutdown:
    """The server's shutdown state and hooks (one per app)."""

    def __init__(self, retry_after_s: int = 5) -> None:
        self.draining = False
        self.inflight = 0
        self.retry_after_s = retry_after_s
        self._on_begin: list[Hook] = []
        self._waiting_on: list[Hook] = []
        self._on_force: list[Callable[[], None]] = []

    def on_begin(self, hook: Hook) -> None:
        self._on_begin.append(hook)

    def waiting_on(self, hook: Hook) -> None:
        self._waiting_on.append(hook)

    def on_force(self, hook: Callable[[], None]) -> None:
        self._on_force.append(hook)

    def begin(self) -> list[str]:
        """Start draining; run the stop hooks. Returns what they stopped."""
        self.draining = True
        done: list[str] = []
        for hook in self._on_begin:
            try:
                done += hook()
            except Exception as exc:  # one failing hook must not keep the others from running
                log.warning("shutdown.hook_failed", error=str(exc))
        return done

    def pending(self) -> list[str]:
        """What the server still waits for, in words (empty: it may stop)."""
        out = [f"{self.inflight} request(s) in flight"] if self.inflight else []
        for hook in self._waiting_on:
            try:
                out += hook()
            except Exception as exc:
                log.warning("shutdown.hook_failed", error=str(exc))
        return out

    def force(self) -> None:
        """A second signal: what must not outlive the process (child servers), now."""
        for hook in self._on_force:
            try:
                hook()
            except Exception as exc:
                log.warning("shutdown.hook_failed", error=str(exc))


class DrainMiddleware:
    """Counts HTTP requests in flight; while draining, answers new ones 503 with Retry-After."""

    def __init__(self, app: ASGIApp, shutdown: Shutdown) -> None:
        self.app = app
        self.shutdown = shutdown

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if self.shutdown.draining and path != LIVE:
            err = APIError(
                "shutting_down",
                "The server is shutting down; retry on its next start.",
                headers={"Retry-After": str(self.shutdown.retry_after_s), "Connection": "close"},
            )
            await err.response(path)(scope, receive, send)
            return
        self.shutdown.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.shutdown.inflight -= 1
