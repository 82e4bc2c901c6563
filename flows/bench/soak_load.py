"""The soak's load and its observer: S closed-loop clients on a mixed load against one server on
127.0.0.1, and a sampler that reads the server process (psutil) and `/api/metrics` every few
seconds. Everything is recorded in a `Record`; flows/bench/soak.py turns it into verdicts.

Each client loops until the deadline: it picks a call by weight (streamed and plain chat,
Responses and Messages, embeddings, grounded chat, `/v1/rag/search`, health/models/metrics
reads), waits a moment, and picks again. A share of clients are *cutters* (half of their streams
are closed after the second event, as a user pressing Esc does) and a share are *bad* (half of
their calls are malformed and must get a 4xx). Outcomes:

- `ok`; `cut` (closed by the client on purpose);
- `4xx` (a bad request refused, as it should be); `4xx_unexpected` (a good request refused);
- `5xx`; `transport` (connection error or timeout: the server did not answer in time);
- `lost` (a stream that ended without its final event and was not cut by the client);
- `stream_error` (an error event inside a stream); `bad_accepted` (a bad request got a 2xx).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from flows.bench.server import Server

TOPICS = (
    "a lighthouse keeper", "the first snow", "a lost key", "a robot gardener", "an old map",
    "a night train", "a quiet library", "a stubborn goat",
)  # fmt: skip
QUESTIONS = (
    "What does the Gettysburg Address say about the nation?",
    "How does the ingestion pipeline chunk documents?",
    "What does the serving endpoint offer?",
    "What is Impetus?",
)
# (route, weight): what a well-behaved client calls, by how often
MIX: tuple[tuple[str, float], ...] = (
    ("chat_stream", 3), ("chat", 2), ("responses_stream", 2), ("responses", 1),
    ("messages_stream", 2), ("messages", 1), ("embeddings", 2), ("rag_chat", 1),
    ("rag_search", 2), ("health", 1), ("status", 1), ("models", 1), ("metrics", 1),
)  # fmt: skip
STREAMED = {"chat_stream", "responses_stream", "messages_stream", "rag_chat"}
CHEAP = ("health", "models", "metrics")  # the routes with a latency bound
GETS = {
    "health": "/api/health/live",
    "status": "/api/health/status",
    "models": "/v1/models",
    "metrics": "/api/metrics",
}
PRIME_BATCH = 16  # serve.max_batch_size's default
FINAL = {  # the events a complete stream ends with
    "chat_stream": {"[DONE]"},
    "rag_chat": {"[DONE]"},
    "responses_stream": {"response.completed", "response.incomplete"},
    "messages_stream": {"message_stop"},
}


@dataclass
class Call:
    t: float  # seconds since the load started, at the call's end
    route: str
    outcome: str
    ms: float


@dataclass
class Record:
    """What the load and the sampler saw."""

    started: float = field(default_factory=time.monotonic)
    until: float = float("inf")  # when the clients stop (set once priming is over)
    calls: list[Call] = field(default_factory=list)
    samples: list[dict[str, float]] = field(default_factory=list)
    details: Counter[str] = field(default_factory=Counter)  # error messages, shortened, counted
    inflight: int = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def start_clock(self, seconds: float) -> None:
        """Time 0 is now, when the clients start; what came before (priming) gets negative
        times, and priming's own calls are labelled `prime` (they are not the mix's)."""
        shift = time.monotonic() - self.started
        self.started += shift
        self.until = self.started + seconds
        for c in self.calls:
            c.t -= shift
            if c.route == "rag_chat":
                c.route = "prime"
        for x in self.samples:
            x["t"] -= shift

    def add(self, route: str, outcome: str, t0: float, detail: str = "") -> None:
        self.calls.append(Call(self.now(), route, outcome, (time.monotonic() - t0) * 1000))
        if outcome not in ("ok", "cut", "4xx"):
            self.details[f"{route} {outcome}: {detail[:160]}"] += 1


@dataclass
class LoadPlan:
    """What the clients do; flows/bench/soak.py fills it from the flow's config."""

    streams: int
    seconds: float
    collection: str
    embedding_model: str
    max_tokens: int = 8
    cut_share: float = 0.1
    bad_share: float = 0.1
    think_s: float = 0.5
    request_timeout_s: float = 300.0
    grace_s: float = 120.0  # after the deadline, in-flight calls get this long to finish
    sample_s: float = 5.0
    seed: int = 0
    only: tuple[str, ...] = ()  # a subset of MIX's routes (diagnosis: which calls grow memory)


# -- one call per route ------------------------------------------------------------------------


def payload(route: str, model: str, plan: LoadPlan, rng: random.Random) -> tuple[str, Any]:
    """(path, JSON body) of a well-formed call on `route`."""
    text = f"Write a short story about {rng.choice(TOPICS)}."
    msgs = [{"role": "user", "content": text}]
    n, greedy = plan.max_tokens, {"temperature": 0.0}
    if route in ("chat", "chat_stream"):
        body: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": n, **greedy}
        if route == "chat_stream":
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        return "/v1/chat/completions", body
    if route in ("responses", "responses_stream"):
        body = {"model": model, "input": text, "max_output_tokens": n, "store": False, **greedy}
        return "/v1/responses", body | ({"stream": True} if route == "responses_stream" else {})
    if route in ("messages", "messages_stream"):
        body = {"model": model, "messages": msgs, "max_tokens": n, **greedy}
        return "/v1/messages", body | ({"stream": True} if route == "messages_stream" else {})
    if route == "embeddings":
        inputs = [text, rng.choice(QUESTIONS)]
        return "/v1/embeddings", {"model": plan.embedding_model, "input": inputs}
    q = rng.choice(QUESTIONS)
    if route == "rag_search":
        return "/v1/rag/search", {"query": q, "collection": plan.collection, "top_k": 3}
    if route == "rag_chat":
        return "/v1/chat/completions", {
            "model": model, "messages": [{"role": "user", "content": q}], "max_tokens": n,
            "stream": True, "rag_mode": True, **greedy, "rag_collection": plan.collection, "rag_top_k": 2,
        }  # fmt: skip
    raise ValueError(route)


def bad_requests(model: str) -> list[tuple[str, Any]]:
    """Malformed calls that must get a 4xx in the API's error shape: (path, body or raw bytes).
    Known 5xx cases of issue 19 (token ids out of range, invalid collection names) are left to
    the tests that cover their fixes, so that the soak's 5xx count measures the server's health."""
    chat = "/v1/chat/completions"
    hi = [{"role": "user", "content": "hi"}]
    return [
        (chat, {"model": model}),
        (chat, {"model": model, "messages": hi, "max_tokens": -1}),
        (chat, {"model": "no-such-model", "messages": hi, "max_tokens": 4}),
        (chat, b"{not json"),
        (chat, {"model": model, "messages": hi, "temperature": 7}),
        (chat, {"model": model, "messages": [{"role": "wizard", "content": "hi"}]}),
        ("/v1/messages", {"model": model, "messages": hi}),
        ("/v1/responses", {"model": model, "input": 42}),
        ("/v1/embeddings", {"input": []}),
        ("/v1/rag/search", {"query": "x", "collection": "soak-no-such-collection"}),
    ]


async def _stream(
    client: httpx.AsyncClient, url: str, route: str, body: Any, cut: bool
) -> tuple[str, str]:
    """A streamed call: (outcome, detail). With `cut`, close it after its second event."""
    final, events = FINAL[route], 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            return _status_outcome(r.status_code), (await r.aread()).decode(errors="replace")
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            events += 1
            data = line[6:]
            if data == "[DONE]":
                return ("ok", "") if data in final else ("lost", "[DONE] before the final event")
            event = json.loads(data)
            kind = str(event.get("type", ""))
            if event.get("error") or kind in ("error", "response.failed"):
                return "stream_error", data
            if kind in final:
                return "ok", ""
            if cut and events >= 2:
                return "cut", ""
    return "lost", f"ended after {events} events"


def _status_outcome(status: int) -> str:
    return "5xx" if status >= 500 else "4xx_unexpected" if status >= 400 else "ok"


async def call(
    client: httpx.AsyncClient, server: Server, route: str, plan: LoadPlan, rec: Record,
    rng: random.Random, *, cut: bool = False,
) -> None:  # fmt: skip
    """One well-formed call on `route`, recorded."""
    t0 = time.monotonic()
    rec.inflight += 1
    try:
        if route in GETS:
            r = await client.get(server.url + GETS[route])
            rec.add(route, _status_outcome(r.status_code), t0, r.text)
            return
        path, body = payload(route, server.model, plan, rng)
        if route in STREAMED:
            outcome, detail = await _stream(client, server.url + path, route, body, cut)
            rec.add(route, outcome, t0, detail)
            return
        r = await client.post(server.url + path, json=body)
        rec.add(route, _status_outcome(r.status_code), t0, r.text)
    except httpx.HTTPError as e:
        rec.add(route, "transport", t0, f"{type(e).__name__} {e}")
    finally:
        rec.inflight -= 1


async def bad_call(
    client: httpx.AsyncClient, server: Server, rec: Record, rng: random.Random
) -> None:
    """One malformed call: a 4xx is right, a 2xx is `bad_accepted`, a 5xx is a 5xx."""
    path, body = rng.choice(bad_requests(server.model))
    t0 = time.monotonic()
    try:
        if isinstance(body, bytes):
            headers = {"content-type": "application/json"}
            r = await client.post(server.url + path, content=body, headers=headers)
        else:
            r = await client.post(server.url + path, json=body)
    except httpx.HTTPError as e:
        rec.add("bad", "transport", t0, f"{type(e).__name__} {e}")
        return
    s = r.status_code
    outcome = "5xx" if s >= 500 else "4xx" if s >= 400 else "bad_accepted"
    rec.add("bad", outcome, t0, f"{path} {s} {r.text}")


# -- the clients --------------------------------------------------------------------------------


def role(i: int, plan: LoadPlan) -> str:
    """Client i's role: the first ceil(cut_share·S) clients cut, the next ceil(bad_share·S) send
    bad requests, the rest behave."""
    cutters = -(-int(plan.cut_share * 1000) * plan.streams // 1000)
    bad = -(-int(plan.bad_share * 1000) * plan.streams // 1000)
    return "cutter" if i < cutters else "bad" if i < cutters + bad else "normal"


async def client_loop(i: int, server: Server, plan: LoadPlan, rec: Record, until: float) -> None:
    rng = random.Random(plan.seed * 100_003 + i)
    kind = role(i, plan)
    mix = [(r, w) for r, w in MIX if not plan.only or r in plan.only]
    routes, weights = zip(*mix, strict=True)
    timeout = httpx.Timeout(plan.request_timeout_s, connect=10.0)
    async with httpx.AsyncClient(timeout=timeout, headers=server.headers, limits=LIMITS) as client:
        await asyncio.sleep(rng.uniform(0, min(5.0, plan.seconds / 10)))  # no thundering start
        while time.monotonic() < until:
            if kind == "bad" and rng.random() < 0.5:
                await bad_call(client, server, rec, rng)
            else:
                route = rng.choices(routes, weights)[0]
                cut = kind == "cutter" and route in STREAMED and rng.random() < 0.5
                await call(client, server, route, plan, rec, rng, cut=cut)
            await asyncio.sleep(rng.uniform(0, plan.think_s))


# A client drops a connection idle for more than 1 s: shorter than the server's keep-alive
# (serve.keepalive_s, 5 s), as clients should. httpx's default is 5 s too, and a request sent on a
# connection idle for just 5 s (the sampler's period) can meet the server closing it: "Server
# disconnected without sending a response" (once in the 30-minute soak of 2026-12-04).
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=1.0)


# -- the sampler --------------------------------------------------------------------------------


ENGINE_GAUGES = {
    "impetus_prefix_cache_bytes": "prefix_cache_bytes",
    "impetus_queue_depth": "queue_depth",
    "impetus_batch_size": "batch_size",
    "impetus_model_memory_bytes": "engine_memory_bytes",
    "impetus_kv_cache_bytes": "kv_cache_bytes",
    "impetus_kv_cache_waits": "kv_cache_waits",
}


def parse_metrics(text: str, wanted: dict[str, str] | None = None) -> dict[str, float]:
    """Metrics of interest from Prometheus text (family name -> key; default the engine gauges
    the soak samples), summed over models."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = wanted or ENGINE_GAUGES
    out = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        if family.name in wanted:
            out[wanted[family.name]] += sum(s.value for s in family.samples)
    return out


async def sampler(server: Server, plan: LoadPlan, rec: Record) -> None:
    """Every `plan.sample_s`: the server process's RSS, fds, threads (and its children's RSS),
    `/api/metrics`' gauges, health/models/metrics timed like the clients' reads, the load
    average, and this process's event-loop lag (a sampler that wakes late measures late)."""
    import psutil

    proc = psutil.Process(server.proc.pid)
    rng = random.Random(plan.seed)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=LIMITS) as client:
        while True:
            taken = time.monotonic()
            due = taken + plan.sample_s
            s: dict[str, float] = {"t": 0.0}  # set when kept (below)
            with proc.oneshot():
                s["rss_bytes"] = float(proc.memory_info().rss)
                s["fds"] = float(proc.num_fds())
                s["threads"] = float(proc.num_threads())
            kids = proc.children(recursive=True)
            s["children"] = float(len(kids))
            s["children_rss_bytes"] = float(sum(_rss(k) for k in kids))
            t0 = time.monotonic()
            try:
                r = await client.get(server.url + GETS["metrics"])
                rec.add("metrics", _status_outcome(r.status_code), t0, r.text)
                if r.status_code == 200:
                    s |= parse_metrics(r.text)
            except httpx.HTTPError as e:
                rec.add("metrics", "transport", t0, f"{type(e).__name__} {e}")
            for route in ("health", "models"):
                await call(client, server, route, plan, rec, rng)
            s |= await _mlx_memory(client, server)
            s["loadavg1"] = os.getloadavg()[0]
            s["inflight"] = float(rec.inflight)
            s["calls"] = float(len(rec.calls))
            s["errors"] = float(sum(c.outcome not in ("ok", "cut", "4xx") for c in rec.calls))
            # Time 0 may have moved while this sample was taken (`start_clock`, when priming
            # ends): its time is read against the clock as it is now. (A sample begun before and
            # kept after kept the old clock: its MLflow timestamp came after the next sample's.)
            s["t"] = taken - rec.started
            rec.samples.append(s)
            if time.monotonic() >= rec.until:
                return
            wait = due - time.monotonic()
            t_sleep = time.monotonic()
            await asyncio.sleep(max(wait, 0.0))
            s["loop_lag_ms"] = max(0.0, (time.monotonic() - t_sleep - max(wait, 0.0)) * 1000)


async def _mlx_memory(client: httpx.AsyncClient, server: Server) -> dict[str, float]:
    """MLX's active and buffer-cache bytes in the server and what its engines count (weights, the
    batch's KV, the prefix cache), from one `/api/health/status` read: beside the RSS, they say
    whether growth is MLX's cache, counted arrays, uncounted arrays, or the allocator's."""
    try:
        r = await client.get(server.url + GETS["status"])
        body = r.json()
        mem = body["memory"]
        out = {k: float(mem[k]) for k in ("mlx_active_bytes", "mlx_cache_bytes")}
        out["engines_bytes"] = float(sum(x["memory_bytes"] for x in body["models"]))
        return out
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return {}


def _rss(p: Any) -> int:
    import psutil

    try:
        return int(p.memory_info().rss)
    except psutil.Error:
        return 0


async def prime(server: Server, plan: LoadPlan, rec: Record) -> None:
    """A full decode batch of the longest calls (grounded chat), once, before the clients start:
    RSS keeps the high-water mark of the batch's KV buffers, so the warm-up must reach it, or a
    short run's first full batch of long prompts reads as growth. Full: as many as the engine
    batches (16) or, with fewer clients, as the clients can have running (one call each)."""
    rng = random.Random(plan.seed)
    timeout = httpx.Timeout(plan.request_timeout_s)
    async with httpx.AsyncClient(timeout=timeout, limits=LIMITS) as client:
        await asyncio.gather(
            *(
                call(client, server, "rag_chat", plan, rec, rng)
                for _ in range(min(PRIME_BATCH, plan.streams))
            )
        )


async def run_load(server: Server, plan: LoadPlan) -> Record:
    """Priming (sampled, at negative times), then the clients and the sampler for
    `plan.seconds`; in-flight calls then get `plan.grace_s` to finish, and whatever is still
    open is cancelled and counted as `unfinished` (not an error: the soak's end cut it). The
    warm-up counts from the clients' start: on a busy machine priming alone can outlast it."""
    rec = Record()
    samples = asyncio.create_task(sampler(server, plan, rec))
    await prime(server, plan, rec)
    rec.start_clock(plan.seconds)
    tasks = [
        asyncio.create_task(client_loop(i, server, plan, rec, rec.until))
        for i in range(plan.streams)
    ]
    _, pending = await asyncio.wait(tasks, timeout=plan.seconds + plan.grace_s)
    for t in pending:
        t.cancel()
    if pending:
        rec.details["unfinished at the end (cancelled)"] += len(pending)
    await asyncio.gather(*pending, return_exceptions=True)
    await samples
    return rec
