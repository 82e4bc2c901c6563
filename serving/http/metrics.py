"""Prometheus metrics of one app: a registry per `create_app`, no process-global collectors.

Request counts and latencies, and the requests and WebSocket connections open now
(`impetus_active_connections`), are recorded by `MetricsMiddleware`; the generation routes record
TTFT, inter-token latency, inference duration, tokens per second and token counts; the embedder
pool and RAG search their durations; queue depth, batch size, prefix-cache hits and resident
memory (`impetus_model_memory_bytes`) and speculative decoding (`impetus_speculative_*`) are read
from the engines' `EngineStats` at scrape time.
Every name starts with `impetus_`. TTFT, inter-token latency and inference duration use vLLM's
bucket boundaries (vllm/v1/metrics/buckets.py), so dashboards built for vLLM read them alike.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.engine.base import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
# vLLM's TIME_TO_FIRST_TOKEN_BUCKETS, INTER_TOKEN_LATENCY_BUCKETS and REQUEST_LATENCY_BUCKETS
# (vllm/v1/metrics/buckets.py: time_to_first_token_seconds, inter_token_latency_seconds,
# e2e_request_latency_seconds).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


class _EngineCollector(Collector):
    """Engine gauges and counters, read from `EngineStats` on each scrape."""

    def __init__(self, stats: Callable[[], Iterable[EngineStats]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = list(self._stats())
        gauges = {
            "queue_depth": ("Requests waiting for a decode slot", "queue_depth"),
            "queue_limit": ("Requests that may wait before 503", "queue_limit"),
            "batch_size": ("Sequences in the running decode batch", "batch_size"),
            "prefix_cache_bytes": ("Bytes held by the prompt-prefix cache", "prefix_cache_bytes"),
            "prefix_cache_disk_bytes": (
                "Bytes of the prompt-prefix cache's files on disk",
                "prefix_cache_disk_bytes",
            ),
            "prefix_cache_disk_limit_bytes": (
                "Cap on the prefix cache's files on disk (0: no disk tier)",
                "prefix_cache_disk_limit_bytes",
            ),
            "prefix_cache_preloaded_bytes": (
                "Bytes of the prefix cache read from disk into memory at load",
                "prefix_cache_preloaded_bytes",
            ),
            "model_memory_bytes": ("Resident bytes of a loaded model", "memory_bytes"),
            "kv_cache_bytes": ("Bytes of the decode batch's KV cache", "kv_cache_bytes"),
            "kv_cache_limit_bytes": (
                "Budget of the decode batch's KV cache (0: none)",
                "kv_cache_limit_bytes",
            ),
            "speculative_acceptance_rate": (
                "Accepted / drafted tokens of speculative decoding",
                "speculative_acceptance_rate",
            ),
            "speculative_tokens_per_step": (
                "Tokens emitted per speculative verify forward",
                "speculative_tokens_per_step",
            ),
        }
        for metric, (doc, attr) in gauges.items():
            g = GaugeMetricFamily(f"impetus_{metric}", doc, labels=["model"])
            for s in stats:
                g.add_metric([s.model], float(getattr(s, attr)))
            yield g
        counters = {
            "engine_requests": ("Sequences the engine accepted", "requests_total"),
            "engine_prompt_tokens": ("Prompt tokens the engine processed", "prompt_tokens_total"),
            "engine_generation_tokens": ("Tokens the engine generated", "generation_tokens_total"),
            "prefix_cache_hits": ("Prompts that reused a cached prefix", "prefix_cache_hits"),
            "prefix_cache_misses": ("Prompts with no cached prefix", "prefix_cache_misses"),
            "prefix_cache_memory_hits": (
                "Prompts whose cached prefix came from memory",
                "prefix_cache_memory_hits",
            ),
            "prefix_cache_disk_hits": (
                "Prompts whose cached prefix was read from disk",
                "prefix_cache_disk_hits",
            ),
            "kv_cache_waits": (
                "Sequences that waited for room in the KV cache budget",
                "kv_cache_waits_total",
            ),
            "speculative_steps": ("Speculative verify forwards", "speculative_steps"),
            "speculative_draft_tokens": (
                "Draft tokens scored by speculative decoding",
                "speculative_drafted_tokens",
            ),
            "speculative_accepted_tokens": (
                "Draft tokens the model accepted",
                "speculative_accepted_tokens",
            ),
        }
        for metric, (doc, attr) in counters.items():
            c = CounterMetricFamily(f"impetus_{metric}", doc, labels=["model"])
            for s in stats:
                c.add_metric([s.model], float(getattr(s, attr)))
            yield c
        loaded = GaugeMetricFamily("impetus_models_loaded", "LLMs resident in memory")
        loaded.add_metric([], float(len(stats)))
        yield loaded


class Metrics:
    """The collectors of one app."""

    def __init__(self, engine_stats: Callable[[], Iterable[EngineStats]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "impetus_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "impetus_http_request_duration_seconds",
            "Time to the last byte of a response, streams included",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active = Gauge(
            "impetus_active_connections",
            "HTTP requests (streams included) and WebSocket connections open now",
            registry=r,
        )
        self.ttft = Histogram(
            "impetus_time_to_first_token_seconds",
            "Time from request to the first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "impetus_inter_token_latency_seconds",
            "Time between a sequence's consecutive tokens, as the server hands them out",
            ["model"],
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.inference_duration = Histogram(
            "impetus_inference_duration_seconds",
            "Time from submitting a sequence to the engine to its last token (queue, prefill, decode)",
            ["model"],
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_generated = Counter(
            "impetus_tokens_generated",
            "Tokens generated for clients (the blueprint's name for completion tokens)",
            ["model"],
            registry=r,
        )
        self.rag_search_duration = Histogram(
            "impetus_rag_search_duration_seconds",
            "One RAG retrieval: embedding the query and searching the collection",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.embedding_duration = Histogram(
            "impetus_embedding_duration_seconds",
            "One call to the embedder pool (a request's texts, or a RAG query)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "impetus_generation_tokens_per_second",
            "Decode speed of one sequence after its first token",
            ["model"],
            buckets=_TPS_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "impetus_prompt_tokens", "Prompt tokens of served requests", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "impetus_completion_tokens", "Tokens generated for clients", ["model"], registry=r
        )
        self.generation_errors = Counter(
            "impetus_generation_errors",
            "Generations that failed, by error code",
            ["model", "code"],
            registry=r,
        )
        self.disconnects = Counter(
            "impetus_client_disconnects",
            "Streams cancelled because the client went away",
            ["model"],
            registry=r,
        )
        self.embedding_inputs = Counter(
            "impetus_embedding_inputs", "Texts embedded", ["model"], registry=r
        )
        self.embedding_tokens = Counter(
            "impetus_embedding_tokens", "Tokens embedded", ["model"], registry=r
        )
        r.register(_EngineCollector(engine_stats))
        # Called with (model, ttft_s, inter-token s or None) of each finished sequence: the
        # dashboard's percentiles over the last minute (serving/http/live.py).
        self.sequence_observers: list[Callable[[str, float, float | None], None]] = []

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def observe_embedding(self, model: str, seconds: float) -> None:
        self.embedding_duration.labels(model).observe(seconds)

    def record_sequence(
        self, model: str, started: float, first_token: float | None, done: float, tokens: int
    ) -> None:
        """TTFT, duration and decode speed of one finished sequence (perf_counter timestamps)."""
        self.inference_duration.labels(model).observe(done - started)
        self.tokens_generated.labels(model).inc(tokens)
        if first_token is None:
            return
        self.ttft.labels(model).observe(first_token - started)
        itl = None
        if tokens > 1 and done > first_token:
            itl = (done - first_token) / (tokens - 1)
            self.tokens_per_second.labels(model).observe(1 / itl)
        for observe in self.sequence_observers:
            observe(model, first_token - started, itl)


class MetricsMiddleware:
    """Counts requests and times them to the last byte (a pure ASGI middleware: streams pass)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Callable[[], set[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            self.metrics.active.inc()
            try:
                await self.app(scope, receive, send)
            finally:
                self.metrics.active.dec()
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.metrics.active.inc()
        path = scope["path"]
        # Label by known route only, so that scanners cannot blow up the label space.
        route = path if path in self._routes() else "other"
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.active.dec()
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def route_paths(app: Any) -> set[str]:
    """The paths of an app's routes, included routers too (for `MetricsMiddleware`)."""

    def walk(routes: Iterable[Any], prefix: str) -> Iterator[str]:
        for route in routes:
            if hasattr(route, "path"):
                yield prefix + route.path
            inner = getattr(route, "original_router", None)  # FastAPI's included routers
            if inner is not None:
                ctx = getattr(route, "include_context", None)
                yield from walk(inner.routes, prefix + getattr(ctx, "prefix", ""))

    return set(walk(app.routes, ""))
