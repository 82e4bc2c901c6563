"""Spans for the library's steps, and for whoever records through it: nothing unless a tracer
provider is installed.

    from pipelines import tracing
    with tracing.span("dense", {"impetus.k": k}):
        hits = store.search(...)

Tracing is off by default (settings `telemetry`): then `span` returns one shared no-op context
manager and `record` returns at once, so a step pays a global read and a call. Whoever turns it
on (serving/tracing.py builds an OpenTelemetry SDK provider from the settings; tests install one
with an in-memory exporter) calls `install(provider)`. This module needs only the OpenTelemetry
API, imported when tracing is on; one provider per process (the last `install` wins), since the
spans of a request cross the app, its services and the library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer, TracerProvider

Attributes = Mapping[str, str | int | float | bool]

_tracer: Tracer | None = None
_provider: TracerProvider | None = None
_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def install(provider: TracerProvider) -> None:
    """Record spans with `provider` from now on (process-wide)."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("impetus")


def uninstall(provider: TracerProvider | None = None) -> None:
    """Stop recording (only if `provider`, when given, is the installed one)."""
    global _tracer, _provider
    if provider is None or provider is _provider:
        _tracer = _provider = None


def enabled() -> bool:
    return _tracer is not None


def provider() -> TracerProvider | None:
    """The installed provider, or None when tracing is off."""
    return _provider


def span(name: str, attributes: Attributes | None = None) -> contextlib.AbstractContextManager[Any]:
    """A span around a block, current inside it (its children nest under it); a no-op when off."""
    t = _tracer
    if t is None:
        return _OFF
    return t.start_as_current_span(name, attributes=attributes)


def record(
    name: str,
    start_ns: int,
    end_ns: int,
    attributes: Attributes | None = None,
    *,
    parent: Context | None = None,
) -> None:
    """A finished span with explicit times (`time.time_ns()` clock), for work timed elsewhere (the
    engine thread, another process); its parent is `parent`, else the current span."""
    t = _tracer
    if t is None:
        return
    s = t.start_span(name, context=parent, attributes=attributes, start_time=start_ns)
    s.end(end_time=max(end_ns, start_ns))


def start(
    name: str,
    attributes: Attributes | None = None,
    *,
    parent: Context | None = None,
    start_ns: int | None = None,
) -> Any:
    """An open span that is not made current (end it with `.end()`); None when off."""
    t = _tracer
    if t is None:
        return None
    return t.start_span(name, context=parent, attributes=attributes, start_time=start_ns)


def current_context() -> Context | None:
    """The current OpenTelemetry context (to parent spans recorded later), None when off."""
    if _tracer is None:
        return None
    from opentelemetry import context

    return context.get_current()


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, None when off or outside a span."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
