"""Traces of requests and ingest runs, with OpenTelemetry's in-memory span exporter, and the
metric names of the blueprint in /api/metrics.

The module's server is `impetus serve`'s shape (the real MLX engine on the bundled LLM, the real
embedder, the real index runner) with a tracer provider that keeps spans in memory: each request
must give one trace (its id in the X-Request-ID header and in the log lines) holding the spans
serving/http/tracing.py promises. Tracing off (the default) is checked in a fresh interpreter: no
SDK imported, no exporter thread, no trace id. The OTLP path is checked end to end against a
local sink that decodes what the exporter posts.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest
import structlog
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flows.ingest.runner import PrefectIndexRunner
from pipelines import tracing
from pipelines.settings import PROJECT_ROOT
from serving.engine.manager import ModelManager, mlx_engine_factory
from serving.http.app import create_app
from serving.http.threaded import serve_in_thread
from tests.serving.fakes import StoreWithFakes
from tests.serving.http.fake_server import fake_servers
from tests.serving.http.test_rag_sdk import CORPUS, wait_run
from tests.serving.servers import FAKE_LLMS, _wait_ready, recording_factory, serving_settings

HEX32 = re.compile(r"[0-9a-f]{32}")
COLLECTION = "traced"
REQUEST_SPANS = {"auth", "validation", "delivery"}
ENGINE_SPANS = {"queue wait", "prefill", "decode"}


class Traced:
    def __init__(self, url: str, exporter: InMemorySpanExporter, llm: str, embedder: str) -> None:
        self.url = url
        self.exporter = exporter
        self.llm = llm
        self.embedder = embedder

    def trace(self, trace_id: str) -> list[ReadableSpan]:
        """The finished spans of one trace (the server span ends with the last byte sent)."""
        import time

        deadline = time.monotonic() + 10
        while True:
            spans = [
                s
                for s in self.exporter.get_finished_spans()
                if s.context is not None and format(s.context.trace_id, "032x") == trace_id
            ]
            if any(s.parent is None for s in spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)


@pytest.fixture(scope="module")
def traced(ready_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    tmp = tmp_path_factory.mktemp("traced")
    settings = serving_settings(tmp, queue_limit=8, max_batch_size=8)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    manager = ModelManager(
        StoreWithFakes(ready_models_dir, llms=list(FAKE_LLMS)),
        recording_factory({}, mlx_engine_factory(settings)),
        default_model=settings.models.llm,
        idle_ttl_s=0,
    )
    app = create_app(
        settings,
        manager=manager,
        index_runner=PrefectIndexRunner(settings),
        preload_default=True,
        tracer_provider=provider,
    )
    try:
        with serve_in_thread(app) as url:
            _wait_ready(url)
            yield Traced(url, exporter, settings.models.llm, settings.models.embedding)
    finally:
        tracing.uninstall(provider)


@pytest.fixture(scope="module")
def client(traced: Traced) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{traced.url}/v1", api_key="unused", max_retries=0, timeout=300)


def _names(spans: list[ReadableSpan]) -> list[str]:
    return [s.name for s in spans]


def _one_trace(traced: Traced, request_id: str | None) -> list[ReadableSpan]:
    """The trace of a response whose X-Request-ID is its trace id; exactly one server span."""
    assert request_id is not None and HEX32.fullmatch(request_id), request_id
    spans = traced.trace(request_id)
    roots = [s for s in spans if s.parent is None]
    assert len(roots) == 1, _names(spans)
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    for s in spans:  # every span hangs, through its parents, from the server span
        node = s
        while node.parent is not None:
            node = by_id[node.parent.span_id]
        assert node is roots[0], s.name
    return spans


def _check_engine_spans(spans: list[ReadableSpan]) -> None:
    named = {s.name: s for s in spans}
    assert set(named) >= ENGINE_SPANS, _names(spans)
    q, p, d = (named[n] for n in ("queue wait", "prefill", "decode"))
    assert q.end_time is not None and p.end_time is not None and d.end_time is not None
    assert q.start_time <= q.end_time <= p.start_time + 1 and p.end_time <= d.start_time + 1
    assert d.attributes is not None and int(d.attributes["impetus.completion_tokens"]) >= 1
    assert p.attributes is not None and int(p.attributes["impetus.prompt_tokens"]) > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_is_one_trace_with_every_step(
    traced: Traced, client: openai.OpenAI, stream: bool
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=traced.llm,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=4,
        temperature=0,
        stream=stream,
    )
    if stream:
        chunks = list(raw.parse())
        assert chunks
    else:
        assert raw.parse().choices[0].message.content is not None
    spans = _one_trace(traced, raw.headers.get("x-request-id"))
    names = set(_names(spans))
    assert {"POST /v1/chat/completions", "fastapi.dependencies", "fastapi.endpoint"} <= names
    assert names >= REQUEST_SPANS, names
    _check_engine_spans(spans)
    root = next(s for s in spans if s.parent is None)
    assert root.attributes is not None and root.attributes["http.response.status_code"] == 200
    auth = next(s for s in spans if s.name == "auth")
    validation = next(s for s in spans if s.name == "validation")
    assert auth.end_time is not None and validation.start_time is not None
    assert auth.end_time <= validation.start_time


def test_embeddings_trace(traced: Traced, client: openai.OpenAI) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=traced.embedder, input=["a lighthouse", "a loaf of bread"]
    )
    assert len(raw.parse().data) == 2
    spans = _one_trace(traced, raw.headers.get("x-request-id"))
    names = set(_names(spans))
    assert {"POST /v1/embeddings", "embed"} | REQUEST_SPANS <= names, names
    embed = next(s for s in spans if s.name == "embed")
    assert embed.attributes is not None and embed.attributes["impetus.inputs"] == 2


@pytest.fixture(scope="module")
def indexed(
    traced: Traced, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The RAG corpus indexed by the server's own index runner (an ingest flow run)."""
    request.getfixturevalue("prefect_harness")
    corpus = tmp_path_factory.mktemp("traced-corpus")
    for name, text in CORPUS.items():
        (corpus / name).write_text(text)
    r = httpx.post(
        f"{traced.url}/v1/rag/index",
        json={"paths": [str(corpus)], "collection": COLLECTION},
        timeout=300,
    )
    assert r.status_code == 202, r.text
    run = wait_run(traced.url, r.json()["id"])
    assert run["status"] == "completed", run
    return run


def test_ingest_run_is_a_trace_of_its_tasks(traced: Traced, indexed: dict[str, Any]) -> None:
    finished = traced.exporter.get_finished_spans()
    roots = [
        s
        for s in finished
        if s.name == "ingest"
        and s.attributes is not None
        and s.attributes.get("impetus.collection") == COLLECTION
    ]
    assert len(roots) == 1, [s.name for s in finished if s.name.startswith("ingest")]
    root = roots[0]
    assert root.context is not None
    spans = traced.trace(format(root.context.trace_id, "032x"))
    names = set(_names(spans))
    steps = {"discover", "load-embedder", "classify", "parse", "chunk", "embed", "upsert"}
    assert {f"ingest.{step}" for step in steps} <= names, names
    assert "ingest.batch" in names
    assert all(s.start_time >= root.start_time for s in spans if s is not root)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_rag_chat_trace_has_retrieval_steps(
    traced: Traced, client: openai.OpenAI, indexed: dict[str, Any], stream: bool
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=traced.llm,
        messages=[{"role": "user", "content": "Who logged the ships at the Bell Rock lighthouse?"}],
        max_tokens=4,
        temperature=0,
        stream=stream,
        extra_body={"rag_mode": True, "rag_collection": COLLECTION, "rag_top_k": 2},
    )
    if stream:
        list(raw.parse())
    spans = _one_trace(traced, raw.headers.get("x-request-id"))
    named = {s.name: s for s in spans}
    assert {"retrieval", "embed", "dense", "sparse", "fuse"} | REQUEST_SPANS <= set(named)
    _check_engine_spans(spans)
    retrieval = named["retrieval"]
    assert retrieval.context is not None
    for step in ("embed", "dense", "sparse", "fuse"):
        parent = named[step].parent
        assert parent is not None and parent.span_id == retrieval.context.span_id, step


def test_client_request_id_is_kept_and_the_trace_id_logged(traced: Traced) -> None:
    """A client's X-Request-ID stays the request id; the trace id is bound beside it and lands on
    the server span, so logs, trace and response can be matched either way."""
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        r = httpx.post(
            f"{traced.url}/api/models/load",
            json={"model": "fake-llm"},
            headers={"X-Request-ID": "client-id-1"},
            timeout=60,
        )
        r2 = httpx.post(f"{traced.url}/api/models/load", json={"model": "fake-llm"}, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-id-1"
    lines = [e for e in logs if e.get("event") == "audit.model_load"]
    assert len(lines) == 2, logs
    mine = next(e for e in lines if e.get("request_id") == "client-id-1")
    assert HEX32.fullmatch(mine["trace_id"])
    spans = traced.trace(mine["trace_id"])
    root = next(s for s in spans if s.parent is None)
    assert root.attributes is not None and root.attributes["impetus.request_id"] == "client-id-1"
    # without a client id, the request id is the trace id, in the header and in the log line
    other = next(e for e in lines if e is not mine)
    assert other["request_id"] == other["trace_id"] == r2.headers["x-request-id"]


def test_blueprint_metric_names_after_traffic(traced: Traced, client: openai.OpenAI) -> None:
    client.chat.completions.create(
        model=traced.llm,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=6,
        temperature=0,
    )
    client.embeddings.create(model=traced.embedder, input="x")
    httpx.post(
        f"{traced.url}/v1/rag/search",
        json={"query": "sourdough", "collection": COLLECTION},
        timeout=60,
    )
    text = httpx.get(f"{traced.url}/api/metrics", timeout=30).text
    for name in (
        "impetus_inference_duration_seconds_bucket",
        "impetus_tokens_generated_total",
        "impetus_model_memory_bytes",
        "impetus_rag_search_duration_seconds_bucket",
        "impetus_embedding_duration_seconds_bucket",
        "impetus_active_connections",
        "impetus_time_to_first_token_seconds_bucket",
        "impetus_inter_token_latency_seconds_bucket",
        # the names that were there before stay
        "impetus_completion_tokens_total",
        "impetus_http_requests_total",
    ):
        assert f"\n{name}" in text, name
    # vLLM's bucket boundaries
    assert 'impetus_time_to_first_token_seconds_bucket{le="0.001",model=' in text
    assert 'impetus_inter_token_latency_seconds_bucket{le="0.075",model=' in text
    # the scrape itself is the one request open
    assert re.search(r"^impetus_active_connections 1\.0$", text, re.M), text
    done = re.search(r'^impetus_tokens_generated_total\{model="[^"]+"\} (\S+)$', text, re.M)
    assert done is not None and float(done.group(1)) >= 6


# -- off by default, and the OTLP path ------------------------------------------------------------

_OFF_PROBE = """
import json, sys, threading
import httpx
from pipelines.settings import load_settings
from tests.serving.http.fake_server import fake_app
from pipelines import tracing
from serving.http.threaded import serve_in_thread

app = fake_app(load_settings(data_dir=sys.argv[1]))
with serve_in_thread(app) as url:
    r = httpx.post(url + "/v1/chat/completions", json={"model": "fake-llm", "max_tokens": 3,
                   "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    print(json.dumps({
        "status": r.status_code,
        "request_id": r.headers.get("x-request-id"),
        "enabled": tracing.enabled(),
        "sdk": [m for m in sys.modules if m.startswith(("opentelemetry.sdk",
                "opentelemetry.exporter"))],
        "threads": [t.name for t in threading.enumerate()],
    }))
"""


def test_off_by_default_costs_no_sdk_and_no_exporter(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _OFF_PROBE, str(tmp_path / "state")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["status"] == 200
    assert probe["enabled"] is False
    assert probe["sdk"] == []  # the SDK and the exporter are never imported
    assert not [t for t in probe["threads"] if "Otel" in t or "Span" in t], probe["threads"]
    assert HEX32.fullmatch(probe["request_id"])  # a fresh id, as before tracing existed


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector that keeps the span names it is sent."""

    names: ClassVar[list[str]] = []
    paths: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        type(self).paths.append(self.path)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                type(self).names += [s.name for s in ss.spans]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_endpoint_setting_exports_spans(tmp_path: Path) -> None:
    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}"
    try:
        with fake_servers(tmp_path) as start:
            server = start("otlp", telemetry={"otlp_endpoint": endpoint})
            assert tracing.enabled()
            r = httpx.post(
                f"{server.url}/v1/chat/completions",
                json={
                    "model": "fake-llm",
                    "max_tokens": 3,
                    "messages": [{"role": "user", "content": "hi"}],
                },
                timeout=30,
            )
            assert r.status_code == 200 and HEX32.fullmatch(r.headers["x-request-id"])
        # the app's provider is shut down with it: its last spans are flushed, tracing is off
        assert not tracing.enabled()
    finally:
        sink.shutdown()
    assert set(_Sink.paths) == {"/v1/traces"}
    assert {"POST /v1/chat/completions", "auth", "validation", "delivery"} <= set(_Sink.names)
