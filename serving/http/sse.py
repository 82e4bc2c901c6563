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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.types import Message, Send

from serving.engine.base import Delta
from serving.http.errors import GENERIC_MESSAGE, log_unexpected, to_api_error
from serving.http.generation import Generation

_KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"


def event(chunk: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines, so one chunk is always one `data:` line.
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


_PLACEHOLDER = "\x00impetus-text\x00"
_QUOTED_PLACEHOLDER = json.dumps(_PLACEHOLDER).encode()


class TextEvent:
    """The events of one stream that differ only in one string field (the content of a chat
    chunk): the chunk is encoded once with a placeholder there, and each event is the bytes
    around it with the text encoded as JSON encodes a string, the same bytes `event` gives for
    the whole chunk, without building and encoding a dict per token."""

    def __init__(self, chunk: dict[str, Any]) -> None:
        prefix, found, suffix = event(chunk).partition(_QUOTED_PLACEHOLDER)
        if not found:
            raise ValueError("the chunk holds no TextEvent.placeholder")
        self._prefix, self._suffix = prefix, suffix

    placeholder = _PLACEHOLDER

    def __call__(self, text: str) -> bytes:
        return self._prefix + encode_basestring_ascii(text).encode() + self._suffix


def named_event(chunk: dict[str, Any]) -> bytes:
    """An event named after its `type` (Anthropic's framing)."""
    return f"event: {chunk['type']}\n".encode() + event(chunk)


class _EventStream(EventSourceResponse):
    """sse-starlette's response, without a cancel scope around every event when there is no send
    timeout (Impetus sets none; a stalled client is caught by the disconnect listener and the
    keep-alive pings). anyio's `move_on_after` cost more of the event loop's time per streamed
    token than building and encoding the chunk (docs/benchmarks.md, "the event loop's work per
    token"). tests/serving/http/test_sse.py checks the method this overrides still exists."""

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        if self.send_timeout is None:
            await send(message)
        else:
            await super()._send_with_timeout(send, message)


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
    chunks: Callable[[int, Delta], Sequence[dict[str, Any] | bytes]],
    head: list[dict[str, Any]],
    tail: Callable[[], list[dict[str, Any]]],
    waiting: bool,
    wire: Wire = OPENAI,
) -> EventSourceResponse:
    """The SSE response of a started (and primed) generation. `chunks` gives a delta's events:
    chunks to frame, or bytes already framed (a `TextEvent`'s)."""
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
                for item in chunks(i, delta):  # bytes: an event already framed (TextEvent)
                    yield item if isinstance(item, bytes) else wire.event(item)
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

    return _EventStream(
        events(),
        ping=keepalive,
        ping_message_factory=wire.ping,
        sep="\n",
        # Also when the stream never started (the client left before the first byte).
        background=BackgroundTask(gen.aclose),
    )
