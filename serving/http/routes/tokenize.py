"""POST /tokenize and POST /detokenize, in vLLM's shapes, for any LLM of the registry.

    {"model", "prompt", "add_special_tokens": true}            → {"count", "max_model_len", "tokens"}
    {"model", "messages", "tools"?, "chat_template_kwargs"?}   → the same, chat template applied
    {"model", "tokens"}                                        → {"prompt"}

`model` may be omitted (the default LLM, `models.llm`). The tokens are the ones the engine would
generate from (serving/engine/base.py `Engine.tokenize`); `return_token_strs` adds each token's
text.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from serving.engine.base import Engine, GenerationRequest, InvalidRequestError, SamplingParams
from serving.http import generation
from serving.http.deps import ServingContext, get_ctx
from serving.http.openai import translate
from serving.http.openai.schemas import ChatMessage

router = APIRouter()


class TokenizeRequest(BaseModel):
    """vLLM's TokenizeCompletionRequest and TokenizeChatRequest in one: `prompt` xor `messages`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1)
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool | None = None  # vLLM: true for a prompt, false for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False
    tools: list[dict[str, Any]] | None = None
    chat_template_kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        if not self.add_generation_prompt or self.continue_final_message:
            raise ValueError(
                "the chat template is applied as for generation here: add_generation_prompt "
                "true, continue_final_message false"
            )
        return self


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1)
    tokens: list[int] = Field(min_length=1)


def _engine_request(body: TokenizeRequest, engine: Engine) -> GenerationRequest:
    if body.messages is None:
        return GenerationRequest("tokenize", prompt=body.prompt)
    extra: dict[str, Any] = {"chat_template_kwargs": body.chat_template_kwargs}
    if body.tools is not None:
        extra["tools"] = body.tools
    (req,) = translate.chat_requests(
        "tokenize",
        [m.for_engine() for m in body.messages],
        translate.chat_plan(extra),
        SamplingParams,
        n=1,
        seed=None,
        capabilities=engine.capabilities(),
        model=engine.model_name,
    )
    return req


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, ctx: ServingContext = Depends(get_ctx)) -> JSONResponse:
    model = body.model or ctx.settings.models.llm
    ctx.manager.entry(model)  # 404 for a model outside the registry

    def run(engine: Engine) -> dict[str, Any]:
        req = _engine_request(body, engine)
        special = body.add_special_tokens
        if body.messages is None and special is None:
            special = True  # vLLM's default for a prompt
        tokens = engine.tokenize(req, special if body.messages is None else None)
        out: dict[str, Any] = {
            "count": len(tokens),
            "max_model_len": engine.capabilities().context_window,
            "tokens": tokens,
        }
        if body.return_token_strs:
            out["token_strs"] = [engine.detokenize([t]) for t in tokens]
        return out

    return JSONResponse(await generation.on_engine(ctx, model, run))


@router.post("/detokenize")
async def detokenize(
    body: DetokenizeRequest, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    model = body.model or ctx.settings.models.llm
    ctx.manager.entry(model)
    if any(t < 0 for t in body.tokens):
        raise InvalidRequestError("tokens must be non-negative token ids.", param="tokens")
    prompt = await generation.on_engine(ctx, model, lambda e: e.detokenize(body.tokens))
    return JSONResponse({"prompt": prompt})
