"""The dashboard's live data of one app: recent requests, a metrics snapshot a second, and events.

    feed = LiveFeed(manager, runs=lambda: [...index run rows...])
    guard.observers.append(feed.on_request)        # each finished request (serving/http/auth.py)
    manager.add_listener(feed.on_model)            # model.loaded | unloaded | evicted
    metrics.sequence_observers.append(feed.on_sequence)   # TTFT and inter-token time

One producer task per app (`start` in the lifespan) builds the snapshot once per interval,
serializes it once and puts the same string in every subscriber's queue; events are fanned out
the same way as they happen. A subscriber's queue is bounded: when it is full the subscriber is
dropped (its WebSocket closed by serving/http/routes/events.py), never buffered without bound, so
memory stays bounded whatever a client does. Index runs are polled (the runner's `runs()`), not
pushed: the runner stays as it is. Everything here runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from serving.engine.manager import ModelManager

log = structlog.get_logger(__name__)

RunsSource = Callable[[], list[dict[str, Any]]]
ACTIVE_RUN = ("pending", "running")


class Subscriber:
    """One client's bounded queue of serialized messages."""

    def __init__(self, size: int, role: str | None) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=size)
        self.role = role
        self.dropped = asyncio.Event()  # set when the queue overflowed: close the socket

    def offer(self, text: str) -> bool:
        """Queue `text`; False (and `dropped` set) when the client has not kept up."""
        if self.dropped.is_set():
            return False
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped.set()
            return False
        return True


def _percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p95 in milliseconds (nearest rank); None without samples."""
    if not values:
        return {"p50": None, "p95": None}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": rank(0.50), "p95": rank(0.95)}


class LiveFeed:
    """Request ring buffer, per-model latency samples, and the snapshot/event fan-out."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        runs: RunsSource | None = None,
        interval_s: float = 1.0,
        queue_size: int = 64,
        window_s: float = 60.0,
        ring_size: int = 1000,
    ) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self.queue_size = queue_size
        self.window_s = window_s
        self.requests: deque[dict[str, Any]] = deque(maxlen=ring_size)
        self.dropped_total = 0
        self.seq = 0
        self._runs = runs
        self._subs: set[Subscriber] = set()
        self._samples: dict[str, deque[tuple[float, float, float | None]]] = {}
        self._totals: dict[str, tuple[float, int]] = {}  # model -> (time, generated tokens)
        self._runs_seen: dict[str, tuple[str, str]] = {}
        self._runs_primed = False
        self._task: asyncio.Task[None] | None = None
        self._process: Any = None
        self.closing = False  # the app is shutting down: subscribers are let go, not "too slow"

    # -- inputs (called on the event loop) -----------------------------------------------------

    def on_request(self, row: dict[str, Any]) -> None:
        """A finished request (AccessMiddleware's row): into the ring, and as an event."""
        self.requests.append(row)
        self.publish("request.finished", row)

    def on_model(self, event: str, data: dict[str, Any]) -> None:
        self.publish(event, data)

    def on_sequence(self, model: str, ttft_s: float, itl_s: float | None) -> None:
        samples = self._samples.setdefault(model, deque(maxlen=10_000))
        samples.append((time.monotonic(), ttft_s, itl_s))

    # -- subscribers ----------------------------------------------------------------------------

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def subscribe(self, role: str | None) -> Subscriber:
        sub = Subscriber(self.queue_size, role)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    def _fan_out(self, text: str) -> None:
        for sub in list(self._subs):
            if not sub.offer(text):
                self._subs.discard(sub)
                self.dropped_total += 1
                log.info("live.client_dropped", queued=sub.queue.qsize(), limit=self.queue_size)

    def publish(self, event: str, data: dict[str, Any]) -> None:
        """Send an event to every subscriber (serialized once)."""
        if not self._subs:
            return
        message = {"type": "event", "event": event, "ts": time.time(), "data": data}
        self._fan_out(json.dumps(message, default=str))

    # -- the producer ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="live-feed")

    async def close(self) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sub in list(self._subs):
            sub.dropped.set()
        self._subs.clear()

    async def _run(self) -> None:
        started = time.monotonic()
        ticks = 0
        while True:
            # Ticks on a fixed grid, so that a slow tick does not shift the following ones; ticks
            # missed while the loop was busy are skipped, not sent in a burst.
            ticks = max(ticks + 1, int((time.monotonic() - started) / self.interval_s) + 1)
            await asyncio.sleep(max(0.0, started + ticks * self.interval_s - time.monotonic()))
            try:
                self.tick()
            except Exception as exc:  # one failed snapshot must not stop the stream
                log.warning("live.tick_failed", error=str(exc))

    def tick(self) -> None:
        """Poll index runs, then build, serialize and fan out one snapshot (when anyone listens)."""
        self._poll_runs()
        models = self._models()
        if not self._subs:
            return
        self.seq += 1
        snapshot = {
            "type": "snapshot",
            "seq": self.seq,
            "ts": time.time(),
            "process": self._process_stats(),
            "models": models,
            "gpu": None,
        }
        self._fan_out(json.dumps(snapshot))

    def _models(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        horizon = now - self.window_s
        out = []
        for s in self.manager.stats():
            prev = self._totals.get(s.model)
            total = s.generation_tokens_total
            tps = 0.0
            if prev is not None and now > prev[0] and total >= prev[1]:
                tps = (total - prev[1]) / (now - prev[0])
            self._totals[s.model] = (now, total)
            samples = self._samples.get(s.model, deque())
            while samples and samples[0][0] < horizon:
                samples.popleft()
            out.append(
                {
                    "model": s.model,
                    "running": s.batch_size,
                    "waiting": s.queue_depth,
                    "tokens_per_second": round(tps, 2),
                    "ttft_ms": _percentiles([t for _, t, _ in samples]),
                    "itl_ms": _percentiles([i for _, _, i in samples if i is not None]),
                    "prefix_cache_hits": s.prefix_cache_hits,
                    "prefix_cache_misses": s.prefix_cache_misses,
                    "memory_bytes": s.memory_bytes,
                }
            )
        return out

    def _process_stats(self) -> dict[str, Any]:
        import psutil

        if self._process is None:
            self._process = psutil.Process()
            self._process.cpu_percent(None)  # the first call only starts the measurement
        p = self._process
        with p.oneshot():
            num_fds = getattr(p, "num_fds", None)
            return {
                "rss_bytes": p.memory_info().rss,
                "cpu_percent": p.cpu_percent(None),
                "threads": p.num_threads(),
                "open_fds": num_fds() if num_fds else None,
            }

    def _poll_runs(self) -> None:
        """index.progress while a run's status or progress changes; index.finished at its end."""
        if self._runs is None:
            return
        for run in self._runs():
            key = (str(run.get("status")), json.dumps(run.get("progress"), sort_keys=True))
            prev = self._runs_seen.get(run["id"])
            self._runs_seen[run["id"]] = key
            if prev == key or not self._runs_primed:
                continue
            if key[0] in ACTIVE_RUN:
                self.publish("index.progress", run)
            elif prev is None or prev[0] in ACTIVE_RUN:
                self.publish("index.finished", run)
        self._runs_primed = True
