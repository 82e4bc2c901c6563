"""The MLX engine in a process of its own, behind the same `Engine` protocol.

Why (docs/decisions/engine-process.md): in one process the HTTP side (routing, JSON, SSE framing
for every stream) and the engine thread that feeds the accelerator share one interpreter lock.
On a GPU host with a slow CPU, at 64 streams, the event loop's 1.5 ms of Python per decode step
was 1.5 ms the engine's step waited for the lock. Here the engine (`MLXEngine`) runs in a child
process, and this process keeps only what HTTP needs.

Seams, one sentence each:
- The parent (`EngineProcess`) starts `python -m serving.engine.process` and sends it requests and
  calls over one socket pair: a call from the thread that makes it, what must not block (a
  finalizer's release) through a writer thread; a reader thread receives.
- `generate` registers its stream, then asks the child to validate, tokenize and admit the
  request (`MLXEngine.prepare` and `enqueue`, in a worker thread there): the errors a request
  raises before its first delta are raised by `generate`, as in-process, pickled (a domain error
  keeps its fields; any other becomes an EngineError without its traceback).
- In the child, a sequence's deltas go to `_Wire` in place of an event loop: what the engine
  thread delivers after a step is one message on the pipe (plain deltas as tuples), and the
  reader thread here wakes each event loop once for all of its streams.
- A stream's end (done, client gone, cancelled) sends `release`, which frees its slot in the
  child (and drops the sequence if it still runs); a stream dropped without closing sends it
  from its finalizer.
- `Arrivals` (requests the server is still reading) is copied to the child at each change (a
  message), where the engine reads it when a burst wakes it.
- If the child dies, every open stream and call ends with EngineClosedError (503), and the engine
  is `gone` (the model manager loads the model again on the next request); if the parent dies, the pipe
  closes and the child closes its engine and exits. The child ignores Ctrl-C: its parent's
  shutdown closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from pipelines.errors import ImpetusError
from serving.engine.base import (
    Arrivals,
    Delta,
    EngineCapabilities,
    EngineClosedError,
    EngineError,
    EngineStats,
    GenerationRequest,
)
from serving.engine.mlx_engine import MLXEngine, coalesce  # MLX: imported off the event loop

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 120.0  # a call the child does not answer in this long fails (tokenizing is < 1 s)
STATS_TIMEOUT_S = 0.5  # stats() answers from its last reply past this
CLOSE_TIMEOUT_S = 30.0  # then the child is killed
HOOK_ENV = "IMPETUS_ENGINE_PROCESS_HOOK"  # see child_main


# -- what crosses the pipe ------------------------------------------------------------------------


def pack_error(exc: BaseException) -> BaseException:
    """An exception fit to cross the pipe: a domain error as it is (pickling keeps its fields:
    param, retry_after), anything else as an EngineError that names only its type."""
    if isinstance(exc, ImpetusError):
        exc.__cause__ = exc.__context__ = None
        exc.__traceback__ = None
        return exc
    return EngineError(f"The engine process failed ({type(exc).__name__}); see the server log.")


def pack_delta(item: Delta | BaseException) -> Any:
    """A delta as little as pickling needs: (text, token ids, completion tokens) for the plain
    ones that make up nearly all of a stream; the Delta itself for the last one or one with
    log-probabilities; an error packed."""
    if isinstance(item, BaseException):
        return pack_error(item)
    if item.finish_reason is None and item.logprobs is None:
        return (item.text, item.token_ids, item.completion_tokens)
    return item


def unpack_delta(payload: Any) -> Delta | BaseException:
    if isinstance(payload, tuple):
        text, token_ids, completion_tokens = payload
        return Delta(text=text, token_ids=token_ids, completion_tokens=completion_tokens)
    return payload


# -- the parent's side ---------------------------------------------------------------------------


class _RemoteStream:
    """One request's deltas, as they come from the child. An async iterator (not a generator):
    closing it before its first item still releases the sequence in the child."""

    def __init__(self, owner: EngineProcess, key: int) -> None:
        self._owner = owner
        self._key = key
        self._lock = threading.Lock()
        self._items = _Waiting()
        self._waiter: asyncio.Future[None] | None = None
        self._finished = False  # the last delta or an error was returned
        self._released = False

    def push(self, item: Delta | BaseException) -> asyncio.Future[None] | None:
        """Queue an item (the reader thread); returns the waiter to wake, if one waits."""
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        return waiter

    def __aiter__(self) -> _RemoteStream:
        return self

    async def __anext__(self) -> Delta:
        while True:
            if self._finished:
                self._release()
                raise StopAsyncIteration
            with self._lock:
                if self._items:
                    first = self._items.popleft()
                    merged, failed = (
                        (first, None)
                        if isinstance(first, BaseException)
                        else coalesce(first, self._items)
                    )
                    break
                waiter = self._waiter = asyncio.get_running_loop().create_future()
            await waiter
        if isinstance(merged, BaseException):
            self._finished = True
            self._release()
            raise merged
        if failed is not None:  # what came before the error goes out; the error next time
            with self._lock:
                self._items.appendleft(failed)
        elif merged.finish_reason is not None:
            self._finished = True
            self._release()
        return merged

    async def aclose(self) -> None:
        self._finished = True
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._owner._release(self._key)

    def __del__(self) -> None:
        if not getattr(self, "_released", True):
            self._owner._release(self._key)


class _Waiting(deque[Delta | BaseException]):
    """A stream's deltas not yet taken, as `mlx_engine.coalesce` reads them."""

    def empty(self) -> bool:
        return not self

    def get_nowait(self) -> Delta | BaseException:
        return self.popleft()


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for w in waiters:
        if not w.done():
            w.set_result(None)


class EngineProcess:
    """An `Engine` whose `MLXEngine` runs in a child process. Build it with
    `EngineProcess.start(path, name, **MLXEngine.load's keywords)` (blocking: off the loop)."""

    def __init__(self, name: str, conn: Connection, process: subprocess.Popen[bytes]) -> None:
        self.model_name = name
        self._conn = conn
        self._process = process
        self._arrivals: Arrivals | None = None
        self._arriving: bool | None = None  # what the child was last told (`_count_arrivals`)
        self._keys = itertools.count(1)
        # weakly: a stream dropped without being closed is finalized, which releases it
        self._streams: weakref.WeakValueDictionary[int, _RemoteStream] = (
            weakref.WeakValueDictionary()
        )
        self._calls: dict[int, Future[Any]] = {}
        # Calls are sent by the thread that makes them; what must not block (a release from a
        # finalizer, the arrivals count under its lock, close) goes through the writer thread.
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._send_lock = threading.Lock()
        self._closed = False
        self._closing = False  # close() was called
        self._gone: str | None = None  # why the child is gone, once it is
        self._capabilities = EngineCapabilities()
        self._stats = EngineStats(model=name)
        self._reader = threading.Thread(target=self._read, name=f"engine-{name}-rx", daemon=True)
        self._writer = threading.Thread(target=self._write, name=f"engine-{name}-tx", daemon=True)

    @classmethod
    def start(cls, path: str | Path, name: str, **load_kwargs: Any) -> EngineProcess:
        """Start the child, load the model there and wait for it; EngineError if it fails.

        The child is `python -m serving.engine.process` on one end of a socket pair, not a
        `multiprocessing` spawn, which would import the parent's main module again (a script
        without a `__main__` guard would start a server in the child)."""
        here, there = socket.socketpair()
        root = str(Path(__file__).resolve().parents[2])  # the folder that holds `serving`
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        process = subprocess.Popen(
            [sys.executable, "-m", "serving.engine.process", str(there.fileno())],
            pass_fds=(there.fileno(),),
            env=env,
        )
        there.close()
        conn = Connection(here.detach())
        try:
            conn.send((str(path), name, load_kwargs))
            first = conn.recv()
        except (EOFError, OSError):
            conn.close()
            code = process.wait()
            raise EngineError(
                f"The engine process for model {name!r} exited while loading it (exit code "
                f"{code}); see the server log."
            ) from None
        if first[0] != "ready":
            conn.close()
            process.wait(timeout=CLOSE_TIMEOUT_S)
            raise EngineError(first[1])
        engine = cls(name, conn, process)
        engine._capabilities, engine._stats = first[1], first[2]
        engine._reader.start()
        engine._writer.start()
        return engine

    # -- the Engine protocol ---------------------------------------------------------------------

    @property
    def arrivals(self) -> Arrivals | None:
        return self._arrivals

    @arrivals.setter
    def arrivals(self, arrivals: Arrivals | None) -> None:
        if self._arrivals is not None:
            self._arrivals.unwatch(self._count_arrivals)
        self._arrivals = arrivals
        if arrivals is not None:
            self._arriving = None
            arrivals.watch(self._count_arrivals)

    def _count_arrivals(self, pending: int) -> None:
        """`arrivals` changed (under its lock: a put, nothing more): the child's copy follows
        whether any are on their way, which is all the engine reads (`MLXEngine._burst`). Only
        changes of that cross: a burst of 64 requests counted in and out is two messages, not
        128 wake-ups of the writer thread competing with the event loop for the GIL."""
        arriving = pending > 0
        if arriving != self._arriving:
            self._arriving = arriving
            self._outbox.put(("arrivals", int(arriving)))

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        stream, submitted = self._submit(request)
        try:
            submitted.result(timeout=CALL_TIMEOUT_S)
        except BaseException as exc:
            raise self._not_submitted(stream, exc) from None
        return stream

    async def agenerate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """`generate` awaited on the event loop: nothing here blocks (the request is pickled
        and sent; the child validates, tokenizes and admits it), so a burst of requests reaches
        the engine without a hop through a worker thread each (serving/http/generation.py)."""
        stream, submitted = self._submit(request)
        try:
            await asyncio.wait_for(asyncio.wrap_future(submitted), CALL_TIMEOUT_S)
        except BaseException as exc:
            raise self._not_submitted(stream, exc) from None
        return stream

    def _submit(self, request: GenerationRequest) -> tuple[_RemoteStream, Future[Any]]:
        """A stream for `request`, registered before the child admits it (its first delta may be
        quick), and the submit call's future."""
        self._check_open()
        key = next(self._keys)
        stream = _RemoteStream(self, key)
        self._streams[key] = stream
        try:
            return stream, self._send_call("submit", key, request)
        except BaseException as exc:
            raise self._not_submitted(stream, exc) from None

    def _not_submitted(self, stream: _RemoteStream, exc: BaseException) -> BaseException:
        """What to raise for a submit that did not succeed here, the stream settled first. No
        answer in time, or the caller cancelled: the child may still admit it, so it is released
        (the child drops it once made); the child answered with an error: it holds nothing."""
        if isinstance(exc, (TimeoutError, asyncio.CancelledError)):
            stream._release()
            return self._no_answer("submit") if isinstance(exc, TimeoutError) else exc
        stream._released = True
        self._streams.pop(stream._key, None)
        return exc

    def call(self, method: str, *args: Any) -> Any:
        """Call one of the engine's methods in the child, or one its hook added (a bench's)."""
        return self._call(method, *args)

    def count_tokens(self, request: GenerationRequest) -> int:
        return int(self._call("count_tokens", request))

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        return list(self._call("tokenize", request, add_special_tokens))

    def detokenize(self, token_ids: list[int]) -> str:
        return str(self._call("detokenize", token_ids))

    def capabilities(self) -> EngineCapabilities:
        return self._capabilities

    @property
    def gone(self) -> bool:
        """The child exited without being closed (killed, crashed): the model manager drops
        this engine and loads the model again."""
        return self._gone is not None and not self._closing

    def stats(self) -> EngineStats:
        """The child's counters; its last answer if it does not answer within a moment (busy
        loading a long prompt's tokens) or is gone."""
        if self._gone is None:
            with contextlib.suppress(Exception):
                self._stats = self._call("stats", timeout=STATS_TIMEOUT_S)
        return self._stats

    async def close(self) -> None:
        self._closing = True
        if not self._closed:
            self._closed = True
            self.arrivals = None
            self._outbox.put(("close",))
        await asyncio.to_thread(self._join)

    # -- the pipe --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed or self._gone is not None:
            raise EngineClosedError(f"Model {self.model_name!r} was unloaded; load it again.")

    def _call(self, method: str, *args: Any, timeout: float = CALL_TIMEOUT_S) -> Any:
        try:
            return self._send_call(method, *args).result(timeout=timeout)
        except TimeoutError:
            raise self._no_answer(method, timeout) from None

    def _send_call(self, method: str, *args: Any) -> Future[Any]:
        """Send a call (from this thread: no hop through the writer's); its answer comes to the
        future (the reader thread), which then leaves `_calls`."""
        if self._gone is not None:
            raise EngineClosedError(self._gone)
        key = next(self._keys)
        future: Future[Any] = Future()
        self._calls[key] = future
        future.add_done_callback(lambda _: self._calls.pop(key, None))
        try:
            with self._send_lock:
                self._conn.send(("call", key, method, args))
        except (OSError, ValueError):
            self._calls.pop(key, None)
            raise EngineClosedError(
                self._gone or f"Model {self.model_name!r} was unloaded; load it again."
            ) from None
        return future

    def _no_answer(self, method: str, timeout: float = CALL_TIMEOUT_S) -> EngineError:
        return EngineError(
            f"The engine process of model {self.model_name!r} did not answer {method} in "
            f"{timeout:g} s."
        )

    def _release(self, key: int) -> None:
        """A stream ended on this side, once (any thread, or a finalizer: SimpleQueue.put is
        reentrant)."""
        self._streams.pop(key, None)
        if self._gone is None:
            self._outbox.put(("release", key))

    def _write(self) -> None:
        while True:
            msg = self._outbox.get()
            if msg is None:
                return
            try:
                with self._send_lock:
                    self._conn.send(msg)
            except (OSError, ValueError):  # the child is gone: the reader says so
                return

    def _read(self) -> None:
        try:
            while True:
                try:
                    msg = self._conn.recv()
                except (EOFError, OSError):
                    return
                if msg[0] == "deltas":
                    self._route(msg[1])
                elif msg[0] == "reply":
                    _, key, ok, value = msg
                    future = self._calls.get(key)
                    if future is not None and not future.done():
                        if ok:
                            future.set_result(value)
                        else:
                            future.set_exception(value)
        finally:
            self._ended()

    def _route(self, items: list[tuple[int, Any]]) -> None:
        """One step's deltas from the child: each to its stream, each event loop woken once."""
        wake: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for key, payload in items:
            stream = self._streams.get(key)
            if stream is None:  # released meanwhile
                continue
            waiter = stream.push(unpack_delta(payload))
            if waiter is not None:
                wake.setdefault(waiter.get_loop(), []).append(waiter)
        for loop, waiters in wake.items():
            with contextlib.suppress(RuntimeError):  # that event loop is closed: nobody listens
                loop.call_soon_threadsafe(_wake, waiters)

    def _ended(self) -> None:
        """The pipe closed: the child exited (closed, or died). Ends what is still open."""
        try:
            code: int | None = self._process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        if self._closed:
            self._gone = f"Model {self.model_name!r} was unloaded; load it again."
        else:
            self._gone = (
                f"The engine process of model {self.model_name!r} exited (code {code}); "
                "the next request loads the model again."
            )
            log.error("engine process of %s exited with code %s", self.model_name, code)
        self._closed = True
        self._stats = EngineStats(model=self.model_name)  # nothing of it is resident any more
        for _key, future in list(self._calls.items()):
            if not future.done():
                future.set_exception(EngineClosedError(self._gone))
        for stream in list(self._streams.values()):
            waiter = stream.push(EngineClosedError(self._gone))
            if waiter is not None:
                with contextlib.suppress(RuntimeError):
                    waiter.get_loop().call_soon_threadsafe(_wake, [waiter])
        self._outbox.put(None)
        if self._arrivals is not None:
            self._arrivals.unwatch(self._count_arrivals)

    def _join(self) -> None:
        try:
            self._process.wait(timeout=CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("engine process of %s did not exit; killing it", self.model_name)
            self._process.kill()
            self._process.wait()
        self._reader.join(timeout=CLOSE_TIMEOUT_S)


# -- the child's side ----------------------------------------------------------------------------


class _Wire:
    """Stands in for the event loop of every sequence in the child (`LiveSequence.loop`): the
    engine thread's `_deliver` calls `call_soon_threadsafe(_put_all, [(key, delta), ...])` once a
    step, which becomes one message on the pipe. Each sequence's `queue` is its stream's key."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, msg: Any) -> None:
        with self._lock:
            self._conn.send(msg)

    def call_soon_threadsafe(self, _fn: Any, items: list[tuple[int, Any]]) -> None:
        try:
            self.send(("deltas", [(key, pack_delta(item)) for key, item in items]))
        except (OSError, ValueError) as exc:  # the parent is gone: the engine cancels them
            raise RuntimeError("the engine process's parent is gone") from exc


class _CopiedArrivals(Arrivals):
    """The parent's `Arrivals` count, as its last "arrivals" message said."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def pending(self) -> int:
        return self.count


def child_main(fd: int) -> None:
    """The engine process: load the model, then serve the parent's messages until the pipe
    closes or the parent says close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which closes us
    conn = Connection(fd)
    path, name, load_kwargs = conn.recv()
    logging.basicConfig(level=logging.WARNING, format=f"engine[{name}] %(levelname)s %(message)s")
    # A bench's or a test's "module:function", run before the load (timers around the engine's
    # methods): it returns calls, by name, that the parent may make (`EngineProcess.call`), each
    # called with the engine first.
    extras: dict[str, Any] = {}
    hook = os.environ.get(HOOK_ENV)
    try:
        if hook:
            module, _, function = hook.partition(":")
            extras = getattr(importlib.import_module(module), function)() or {}
        engine = MLXEngine.load(path, name, **load_kwargs)
    except BaseException as exc:
        conn.send(("failed", str(exc) if isinstance(exc, ImpetusError) else repr(exc)))
        return
    arrivals = engine.arrivals = _CopiedArrivals()
    wire = _Wire(conn)
    seqs: dict[int, Any] = {}
    # streams released before their submit was answered (the parent's request was cancelled
    # while this process admitted it: `agenerate`); guarded with `seqs` by the lock
    early: set[int] = set()
    lock = threading.Lock()

    def answer(key: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            if method == "submit":
                stream_key, request = args
                try:
                    seq = engine.enqueue(
                        request.request_id, engine.prepare(request), wire, stream_key
                    )
                except BaseException:
                    with lock:
                        early.discard(stream_key)
                    raise
                with lock:
                    released = stream_key in early
                    early.discard(stream_key)
                    if not released:
                        seqs[stream_key] = seq
                if released:
                    engine.release(seq)
                value: Any = None
            elif method in extras:
                value = extras[method](engine, *args)
            else:
                value = getattr(engine, method)(*args)
            msg: tuple[Any, ...] = ("reply", key, True, value)
        except BaseException as exc:
            if not isinstance(exc, ImpetusError):
                log.exception("engine process: %s failed", method)
            msg = ("reply", key, False, pack_error(exc))
        with contextlib.suppress(OSError, ValueError):
            wire.send(msg)

    wire.send(("ready", engine.capabilities(), engine.stats()))
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-call") as pool:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "release":
                with lock:
                    seq = seqs.pop(msg[1], None)
                    if seq is None:
                        early.add(msg[1])
                if seq is not None:
                    engine.release(seq)
            elif msg[0] == "call":
                pool.submit(answer, *msg[1:])
            elif msg[0] == "arrivals":
                arrivals.count = msg[1]
            elif msg[0] == "close":
                break
    asyncio.run(engine.close())  # what still runs ends with EngineClosedError, on the wire
    conn.close()


if __name__ == "__main__":
    child_main(int(sys.argv[1]))
