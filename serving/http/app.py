"""The FastAPI app factory of the OpenAI-compatible endpoint. It knows nothing of MLX.

    manager = ModelManager.from_settings(settings, factory)
    app = create_app(settings, manager=manager, index_runner=PrefectIndexRunner(settings))

Collaborators come in through the arguments: the `ModelManager` (which builds engines through
its `engine_factory`), an `embedder_factory(name) -> Embedder` (default: `load_embedder`) and
the `IndexRunner` that runs `POST /v1/rag/index` (serving/services/indexing.py; flows/ implements
it, so serving never imports flows; None: the route answers rag_index_error).
Each app has its own context, metrics registry and embedder pool, so tests, `impetus serve` and
the Ray Serve ingress can build as many as they like. Nothing heavy is imported here: the
default LLM loads when `preload_default=True` (what `impetus serve` passes), in the background,
and /api/health/ready turns 200 when it is resident.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipelines import tracing
from serving.engine.manager import ModelManager
from serving.http import docs, errors
from serving.http.arrivals import ArrivalsMiddleware
from serving.http.auth import AccessMiddleware, Guard, authorize
from serving.http.deps import ServingContext
from serving.http.live import LiveFeed
from serving.http.metrics import Metrics, MetricsMiddleware, route_paths
from serving.http.openapi import install as document_errors
from serving.http.redact import PathRedactionMiddleware, PathRedactor
from serving.http.request_id import RequestIdMiddleware
from serving.http.routes import (
    dashboard,
    embeddings,
    events,
    files,
    generate,
    health,
    messages,
    models,
    rag,
    responses,
    tokenize,
    vector_stores,
)
from serving.http.security import SecurityMiddleware
from serving.http.shutdown import DrainMiddleware, Shutdown
from serving.http.static import DashboardMiddleware
from serving.http.tracing import (
    TracingMiddleware,
    authorize_traced,
    end_validation_at_endpoint,
)
from serving.services.embedders import EmbedderFactory, EmbedderPool
from serving.services.experiments import ExperimentsProvider, mlflow_runs
from serving.services.indexing import IndexRunner
from serving.services.rag import RagService, wait_closed
from serving.services.tools import warm as warm_tools
from serving.tracing import build_provider

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from pipelines.embed.base import Embedder
    from pipelines.settings import Settings


# Multipart framing (boundaries, part headers, the purpose field) an upload may add to its file.
UPLOAD_OVERHEAD_BYTES = 64 << 10


class BodyLimitMiddleware:
    """413 for a body larger than `max_bytes` (declared or streamed), before any route runs.

    Paths in `streamed` (POST /v1/files) have their own limit and are not buffered here: the
    declared length is checked, then the body is counted as the route reads it."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, streamed: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.streamed = streamed or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in self.streamed:
            await self._streamed(scope, receive, send, self.streamed[scope["path"]])
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        # Read the body here (FastAPI reads it whole anyway) so that a chunked upload cannot
        # grow past the limit, then replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit, "rag.upload_max_bytes")
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > limit:  # raised into the route's form parsing: its handler answers 413
                raise self._error(limit, "rag.upload_max_bytes")
            return message

        await self.app(scope, counted, send)

    def _error(self, limit: int, setting: str) -> errors.APIError:
        return errors.APIError(
            "invalid_request",
            f"The request body is larger than {limit} bytes ({setting}).",
            status=413,
        )

    async def _reject(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        limit: int | None = None,
        setting: str = "serve.max_body_bytes",
    ) -> None:
        err = self._error(limit or self.max_bytes, setting)
        await err.response(scope.get("path", ""))(scope, receive, send)


def _default_embedder_factory(settings: Settings) -> EmbedderFactory:
    def factory(name: str) -> Embedder:
        from pipelines.embed.dispatch import load_embedder

        return load_embedder(settings, name)

    return factory


def dashboard_dir(settings: Settings) -> Path | None:
    """`serve.dashboard_dir` (relative: to the checkout's root), None for the default."""
    from pipelines.settings import PROJECT_ROOT

    configured = settings.serve.dashboard_dir
    return None if configured is None else PROJECT_ROOT / configured.expanduser()


def create_app(
    settings: Settings,
    *,
    manager: ModelManager,
    embedder_factory: EmbedderFactory | None = None,
    index_runner: IndexRunner | None = None,
    preload_default: bool = False,
    guard: Guard | None = None,
    echo_request_id: bool = True,
    experiments: ExperimentsProvider | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """A new app serving `manager`'s models and the registry's embedding models.

    `guard` (default: one over `settings.data_dir`'s keys) decides who may call which route.
    `echo_request_id=False` leaves X-Request-ID on the response to a proxy in front that sets
    it itself (Ray Serve's), so that the header is not sent twice. `experiments(limit)` lists
    the dashboard's MLflow runs (default: data_dir/mlflow.db, serving/services/experiments.py).
    `tracer_provider` (default: an OTLP exporter when `telemetry.otlp_endpoint` is set, else
    none: tracing off) records the spans of serving/http/tracing.py; one the app builds itself
    is shut down, flushing its last spans, when the app stops."""
    guard = guard or Guard.from_settings(settings)
    metrics = Metrics(manager.stats)
    pool = EmbedderPool(
        embedder_factory or _default_embedder_factory(settings),
        batch_tokens=settings.serve.embedding_batch_tokens,
        batch_size=settings.embedding.batch_size,
        observe=metrics.observe_embedding,
    )
    service = RagService(
        settings,
        embedders=pool,
        manager=manager,
        runner=index_runner,
        observe_search=metrics.rag_search_duration.observe,
    )
    owned = None if tracer_provider is not None else build_provider(settings.telemetry)
    tracer_provider = tracer_provider or owned
    if tracer_provider is not None:
        tracing.install(tracer_provider)
        end_validation_at_endpoint(tracer_provider)
    ctx = ServingContext(
        settings=settings, manager=manager, embedders=pool, metrics=metrics, rag=service
    )
    # The dashboard's live data (serving/http/live.py): requests, model and index-run events.
    live = LiveFeed(
        manager,
        runs=lambda: (
            [service.public_run(r.to_dict()) for r in index_runner.runs()]
            if index_runner is not None
            else []
        ),
        interval_s=settings.serve.ws_interval_s,
        queue_size=settings.serve.ws_queue_size,
    )
    guard.observers.append(live.on_request)
    manager.add_listener(live.on_model)
    metrics.sequence_observers.append(live.on_sequence)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        guard.start()
        manager.start()
        if preload_default and manager.default_model:
            manager.load_in_background(manager.default_model)
        # The server owns the embedded vector store while it runs (one writer per store).
        await anyio.to_thread.run_sync(service.open)
        await anyio.to_thread.run_sync(warm_tools)  # the first request with tools: 22 → 0.1 ms
        live.start()
        try:
            yield
        finally:
            await live.close()
            await wait_closed(service)
            await manager.close()
            pool.close()
            guard.close()
            if owned is not None:
                tracing.uninstall(owned)
                await anyio.to_thread.run_sync(owned.shutdown)  # flushes the last spans

    app = FastAPI(
        title="Impetus",
        summary="OpenAI-compatible endpoint for local MLX models",
        lifespan=lifespan,
        # Every route passes `authorize` (serving/http/auth.py), /openapi.json and /docs included
        # (routes of their own: FastAPI's built-in ones would skip it).
        dependencies=[Depends(authorize if tracer_provider is None else authorize_traced)],
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        # FastAPI's own OpenTelemetry: the server span and its operation spans, with our
        # provider only (never a global one, never from OTEL_* variables); metrics stay
        # Prometheus's (/api/metrics), logs structlog's.
        telemetry={
            "tracer_provider": tracer_provider,
            "tracing": tracer_provider is not None,
            "metrics": False,
            "logs": False,
            "auto_configure": False,
        },
    )
    app.state.ctx = ctx
    app.state.guard = guard
    # What a signal to `impetus serve` drains and stops (serving/http/shutdown.py, graceful.py).
    shutdown = Shutdown(retry_after_s=max(1, round(settings.serve.retry_after_s)))
    shutdown.on_begin(service.stop_runs)
    shutdown.waiting_on(service.active_runs)
    app.state.shutdown = shutdown
    app.state.live = live
    app.state.experiments = experiments or mlflow_runs(settings)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    docs.install(app)  # Swagger UI from local files (serving/http/docs.py)
    errors.install(app)
    routers = (generate, messages, tokenize, embeddings, models, health, rag, files, vector_stores)
    for group in (*routers, responses, dashboard):
        app.include_router(group.router)
    events.install(app)  # the dashboard's WebSocket, /api/ws (serving/http/routes/events.py)
    document_errors(app)  # 400 and the error body, not FastAPI's 422 (serving/http/openapi.py)
    paths = route_paths(app)
    app.add_middleware(errors.CatchAllMiddleware)
    app.add_middleware(PathRedactionMiddleware, redactor=PathRedactor.from_settings(settings))
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.serve.max_body_bytes,
        streamed={"/v1/files": settings.rag.upload_max_bytes + UPLOAD_OVERHEAD_BYTES},
    )
    app.add_middleware(AccessMiddleware, guard=guard)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: paths)
    app.add_middleware(DrainMiddleware, shutdown=shutdown)
    # The dashboard's build at / (serving/http/static.py), inside the Host/Origin checks.
    app.add_middleware(DashboardMiddleware, dist=dashboard_dir(settings))
    # Outermost: Host and Origin checks, CORS, security headers (serving/http/security.py), and
    # the request id every log line of the request carries (serving/http/request_id.py).
    app.add_middleware(SecurityMiddleware, settings=settings)
    if tracer_provider is not None:
        app.add_middleware(TracingMiddleware)  # delivery, and what the other spans hang from
    app.add_middleware(RequestIdMiddleware, echo=echo_request_id)
    # Outermost of all: a generating request counts as on its way to the engine from here
    # (serving/http/arrivals.py).
    app.add_middleware(ArrivalsMiddleware, arrivals=manager.arrivals)
    return app
