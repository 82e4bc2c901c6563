"""Server-sent events of a `Generation` (serving/http/generation.py), as OpenAI streams them:
`data: {json}` events, `: keep-alive` comments while a long prefill runs, an error event when the
engine fails after the first event, then `data: [DONE]`.

Anthropic's Messages stream differs only in framing (`ANTHROPIC`): each event is named after its
`type` (`event: message_start`), keep-alives are `ping` events, an error is an `error` event in
Anthropic's shape, and nothing follows `message_stop`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from serving.engine.base import Delta
from serving.http.errors import GENERIC_MESSAGE, log_unexpected, to_api_error
from serving.http.generation import Generation

_KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"


def event(chunk: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines, so one chunk is always one `data:` line.
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def named_event(chunk: dict[str, Any]) -> bytes:
    """An event named after its `type` (Anthropic's framing)."""
    return f"event: {chunk['type']}\n".encode() + event(chunk)


@dataclass(frozen=True)
class Wire:
    """How an API frames its stream."""

    event: Callable[[dict[str, Any]], bytes]
    keepalive: bytes  # sent while the first delta is awaited
    ping: Callable[[], ServerSentEvent]  # sent every keepalive_s while nothing else is
    done: bytes | None  # the stream's last bytes
    error_path: str  # the path whose error shape an error event takes (serving/http/errors.py)
    lead: bool = False  # the first head event goes before the keep-alive (message_start)


OPENAI = Wire(
    event,
    _KEEPALIVE,
    lambda: ServerSentEvent(comment="keep-alive", sep="\n"),
    _DONE,
    "/v1",
)
ANTHROPIC = Wire(
    named_event,
    named_event({"type": "ping"}),
    lambda: ServerSentEvent(data='{"type":"ping"}', event="ping", sep="\n"),
    None,
    "/v1/messages",
    lead=True,
)


def stream(
    gen: Generation,
    chunks: Callable[[int, Delta], list[dict[str, Any]]],
    head: list[dict[str, Any]],
    tail: Callable[[], list[dict[str, Any]]],
    waiting: bool,
    wire: Wire = OPENAI,
) -> EventSourceResponse:
    """The SSE response of a started (and primed) generation."""
    keepalive = gen.ctx.settings.serve.keepalive_s

    async def events() -> AsyncIterator[bytes]:
        finished = False
        try:
            for chunk in head[:1] if wire.lead else ():  # message_start comes first
                yield wire.event(chunk)
            if waiting:  # the first token is not there yet: tell the client we are alive
                yield wire.keepalive
            for chunk in head[1:] if wire.lead else head:
                yield wire.event(chunk)
            async for i, delta in gen.deltas():
                for chunk in chunks(i, delta):
                    yield wire.event(chunk)
            for chunk in tail():
                yield wire.event(chunk)
            finished = True
        except (asyncio.CancelledError, GeneratorExit):
            gen.ctx.metrics.disconnects.labels(gen.model).inc()
            raise
        except Exception as exc:
            err = to_api_error(exc)
            if err.message == GENERIC_MESSAGE:
                log_unexpected(exc)
            gen.ctx.metrics.generation_errors.labels(gen.model, err.code).inc()
            body = err.body(wire.error_path)
            yield wire.event(body)
            finished = True
        finally:
            await gen.aclose()
        if finished and wire.done is not None:
            yield wire.done

    return EventSourceResponse(
        events(),
        ping=keepalive,
        ping_message_factory=wire.ping,
        sep="\n",
        # Also when the stream never started (the client left before the first byte).
        background=BackgroundTask(gen.aclose),
    )
