"""Load on a server under test: the SSE stream reader and bursts of concurrent streams, shared by
`impetus bench serving` and `impetus bench structured`. Load goes only to the servers a bench
started on 127.0.0.1, in fixed numbers of requests with timeouts."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from flows.bench.server import Server

REQUEST_TIMEOUT_S = 600.0


@dataclass
class Burst:
    """What one burst of concurrent streams did."""

    concurrency: int
    requests: int
    completion_tokens: int
    wall_s: float
    ttft_ms: list[float] = field(default_factory=list)
    # Requests that failed, by exception name (a server that falls over is a result, not a crash).
    error_kinds: dict[str, int] = field(default_factory=dict)
    stream_tokens: list[int] = field(default_factory=list)  # completion tokens of each stream
    started: float = 0.0  # time.perf_counter() at the start: the client made, before any request

    @property
    def errors(self) -> int:
        return sum(self.error_kinds.values())

    @property
    def tps(self) -> float:
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0


async def stream_request(
    client: httpx.AsyncClient,
    server: Server,
    path: str,
    body: dict[str, Any],
    stamps: list[float] | None = None,
) -> tuple[float, int]:
    """One streamed request: (TTFT in ms, completion tokens from the usage chunk); with `stamps`,
    the `time.perf_counter()` at which each non-empty piece of text arrived is appended to it
    (inter-token gaps)."""
    body = {**body, "model": server.model, "stream": True}
    body["stream_options"] = {"include_usage": True}
    started = time.perf_counter()
    ttft = float("nan")
    tokens = 0
    async with client.stream("POST", server.url + path, json=body, headers=server.headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{server.name} answered {r.status_code}: {await r.aread()!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(f"{server.name} failed mid-stream: {chunk['error']}")
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or choice.get("text")
                if not piece:
                    continue
                now = time.perf_counter()
                if ttft != ttft:  # first non-empty piece
                    ttft = (now - started) * 1000
                if stamps is not None:
                    stamps.append(now)
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    return ttft, tokens


# One streamed request: (TTFT in ms, completion tokens); stream_request for chat and completions.
SendFn = Callable[[httpx.AsyncClient, dict[str, Any]], Awaitable[tuple[float, int]]]


async def burst(
    server: Server,
    streams: Sequence[Sequence[dict[str, Any]]],
    path: str = "/v1/chat/completions",
    timeout_s: float = REQUEST_TIMEOUT_S,
    send: SendFn | None = None,
    start_at: float | None = None,
) -> Burst:
    """One stream per entry of `streams`, all at once, each sending its request bodies back to
    back (to `path` with `stream_request`, or through `send`); a failed request is counted by
    exception name and ends its stream. `start_at` (time.perf_counter, which is one clock for
    every process of the machine): the client is made first, then the streams start then (the
    parts of one burst sent from several processes)."""
    result = Burst(len(streams), 0, 0, 0.0, stream_tokens=[0] * len(streams))
    limits = httpx.Limits(max_connections=len(streams) + 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(body: dict[str, Any]) -> tuple[float, int]:
            if send is not None:
                return await send(client, body)
            return await stream_request(client, server, path, body)

        async def stream(i: int) -> None:
            for body in streams[i]:
                try:
                    ttft, tokens = await one(body)
                except (httpx.HTTPError, RuntimeError, KeyError) as exc:
                    kind = type(exc).__name__
                    result.error_kinds[kind] = result.error_kinds.get(kind, 0) + 1
                    return
                result.ttft_ms.append(ttft)
                result.completion_tokens += tokens
                result.stream_tokens[i] += tokens
                result.requests += 1

        if start_at is not None:
            await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        result.started = time.perf_counter()
        await asyncio.gather(*(stream(i) for i in range(len(streams))))
        result.wall_s = time.perf_counter() - result.started
    return result


def cheap_latencies_ms(server: Server, n: int) -> list[float]:
    """`n` GET /v1/models back to back on one keep-alive connection; each one's latency in ms
    (what a cheap request pays: the auth and tracing benches compare it between servers)."""
    out: list[float] = []
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as client:
        client.get("/v1/models").raise_for_status()  # connection up, route warm
        for _ in range(n):
            started = time.perf_counter()
            r = client.get("/v1/models")
            out.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"{server.name}: /v1/models answered {r.status_code}: {r.text}")
    return out
