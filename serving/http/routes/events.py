"""`/api/ws`: the dashboard's event stream (docs/api.md "Dashboard"): a hello, then a metrics
snapshot every `serve.ws_interval_s` and events as they happen, from the app's `LiveFeed`
(serving/http/live.py).

Authenticated like HTTP (READ role) by `authorize_websocket` (serving/http/auth.py): the key comes
as `Authorization: Bearer <key>` or, from a browser, as the subprotocol `bearer.<key>` offered
beside `impetus.v1`; the server accepts with `impetus.v1` when offered. A refused connection is
accepted and closed at once with code 4000 + the HTTP status (4401 auth_required, 4403
permission_denied, 4429 rate_limited) and the error's code and message as the reason, so that a
browser (which sees no handshake status) can tell the user what to do. A client that does not
read its messages is closed with 1008 "client too slow" once its bounded queue is full.

A plain Starlette route, not a FastAPI one: the app-wide `authorize` dependency reads an HTTP
`Request`, which a WebSocket is not (the check is the same, called here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import FastAPI
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from serving.http.auth import WS_PROTOCOL, authorize_websocket, websocket_protocols
from serving.http.errors import APIError
from serving.http.live import LiveFeed

PATH = "/api/ws"
SLOW_CLOSE = (1008, "client too slow: its message queue filled up; reconnect")
SHUTDOWN_CLOSE = (1001, "server shutting down")
CLOSE_TIMEOUT_S = 2.0


def _reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8."""
    raw = text.encode()[:123]
    return raw.decode(errors="ignore")


async def events(websocket: WebSocket) -> None:
    feed: LiveFeed = websocket.app.state.live
    subprotocol = WS_PROTOCOL if WS_PROTOCOL in websocket_protocols(websocket.scope) else None
    try:
        who = await authorize_websocket(websocket)
    except APIError as e:
        await websocket.accept(subprotocol=subprotocol)
        await websocket.close(code=4000 + e.status, reason=_reason(f"{e.code}: {e.message}"))
        return
    role = who.key.role if who.key is not None else None
    await websocket.accept(subprotocol=subprotocol)
    sub = feed.subscribe(role)
    hello = {"type": "hello", "role": role, "interval_s": feed.interval_s}

    async def pump() -> None:
        await websocket.send_text(json.dumps(hello))
        while True:
            await websocket.send_text(await sub.queue.get())

    async def drain() -> None:  # the client sends nothing we need; this notices it leaving
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return

    tasks = [
        asyncio.ensure_future(pump()),
        asyncio.ensure_future(drain()),
        asyncio.ensure_future(sub.dropped.wait()),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        feed.unsubscribe(sub)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if tasks[2] in done:
        # The socket may be stuck on a full buffer: bound the wait for the close frame.
        code, reason = SHUTDOWN_CLOSE if feed.closing else SLOW_CLOSE
        with contextlib.suppress(Exception):
            await asyncio.wait_for(websocket.close(code, reason), CLOSE_TIMEOUT_S)


def install(app: FastAPI) -> None:
    app.router.routes.append(WebSocketRoute(PATH, events, name="events"))
