"""Where one engine step's time goes, measured from outside the engine.

`python -m flows.bench.gpu.profile --port P` serves Impetus's app as `impetus serve` does (settings
from the environment, the MLX engine, uvicorn with graceful shutdown), after wrapping timers around
the engine's methods; `POST /bench/profile` answers what they saw since the last call and starts
over. Nothing in the engine changes, so the timers cost nothing outside this bench. Per decode
step of the engine thread (`MLXEngine._step`):

- `gen_step`: mlx-lm's `GenerationBatch.next` (build the forward and the sampling graph, start it
  with `async_eval`, wait for the previous step's tokens, per-row stop checks): the forward is in
  here, so this minus the forward alone (runner.py times it) is mlx-lm's own work;
- `per_token`: the engine's `_on_token` for every sequence (detokenize, stop strings, the Delta);
- `deliver`: `_deliver` (one `call_soon_threadsafe` per event loop);
- `step`: all of `_step`, whose rest is BatchGenerator's bookkeeping and the engine's own;
- `loop_lag`: from `_deliver` to the event loop running the callback, and `loop_callback`, the time
  inside it (putting each delta on its request's queue);
- CPU seconds of each thread (/proc): the engine thread's, and the event loop's, which runs
  routing, JSON and SSE framing for every token, competing with the engine thread for the GIL.

With `IMPETUS_BENCH_TRACE=1` it also times every call of the functions in `TRACED` (mlx-lm's
prompt processing and batch moves, MLX's `eval` and `clear_cache`, the prefix cache) and reports,
for each request, what ran from its admission to its first token: where a warm agent turn's time
goes when the forward alone is a fraction of it.

The app runs without its vector store (RAG answers 503, as when another process holds the store),
which the GPU machine's wheels leave out. `timed_generation_steps` is the same `gen_step` timer for the bare loop in runner.py.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flows.bench.results import percentile

HOST = "127.0.0.1"


@contextmanager
def timed_generation_steps() -> Iterator[list[tuple[int, float]]]:
    """(rows, seconds) of every `GenerationBatch.next` of mlx-lm while inside."""
    from mlx_lm.generate import GenerationBatch

    seen: list[tuple[int, float]] = []
    original = GenerationBatch.next

    def next_(self: Any) -> Any:
        rows, t = len(self.uids), time.perf_counter()
        out = original(self)
        seen.append((rows, time.perf_counter() - t))
        return out

    GenerationBatch.next = next_  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        GenerationBatch.next = original  # type: ignore[method-assign]


def full_batch(seen: list[tuple[int, float]]) -> list[float]:
    """The durations of the steps that ran the most rows (the batch at its level, not its ramp)."""
    top = max((rows for rows, _ in seen), default=0)
    return [dt for rows, dt in seen if rows == top]


# (module, class or None, function): timed when IMPETUS_BENCH_TRACE=1
TRACED: tuple[tuple[str, str | None, str], ...] = (
    ("mlx.core", None, "eval"),
    ("mlx.core", None, "async_eval"),
    ("mlx.core", None, "clear_cache"),
    ("mlx_lm.generate", "BatchGenerator", "_next"),
    ("mlx_lm.generate", "BatchGenerator", "insert"),
    ("mlx_lm.generate", "BatchGenerator", "_make_batch"),
    ("mlx_lm.generate", "PromptProcessingBatch", "__init__"),
    ("mlx_lm.generate", "PromptProcessingBatch", "prompt"),
    ("mlx_lm.generate", "PromptProcessingBatch", "extend"),
    ("mlx_lm.generate", "PromptProcessingBatch", "split"),
    ("mlx_lm.generate", "PromptProcessingBatch", "generate"),
    ("mlx_lm.generate", "GenerationBatch", "__init__"),
    ("mlx_lm.generate", "GenerationBatch", "extend"),
    ("mlx_lm.generate", "GenerationBatch", "next"),
    ("mlx_lm.generate", None, "_merge_caches"),
    ("mlx_lm.models.cache", "BatchKVCache", "merge"),
    ("mlx_lm.models.cache", "BatchKVCache", "extend"),
    ("mlx_lm.models.cache", "BatchKVCache", "filter"),
    ("serving.engine.prefix_store", "PrefixStore", "fetch"),
    ("serving.engine.prefix_store", "PrefixStore", "insert"),
    ("serving.engine.prefix_store", "DiskTier", "_write"),
    ("serving.engine.mlx_engine", "MLXEngine", "_keep_prefixes"),
    ("serving.engine.mlx_engine", "MLXEngine", "_serve_once"),
    ("serving.engine.mlx_engine", "MLXEngine", "_burst"),
    ("serving.engine.mlx_engine", "MLXEngine", "_prefill_solo"),
    ("serving.engine.mlx_engine", "MLXEngine", "_spec_step"),
    ("serving.engine.mlx_engine", "MLXEngine", "_deliver"),
    ("serving.engine.speculative", None, "verify"),
    ("serving.engine.speculative", None, "processed_logits"),
    ("serving.engine.lean_batch", None, "release_cache"),
    # before the engine: templating, tokenizing, the checkpoint's render, the grammar
    ("serving.engine.mlx_engine", "MLXEngine", "generate"),
    ("serving.engine.mlx_engine", "MLXEngine", "_encode"),
    ("serving.engine.mlx_engine", "MLXEngine", "_checkpoints"),
    ("serving.engine.mlx_engine", "MLXEngine", "_matcher"),
    ("serving.services.tools", None, "plan"),
)


class CallTrace:
    """Every call of the `TRACED` functions: (name, thread, start ns, duration ns, depth)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int, int]] = []
        self._depth = threading.local()

    def install(self) -> None:
        import importlib

        for module_name, cls_name, fn_name in TRACED:
            module = importlib.import_module(module_name)
            owner = getattr(module, cls_name) if cls_name else module
            short = "mx" if module_name == "mlx.core" else module_name.rsplit(".", 1)[-1]
            name = f"{cls_name or short}.{fn_name}"
            setattr(owner, fn_name, self._wrap(name, getattr(owner, fn_name)))
        self._trace_gc()

    def _trace_gc(self) -> None:
        """Python's garbage collections, as calls of `gc.collect<generation>`."""
        import gc

        started: dict[int, int] = {}

        def on_gc(phase: str, info: dict[str, int]) -> None:
            thread = threading.get_ident()
            if phase == "start":
                started[thread] = time.time_ns()
            elif thread in started:
                t = started.pop(thread)
                name = f"gc.collect{info.get('generation', '?')}"
                current = threading.current_thread().name
                self.events.append((name, current, t, time.time_ns() - t, 0))

        gc.callbacks.append(on_gc)

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        events, local = self.events, self._depth

        def traced(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(local, "d", 0)
            local.d = depth + 1
            t = time.time_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                local.d = depth
                thread = threading.current_thread().name
                events.append((name, thread, t, time.time_ns() - t, depth))

        return traced

    def window(self, start_ns: int, end_ns: int, before_ms: float = 0.0) -> dict[str, Any]:
        """What ran between two instants (and `before_ms` before the first): ms and calls by
        name and thread, and the calls (start relative to `start_ns`)."""
        first = start_ns - int(before_ms * 1e6)
        inside = [e for e in self.events if first <= e[2] < end_ns]
        total: dict[str, list[float]] = {}
        for name, thread, _, dur, _ in inside:
            row = total.setdefault(f"{thread}:{name}", [0, 0.0])
            row[0] += 1
            row[1] = round(row[1] + dur / 1e6, 3)
        calls = [
            [name, thread, round((t - start_ns) / 1e6, 3), round(dur / 1e6, 3), depth]
            for name, thread, t, dur, depth in inside[:300]
        ]
        return {"window_ms": round((end_ns - start_ns) / 1e6, 3), "total": total, "calls": calls}


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of each live thread of this process, by thread name."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        name = names.get(int(task.name), "other")
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class EngineProfile:
    """Timers wrapped around `serving.engine.mlx_engine` (see the module's docstring)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []  # one per engine step
        self.lag: list[float] = []
        self.callback: list[float] = []
        # per request: admitting it (prefix-cache fetch, joining the batch), and its stages
        # from the last delta's SequenceTimings (queued → admitted → first token)
        self.admit: list[float] = []
        self.stages: list[tuple[float, float]] = []
        # (queued, admitted, first token) ns of each request, with the trace
        self.windows: list[tuple[int, int, int]] = []
        self.trace = CallTrace() if os.environ.get("IMPETUS_BENCH_TRACE") == "1" else None
        # instants (time.perf_counter, CLOCK_MONOTONIC: the client's clock too) of the round:
        # engine.generate calls, each step's start and end, each delivery
        self.generated: list[float] = []
        self.spans: list[tuple[float, float]] = []
        self.fills: list[float] = []  # each `_fill`'s duration (admission, solo prefill)
        self.delivered: list[float] = []
        self.arrived: list[float] = []  # HTTP requests reaching the app (`arrivals`)
        self.connected: list[float] = []  # connections opened (`arrivals`)
        # Python's garbage collections since the reset: generation -> [count, total s, max s]
        self.gc: dict[int, list[float]] = {}
        self._scheduled: deque[float] = deque()
        self._current: dict[str, float] | None = None
        self._cpu0: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def install(self) -> None:
        from mlx_lm.generate import GenerationBatch

        from serving.engine import mlx_engine

        engine = mlx_engine.MLXEngine
        step, on_token, deliver = engine._step, engine._on_token, engine._deliver
        fill = engine._fill
        admit, prepare = engine._admit, engine.prepare

        def prepare_(this: Any, request: Any) -> Any:
            self.generated.append(time.perf_counter())
            return prepare(this, request)

        def fill_(this: Any) -> None:
            t = time.perf_counter()
            fill(this)
            if this._waiting or this._live:  # not an idle engine's empty fill
                self.fills.append(time.perf_counter() - t)

        def admit_(this: Any, seq: Any) -> None:
            t = time.perf_counter()
            admit(this, seq)
            self.admit.append(time.perf_counter() - t)

        gen_next, put_all = GenerationBatch.next, mlx_engine._put_all

        def step_(this: Any) -> None:
            self._current = cur = {"rows": float(len(this._live))}
            t = time.perf_counter()
            step(this)
            end = time.perf_counter()
            cur["step"] = end - t
            self.spans.append((t, end))
            self.steps.append(cur)
            self._current = None

        def add(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def timed(*args: Any) -> Any:
                t = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    if self._current is not None:
                        dt = time.perf_counter() - t
                        self._current[key] = self._current.get(key, 0.0) + dt

            return timed

        def deliver_(this: Any, out: dict[Any, list[Any]]) -> None:
            now = time.perf_counter()
            self.delivered.append(now)
            self._scheduled.extend(now for _ in out)
            for items in out.values():  # the last deltas' stages (here: in the engine's process)
                for _, item in items:
                    timings = getattr(item, "timings", None)
                    if timings is not None:
                        queued = (timings.admitted_ns - timings.queued_ns) / 1e6
                        self.stages.append(
                            (queued, (timings.first_token_ns - timings.admitted_ns) / 1e6)
                        )
                        self.windows.append(
                            (timings.queued_ns, timings.admitted_ns, timings.first_token_ns)
                        )
            add("deliver", deliver)(this, out)

        def put_all_(items: list[Any]) -> None:
            t = time.perf_counter()
            if self._scheduled:
                self.lag.append(t - self._scheduled.popleft())
            put_all(items)
            self.callback.append(time.perf_counter() - t)

        engine._step = step_  # type: ignore[method-assign,assignment]
        engine._on_token = add("per_token", on_token)  # type: ignore[method-assign]
        engine._deliver = deliver_  # type: ignore[method-assign,assignment]
        engine._admit = admit_  # type: ignore[method-assign,assignment]
        engine._fill = fill_  # type: ignore[method-assign,assignment]
        engine.prepare = prepare_  # type: ignore[method-assign,assignment]
        GenerationBatch.next = add("gen_step", gen_next)  # type: ignore[method-assign]
        mlx_engine._put_all = put_all_
        if self.trace is not None:
            self.trace.install()
        self._count_gc()
        self.reset()

    def _count_gc(self) -> None:
        """Time every garbage collection (a collection stops every thread that wants the GIL,
        the engine's too)."""
        import gc

        started: list[float] = []

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started.append(time.perf_counter())
            elif started:
                dt = time.perf_counter() - started.pop()
                entry = self.gc.setdefault(int(info.get("generation", -1)), [0, 0.0, 0.0])
                entry[0] += 1
                entry[1] += dt
                entry[2] = max(entry[2], dt)

        gc.callbacks.append(on_gc)

    def reset(self) -> None:
        self.steps.clear()
        self.lag.clear()
        self.callback.clear()
        self.admit.clear()
        self.stages.clear()
        self.windows.clear()
        self.generated.clear()
        self.spans.clear()
        self.fills.clear()
        self.gc.clear()
        self.delivered.clear()
        if self.trace is not None:
            self.trace.events.clear()
        self._cpu0 = thread_cpu_s()
        self._t0 = time.perf_counter()

    def report(self) -> dict[str, Any]:
        """Medians (ms) over the steps that ran the most rows, thread CPU since the last reset."""
        steps = list(self.steps)
        top = max((s["rows"] for s in steps), default=0.0)
        full = [s for s in steps if s["rows"] == top]
        out: dict[str, Any] = {"steps": len(steps), "full_steps": len(full), "rows": top}
        for key in ("step", "gen_step", "per_token", "deliver"):
            out[f"{key}_ms"] = percentile([s.get(key, 0.0) * 1000 for s in full], 50)
        out["loop_lag_ms"] = percentile([x * 1000 for x in self.lag], 50)
        out["loop_lag_p95_ms"] = percentile([x * 1000 for x in self.lag], 95)
        out["loop_callback_ms"] = percentile([x * 1000 for x in self.callback], 50)
        # the first steps (prefill among them): rows and ms each
        out["first_steps"] = [[int(s["rows"]), round(s["step"] * 1000, 2)] for s in steps[:6]]
        out["admit_ms"] = [round(x * 1000, 2) for x in self.admit]  # every request's, in order
        out["queued_to_admitted_ms"] = [round(q, 2) for q, _ in self.stages]
        out["admitted_to_first_token_ms"] = [round(f, 2) for _, f in self.stages]
        if self.trace is not None:  # each request's queueing (and 50 ms before) to its first token
            out["first_token_trace"] = [
                self.trace.window(q, f, before_ms=50.0) for q, _, f in self.windows
            ]
        out["timeline"] = self.timeline()
        out["gc"] = {  # generation: collections, total ms, longest ms
            str(gen): [int(n), round(total * 1000, 2), round(top * 1000, 2)]
            for gen, (n, total, top) in sorted(self.gc.items())
        }
        cpu = thread_cpu_s()
        out["wall_s"] = time.perf_counter() - self._t0
        out["thread_cpu_s"] = {k: v - self._cpu0.get(k, 0.0) for k, v in cpu.items()}
        return out

    def timeline(self) -> dict[str, float] | None:
        """The round's instants (perf_counter seconds; the client subtracts its own start): the
        first and last request to reach the engine, the first step's start, the last step's
        end, the last delivery; the steps' own time against their span, and of the rest the
        time spent admitting (`_fill`: the prefix cache's fetch, joining the batch, a solo
        prefill); what is left is the loop's own work and waiting for the inbox."""
        if not self.generated or not self.spans:
            return None
        busy = sum(end - start for start, end in self.spans)
        return {
            "first_generate": self.generated[0],
            "last_generate": self.generated[-1],
            "first_step": self.spans[0][0],
            "last_step_end": self.spans[-1][1],
            "last_deliver": max(self.delivered, default=self.spans[-1][1]),
            "steps_busy_s": busy,
            "steps_span_s": self.spans[-1][1] - self.spans[0][0],
            "fill_busy_s": sum(self.fills),
        }

    def arrivals(self, app: Any) -> Any:
        """`app` behind a timer of when each request to /v1/ reaches it, before its middleware
        (the timeline's `first_request` and `last_request`); uvicorn's connections timed as
        they open (`first_connect`, `last_connect`: the client's side before that)."""
        arrived, connected = self.arrived, self.connected
        for module in ("httptools_impl", "h11_impl"):  # whichever uvicorn uses here
            try:
                impl = importlib.import_module(f"uvicorn.protocols.http.{module}")
            except ImportError:  # httptools is not installed (the GPU machine)
                continue
            protocol = impl.HttpToolsProtocol if module == "httptools_impl" else impl.H11Protocol
            made = protocol.connection_made

            def connection_made(this: Any, transport: Any, made: Any = made) -> None:
                connected.append(time.perf_counter())
                made(this, transport)

            protocol.connection_made = connection_made

        async def timed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].startswith("/v1/"):
                arrived.append(time.perf_counter())
            await app(scope, receive, send)

        return timed

    async def endpoint(self) -> dict[str, Any]:
        """POST /bench/profile: the report, then a fresh start. With the engine in a process of
        its own (serving/engine/process.py), the engine's figures are that process's
        (`in_engine_process`) and the threads' CPU seconds both processes'."""
        arrived, connected = list(self.arrived), list(self.connected)
        self.arrived.clear()
        self.connected.clear()
        out = self.report()
        self.reset()
        engine = await self.engine() if self.engine is not None else None
        if engine is not None:
            theirs = await asyncio.to_thread(engine.call, "bench_profile")
            cpu = dict(out["thread_cpu_s"])
            for name, seconds in theirs["thread_cpu_s"].items():
                cpu["engine-process" if name == "MainThread" else name] = seconds
            out = {**theirs, "thread_cpu_s": cpu}
        if out.get("timeline") and arrived:
            out["timeline"].update(first_request=arrived[0], last_request=arrived[-1])
        connected = [t for t in connected if arrived and t <= arrived[-1]]  # not this call's
        if out.get("timeline") and connected:
            out["timeline"].update(first_connect=connected[0], last_connect=connected[-1])
        return out

    # Set by `main`: the model's engine when it runs in a process of its own, else None.
    engine: Callable[[], Awaitable[Any]] | None = None


def in_engine_process() -> dict[str, Callable[..., Any]]:
    """`IMPETUS_ENGINE_PROCESS_HOOK`'s target (process.py): the timers in the engine's process,
    and the call that reports them."""
    experiments()  # they apply to the engine, wherever it runs
    profile = EngineProfile()
    profile.install()

    def report(_engine: Any) -> dict[str, Any]:
        out = profile.report()
        profile.reset()
        return out

    return {"bench_profile": report}


def with_engine_config(overrides: dict[str, Any]) -> None:
    """Make `MLXEngine.load` start from `MLXEngineConfig(**overrides)`."""
    from dataclasses import replace

    from serving.engine.mlx_engine import MLXEngine, MLXEngineConfig

    load = MLXEngine.load.__func__  # type: ignore[attr-defined]

    def load_with(cls: type[MLXEngine], *args: Any, **kwargs: Any) -> MLXEngine:
        kwargs["config"] = replace(kwargs.get("config") or MLXEngineConfig(), **overrides)
        return load(cls, *args, **kwargs)

    MLXEngine.load = classmethod(load_with)  # type: ignore[method-assign,assignment]


def experiments() -> None:
    """The runner's experiment sides, from the environment, in this process (the server's, and
    the engine's where it has its own: `in_engine_process`)."""
    # runner.py's impetus_si side: how long a thread that wants the GIL waits for the one holding
    # it (CPython's default is 5 ms), the event loop and the engine sharing it.
    switch_ms = os.environ.get("IMPETUS_BENCH_SWITCH_INTERVAL_MS")
    if switch_ms:
        import sys

        sys.setswitchinterval(float(switch_ms) / 1000)
    # runner.py's impetus_pf* sides: MLXEngineConfig fields over their defaults, as JSON, e.g.
    # {"prefill_batch_size": 64}.
    engine_config = os.environ.get("IMPETUS_BENCH_ENGINE_CONFIG")
    if engine_config:
        with_engine_config(json.loads(engine_config))


def main() -> None:
    """Impetus's app on 127.0.0.1:--port, as `impetus serve` runs it, with the profile's route."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    experiments()
    profile = EngineProfile()
    profile.install()
    # the same timers in the engine's process, where it has one
    os.environ["IMPETUS_ENGINE_PROCESS_HOOK"] = "flows.bench.gpu.profile:in_engine_process"

    import uvicorn

    from pipelines.settings import get_settings
    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app
    from serving.http.graceful import GracefulServer
    from serving.services.rag import RagService

    # The embedded vector store (Qdrant Edge, a native wheel) stays closed: the app starts as it
    # does when another process holds the store; chat and completions do not touch it.
    RagService.open = lambda self: False  # type: ignore[method-assign]
    s = get_settings()
    s = s.model_copy(update={"serve": s.serve.model_copy(update={"host": HOST, "port": port})})
    manager = ModelManager.from_settings(s, mlx_engine_factory(s))
    app = create_app(s, manager=manager, preload_default=True)

    async def engine_process() -> Any:
        from serving.engine.process import EngineProcess

        async with manager.use(s.models.llm) as engine:
            return engine if isinstance(engine, EngineProcess) else None

    profile.engine = engine_process
    app.add_api_route("/bench/profile", profile.endpoint, methods=["POST"])
    config = uvicorn.Config(
        profile.arrivals(app), host=HOST, port=port, log_config=None, timeout_graceful_shutdown=5
    )
    GracefulServer(config, shutdown=app.state.shutdown).run()


if __name__ == "__main__":
    main()
