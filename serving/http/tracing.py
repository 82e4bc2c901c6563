"""The spans of one HTTP request, beside the server span FastAPI makes (when tracing is on).

    POST /v1/chat/completions              server span (FastAPI's, `telemetry=` in create_app)
    ├─ fastapi.dependencies                FastAPI: the route's dependencies
    │  └─ auth                             the access check (serving/http/auth.py)
    ├─ validation                          from the end of auth to the route function: the body
    │                                      read, parsed and validated against its wire model
    ├─ fastapi.endpoint                    FastAPI: the route function
    │  └─ retrieval → embed, dense, sparse, fuse     (serving/services/rag.py, pipelines/retrieve)
    ├─ queue wait, prefill, decode         one each per sequence, timed by the engine
    └─ delivery                            the response written: first to last byte

The engine runs in its own thread (or another Ray actor) and knows nothing of tracing: it puts
the times of a sequence's stages on its last delta (`SequenceTimings`) and `sequence_spans` turns
them into spans with those start and end times here. What a request's spans hang from lives in a
`RequestTrace` that `TracingMiddleware` keeps in a context variable for the request.
None of this is installed when tracing is off (create_app adds neither middleware nor wrappers).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines import tracing
from serving.http.auth import authorize

if TYPE_CHECKING:
    from opentelemetry.context import Context

    from serving.engine.base import Delta


@dataclass
class RequestTrace:
    """What the spans of one request hang from, and its spans still open."""

    context: Context | None  # the server span's
    validation: Any = None
    delivery: Any = None


_current: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "impetus_request_trace", default=None
)


def current() -> RequestTrace | None:
    """The running request's trace, None when tracing is off or outside a request."""
    return _current.get()


def _end(span: Any, error: str | None = None) -> None:
    if span is not None and span.is_recording():
        if error is not None:
            span.set_attribute("error.type", error)
        span.end()


class TracingMiddleware:
    """Keeps the request's `RequestTrace` and times its delivery (installed only when tracing is
    on, inside FastAPI's server span)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = RequestTrace(tracing.current_context())
        token = _current.set(rt)

        async def traced_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
                # a request refused before its route ran (400, 413) never left validation
                _end(rt.validation, str(status) if status >= 400 else None)
                rt.delivery = tracing.start(
                    "delivery", {"http.response.status_code": status}, parent=rt.context
                )
            await send(message)
            if kind == "http.response.body" and not message.get("more_body", False):
                _end(rt.delivery)

        try:
            await self.app(scope, receive, traced_send)
        finally:
            _end(rt.validation, "incomplete")
            _end(rt.delivery, "incomplete")  # the client left mid-stream
            _current.reset(token)


async def authorize_traced(request: Request) -> None:
    """`authorize` in an `auth` span; validation starts when it ends."""
    with tracing.span("auth"):
        await authorize(request)
    rt = _current.get()
    if rt is not None:
        rt.validation = tracing.start("validation", parent=rt.context)


def _validated() -> None:
    rt = _current.get()
    if rt is not None and rt.validation is not None:
        _end(rt.validation)


def end_validation_at_endpoint(provider: Any) -> None:
    """Make `provider` end a request's validation span when FastAPI's `fastapi.endpoint` span
    starts (the route function is called: the body is read and validated). A span processor's
    `on_start` runs in the request's context, where `current()` finds its trace. Added once per
    provider; a provider that takes no processors leaves validation to end with the response."""
    add = getattr(provider, "add_span_processor", None)
    if add is None or getattr(provider, "_impetus_ends_validation", False):
        return
    from opentelemetry.sdk.trace import SpanProcessor

    class EndsValidation(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            if span.name == "fastapi.endpoint":
                _validated()

    add(EndsValidation())
    provider._impetus_ends_validation = True


def sequence_spans(rt: RequestTrace, index: int, delta: Delta) -> None:
    """`queue wait`, `prefill` and `decode` of one finished sequence, from the times the engine
    recorded (`delta.timings`), under the request's server span."""
    t = delta.timings
    if t is None:
        return
    seq = {"impetus.sequence": index}
    tracing.record("queue wait", t.queued_ns, t.admitted_ns, seq, parent=rt.context)
    tracing.record(
        "prefill",
        t.admitted_ns,
        t.first_token_ns,
        {**seq, "impetus.prompt_tokens": delta.prompt_tokens,
         "impetus.cached_tokens": delta.cached_tokens},
        parent=rt.context,
    )  # fmt: skip
    tracing.record(
        "decode",
        t.first_token_ns,
        t.finished_ns,
        {**seq, "impetus.completion_tokens": delta.completion_tokens,
         "impetus.finish_reason": delta.finish_reason or ""},
        parent=rt.context,
    )  # fmt: skip
