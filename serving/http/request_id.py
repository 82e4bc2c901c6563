"""X-Request-ID: one id per request, taken from the client or made here, echoed on the response
and bound into structlog's context, so every log line written while the request runs carries it.

A client's id is kept only when it is short and plain (`[A-Za-z0-9._:+=/-]`, at most 128
characters: UUIDs, ULIDs, trace ids): anything else would let a caller write what it likes into
the logs, so it is replaced by a fresh one (the response says which id the server used).
Each request runs in its own task, whose copy of the context the binding lives in; it is unbound
when the request ends all the same, for servers that reuse one context.

With tracing on (settings `telemetry`), the request's trace id is bound too, as `trace_id`, and a
request that brings no id of its own gets the trace id as its id: one id to find the log lines,
the trace and the response by. A client's own id is kept as the request id (and put on the
server span as `impetus.request_id`), the trace id then only in `trace_id`.
"""

from __future__ import annotations

import re
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines import tracing

HEADER = "x-request-id"
_VALID = re.compile(r"[A-Za-z0-9._:+=/-]{1,128}")


def client_request_id(scope: Scope) -> str | None:
    """The client's X-Request-ID when it is valid, else None."""
    for name, value in scope.get("headers", ()):
        if name == HEADER.encode():
            given = value.decode("latin-1")
            return given if _VALID.fullmatch(given) else None
    return None


def request_id_of(scope: Scope, trace_id: str | None = None) -> str:
    """The client's X-Request-ID when it is valid, else the trace id when there is one, else a
    new one (32 hex digits all three, but for a client's)."""
    return client_request_id(scope) or trace_id or uuid.uuid4().hex


class RequestIdMiddleware:
    """Binds `request_id` for the request's log lines and sets X-Request-ID on its response."""

    def __init__(self, app: ASGIApp, echo: bool = True) -> None:
        self.app = app
        self.echo = echo  # False: a proxy in front echoes the id (Ray Serve's does)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        trace_id = tracing.current_trace_id()  # None unless tracing is on
        rid = request_id_of(scope, trace_id)
        scope.setdefault("state", {})["request_id"] = rid
        if trace_id is not None and rid != trace_id:
            from opentelemetry import trace

            trace.get_current_span().set_attribute("impetus.request_id", rid)
        raw = rid.encode()

        async def send_with_id(message: Message) -> None:
            if self.echo and message["type"] in (
                "http.response.start",
                "websocket.http.response.start",
            ):
                headers = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"
                ]
                message["headers"] = [*headers, (HEADER.encode(), raw)]
            await send(message)

        bound = (
            {"request_id": rid} if trace_id is None else {"request_id": rid, "trace_id": trace_id}
        )
        tokens = structlog.contextvars.bind_contextvars(**bound)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)
