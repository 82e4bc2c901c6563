"""POST /v1/messages (and `?beta=true`, Claude Code's form) and POST /v1/messages/count_tokens:
Anthropic's Messages API on the chat route's engine, batch, prefix cache, tools and constrained
decoding.

The body is translated once (serving/http/anthropic/translate.py) into the chat completions'
plan and engine requests, run as a `Generation` (serving/http/generation.py) and answered as a
message, or streamed (serving/http/sse.py, Anthropic's framing): `message_start`, per block
`content_block_start` / `content_block_delta` (`text_delta`, `thinking_delta`,
`input_json_delta`) / `content_block_stop`, `message_delta` (stop reason, usage), `message_stop`,
and `ping` events while a long prefill runs. Errors have Anthropic's shape (serving/http/errors.py
picks it by path).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from serving.engine.base import Delta, Engine, GenerationRequest, SamplingParams
from serving.http import generation, reasoning, sse
from serving.http.anthropic import translate
from serving.http.anthropic.schemas import CountTokensRequest, MessagesRequest
from serving.http.deps import ServingContext, get_ctx
from serving.http.generation import Generation
from serving.http.openai import translate as openai_translate
from serving.http.routes.generate import STREAMABLE
from serving.services import tools

router = APIRouter()


def _usage(gen: Generation) -> dict[str, int]:
    """Anthropic's usage: `input_tokens` are the prompt tokens the prefix cache did not serve."""
    seq = gen.seqs[0]
    return {
        "input_tokens": seq.prompt_tokens - seq.cached_tokens,
        "output_tokens": seq.completion_tokens,
        "cache_read_input_tokens": seq.cached_tokens,
        "cache_creation_input_tokens": 0,
    }


# With "stream": true the answer is server-sent events (documented, as chat completions do).
@router.post("/v1/messages", response_model=None, responses=STREAMABLE)
async def create_message(
    body: MessagesRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> Response:
    message_id = f"msg_{uuid.uuid4().hex}"
    messages = translate.engine_messages(body)
    plan = translate.plan(body)
    defaults = ctx.manager.entry(body.model).defaults  # 404 for a model outside the registry

    def requests(engine: Engine) -> list[GenerationRequest]:
        return openai_translate.chat_requests(
            message_id,
            messages,
            plan,
            lambda: body.sampling(defaults),
            n=1,
            seed=None,
            capabilities=engine.capabilities(),
            model=engine.model_name,
        )

    gen, waiting = await generation.start(ctx, body.model, requests, body.stream)
    think = reasoning.format_for(ctx.settings.reasoning, body.model)
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    if not body.stream:
        if not await generation.collect(request, gen):
            return Response(status_code=499)
        seq = gen.seqs[0]
        thought, text = reasoning.split(seq.text, think)
        content, calls, _ = tools.finish_message(text, seq.finish_reason, plan.tool_plan)
        message["content"] = translate.content_blocks(thought, content, calls)
        message["stop_reason"] = translate.stop_reason(
            seq.finish_reason, seq.stop_sequence, bool(calls)
        )
        message["stop_sequence"] = seq.stop_sequence
        message["usage"] = _usage(gen)
        return JSONResponse(message)

    blocks = translate.BlockStream(think, plan.tool_plan)

    def chunks(i: int, delta: Delta) -> list[dict[str, Any]]:
        final = delta.finish_reason is not None
        out = blocks.feed(delta.text, final=final)
        if final:
            seq = gen.seqs[0]
            reason = translate.stop_reason(seq.finish_reason, seq.stop_sequence, blocks.tool_use)
            out.append(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": seq.stop_sequence},
                    "usage": _usage(gen),
                }
            )
            out.append({"type": "message_stop"})
        return out

    start = {
        "type": "message_start",
        "message": {**message, "usage": {"input_tokens": 0, "output_tokens": 0}},
    }
    return sse.stream(gen, chunks, [start], lambda: [], waiting, wire=sse.ANTHROPIC)


@router.post("/v1/messages/count_tokens")
async def count_tokens(
    body: CountTokensRequest, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    """The prompt tokens a /v1/messages body would use (template, tools and system included)."""
    messages = translate.engine_messages(body)
    plan = translate.plan(body)
    ctx.manager.entry(body.model)  # 404 for a model outside the registry

    def count(engine: Engine) -> int:
        (req,) = openai_translate.chat_requests(
            "count",
            messages,
            plan,
            SamplingParams,
            n=1,
            seed=None,
            capabilities=engine.capabilities(),
            model=engine.model_name,
        )
        return engine.count_tokens(req)

    return JSONResponse({"input_tokens": await generation.on_engine(ctx, body.model, count)})
