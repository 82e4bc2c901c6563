"""Server-sent events of a `Generation` (serving/http/generation.py), as OpenAI streams them:
`data: {json}` events, `: keep-alive` comments while a long prefill runs, an error event when the
engine fails after the first event, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
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


def stream(
    gen: Generation,
    chunks: Callable[[int, Delta], list[dict[str, Any]]],
    head: list[dict[str, Any]],
    tail: Callable[[], list[dict[str, Any]]],
    waiting: bool,
) -> EventSourceResponse:
    """The SSE response of a started (and primed) generation."""
    keepalive = gen.ctx.settings.serve.keepalive_s

    async def events() -> AsyncIterator[bytes]:
        finished = False
        try:
            if waiting:  # the first token is not there yet: tell the client we are alive
                yield _KEEPALIVE
            for chunk in head:
                yield event(chunk)
            async for i, delta in gen.deltas():
                for chunk in chunks(i, delta):
                    yield event(chunk)
            for chunk in tail():
                yield event(chunk)
            finished = True
        except (asyncio.CancelledError, GeneratorExit):
            gen.ctx.metrics.disconnects.labels(gen.model).inc()
            raise
        except Exception as exc:
            err = to_api_error(exc)
            if err.message == GENERIC_MESSAGE:
                log_unexpected(exc)
            gen.ctx.metrics.generation_errors.labels(gen.model, err.code).inc()
            yield event(err.body())
            finished = True
        finally:
            await gen.aclose()
        if finished:
            yield _DONE

    return EventSourceResponse(
        events(),
        ping=keepalive,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep="\n"),
        sep="\n",
        # Also when the stream never started (the client left before the first byte).
        background=BackgroundTask(gen.aclose),
    )
