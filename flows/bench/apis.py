"""The API routes benchmark: what Responses and Messages cost against Chat Completions, and what
the prefix cache does for a `previous_response_id` follow-up.

    impetus bench apis            # levels 1 and 8, 32 tokens, 3 rounds, a 1,500-token turn
    impetus bench apis --quick    # CI-sized

One `impetus serve` (the registry's `models.llm`, OpenBLAS preloaded as in `impetus bench
serving`). The same prompts, greedy, go through POST /v1/chat/completions, /v1/responses
(`store: false`, as Codex sends) and /v1/messages, all streamed; at 1 and 8 concurrent streams,
in rounds, every round one burst per route back to back with the order rotating, so a load spike
hits all three. Reported per route and level: aggregate tok/s, TTFT p50/p95 (to the first text
delta), tokens per server CPU-second, and each new route's ratio to chat, pooled and as the
median of the rounds' paired ratios. Goal: ≤ 5 % cost (tok/s ≥ 0.95×, TTFT ≤ 1.05×).

Then a conversation of two turns through /v1/responses: turn 1 a ~1,500-token input (stored),
turn 2 only a question with `previous_response_id`; the TTFT of turn 2 on this server against
one started with the prefix cache off (serve.prefix_cache_bytes 0). Goal ≤ 0.3×.

One MLflow run (experiment `apis-bench`, flows/bench/tracking.py) with a nested run per route
and level.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.load import Burst, burst
from flows.bench.results import BenchResult, split_by_prefix
from flows.bench.server import cpu_seconds
from flows.bench.serving import LevelResult, paired_ratios, percentile, shared_prefix

if TYPE_CHECKING:
    from flows.bench.server import Server

EXPERIMENT = "apis-bench"
REQUEST_TIMEOUT_S = 600.0
ROUTES = ("chat", "responses", "messages")
NEW_ROUTES = ROUTES[1:]
PATHS = {"chat": "/v1/chat/completions", "responses": "/v1/responses", "messages": "/v1/messages"}
TOPICS = (
    "a lighthouse keeper", "the first snow", "a lost key", "a robot gardener", "an old map",
    "a night train", "a quiet library", "a stubborn goat",
)  # fmt: skip
FOLLOW_UPS = ("What is the main topic of the text above?", "Summarise it in one sentence.")


@dataclass
class ApisBenchConfig:
    """What one run measures; `quick_config()` is the CI-sized variant."""

    levels: tuple[int, ...] = (1, 8)
    max_tokens: int = 32
    # a burst at level c: c streams, each sending ceil(min_requests / c) requests back to back
    min_requests: int = 4
    rounds: int = 3  # bursts per route and level, the route order rotating
    prefix_tokens: int = 1500  # turn 1 of the follow-up conversation
    prefix_reps: int = 2
    quick: bool = False

    @classmethod
    def quick_config(cls) -> ApisBenchConfig:
        return cls(
            max_tokens=8, min_requests=1, rounds=1, prefix_tokens=400, prefix_reps=1, quick=True
        )


# -- one request on each route ------------------------------------------------------------------


def body(route: str, text: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    """The same request in each API's words: one user message, greedy, streamed."""
    common: dict[str, Any] = {"temperature": 0.0, "stream": True, **extra}
    if route == "chat":
        return {
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
            **common,
        }
    if route == "responses":
        return {
            "input": [{"role": "user", "content": text}],
            "max_output_tokens": max_tokens,
            "store": False,
            **common,
        }
    return {"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, **common}


def _chat_event(chunk: dict[str, Any]) -> tuple[bool, int | None]:
    text = any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])
    usage = chunk.get("usage")
    return text, int(usage["completion_tokens"]) if usage else None


def _responses_event(event: dict[str, Any]) -> tuple[bool, int | None]:
    kind = event.get("type")
    if kind in ("response.completed", "response.incomplete"):
        return False, int(event["response"]["usage"]["output_tokens"])
    if kind in ("response.failed", "error"):
        raise RuntimeError(f"the response failed: {json.dumps(event)[:500]}")
    return kind == "response.output_text.delta" and bool(event.get("delta")), None


def _messages_event(event: dict[str, Any]) -> tuple[bool, int | None]:
    kind = event.get("type")
    if kind == "message_delta":
        return False, int(event["usage"]["output_tokens"])
    if kind == "error":
        raise RuntimeError(f"the message failed: {json.dumps(event)[:500]}")
    delta = event.get("delta") or {}
    return kind == "content_block_delta" and bool(delta.get("text")), None


READERS: dict[str, Callable[[dict[str, Any]], tuple[bool, int | None]]] = {
    "chat": _chat_event,
    "responses": _responses_event,
    "messages": _messages_event,
}


async def stream_route(
    client: httpx.AsyncClient, server: Server, route: str, payload: dict[str, Any]
) -> tuple[float, int, dict[str, Any]]:
    """One streamed request: (TTFT in ms to the first text, completion tokens, last event)."""
    payload = {**payload, "model": server.model}
    read = READERS[route]
    started = time.perf_counter()
    ttft, tokens, last = float("nan"), 0, {}
    async with client.stream("POST", server.url + PATHS[route], json=payload) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{route} answered {r.status_code}: {(await r.aread())[:500]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if route == "chat" and event.get("error"):
                raise RuntimeError(f"chat failed mid-stream: {event['error']}")
            text, used = read(event)
            if text and ttft != ttft:
                ttft = (time.perf_counter() - started) * 1000
            if used is not None:
                tokens = used
            last = event
    return ttft, tokens, last


async def route_burst(server: Server, route: str, level: int, cfg: ApisBenchConfig) -> Burst:
    """`level` streams at once through `route`, each sending its requests back to back
    (flows/bench/load.py `burst`)."""
    per_stream = max(1, -(-cfg.min_requests // level))
    streams = [
        [
            body(route, f"Write a long story about {TOPICS[(i * per_stream + j) % len(TOPICS)]}.",
                 cfg.max_tokens)
            for j in range(per_stream)
        ]
        for i in range(level)
    ]  # fmt: skip

    async def send(client: httpx.AsyncClient, payload: dict[str, Any]) -> tuple[float, int]:
        ttft, tokens, _ = await stream_route(client, server, route, payload)
        return ttft, tokens

    return await burst(server, streams, timeout_s=REQUEST_TIMEOUT_S, send=send)


# -- the measurements ---------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def route_levels(server: Server, cfg: ApisBenchConfig) -> dict[str, Any]:
    """Per level, `cfg.rounds` rounds of one burst per route (order rotating); pooled per route,
    with each round's tok/s kept for pairing, and the server's CPU seconds per route."""
    warm = ApisBenchConfig(max_tokens=4, min_requests=1)
    for route in ROUTES:
        asyncio.run(route_burst(server, route, 1, warm))
    out = {r: [LevelResult(c, 0, 0, 0.0) for c in cfg.levels] for r in ROUTES}
    cpu = {r: [0.0 for _ in cfg.levels] for r in ROUTES}
    turn = 0
    for i, level in enumerate(cfg.levels):
        for _ in range(cfg.rounds):
            order = ROUTES[turn % 3 :] + ROUTES[: turn % 3]
            for route in order:
                cpu0 = cpu_seconds(server.proc.pid)
                out[route][i].add(asyncio.run(route_burst(server, route, level, cfg)))
                cpu[route][i] += cpu_seconds(server.proc.pid) - cpu0
            turn += 1
    return {"levels": out, "cpu": cpu}


@task(cache_policy=NO_CACHE)
def follow_up_ttft(server: Server, prefixes: list[str]) -> dict[str, float]:
    """Per prefix: turn 1 (the prefix and a question, stored), then turn 2 (another question,
    `previous_response_id`); the TTFT of each, medians."""

    async def run() -> dict[str, float]:
        first, second = [], []
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            for prefix in prefixes:
                one = body("responses", f"{prefix}\n\n{FOLLOW_UPS[0]}", 8, store=True)
                ttft, _, done = await stream_route(client, server, "responses", one)
                first.append(ttft)
                two = body("responses", FOLLOW_UPS[1], 1, store=True)
                two["previous_response_id"] = done["response"]["id"]
                second.append((await stream_route(client, server, "responses", two))[0])
        return {"first_ms": statistics.median(first), "second_ms": statistics.median(second)}

    return asyncio.run(run())


# -- the flow -----------------------------------------------------------------------------------


@flow(name="bench-apis", log_prints=False)
def bench_apis(cfg: ApisBenchConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.models.store import ModelStore
    from pipelines.settings import get_settings

    cfg = cfg or ApisBenchConfig()
    settings = get_settings()
    model_path = ModelStore(settings.models_dir).resolve(settings.models.llm)
    log_dir = settings.data_dir / "bench" / time.strftime("apis-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    prefixes = [
        shared_prefix(model_path, cfg.prefix_tokens, seed)
        for seed in range(200, 200 + cfg.prefix_reps)
    ]
    load_start = os.getloadavg()[0]
    with impetus_serve(settings, log_dir) as server:
        measured = route_levels(server, cfg)
        cache_on = follow_up_ttft(server, prefixes)
    with impetus_serve(
        settings, log_dir, name="impetus-nocache", IMPETUS_SERVE__PREFIX_CACHE_BYTES="0"
    ) as nocache:
        cache_off = follow_up_ttft(nocache, prefixes)
    metrics = _metrics(measured, cache_on, cache_off, cfg)
    metrics.update({"loadavg1_start": load_start, "loadavg1_end": os.getloadavg()[0]})
    params = {
        **{k: str(v) for k, v in asdict(cfg).items()},
        "model": settings.models.llm,
        **machine(),
    }
    keys = [f"c{c}_{r}" for c in cfg.levels for r in ROUTES]
    result = BenchResult(
        "apis", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, split_by_prefix(metrics, keys), files=str(log_dir),
    )  # fmt: skip
    result.notes += _notes(metrics, cfg)
    return log_bench(settings, result)


def _metrics(
    measured: dict[str, Any],
    cache_on: dict[str, float],
    cache_off: dict[str, float],
    cfg: ApisBenchConfig,
) -> dict[str, float]:
    levels: dict[str, list[LevelResult]] = measured["levels"]
    cpu: dict[str, list[float]] = measured["cpu"]
    m: dict[str, float] = {
        "follow_up_ttft_cache_on_ms": cache_on["second_ms"],
        "follow_up_ttft_cache_off_ms": cache_off["second_ms"],
        "follow_up_ttft_ratio": cache_on["second_ms"] / cache_off["second_ms"],
        "first_turn_ttft_ms": cache_off["first_ms"],
    }
    for i, c in enumerate(cfg.levels):
        chat = levels["chat"][i]
        for route in ROUTES:
            r = levels[route][i]
            k = f"c{c}_{route}"
            m[f"{k}_tps"] = r.tps
            m[f"{k}_ttft_p50_ms"] = r.ttft(50)
            m[f"{k}_ttft_p95_ms"] = r.ttft(95)
            m[f"{k}_tokens"] = r.completion_tokens
            m[f"{k}_requests"] = r.requests
            m[f"{k}_errors"] = r.errors
            m[f"{k}_cpu_tps"] = r.completion_tokens / cpu[route][i] if cpu[route][i] else 0.0
            if route == "chat":
                continue
            m[f"{k}_tps_ratio"] = r.tps / chat.tps if chat.tps > 0 else float("nan")
            m[f"{k}_ttft_ratio"] = r.ttft(50) / chat.ttft(50) if chat.ttft_ms else float("nan")
            chat_cpu = m[f"c{c}_chat_cpu_tps"]
            m[f"{k}_cpu_ratio"] = m[f"{k}_cpu_tps"] / chat_cpu if chat_cpu else float("nan")
            pairs = paired_ratios(r, chat)
            if pairs:
                m[f"{k}_pair_ratio_p50"] = percentile(pairs, 50)
    return m


def render_table(m: dict[str, float], cfg: ApisBenchConfig) -> str:
    """The results table (Markdown), as docs/benchmarks.md shows it."""
    rows = [
        "| measure | chat completions | responses | messages | goal |",
        "|---|---|---|---|---|",
    ]

    def cell(c: int, route: str, metric: str, ratio: str | None, fmt: str) -> str:
        k = f"c{c}_{route}"
        text = format(m[f"{k}_{metric}"], fmt)
        if metric == "ttft_p50_ms":
            text += f" / {m[f'{k}_ttft_p95_ms']:.0f}"
        if ratio and f"{k}_{ratio}" in m:
            text += f" ({m[f'{k}_{ratio}']:.2f}×"
            if ratio == "tps_ratio" and f"{k}_pair_ratio_p50" in m and cfg.rounds > 1:
                text += f", pairs {m[f'{k}_pair_ratio_p50']:.2f}×"
            text += ")"
        if m.get(f"{k}_errors"):
            text += f" ({int(m[f'{k}_errors'])} failed)"
        return text

    for c in cfg.levels:
        streams = f"{c} stream{'s' if c > 1 else ''}"
        for label, metric, ratio, fmt, goal in (
            ("aggregate tok/s", "tps", "tps_ratio", ".1f", "≥ 0.95×"),
            ("TTFT p50 / p95, ms", "ttft_p50_ms", "ttft_ratio", ".0f", "≤ 1.05×"),
            ("tokens per server CPU-second", "cpu_tps", "cpu_ratio", ".1f", ""),
        ):
            cells = [cell(c, r, metric, ratio, fmt) for r in ROUTES]
            rows.append(f"| {streams}: {label} | " + " | ".join(cells) + f" | {goal} |")
    rows.append(
        f"| `previous_response_id` follow-up after a {cfg.prefix_tokens}-token turn: TTFT, ms "
        "(prefix cache on / off) | | "
        f"{m['follow_up_ttft_cache_on_ms']:.0f} / {m['follow_up_ttft_cache_off_ms']:.0f} "
        f"({m['follow_up_ttft_ratio']:.2f}×) | | ≤ 0.3× |"
    )
    rows.append(f"| load average (1 min), start → end | {m['loadavg1_start']:.1f} → "
                f"{m['loadavg1_end']:.1f} | | | |")  # fmt: skip
    return "\n".join(rows)


def _notes(m: dict[str, float], cfg: ApisBenchConfig) -> list[str]:
    """What a reader should know before trusting the ratios."""
    notes = []
    for c in cfg.levels:
        tokens = {r: m[f"c{c}_{r}_tokens"] / max(m[f"c{c}_{r}_requests"], 1) for r in ROUTES}
        if max(tokens.values()) > 1.05 * min(tokens.values()):
            per = ", ".join(f"{r} {t:.1f}" for r, t in tokens.items())
            notes.append(f"{c} streams: the routes generated different lengths ({per} tokens/req)")
        for r in ROUTES:
            if m[f"c{c}_{r}_errors"]:
                notes.append(f"{c} streams: {int(m[f'c{c}_{r}_errors'])} {r} requests failed")
    return notes
