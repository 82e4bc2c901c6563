"""Protocol proxies over Ray Serve handles, so that the routes run unchanged in `--ray` mode.

The ingress deployment (serving/ray/deployments.py) builds the same FastAPI app as `impetus serve`; where
that app holds an `Engine` and an `Embedder`, the ingress hands it a `RayEngineProxy` and a
`RayEmbedderProxy` that call the LLM and embedding deployments through their handles. The
deployments send a sequence's deltas in coalesced batches (`coalesce`): one Ray message carries
every delta produced within `window_s` of the previous message, so a fast decode does not pay one
Ray round trip per token, and the first delta of a sequence is never held back.

Domain errors cross Ray in-band (`RemoteError`), so the app sees the exact exception it would see
in-process (QueueFullError with its retry_after, InvalidRequestError with its param), never a
`RayTaskError` with a traceback in its message. This module imports Ray only where it must.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog

from pipelines.embed.base import Backend, Embedding
from pipelines.errors import ImpetusError
from serving.engine.base import (
    Delta,
    EngineCapabilities,
    EngineClosedError,
    EngineError,
    EngineStats,
    GenerationRequest,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")

# How stale the ingress's copy of an engine's stats may get before a read refreshes it.
STATS_TTL_S = 1.0


@dataclass
class RemoteError:
    """A domain error raised in a deployment, sent as a stream message instead of a Ray error."""

    exc: ImpetusError


def as_domain_error(exc: BaseException, what: str) -> ImpetusError:
    """The error to raise in the ingress for a failure of a remote call: domain errors as they are;
    a replica that died or cannot be reached as EngineClosedError (503 model_not_loaded, or an
    error event mid-stream: Serve starts a new replica, so a retry succeeds); other Ray failures
    as an EngineError (500). Never a traceback."""
    if isinstance(exc, ImpetusError):
        return exc
    cause = getattr(exc, "cause", None)  # RayTaskError wraps the replica's exception
    if isinstance(cause, ImpetusError):
        return cause
    if replica_lost(exc):
        log.warning("ray.replica_lost", call=what, error_type=type(exc).__name__)
        return EngineClosedError(
            f"{what} stopped: its Ray Serve replica went away ({type(exc).__name__}). Serve "
            "starts a new one; retry the request."
        )
    log.error("ray.call_failed", call=what, error_type=type(exc).__name__, error=str(exc)[:500])
    return EngineError(f"{what} failed in a Ray Serve deployment ({type(exc).__name__}).")


def replica_lost(exc: BaseException) -> bool:
    """The replica's actor died (SIGKILL, out of memory, its node gone) or is unreachable."""
    from ray.exceptions import RayActorError

    return isinstance(exc, RayActorError)


# -- coalescing (runs in the LLM deployment) -------------------------------------------------------


class _End:
    pass


_END = _End()


@dataclass
class _Raised:
    exc: BaseException


async def coalesce(
    source: AsyncIterator[T],
    window_s: float,
    *,
    busy: Callable[[], bool] | None = None,
    busy_items: int = 1,
    busy_hold_s: float = 0.0,
) -> AsyncIterator[list[T]]:
    """Batch `source`'s items: at most one batch per `window_s`, the first one at once.

    A batch goes out as soon as an item arrives if the previous batch left at least `window_s`
    ago (so a slow stream gets no added latency); otherwise it waits out the window and takes
    everything that arrived meanwhile. Closing the result closes `source` (cancels the sequence).

    While `busy()` is true (the replica decodes many sequences at once, so a decode step takes far
    longer than `window_s` and every item would cross Ray alone), a batch after the first waits
    for `busy_items` items, holding none of them longer than `busy_hold_s`: fewer, larger messages
    when the host's cores are what the streams share. The first item is never held.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in source:
                queue.put_nowait(item)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            queue.put_nowait(_Raised(exc))
        finally:
            queue.put_nowait(_END)

    task = asyncio.ensure_future(pump())
    last_sent = -float("inf")
    try:
        while True:
            batch = [await queue.get()]
            held = last_sent > -float("inf") and busy_items > 1 and busy is not None and busy()
            if held and not isinstance(batch[0], _End | _Raised):
                deadline = loop.time() + busy_hold_s
                while len(batch) < busy_items and not isinstance(batch[-1], _End | _Raised):
                    while not queue.empty() and len(batch) < busy_items:
                        batch.append(queue.get_nowait())
                    remaining = deadline - loop.time()
                    if len(batch) >= busy_items or remaining <= 0:
                        break
                    if isinstance(batch[-1], _End | _Raised):
                        break
                    try:
                        batch.append(await asyncio.wait_for(queue.get(), remaining))
                    except TimeoutError:
                        break
            else:
                wait = last_sent + window_s - loop.time()
                if wait > 0 and not isinstance(batch[0], _End | _Raised):
                    await asyncio.sleep(wait)
            while not queue.empty():
                batch.append(queue.get_nowait())
            items = [b for b in batch if not isinstance(b, _End | _Raised)]
            ended = len(items) < len(batch)
            if items:
                last_sent = loop.time()
                yield items
            if ended:
                raised = next((b for b in batch if isinstance(b, _Raised)), None)
                if raised is not None:
                    raise raised.exc
                return
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


# -- blocking calls from sync protocol methods -----------------------------------------------------

_sync_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="impetus-ray-sync")


def call_sync(fn: Callable[[], T]) -> T:
    """Run a blocking handle call (`handle.m.remote(...).result()`).

    Ray refuses `.result()` on an event loop's thread; the protocol's sync methods (count_tokens,
    decode) may be called there, so the wait then happens on a helper thread. It still blocks the
    caller: the app calls these from its executor threads, where it costs nothing extra.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    return _sync_pool.submit(fn).result()


# -- the engine proxy (runs in the ingress) --------------------------------------------------------


class RayEngineProxy:
    """`serving.engine.base.Engine` over an LLM deployment's handle (see serving/ray/deployments.py)."""

    def __init__(
        self,
        model_name: str,
        handle: Any,
        stats: EngineStats | None = None,
        capabilities: EngineCapabilities | None = None,
    ) -> None:
        self.model_name = model_name
        self._handle = handle
        # Fetched once, when the ingress loads the model: the replica's template does not change.
        self._capabilities = capabilities or EngineCapabilities()
        self._stream = handle.options(stream=True)
        self._stats = stats or EngineStats(model=model_name)
        self._stats_at = time.monotonic() if stats is not None else -float("inf")
        self._refresh: asyncio.Task[None] | None = None
        self._closed = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._closed:
            raise EngineClosedError(f"Model {self.model_name!r} was unloaded; retry the request.")
        from ray.exceptions import RayError
        from ray.serve.exceptions import RayServeException

        response = self._stream.generate.remote(request)
        finished = False
        try:
            async for message in response:
                if isinstance(message, RemoteError):
                    raise message.exc
                for delta in message:
                    yield delta
            finished = True
        except (RayError, RayServeException) as exc:
            raise as_domain_error(exc, f"Generation with {self.model_name!r}") from None
        finally:
            if not finished:
                # The client went away (or the app stopped reading): cancel the replica's stream,
                # which closes the engine's iterator there and frees the sequence.
                response.cancel()

    def count_tokens(self, request: GenerationRequest) -> int:
        try:
            return int(call_sync(lambda: self._handle.count_tokens.remote(request).result()))
        except Exception as exc:
            raise as_domain_error(exc, "count_tokens") from None

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        try:
            return list(
                call_sync(
                    lambda: self._handle.tokenize.remote(request, add_special_tokens).result()
                )
            )
        except Exception as exc:
            raise as_domain_error(exc, "tokenize") from None

    def detokenize(self, token_ids: list[int]) -> str:
        try:
            return str(call_sync(lambda: self._handle.detokenize.remote(token_ids).result()))
        except Exception as exc:
            raise as_domain_error(exc, "detokenize") from None

    def capabilities(self) -> EngineCapabilities:
        return self._capabilities

    def stats(self) -> EngineStats:
        """The last stats fetched from the replica, refreshed in the background when stale."""
        if time.monotonic() - self._stats_at > STATS_TTL_S and self._refresh is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._refresh = loop.create_task(self._refresh_quietly())
            else:
                with contextlib.suppress(Exception):
                    self._set_stats(self._handle.stats.remote().result(timeout_s=5))
        return self._stats

    async def refresh_stats(self) -> EngineStats:
        """Fetch the replica's stats now."""
        await self._refresh_quietly()
        return self._stats

    async def _refresh_quietly(self) -> None:
        try:
            self._set_stats(await self._handle.stats.remote())
        except Exception as exc:
            log.warning("ray.stats_failed", model=self.model_name, error=str(exc)[:200])
        finally:
            self._refresh = None

    def _set_stats(self, stats: EngineStats) -> None:
        self._stats, self._stats_at = stats, time.monotonic()

    async def close(self) -> None:
        """Unload the model in its deployment (the replica stays, without weights)."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._handle.unload.remote()
        except Exception as exc:
            log.warning("ray.unload_failed", model=self.model_name, error=str(exc)[:200])


# -- the embedder proxy (runs in the ingress, called from the app's embedding thread) -------------


class RayEmbedderProxy:
    """`pipelines.embed.base.Embedder` over the embedding deployment's handle."""

    name: str
    dim: int
    max_seq_length: int
    backend: Backend

    def __init__(self, handle: Any, info: dict[str, Any]) -> None:
        self._handle = handle
        self.name = info["name"]
        self.dim = int(info["dim"])
        self.max_seq_length = int(info["max_seq_length"])
        self.backend = info["backend"]

    @classmethod
    def connect(cls, handle: Any, name: str) -> RayEmbedderProxy:
        """Load `name` in the deployment (blocking: call it off the event loop)."""
        info = call_sync(lambda: handle.load.remote(name).result())
        return cls(handle.options(), info)

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return call_sync(
                lambda: getattr(self._handle, method).remote(self.name, *args, **kwargs).result()
            )
        except Exception as exc:
            raise as_domain_error(exc, f"Embedding with {self.name!r}") from None

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> Embedding:
        result: Embedding = self._call("encode", list(texts), batch_size=batch_size)
        return result

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return list(self._call("count_tokens", list(texts)))

    def tokenize(self, text: str) -> list[int]:
        return list(self._call("tokenize", text))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._call("decode", list(ids)))
