"""POST /v1/chat/completions and POST /v1/completions: OpenAI requests → engine sequences → responses.

A request with `n` choices (and, for completions, several prompts) becomes that many
`GenerationRequest`s (serving/http/openai/translate.py translates the body once), run together as
one `Generation` (serving/http/generation.py) and streamed as SSE (serving/http/sse.py). Errors
before the first delta (queue full, bad request) are plain HTTP errors, errors after it are an SSE
error event then `[DONE]`. A client that goes away closes the engine's iterators, which frees the
sequences.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serving.engine.base import Delta, Engine, GenerationRequest, TokenLogprob
from serving.http import generation, reasoning, sse
from serving.http.deps import ServingContext, get_ctx
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
    TopLogprob,
)
from serving.services import tools

router = APIRouter()


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


# The OpenAPI document's 200: one JSON body, or with "stream": true server-sent events.
STREAMABLE: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {"schema": {"type": "object"}},
            # one event: `data` is a JSON chunk, an error body, or "[DONE]"
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {"data": {"type": "string"}},
                    "required": ["data"],
                }
            },
        }
    }
}


# -- /v1/chat/completions -------------------------------------------------------------------------


@router.post("/v1/chat/completions", response_model=None, responses=STREAMABLE)
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
    defaults = ctx.manager.entry(body.model).defaults  # 404 for a model outside the registry

    def requests(engine: Engine) -> list[GenerationRequest]:
        return translate.chat_requests(
            request_id,
            messages,
            plan,
            lambda: body.sampling(defaults),
            n=body.n,
            seed=body.seed,
            capabilities=engine.capabilities(),
            model=engine.model_name,
        )

    gen, waiting = await generation.start(ctx, body.model, requests, body.stream)
    created = int(time.time())
    think = reasoning.format_for(ctx.settings.reasoning, body.model)  # None: no reasoning tags
    if not body.stream:
        if not await generation.collect(request, gen):
            return Response(status_code=499)
        split = [reasoning.split(s.text, think) for s in gen.seqs]
        finished = [
            tools.finish_message(text, s.finish_reason, tool_plan)
            for s, (_, text) in zip(gen.seqs, split, strict=True)
        ]
        result = ChatCompletion(
            id=request_id,
            created=created,
            model=body.model,
            choices=[
                ChatChoice(
                    index=i,
                    message=AssistantMessage(
                        content=content,
                        tool_calls=calls,
                        reasoning_content=thought,
                        reasoning=thought,
                    ),
                    finish_reason=reason,
                    logprobs=_chat_logprobs(s.logprobs) if body.logprobs else None,
                )
                for i, (s, (content, calls, reason), (thought, _)) in enumerate(
                    zip(gen.seqs, finished, split, strict=True)
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
    splitters = [reasoning.ReasoningSplitter(think) if think else None for _ in range(body.n)]
    # A content delta without logprobs, the bulk of a stream: its event pre-encoded per choice.
    content_events = [
        sse.TextEvent(chunk(i, {"content": sse.TextEvent.placeholder})) for i in range(body.n)
    ]

    def chunks(i: int, delta: Delta) -> list[dict[str, Any] | bytes]:
        splitter = splitters[i]
        if splitter is None:
            return text_chunks(i, delta, delta.text)
        pieces = splitter.feed(delta.text)
        if delta.finish_reason is not None:
            pieces += splitter.finish()
        out = [
            chunk(i, {"reasoning_content": text, "reasoning": text})
            for kind, text in pieces
            if kind == "reasoning"
        ]
        content = "".join(text for kind, text in pieces if kind == "content")
        return out + text_chunks(i, delta, content)

    def text_chunks(i: int, delta: Delta, text: str) -> list[dict[str, Any] | bytes]:
        calls = call_streams[i]
        if calls is not None:  # content and tool-call deltas, the way OpenAI streams them
            parts = calls.feed(text)
            if delta.finish_reason is None:
                return [chunk(i, part) for part in parts]
            parts += calls.finish()
            reason = "tool_calls" if calls.calls and delta.finish_reason == "stop" else None
            last = chunk(i, {}, finish_reason=reason or delta.finish_reason)
            return [*(chunk(i, p) for p in parts), last]
        out: list[dict[str, Any] | bytes] = []
        if text and not (body.logprobs and delta.logprobs):
            out.append(content_events[i](text))
        elif text or delta.logprobs:
            lps = (
                _chat_logprobs(delta.logprobs).model_dump(mode="json")
                if body.logprobs and delta.logprobs
                else None
            )
            out.append(chunk(i, {"content": text}, logprobs=lps))
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
    return sse.stream(gen, chunks, head, tail, waiting)


# -- /v1/completions ------------------------------------------------------------------------------


@router.post("/v1/completions", response_model=None, responses=STREAMABLE)
async def completions(
    body: CompletionRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> Response:
    request_id = _new_id("cmpl")
    prompts = body.prompts()
    n = body.n
    constraint = translate.completion_constraint(dict(body.model_extra or {}))
    defaults = ctx.manager.entry(body.model).defaults  # 404 for a model outside the registry
    reqs = translate.completion_requests(
        request_id, prompts, constraint, lambda: body.sampling(defaults), n=n, seed=body.seed
    )
    gen, waiting = await generation.start(ctx, body.model, lambda engine: reqs, body.stream)
    created = int(time.time())
    want_logprobs = body.logprobs is not None

    def echo(i: int) -> str:
        return prompts[i // n] if body.echo else ""

    if not body.stream:
        if not await generation.collect(request, gen):
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
    return sse.stream(gen, chunks, head, tail, waiting)
