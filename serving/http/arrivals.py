"""Counting the generation requests the server is still reading (`Arrivals`, serving/engine/base.py).

A request to a generating route counts from the moment it enters the app until its sequences are
submitted to the engine (`submitted`, from `Generation.start`) or it ends: while any are counted,
an idle engine that a burst woke keeps collecting it instead of starting its first step with part
of it (which also slows the server's reading of the rest: the engine thread takes the GIL).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from starlette.types import ASGIApp, Receive, Scope, Send

from serving.engine.base import Arrivals

# The routes that submit to an engine (POST).
GENERATING = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses"})

# The current request's way of counting itself out (None outside a generating request).
_LEAVE: ContextVar[Callable[[], None] | None] = ContextVar("impetus_arrival", default=None)


class ArrivalsMiddleware:
    """Counts each generating request in `arrivals` until it is submitted or ends."""

    def __init__(self, app: ASGIApp, arrivals: Arrivals) -> None:
        self.app = app
        self.arrivals = arrivals

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in GENERATING:
            await self.app(scope, receive, send)
            return
        leave = self.arrivals.enter()
        token = _LEAVE.set(leave)
        try:
            await self.app(scope, receive, send)
        finally:
            leave()
            _LEAVE.reset(token)


def submitted() -> None:
    """The current request's sequences are with the engine: it no longer counts."""
    leave = _LEAVE.get()
    if leave is not None:
        leave()
