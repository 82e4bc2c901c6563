"""Ray Serve mode: the same FastAPI app and the same engine, wrapped in deployments.

    impetus serve --ray                      # serving/ray/launcher.py: a local Ray, blocks
    serve run configs/serve.yaml             # Ray Serve's own CLI (see the notes in that file)

Layers, after Ray Serve LLM: config (`RayAppArgs`, the `args:` of configs/serve.yaml) → engine
protocol (serving/engine/base.py) → engine (MLXEngine, or any `engine_factory(name, path) -> Engine`
named by import path, which is how tests run a fake engine inside real Serve) → replica
(`LLMServer`, one deployment per model; `ray_actor_options.resources` such as `{"mac": 1}` pin
decode to the hosts that have them) → ingress (`Ingress`, which builds serving/http/app.py's app with
engine and embedder proxies from serving/ray/proxies.py, so every route is shared). Embeddings run
in `EmbeddingServer`. Stream chunks are coalesced in `LLMServer` before they cross Ray.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from pipelines.errors import ImpetusError
from pipelines.settings import Settings, load_settings
from serving.engine.base import (
    Delta,
    Engine,
    EngineCapabilities,
    EngineClosedError,
    EngineStats,
    GenerationRequest,
)
from serving.ray.proxies import RayEmbedderProxy, RayEngineProxy, RemoteError, coalesce

if TYPE_CHECKING:
    from fastapi import FastAPI

    from pipelines.embed.base import Embedder
    from pipelines.models.store import ModelStore

log = structlog.get_logger(__name__)


# -- config ----------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentOptions(_Strict):
    """Ray Serve options of one deployment (a subset of `@serve.deployment`'s)."""

    num_replicas: int = Field(default=1, ge=1)
    # Requests one replica takes at once. Keep it above the engine's queue_limit + max_batch_size
    # so that the engine's bounded queue (503 + Retry-After) decides, not a queue inside Ray.
    max_ongoing_requests: int = Field(default=1000, ge=1)
    # e.g. {"num_cpus": 1, "resources": {"mac": 1}}; Serve's default is one logical CPU.
    ray_actor_options: dict[str, Any] = Field(default_factory=dict)

    def as_options(self) -> dict[str, Any]:
        return self.model_dump()


class LLMDeploymentConfig(DeploymentOptions):
    """One LLM deployment: a registry model and where its replicas may run."""

    model: str


class EmbeddingDeploymentConfig(DeploymentOptions):
    """The embedding deployment: it loads any registry embedding model on first use."""

    max_ongoing_requests: int = Field(default=64, ge=1)


class RayAppArgs(_Strict):
    """The `args:` of an application in configs/serve.yaml (and of `impetus serve --ray`)."""

    # Settings overrides applied in every replica on top of its own configs/impetus.yaml and
    # IMPETUS_* environment (`impetus serve --ray` passes its resolved settings here).
    settings: dict[str, Any] = Field(default_factory=dict)
    # LLM deployments; empty: one for `models.llm` with `llm_defaults`.
    models: list[LLMDeploymentConfig] = Field(default_factory=list)
    # Options for LLM deployments made for models not listed above (`--model NAME`).
    llm_defaults: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions())
    embedding: EmbeddingDeploymentConfig | None = Field(
        default_factory=lambda: EmbeddingDeploymentConfig()
    )
    ingress: DeploymentOptions = Field(default_factory=lambda: DeploymentOptions())
    # The default LLM (ready turns 200 when it is loaded); None: `models.llm` from the settings.
    default_model: str | None = None
    # Deltas produced within this many milliseconds of the previous message share one message.
    coalesce_ms: float = Field(default=5.0, ge=0)
    # While a replica streams at least `coalesce_streams` sequences, a message after a sequence's
    # first waits for `coalesce_tokens` deltas, holding none longer than `coalesce_hold_ms`: a
    # decode step of a big batch takes far longer than `coalesce_ms`, and one message per token
    # (twice: replica → ingress → Serve's proxy) costs the cores the decode needs. 0: never.
    coalesce_streams: int = Field(default=4, ge=0)
    coalesce_tokens: int = Field(default=4, ge=1)
    coalesce_hold_ms: float = Field(default=400.0, ge=0)
    # Import paths ("module:attr") of the collaborators, for other engines and for tests:
    # `engine_factory(name, path) -> Engine`, `embedder_factory(settings, name) -> Embedder`
    # (None: MLX) and `store_factory(settings) -> ModelStore` (None: the registry in data_dir);
    # `index_runner(settings) -> IndexRunner` runs POST /v1/rag/index (serving/services/indexing.py;
    # serving imports no flows, so configs/serve.yaml names flows.ingest.runner's; None: no runs).
    engine_factory: str | None = None
    embedder_factory: str | None = None
    store_factory: str | None = None
    index_runner: str | None = None


def import_path(path: str) -> Any:
    module, _, attr = path.partition(":")
    if not attr:
        raise ValueError(f"{path!r} is not an import path of the form 'module:attribute'.")
    return getattr(importlib.import_module(module), attr)


def _settings(overrides: dict[str, Any]) -> Settings:
    from pipelines import telemetry

    telemetry.disable()
    return load_settings(**overrides)


def _store(settings: Settings, store_factory: str | None) -> ModelStore:
    from pipelines.models.store import ModelStore

    if store_factory:
        store: ModelStore = import_path(store_factory)(settings)
        return store
    return ModelStore(settings.models_dir)


# -- replicas --------------------------------------------------------------------------------------


@serve.deployment(max_ongoing_requests=1000)
class LLMServer:
    """One registry LLM behind an `Engine`; streams its deltas in coalesced batches."""

    async def __init__(  # type: ignore[misc]  # Serve awaits async constructors
        self,
        model: str,
        settings: dict[str, Any],
        engine_factory: str | None = None,
        store_factory: str | None = None,
        coalesce_ms: float = 5.0,
        coalesce_streams: int = 0,
        coalesce_tokens: int = 1,
        coalesce_hold_ms: float = 0.0,
    ) -> None:
        from serving.engine.manager import mlx_engine_factory

        s = _settings(settings)
        if s.serve.engine_process == "auto":
            # This replica is the engine's process already: the HTTP side is the ingress's.
            s = s.model_copy(update={"serve": s.serve.model_copy(update={"engine_process": "off"})})
        self.model = model
        self._path = _store(s, store_factory).resolve(model)
        self._factory: Callable[[str, Path], Any] = (
            import_path(engine_factory) if engine_factory else mlx_engine_factory(s)
        )
        self._window_s = coalesce_ms / 1000
        self._busy_streams = coalesce_streams
        self._busy_items = coalesce_tokens
        self._busy_hold_s = coalesce_hold_ms / 1000
        self._streams = 0  # generate() calls in flight
        self._engine: Engine | None = None
        self._lock = asyncio.Lock()
        await self._ensure()  # the replica turns healthy once the model is loaded

    async def _ensure(self) -> Engine:
        if self._engine is None:
            async with self._lock:
                if self._engine is None:
                    started = time.perf_counter()
                    engine = await asyncio.to_thread(self._factory, self.model, self._path)
                    if asyncio.iscoroutine(engine):
                        engine = await engine
                    self._engine = engine
                    log.info(
                        "ray.llm.loaded",
                        model=self.model,
                        seconds=round(time.perf_counter() - started, 2),
                    )
        assert self._engine is not None
        return self._engine

    async def load(self) -> EngineStats:
        return (await self._ensure()).stats()

    async def unload(self) -> bool:
        async with self._lock:
            engine, self._engine = self._engine, None
        if engine is None:
            return False
        await engine.close()
        log.info("ray.llm.unloaded", model=self.model)
        return True

    async def generate(
        self, request: GenerationRequest
    ) -> AsyncIterator[list[Delta] | RemoteError]:
        self._streams += 1
        try:
            engine = await self._ensure()
            deltas = engine.generate(request)
            async for batch in coalesce(
                deltas,
                self._window_s,
                busy=self._busy,
                busy_items=self._busy_items,
                busy_hold_s=self._busy_hold_s,
            ):
                yield batch
        except ImpetusError as exc:
            yield RemoteError(exc)
        except Exception as exc:
            log.error("ray.llm.generate_failed", model=self.model, exc_info=exc)
            from serving.engine.base import EngineError

            yield RemoteError(
                EngineError(f"Generation with {self.model!r} failed ({type(exc).__name__}).")
            )
        finally:
            self._streams -= 1

    def _busy(self) -> bool:
        return 0 < self._busy_streams <= self._streams

    async def count_tokens(self, request: GenerationRequest) -> int:
        return (await self._ensure()).count_tokens(request)

    async def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        return (await self._ensure()).tokenize(request, add_special_tokens)

    async def detokenize(self, token_ids: list[int]) -> str:
        return (await self._ensure()).detokenize(token_ids)

    async def capabilities(self) -> EngineCapabilities:
        return (await self._ensure()).capabilities()

    async def stats(self) -> EngineStats:
        if self._engine is None:
            return EngineStats(model=self.model)
        return self._engine.stats()

    async def __del__(self) -> None:
        await self.unload()


@serve.deployment(max_ongoing_requests=64)
class EmbeddingServer:
    """Registry embedding models behind the `Embedder` protocol; one thread runs them all."""

    def __init__(self, settings: dict[str, Any], embedder_factory: str | None = None) -> None:
        from pipelines.embed.dispatch import load_embedder

        self._settings = _settings(settings)
        self._factory: Callable[[Settings, str], Embedder] = (
            import_path(embedder_factory) if embedder_factory else load_embedder
        )
        self._embedders: dict[str, Embedder] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="impetus-embed")

    async def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    async def _get(self, name: str) -> Embedder:
        if name not in self._embedders:
            self._embedders[name] = await self._run(self._factory, self._settings, name)
        return self._embedders[name]

    async def load(self, name: str) -> dict[str, Any]:
        e = await self._get(name)
        return {
            "name": e.name,
            "dim": e.dim,
            "max_seq_length": e.max_seq_length,
            "backend": e.backend,
        }

    async def encode(self, name: str, texts: list[str], batch_size: int = 32) -> Any:
        e = await self._get(name)
        return await self._run(e.encode, texts, batch_size=batch_size)

    async def count_tokens(self, name: str, texts: list[str]) -> list[int]:
        e = await self._get(name)
        return list(await self._run(e.count_tokens, texts))

    async def tokenize(self, name: str, text: str) -> list[int]:
        e = await self._get(name)
        return list(await self._run(e.tokenize, text))

    async def decode(self, name: str, ids: list[int]) -> str:
        e = await self._get(name)
        return str(await self._run(e.decode, ids))


@serve.deployment(max_ongoing_requests=1000)
@serve.ingress()
class Ingress:
    """HTTP: serving/http/app.py's app, its engines and embedders proxied to the deployments above."""

    def __init__(
        self,
        settings: dict[str, Any],
        llms: dict[str, DeploymentHandle],
        embedding: DeploymentHandle | None,
        default_model: str | None = None,
        store_factory: str | None = None,
        index_runner: str | None = None,
    ) -> None:
        self._settings = _settings(settings)
        self._llms = llms
        self._embedding = embedding
        self._default_model = default_model
        self._store_factory = store_factory
        self._index_runner = index_runner

    async def _engine(self, name: str, path: Path) -> Engine:
        from serving.engine.manager import ModelNotLoadedError

        handle = self._llms.get(name)
        if handle is None:
            raise ModelNotLoadedError(
                f"Model {name!r} has no LLM deployment in this Ray Serve application; add it "
                f"under `models:` in configs/serve.yaml (deployed: {', '.join(self._llms)})."
            )
        stats = await handle.load.remote()
        capabilities = await handle.capabilities.remote()
        return RayEngineProxy(name, handle, stats, capabilities)

    def _embedder(self, name: str) -> Embedder:
        if self._embedding is None:
            raise EngineClosedError(
                "This Ray Serve application has no embedding deployment (`embedding:` in "
                "configs/serve.yaml)."
            )
        return RayEmbedderProxy.connect(self._embedding, name)

    def __serve_build_asgi_app__(self) -> FastAPI:
        from serving.engine.manager import ModelManager
        from serving.http.app import create_app

        def factory(name: str, path: Path) -> Any:
            return self._engine(name, path)  # a coroutine: the manager awaits it

        s = self._settings.serve
        manager = ModelManager(
            _store(self._settings, self._store_factory),
            factory,
            default_model=self._default_model or self._settings.models.llm,
            memory_budget_bytes=s.memory_budget_bytes,
            idle_ttl_s=s.idle_ttl_s,
            load_on_demand=s.load_on_demand,
        )
        runner = import_path(self._index_runner)(self._settings) if self._index_runner else None
        return create_app(
            self._settings,
            manager=manager,
            embedder_factory=self._embedder,
            index_runner=runner,
            preload_default=True,
            # Serve's proxy gives every request an X-Request-ID (the client's, else a new
            # one), passes it in, and echoes it on the response itself
            echo_request_id=False,
        )


# -- the application -------------------------------------------------------------------------------


def llm_deployment_name(model: str) -> str:
    """`LLM:<model>`; `#` separates replica ids in Serve, so it cannot appear."""
    return "LLM:" + model.replace("#", "_")


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Build the application from `RayAppArgs` (the `args:` of configs/serve.yaml)."""
    cfg = RayAppArgs.model_validate(args or {})
    s = _settings(cfg.settings)
    default_model = cfg.default_model or s.models.llm
    models = list(cfg.models)
    if default_model not in {m.model for m in models}:
        models.insert(0, LLMDeploymentConfig(model=default_model, **cfg.llm_defaults.as_options()))
    llms = {
        m.model: LLMServer.options(  # type: ignore[attr-defined]
            name=llm_deployment_name(m.model), **m.model_dump(exclude={"model"})
        ).bind(
            m.model,
            cfg.settings,
            cfg.engine_factory,
            cfg.store_factory,
            cfg.coalesce_ms,
            cfg.coalesce_streams,
            cfg.coalesce_tokens,
            cfg.coalesce_hold_ms,
        )
        for m in models
    }
    embedding = (
        EmbeddingServer.options(  # type: ignore[attr-defined]
            **cfg.embedding.as_options()
        ).bind(cfg.settings, cfg.embedder_factory)
        if cfg.embedding is not None
        else None
    )
    return Ingress.options(  # type: ignore[attr-defined]
        **cfg.ingress.as_options()
    ).bind(cfg.settings, llms, embedding, default_model, cfg.store_factory, cfg.index_runner)
