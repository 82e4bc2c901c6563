"""Which LLMs are resident: load and unload registry models within a memory budget, unload idle ones.

The manager knows nothing of MLX: an `engine_factory(name, path) -> Engine` builds engines
(`mlx_engine_factory(settings)` in production, a fake in tests). Requests hold a model through
`async with manager.use(name) as engine:`, so a model in use is never evicted or reaped. Only
registry models load. A registry LLM that is not resident loads on demand when
`serve.load_on_demand` is on (the default) and it fits the budget, evicting idle models least
recently used first; otherwise the request gets 503 model_not_loaded or 507 insufficient_memory.
The default model (`models.llm`) is never unloaded for idleness or evicted.

What the budget counts: the engines' own estimates, or, when the manager is given a
`process_memory` reader (`impetus serve` passes serving/engine/memory.py's), the process's real
footprint (resident set, MLX's active and cache memory) when that is larger.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipelines.errors import ImpetusError
from pipelines.models.store import ModelEntry, ModelStore
from serving.engine.base import Arrivals, Engine, EngineStats
from serving.engine.memory import ProcessMemory, process_memory

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

EngineFactory = Callable[[str, Path], Any]  # returns an Engine, or an awaitable of one


GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect garbage once, then move every object alive (the app, the loaded models' modules,
    tokenizers and caches) to the collector's permanent generation (`gc.freeze`), as vLLM, SGLang
    and Ray Serve do after start-up: Python's full collections otherwise walk them all, ~50-70 ms
    with one small model loaded on this CPU, with every thread stopped, engine threads included.
    Called after each load (the app's own objects are alive by then too; not in the app's
    start-up, where a full collection of a test process's heap delayed readiness past a 1 s
    load); the collection pauses the process once, when a load has taken seconds anyway.
    Frozen objects are still freed by reference counting; an unload unfreezes them all
    (`thaw_heap`) so that the collector can free the model's reference cycles.

    The youngest generation is collected every `GC_YOUNG_THRESHOLD` allocations, not Python's
    700: streaming makes several objects per token per stream (121 young collections and 11 of
    the middle one, 55 ms, in a 2.8 s round of 128 streams on the H200 machine), nearly all
    freed by reference counting before any collection sees them.
    """
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def thaw_heap() -> None:
    """Give every frozen object back to the collector and collect once: an unloaded model's
    cycles are freed now, or by a later full collection if something (a callback not yet run)
    still held them; the next load freezes what is alive again."""
    gc.unfreeze()
    gc.collect()


class ModelManagerError(ImpetusError):
    """A model could not be made available (mapped to HTTP in serving/http/errors.py)."""


class ModelNotLoadedError(ModelManagerError):
    """The model is in the registry but not resident, and on-demand loading is off (503)."""


class InsufficientMemoryError(ModelManagerError):
    """Loading the model would exceed the memory budget even after evicting idle models (507)."""


class ModelKindError(ModelManagerError):
    """The model exists but is of the other kind (an embedding model asked to chat) (400)."""


class ModelLoadError(ModelManagerError):
    """The engine factory failed to load the model (500 inference_error)."""


@dataclass
class _Resident:
    engine: Engine
    memory_bytes: int
    loaded_at: float
    last_used: float
    active: int = 0


@dataclass
class LoadState:
    """What /api/health/status says about a model being loaded in the background."""

    name: str
    state: str = "loading"  # importing | loading | loaded | failed
    error: str | None = None
    started_at: float = field(default_factory=time.time)


def default_memory_budget() -> int:
    """70% of physical memory: room for the OS and the other programs (the budget counts this
    process's whole footprint under `impetus serve`)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * 0.7)


class ModelManager:
    """Resident LLM engines, keyed by registry name."""

    def __init__(
        self,
        store: ModelStore,
        engine_factory: EngineFactory,
        *,
        default_model: str | None,
        memory_budget_bytes: int = 0,
        idle_ttl_s: float = 0.0,
        load_on_demand: bool = True,
        clock: Callable[[], float] = time.monotonic,
        process_memory: Callable[[], ProcessMemory] | None = None,
    ) -> None:
        self.store = store
        self.default_model = default_model
        self.memory_budget_bytes = memory_budget_bytes or default_memory_budget()
        self.idle_ttl_s = idle_ttl_s
        self.load_on_demand = load_on_demand
        self._factory = engine_factory
        self._clock = clock
        # Reads the process's footprint for the budget; None: the engines' estimates alone (a
        # Ray ingress, whose models live in other processes; tests with fake engines).
        self._process_memory = process_memory
        self._resident: dict[str, _Resident] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._budget_lock = asyncio.Lock()
        self._reserved = 0
        self._reaper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.load_states: dict[str, LoadState] = {}
        self._entries: list[ModelEntry] = []
        self._entries_at = -1e9
        self._listeners: list[Callable[[str, dict[str, Any]], None]] = []
        # requests the HTTP side has received and not yet submitted (serving/http/arrivals.py),
        # which the engines that read it wait for when a burst wakes them (MLXEngine._burst)
        self.arrivals = Arrivals()

    @classmethod
    def from_settings(
        cls, settings: Settings, engine_factory: EngineFactory, *, default_model: str | None = None
    ) -> ModelManager:
        s = settings.serve
        return cls(
            ModelStore(settings.models_dir),
            engine_factory,
            default_model=default_model or settings.models.llm,
            memory_budget_bytes=s.memory_budget_bytes,
            idle_ttl_s=s.idle_ttl_s,
            load_on_demand=s.load_on_demand,
            process_memory=process_memory,
        )

    def add_listener(self, listener: Callable[[str, dict[str, Any]], None]) -> None:
        """Call `listener(event, data)` on the event loop when a model is loaded, unloaded or
        evicted (`model.loaded` | `model.unloaded` | `model.evicted`; data names the model):
        the dashboard's event stream (serving/http/live.py)."""
        self._listeners.append(listener)

    def _emit(self, event: str, **data: Any) -> None:
        for listener in self._listeners:
            try:
                listener(event, data)
            except Exception as exc:  # a listener must not break loading
                log.warning("model.listener_failed", event_name=event, error=str(exc))

    # -- the registry ------------------------------------------------------------------------------

    def entries(self) -> list[ModelEntry]:
        """The registry, re-read at most every 2 s (it scans wheel RECORDs and registry.json)."""
        if self._clock() - self._entries_at > 2.0:
            self._entries = self.store.entries()
            self._entries_at = self._clock()
        return self._entries

    def entry(self, name: str) -> ModelEntry:
        for e in self.entries():
            if e.name == name:
                return e
        self._entries_at = -1e9  # a model imported a moment ago
        return self.store.get(name)  # raises ModelNotFoundError with the known names

    # -- residency ---------------------------------------------------------------------------------

    def loaded(self) -> list[str]:
        return list(self._resident)

    def is_loaded(self, name: str) -> bool:
        return name in self._resident

    def engines_bytes(self) -> int:
        """What the resident engines say they hold (weights, KV and prefix caches)."""
        return sum(r.memory_bytes for r in self._resident.values())

    def memory_in_use(self) -> int:
        """What the budget counts: the engines' estimates or, when measured and larger, the
        process's real footprint; plus what loads in progress have reserved."""
        used = self.engines_bytes()
        if self._process_memory is not None:
            used = max(used, self._process_memory().footprint_bytes)
        return used + self._reserved

    def memory_report(self) -> dict[str, Any]:
        """/api/health/status's memory: the budget's figure, the engines' and the process's."""
        proc = (self._process_memory or process_memory)()
        return {
            "in_use_bytes": self.memory_in_use(),
            "budget_bytes": self.memory_budget_bytes,
            "budget_counts": "process" if self._process_memory is not None else "engines",
            "engines_bytes": self.engines_bytes(),
            "process_rss_bytes": proc.rss_bytes,
            "mlx_active_bytes": proc.mlx_active_bytes,
            "mlx_cache_bytes": proc.mlx_cache_bytes,
            "process_footprint_bytes": proc.footprint_bytes,
            "idle_ttl_s": self.idle_ttl_s,
        }

    @contextlib.asynccontextmanager
    async def use(self, name: str) -> AsyncIterator[Engine]:
        """Hold model `name` for one request, loading it on demand; 404/400/503/507 otherwise."""
        res = self._resident.get(name)
        if res is not None and getattr(res.engine, "gone", False):
            # Its engine process exited (serving/engine/process.py): load the model again.
            log.warning("model.engine_gone", model=name)
            if self._resident.get(name) is res:
                del self._resident[name]
            await res.engine.close()
            res = None
        if res is None:
            entry = self.entry(name)
            self._check_llm(entry)
            if not self.load_on_demand:
                raise ModelNotLoadedError(
                    f"Model {name!r} is not loaded. Load it with POST /api/models/load "
                    f'{{"model": "{name}"}} (or set serve.load_on_demand: true).'
                )
            await self.load(name)
            res = self._resident.get(name)
            if res is None:  # unloaded again before we got it
                raise ModelNotLoadedError(f"Model {name!r} was unloaded; retry the request.")
        res.active += 1
        try:
            yield res.engine
        finally:
            res.active -= 1
            res.last_used = self._clock()

    async def load(self, name: str) -> Engine:
        """Make `name` resident (idempotent); evicts idle models to fit the budget."""
        try:
            return await self._load(name)
        except Exception as exc:
            state = self.load_states.get(name)  # shown by /api/health/status: not "loading"
            if state is not None:
                state.state, state.error = "failed", str(exc)
            raise

    async def _load(self, name: str) -> Engine:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name in self._resident:
                return self._resident[name].engine
            entry = self.entry(name)
            self._check_llm(entry)
            if entry.status == "importable" and name in self.load_states:
                self.load_states[name].state = "importing"
            # A built-in model not imported yet is imported here (seconds); off the event loop.
            path = await asyncio.to_thread(self.store.resolve, name)
            if name in self.load_states:
                self.load_states[name].state = "loading"
            need = max(entry.size, 1)
            async with self._budget_lock:
                await self._make_room(name, need)
                self._reserved += need
            started = time.perf_counter()
            log.info("model.load.start", model=name, path=str(path), estimate_bytes=need)
            try:
                engine = await asyncio.to_thread(self._factory, name, path)
                if inspect.isawaitable(engine):
                    engine = await engine
            except ImpetusError:
                raise
            except Exception as exc:
                log.error("model.load.failed", model=name, exc_info=exc)
                raise ModelLoadError(
                    f"Loading model {name!r} failed ({type(exc).__name__}); see the server log."
                ) from exc
            finally:
                self._reserved -= need
            memory = _engine_memory(engine) or need
            if hasattr(engine, "arrivals"):  # an engine that collects bursts (MLXEngine)
                engine.arrivals = self.arrivals
            now = self._clock()
            self._resident[name] = _Resident(engine, memory, now, now)
            if name in self.load_states:  # a later load of a model first loaded at start-up
                self.load_states[name].state = "loaded"
            log.info(
                "model.load.done",
                model=name,
                memory_bytes=memory,
                seconds=round(time.perf_counter() - started, 2),
            )
            self._emit("model.loaded", model=name, memory_bytes=memory)
            settle_heap()
            return engine

    def load_in_background(self, name: str) -> asyncio.Task[Any]:
        """Start loading `name` without waiting (serve's start-up); progress in `load_states`."""
        state = self.load_states[name] = LoadState(name)

        async def run() -> None:
            try:
                await self.load(name)
                state.state = "loaded"
            except Exception as exc:
                state.state, state.error = "failed", str(exc)
                log.error("model.preload.failed", model=name, error=str(exc))

        task = asyncio.create_task(run(), name=f"load:{name}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def unload(self, name: str) -> bool:
        """Unload `name`; False when it was not resident. Requests in flight end with 503."""
        self.entry(name)  # 404 for a name that is not in the registry
        async with self._locks.setdefault(name, asyncio.Lock()):
            res = self._resident.pop(name, None)
            if res is None:
                return False
            await res.engine.close()
            memory = res.memory_bytes
            del res
            thaw_heap()  # the model's reference cycles collectable again
            log.info("model.unloaded", model=name, memory_bytes=memory)
            self._emit("model.unloaded", model=name, memory_bytes=memory)
            return True

    async def reap_idle(self) -> list[str]:
        """Unload models idle for longer than the TTL (never the default model)."""
        if self.idle_ttl_s <= 0:
            return []
        now = self._clock()
        idle = [
            n
            for n, r in self._resident.items()
            if n != self.default_model and r.active == 0 and now - r.last_used > self.idle_ttl_s
        ]
        for name in idle:
            log.info("model.idle_unload", model=name, idle_ttl_s=self.idle_ttl_s)
            await self.unload(name)
        return idle

    def start(self) -> None:
        """Start the idle reaper (call from the app's lifespan, inside the event loop)."""
        if self.idle_ttl_s > 0 and self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="model-reaper")

    async def close(self) -> None:
        """Stop the reaper and background loads, and close every engine."""
        tasks = [t for t in (self._reaper, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reaper = None
        for name in list(self._resident):
            res = self._resident.pop(name)
            try:
                await res.engine.close()
            except Exception as exc:
                log.warning("model.close_failed", model=name, error=str(exc))

    # -- reporting ---------------------------------------------------------------------------------

    def stats(self) -> list[EngineStats]:
        return [r.engine.stats() for r in self._resident.values()]

    def status(self) -> list[dict[str, Any]]:
        """Per resident model: memory, requests in flight, idle seconds and engine stats."""
        now = self._clock()
        out = []
        for name, r in self._resident.items():
            stats = r.engine.stats()
            out.append(
                {
                    "model": name,
                    "default": name == self.default_model,
                    "memory_bytes": stats.memory_bytes or r.memory_bytes,
                    "active_requests": r.active,
                    "idle_s": round(now - r.last_used, 1),
                    "engine": stats.__dict__,
                }
            )
        return out

    # -- internals ---------------------------------------------------------------------------------

    def _check_llm(self, entry: ModelEntry) -> None:
        if entry.kind != "llm":
            raise ModelKindError(
                f"Model {entry.name!r} is an {entry.kind} model; use it with /v1/embeddings, "
                "or name an LLM (GET /v1/models lists them)."
            )

    async def _make_room(self, name: str, need: int) -> None:
        budget = self.memory_budget_bytes
        if need > budget:
            raise InsufficientMemoryError(
                f"Model {name!r} needs about {need >> 20} MiB, more than the whole memory budget "
                f"({budget >> 20} MiB); raise serve.memory_budget_bytes."
            )
        # Measured once: an evicted engine's memory is taken to be freed at once (the allocator
        # may return it to the OS later, or never), so each eviction subtracts its figure.
        in_use = self.memory_in_use()
        while in_use + need > budget:
            idle = [
                (r.last_used, n)
                for n, r in self._resident.items()
                if r.active == 0 and n != self.default_model
            ]
            if not idle:
                busy = ", ".join(self._resident) or "models being loaded"
                raise InsufficientMemoryError(
                    f"Model {name!r} needs about {need >> 20} MiB but {in_use >> 20} of "
                    f"{budget >> 20} MiB are in use ({self._held_by(busy)}). Unload one "
                    "(POST /api/models/unload) or raise serve.memory_budget_bytes."
                )
            _, victim = min(idle)
            log.info("model.evict", model=victim, for_model=name)
            res = self._resident.pop(victim)
            await res.engine.close()
            self._emit("model.evicted", model=victim, for_model=name, memory_bytes=res.memory_bytes)
            in_use -= res.memory_bytes

    def _held_by(self, busy: str) -> str:
        if self._process_memory is None:
            return f"held by {busy}"
        footprint = self._process_memory().footprint_bytes
        return (
            f"the larger of this process's footprint, {footprint >> 20} MiB, and what the "
            f"engines of {busy} report, {self.engines_bytes() >> 20} MiB"
        )

    async def _reap_forever(self) -> None:
        interval = max(1.0, min(self.idle_ttl_s / 4, 30.0))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.reap_idle()
            except Exception as exc:  # keep reaping; one failed close must not stop it
                log.warning("model.reap_failed", error=str(exc))


def _engine_memory(engine: Engine) -> int:
    try:
        return int(engine.stats().memory_bytes)
    except Exception:
        return 0


def mlx_engine_factory(settings: Settings) -> EngineFactory:
    """The production factory: `MLXEngine.load(path, name, ...)` (serving/engine/mlx_engine.py), or
    the same in a process of its own (`EngineProcess`, serving/engine/process.py) as
    `serve.engine_process` says; imported lazily so that the app starts without importing MLX."""
    s = settings.serve

    def factory(name: str, path: Path) -> Engine:
        kwargs: dict[str, Any] = {
            "queue_limit": s.queue_limit,
            "max_batch_size": s.max_batch_size,
            "prefix_cache_bytes": s.prefix_cache_bytes,
            "kv_cache_bytes": s.kv_cache_bytes,
            "retry_after": s.retry_after_s,
            "prefix_cache_dir": settings.data_dir / "prefix-cache",
            "prefix_cache_disk_bytes": s.prefix_cache_disk_bytes,
            "prefix_cache_preload_bytes": s.prefix_cache_preload_bytes,
            "speculative": s.speculative,
            "coalesce_streams": s.coalesce_streams,
            "coalesce_tokens": s.coalesce_tokens,
            "coalesce_hold_ms": s.coalesce_hold_ms,
        }
        if separate_engine_process(s.engine_process):
            from serving.engine.process import EngineProcess

            return EngineProcess.start(path, name, **kwargs)
        from serving.engine.mlx_engine import MLXEngine

        return MLXEngine.load(path, name, **kwargs)

    return factory


def separate_engine_process(setting: str) -> bool:
    """Whether `serve.engine_process` puts the engine in a process of its own: "auto" does where
    MLX's default device is a GPU (CUDA or Metal)."""
    if setting != "auto":
        return setting == "on"
    from pipelines.hardware import detect

    return (detect().mlx_device or "").startswith("Device(gpu")
