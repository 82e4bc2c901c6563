"""A generating request counts as on its way to the engine from the app's edge until its
sequences are submitted (serving/http/arrivals.py); an idle engine collects a burst while any
are (tests/serving/engine/test_speculative.py)."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from serving.engine.base import Arrivals
from serving.http.arrivals import ArrivalsMiddleware, submitted


def test_a_generating_request_counts_until_it_is_submitted_or_ends() -> None:
    arrivals = Arrivals()
    seen: list[tuple[str, int, int]] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        before = arrivals.pending()
        if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            submitted()
            submitted()  # idempotent: counted out once
        seen.append((f"{scope['method']} {scope['path']}", before, arrivals.pending()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = ArrivalsMiddleware(inner, arrivals)

    async def calls() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.post("/v1/chat/completions", json={})  # submitted inside
            await client.post("/v1/messages", json={})  # ends without submitting (an error)
            await client.post("/v1/embeddings", json={})  # not a generating route
            await client.get("/v1/responses")  # nor a GET

    asyncio.run(calls())
    assert seen == [
        ("POST /v1/chat/completions", 1, 0),
        ("POST /v1/messages", 1, 1),
        ("POST /v1/embeddings", 0, 0),
        ("GET /v1/responses", 0, 0),
    ]
    assert arrivals.pending() == 0  # the one never submitted counted out when it ended
