"""POST /v1/embeddings over the app's `EmbedderPool` (serving/services/embedders.py).

Inputs are strings or token-id lists (decoded with the model's tokenizer, then encoded as text).
An input longer than `serve.embedding_max_input_chars` characters is refused before any
tokenizing (a 400 naming the limit); tokenizer work runs on the embedders' thread, never on the
event loop.
List inputs are sorted by length and encoded in batches of at most `serve.embedding_batch_tokens`
tokens (and `embedding.batch_size` texts). `dimensions` keeps the first components and
renormalises (Matryoshka); `encoding_format: base64` is little-endian float32, as OpenAI's.
"""

from __future__ import annotations

import base64

import numpy as np
import structlog
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pipelines.embed.base import Embedder, truncate_dims
from serving.engine.manager import ModelKindError
from serving.http.auth import add_tokens
from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import APIError, EmbeddingError
from serving.http.openai.schemas import (
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
)

log = structlog.get_logger(__name__)
router = APIRouter()


def _texts(body: EmbeddingRequest, embedder: Embedder) -> list[str]:
    value = body.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, int) for v in value):  # one token-id list
        return [embedder.decode(value)]  # type: ignore[arg-type]
    return [v if isinstance(v, str) else embedder.decode(v) for v in value]  # type: ignore[arg-type]


def _check_sizes(inputs: EmbeddingRequest | list[str], limit: int) -> None:
    """400 for an input longer than `serve.embedding_max_input_chars`, naming the limit."""
    value = inputs.input if isinstance(inputs, EmbeddingRequest) else inputs
    texts = [value] if isinstance(value, str) else value
    for i, text in enumerate(texts):
        if isinstance(text, str) and len(text) > limit:
            where = "input" if isinstance(value, str) else f"input[{i}]"
            raise APIError(
                "invalid_request",
                f"{where} is {len(text)} characters; an input may have at most {limit} "
                "(serve.embedding_max_input_chars), and the model reads only its first "
                "max_seq_length tokens: split the text into chunks.",
                param="input",
            )


def _encode_vector(vec: np.ndarray, fmt: str) -> list[float] | str:
    if fmt == "base64":
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.tolist()


@router.post("/v1/embeddings", response_model=None)
async def embeddings(
    body: EmbeddingRequest, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    entry = ctx.manager.entry(body.model)  # 404 model_not_found
    if entry.kind != "embedding":
        raise ModelKindError(
            f"Model {body.model!r} is an {entry.kind} model; /v1/embeddings needs an embedding "
            "model (GET /v1/models lists them)."
        )
    embedder = await ctx.embedders.get(body.model)
    if body.dimensions is not None and body.dimensions > embedder.dim:
        raise APIError(
            "invalid_request",
            f"dimensions must be at most {embedder.dim} for {body.model!r}.",
            param="dimensions",
        )
    limit = ctx.settings.serve.embedding_max_input_chars
    _check_sizes(body, limit)  # before any tokenizer work: a 6 MB input is refused at once
    try:
        # Decoding token-id inputs is tokenizer work: on the embedders' thread, off the loop.
        texts = await ctx.embedders.call(_texts, body, embedder)
    except ValueError as exc:  # a token id outside the model's vocabulary
        raise APIError("invalid_request", f"input: {exc}", param="input") from None
    _check_sizes(texts, limit)  # what token ids decoded to
    try:
        vectors, tokens = await ctx.embedders.encode(embedder, texts)
    except Exception as exc:
        log.error("embedding.failed", model=body.model, exc_info=exc)
        raise EmbeddingError(
            f"Embedding with {body.model!r} failed ({type(exc).__name__}); see the server log."
        ) from exc
    if body.dimensions is not None:
        vectors = truncate_dims(vectors, body.dimensions)
    ctx.metrics.embedding_inputs.labels(body.model).inc(len(texts))
    ctx.metrics.embedding_tokens.labels(body.model).inc(tokens)
    add_tokens(tokens)
    result = EmbeddingResponse(
        data=[
            EmbeddingData(index=i, embedding=_encode_vector(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return JSONResponse(result.model_dump(mode="json"))
