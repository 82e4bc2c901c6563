"""Running one HTTP request's engine sequences: `n` choices (and prompts) submitted at once, their
deltas merged into one stream, and their cleanup when the request ends or its client leaves.

Every generating route (chat, completions) starts a `Generation`, then either collects it
(`collect`, for a whole answer) or streams it (serving/http/sse.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import structlog
from fastapi import Request

from serving.engine.base import (
    Delta,
    Engine,
    EngineError,
    GenerationRequest,
    InvalidRequestError,
    TokenLogprob,
)
from serving.http import arrivals, tracing
from serving.http.auth import add_tokens
from serving.http.deps import ServingContext
from serving.http.openai.schemas import PromptTokensDetails, Usage

log = structlog.get_logger(__name__)
T = TypeVar("T")

# A stream waits this long for its first delta before it sends headers, so that errors raised
# before the first delta (queue full, prompt too long) are still plain HTTP errors.
FIRST_DELTA_GRACE_S = 1.0


# The engine requests of an HTTP request, built once its model is held (they depend on what the
# model's chat template can render: `Engine.capabilities`).
RequestsFor = Callable[[Engine], list[GenerationRequest]]


@dataclass
class _Seq:
    """What one choice has produced so far."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    stop_sequence: str | None = None  # the stop string that ended it
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_token_at: float | None = None
    last_token_at: float | None = None


async def _merge(iters: list[AsyncIterator[Delta]]) -> AsyncIterator[tuple[int, Delta]]:
    """Deltas of several sequences as they come, tagged with the sequence's index."""
    if len(iters) == 1:  # the common case needs no tasks
        async for delta in iters[0]:
            yield 0, delta
        return

    async def step(i: int) -> tuple[int, Delta | None]:
        try:
            return i, await iters[i].__anext__()
        except StopAsyncIteration:
            return i, None

    pending = {asyncio.ensure_future(step(i)) for i in range(len(iters))}
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                i, got = task.result()  # an engine error propagates from here
                if got is None:
                    continue
                yield i, got
                if got.finish_reason is None:
                    pending.add(asyncio.ensure_future(step(i)))
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class Generation:
    """The sequences of one HTTP request against one engine, and their cleanup."""

    def __init__(self, ctx: ServingContext, model: str, stack: contextlib.AsyncExitStack) -> None:
        self.ctx = ctx
        self.model = model
        self.started = time.perf_counter()
        self.seqs: list[_Seq] = []
        self._stack = stack
        self._iters: list[AsyncIterator[Delta]] = []
        self._merged: AsyncIterator[tuple[int, Delta]] | None = None
        self._first: asyncio.Future[tuple[int, Delta]] | None = None
        self._closed = False
        self._inter_token = ctx.metrics.inter_token.labels(model)
        self._trace = tracing.current()  # None unless tracing is on (serving/http/tracing.py)

    @classmethod
    async def start(cls, ctx: ServingContext, model: str, requests: RequestsFor) -> Generation:
        """Hold the model, build its engine requests and submit every sequence; errors raised
        on submission propagate."""
        stack = contextlib.AsyncExitStack()
        gen = cls(ctx, model, stack)
        try:
            engine: Engine = await stack.enter_async_context(ctx.manager.use(model))
            limit = ctx.settings.serve.queue_limit

            def built() -> list[GenerationRequest]:
                reqs = list(requests(engine))
                if len(reqs) > limit:
                    # a 503 would tell the client to retry a request that can never fit
                    raise InvalidRequestError(
                        f"This request asks for {len(reqs)} sequences (prompts × n) and the "
                        f"server takes at most {limit} at a time (serve.queue_limit): send "
                        "fewer prompts or a smaller n per request.",
                        param="n",
                    )
                return reqs

            def submit() -> None:
                for req in built():
                    gen._iters.append(engine.generate(req))
                    gen.seqs.append(_Seq())

            agenerate = getattr(engine, "agenerate", None)
            if agenerate is not None:
                # The engine's own process templates and tokenizes (serving/engine/process.py):
                # submitted from the event loop, no worker thread per request.
                for req in built():
                    gen._iters.append(await agenerate(req))
                    gen.seqs.append(_Seq())
            else:
                # Templating and tokenizing a long prompt (engine.generate validates and
                # tokenizes before it returns) take CPU seconds: a worker thread, so the event
                # loop (health probes, other streams) never waits on them.
                await anyio.to_thread.run_sync(submit)
            arrivals.submitted()
        except BaseException:
            await gen.aclose()
            raise
        gen._merged = _merge(gen._iters)
        return gen

    async def prime(self, timeout: float) -> None:
        """Wait (up to `timeout`) for the first delta, so that early errors raise here."""
        assert self._merged is not None
        self._first = asyncio.ensure_future(self._merged.__anext__())
        done, _ = await asyncio.wait({self._first}, timeout=timeout)
        if done:
            exc = self._first.exception()
            if exc is not None and not isinstance(exc, StopAsyncIteration):
                await self.aclose()
                raise exc

    async def deltas(self) -> AsyncIterator[tuple[int, Delta]]:
        """Every delta, updating `seqs` and the metrics; raises on an engine failure."""
        assert self._merged is not None
        if self._first is not None:
            try:
                first: tuple[int, Delta] | None = await self._first
            except StopAsyncIteration:
                first = None
            if first is not None:
                self._record(*first)
                yield first
        async for i, delta in self._merged:
            self._record(i, delta)
            yield i, delta

    def _record(self, i: int, delta: Delta) -> None:
        seq = self.seqs[i]
        now = time.perf_counter()
        if seq.first_token_at is None and (delta.text or delta.token_ids):
            seq.first_token_at = now
        new_tokens = delta.completion_tokens - seq.completion_tokens
        if new_tokens > 0:
            if seq.last_token_at is not None:
                self._inter_token.observe((now - seq.last_token_at) / new_tokens)
            seq.last_token_at = now
        seq.text += delta.text
        seq.completion_tokens = max(seq.completion_tokens, delta.completion_tokens)
        if delta.logprobs:
            seq.logprobs.extend(delta.logprobs)
        if delta.finish_reason is not None:
            if delta.finish_reason == "error":
                raise EngineError("The engine failed while generating this sequence.")
            seq.finish_reason = delta.finish_reason
            seq.prompt_tokens = delta.prompt_tokens
            seq.cached_tokens = delta.cached_tokens
            seq.stop_sequence = delta.stop_sequence
            m = self.ctx.metrics
            m.prompt_tokens.labels(self.model).inc(delta.prompt_tokens)
            m.completion_tokens.labels(self.model).inc(seq.completion_tokens)
            first = seq.first_token_at
            ttft = None if first is None else (first - self.started) * 1000
            add_tokens(
                delta.prompt_tokens + seq.completion_tokens,
                model=self.model,
                prompt=delta.prompt_tokens,
                completion=seq.completion_tokens,
                ttft_ms=ttft,
            )
            m.record_sequence(
                self.model, self.started, seq.first_token_at, now, seq.completion_tokens
            )
            if self._trace is not None:
                tracing.sequence_spans(self._trace, i, delta)

    async def aclose(self) -> None:
        """Cancel what still runs, close the engine iterators (frees the sequences), release
        the model. Idempotent; shielded, so that it completes inside a cancelled stream."""
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._first is not None and not self._first.done():
                self._first.cancel()
                await asyncio.gather(self._first, return_exceptions=True)
            for it in (self._merged, *self._iters):
                aclose = getattr(it, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception as exc:  # closing must not hide the original error
                        log.warning("generation.close_failed", error=str(exc))
            await self._stack.aclose()

    def usage(self, prompts: int = 1) -> Usage:
        """Usage over all choices; the prompt counts once per distinct prompt."""
        per_prompt = max(1, len(self.seqs) // max(prompts, 1))
        prompt_tokens = sum(s.prompt_tokens for s in self.seqs[::per_prompt])
        cached = sum(s.cached_tokens for s in self.seqs[::per_prompt])
        completion = sum(s.completion_tokens for s in self.seqs)
        return Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion,
            total_tokens=prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
        )


async def on_engine(ctx: ServingContext, model: str, call: Callable[[Engine], T]) -> T:
    """Run a blocking engine call (tokenizing, counting) in a worker thread, the model held."""
    async with ctx.manager.use(model) as engine:
        return await anyio.to_thread.run_sync(call, engine)


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect(request: Request, gen: Generation) -> bool:
    """Run a non-streamed generation to the end; False when the client went away first."""

    async def drain() -> None:
        async for _ in gen.deltas():
            pass

    work = asyncio.ensure_future(drain())
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            gen.ctx.metrics.disconnects.labels(gen.model).inc()
            return False
        work.result()  # raise the engine's error, if any
        return True
    finally:
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)
        await gen.aclose()


async def start(
    ctx: ServingContext,
    model: str,
    requests: RequestsFor,
    stream: bool,
) -> tuple[Generation, bool]:
    """Start the sequences; for a stream, wait briefly for the first delta. Returns the
    generation and, for a stream, whether the first delta is still awaited."""
    gen = await Generation.start(ctx, model, requests)
    if not stream:
        return gen, False
    await gen.prime(min(FIRST_DELTA_GRACE_S, ctx.settings.serve.keepalive_s))
    assert gen._first is not None
    return gen, not gen._first.done()
