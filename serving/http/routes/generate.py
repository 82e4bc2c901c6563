"""POST /v1/chat/completions and POST /v1/completions: OpenAI requests → engine sequences → responses.

A request with `n` choices (and, for completions, several prompts) becomes that many
`GenerationRequest`s (serving/http/openai/translate.py translates the body once) submitted to the
engine at once (seeds `seed + i`); their deltas are merged into one stream. Streams are SSE (`data: {...}` then `data: [DONE]`); errors before the first
delta (queue full, bad request) are plain HTTP errors, errors after it are an SSE error event then
`[DONE]`. A client that goes away closes the engine's iterators, which frees the sequences.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from serving.engine.base import Delta, Engine, EngineError, GenerationRequest, TokenLogprob
from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import GENERIC_MESSAGE, log_unexpected, to_api_error
from serving.http.openai import translate
from serving.http.openai.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatLogprobs,
    ChatTokenLogprob,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    PromptTokensDetails,
    TopLogprob,
    Usage,
)
from serving.services import tools

log = structlog.get_logger(__name__)
router = APIRouter()

# A stream waits this long for its first delta before it sends headers, so that errors raised
# before the first delta (queue full, prompt too long) are still plain HTTP errors.
_FIRST_DELTA_GRACE_S = 1.0


# -- the engine side: n sequences, merged ---------------------------------------------------------

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
    logprobs: list[TokenLogprob] = field(default_factory=list)
    first_token_at: float | None = None


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

    @classmethod
    async def start(cls, ctx: ServingContext, model: str, requests: RequestsFor) -> Generation:
        """Hold the model, build its engine requests and submit every sequence; errors raised
        on submission propagate."""
        stack = contextlib.AsyncExitStack()
        gen = cls(ctx, model, stack)
        try:
            engine: Engine = await stack.enter_async_context(ctx.manager.use(model))
            for req in requests(engine):
                gen._iters.append(engine.generate(req))
                gen.seqs.append(_Seq())
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
            m = self.ctx.metrics
            m.prompt_tokens.labels(self.model).inc(delta.prompt_tokens)
            m.completion_tokens.labels(self.model).inc(seq.completion_tokens)
            m.record_sequence(
                self.model, self.started, seq.first_token_at, now, seq.completion_tokens
            )

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


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _collect(request: Request, gen: Generation) -> bool:
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


_KEEPALIVE = b": keep-alive\n\n"
_DONE = b"data: [DONE]\n\n"


def _event(chunk: dict[str, Any]) -> bytes:
    # json.dumps escapes newlines, so one chunk is always one `data:` line.
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _stream(
    gen: Generation,
    chunks: Callable[[int, Delta], list[dict[str, Any]]],
    head: list[dict[str, Any]],
    tail: Callable[[], list[dict[str, Any]]],
    waiting: bool,
) -> EventSourceResponse:
    """The SSE response of a started (and primed) generation."""
    keepalive = gen.ctx.settings.serve.keepalive_s

    async def events() -> AsyncIterator[bytes]:
        finished = False
        try:
            if waiting:  # the first token is not there yet: tell the client we are alive
                yield _KEEPALIVE
            for chunk in head:
                yield _event(chunk)
            async for i, delta in gen.deltas():
                for chunk in chunks(i, delta):
                    yield _event(chunk)
            for chunk in tail():
                yield _event(chunk)
            finished = True
        except (asyncio.CancelledError, GeneratorExit):
            gen.ctx.metrics.disconnects.labels(gen.model).inc()
            raise
        except Exception as exc:
            err = to_api_error(exc)
            if err.message == GENERIC_MESSAGE:
                log_unexpected(exc)
            gen.ctx.metrics.generation_errors.labels(gen.model, err.code).inc()
            yield _event(err.body())
            finished = True
        finally:
            await gen.aclose()
        if finished:
            yield _DONE

    return EventSourceResponse(
        events(),
        ping=keepalive,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive", sep="\n"),
        sep="\n",
        # Also when the stream never started (the client left before the first byte).
        background=BackgroundTask(gen.aclose),
    )


async def _run(
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
    await gen.prime(min(_FIRST_DELTA_GRACE_S, ctx.settings.serve.keepalive_s))
    assert gen._first is not None
    return gen, not gen._first.done()


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def _token_bytes(lp: TokenLogprob | tuple[str, float]) -> list[int]:
    token = lp.token if isinstance(lp, TokenLogprob) else lp[0]
    return list(token.encode("utf-8", errors="replace"))


def _chat_logprobs(lps: list[TokenLogprob]) -> ChatLogprobs:
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=lp.token,
                logprob=lp.logprob,
                bytes=lp.bytes if lp.bytes is not None else _token_bytes(lp),
                top_logprobs=[
                    TopLogprob(token=t, logprob=p, bytes=_token_bytes((t, p))) for t, p in lp.top
                ],
            )
            for lp in lps
        ]
    )


def _completion_logprobs(lps: list[TokenLogprob], offset: int = 0) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for lp in lps:
        out.tokens.append(lp.token)
        out.token_logprobs.append(lp.logprob)
        out.top_logprobs.append(dict(lp.top))
        out.text_offset.append(offset)
        offset += len(lp.token)
    return out


# -- /v1/chat/completions -------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> Response:
    request_id = _new_id("chatcmpl")
    messages = [m.for_engine() for m in body.messages]
    extra = dict(body.model_extra or {})
    # RAG (serving/services/rag.py): retrieval on the last user message, sources in a system message, and
    # `citations` on the answer (in the first chunk of a stream). The engine never sees rag_*.
    citations: list[dict[str, Any]] | None = None
    if "rag_mode" in extra and ctx.rag is not None:
        grounding = await ctx.rag.ground(body.model, messages, extra)
        if grounding is not None:
            messages, citations = grounding.messages, grounding.citations
    # tools, tool_choice, parallel_tool_calls, response_format: validated and translated once
    plan = translate.chat_plan(extra)
    tool_plan = plan.tool_plan

    def requests(engine: Engine) -> list[GenerationRequest]:
        return translate.chat_requests(
            request_id,
            messages,
            plan,
            body.sampling,
            n=body.n,
            seed=body.seed,
            capabilities=engine.capabilities(),
            model=engine.model_name,
        )

    gen, waiting = await _run(ctx, body.model, requests, body.stream)
    created = int(time.time())
    if not body.stream:
        if not await _collect(request, gen):
            return Response(status_code=499)
        finished = [tools.finish_message(s.text, s.finish_reason, tool_plan) for s in gen.seqs]
        result = ChatCompletion(
            id=request_id,
            created=created,
            model=body.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(content=content, tool_calls=calls),
                    finish_reason=reason,
                    logprobs=_chat_logprobs(s.logprobs) if body.logprobs else None,
                )
                for i, (s, (content, calls, reason)) in enumerate(
                    zip(gen.seqs, finished, strict=True)
                )
            ],
            usage=gen.usage(),
        )
        payload = result.model_dump(mode="json")
        if citations is not None:
            payload["citations"] = citations
        return JSONResponse(payload)

    def chunk(index: int, delta: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": index,
                    "delta": delta,
                    "logprobs": fields.get("logprobs"),
                    "finish_reason": fields.get("finish_reason"),
                }
            ],
        }

    call_streams = [tools.stream_for(tool_plan) for _ in range(body.n)]

    def chunks(i: int, delta: Delta) -> list[dict[str, Any]]:
        calls = call_streams[i]
        if calls is not None:  # content and tool-call deltas, the way OpenAI streams them
            parts = calls.feed(delta.text)
            if delta.finish_reason is None:
                return [chunk(i, part) for part in parts]
            parts += calls.finish()
            reason = "tool_calls" if calls.calls and delta.finish_reason == "stop" else None
            return [chunk(i, p) for p in parts] + [
                chunk(i, {}, finish_reason=reason or delta.finish_reason)
            ]
        out = []
        if delta.text or delta.logprobs:
            lps = (
                _chat_logprobs(delta.logprobs).model_dump(mode="json")
                if body.logprobs and delta.logprobs
                else None
            )
            out.append(chunk(i, {"content": delta.text}, logprobs=lps))
        if delta.finish_reason is not None:
            out.append(chunk(i, {}, finish_reason=delta.finish_reason))
        return out

    def tail() -> list[dict[str, Any]]:
        if not body.include_usage():
            return []
        last = chunk(0, {})
        last["choices"] = []
        last["usage"] = gen.usage().model_dump(mode="json")
        return [last]

    head = [chunk(i, {"role": "assistant", "content": ""}) for i in range(body.n)]
    if citations is not None:
        head[0]["citations"] = citations
    return _stream(gen, chunks, head, tail, waiting)


# -- /v1/completions ------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> Response:
    request_id = _new_id("cmpl")
    prompts = body.prompts()
    n = body.n
    constraint = translate.completion_constraint(dict(body.model_extra or {}))
    reqs = translate.completion_requests(
        request_id, prompts, constraint, body.sampling, n=n, seed=body.seed
    )
    gen, waiting = await _run(ctx, body.model, lambda engine: reqs, body.stream)
    created = int(time.time())
    want_logprobs = body.logprobs is not None

    def echo(i: int) -> str:
        return prompts[i // n] if body.echo else ""

    if not body.stream:
        if not await _collect(request, gen):
            return Response(status_code=499)
        result = Completion(
            id=request_id,
            created=created,
            model=body.model,
            choices=[
                CompletionChoice(
                    index=i,
                    text=echo(i) + s.text,
                    finish_reason=s.finish_reason,
                    logprobs=_completion_logprobs(s.logprobs, len(echo(i)))
                    if want_logprobs
                    else None,
                )
                for i, s in enumerate(gen.seqs)
            ],
            usage=gen.usage(prompts=len(prompts)),
        )
        return JSONResponse(result.model_dump(mode="json"))

    offsets = [len(echo(i)) for i in range(len(reqs))]

    def chunk(index: int, text: str, **fields: Any) -> dict[str, Any]:
        return {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": index,
                    "text": text,
                    "logprobs": fields.get("logprobs"),
                    "finish_reason": fields.get("finish_reason"),
                }
            ],
        }

    def chunks(i: int, delta: Delta) -> list[dict[str, Any]]:
        lps = None
        if want_logprobs and delta.logprobs:
            lps = _completion_logprobs(delta.logprobs, offsets[i]).model_dump(mode="json")
        offsets[i] += len(delta.text)
        if delta.text or lps or delta.finish_reason is not None:
            return [chunk(i, delta.text, logprobs=lps, finish_reason=delta.finish_reason)]
        return []

    def tail() -> list[dict[str, Any]]:
        if not body.include_usage():
            return []
        last = chunk(0, "")
        last["choices"] = []
        last["usage"] = gen.usage(prompts=len(prompts)).model_dump(mode="json")
        return [last]

    head = [chunk(i, echo(i)) for i in range(len(reqs)) if body.echo]
    return _stream(gen, chunks, head, tail, waiting)
