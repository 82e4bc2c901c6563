"""POST /v1/embeddings, and the pool of loaded embedders it uses.

Inputs are strings or token-id lists (decoded with the model's tokenizer, then encoded as text).
List inputs are sorted by length and encoded in batches of at most `serve.embedding_batch_tokens`
tokens (and `embedding.batch_size` texts). `dimensions` keeps the first components and
renormalises (Matryoshka); `encoding_format: base64` is little-endian float32, as OpenAI's.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import structlog
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from pipelines.embed.base import Embedder, truncate_dims
from serving.errors import APIError, EmbeddingError
from serving.model_manager import ModelKindError
from serving.protocol import EmbeddingData, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from serving.routes.deps import ServingContext, get_ctx

log = structlog.get_logger(__name__)
router = APIRouter()

EmbedderFactory = Callable[[str], Embedder]


class EmbedderPool:
    """Embedders by registry name, loaded on first use; one thread runs them all (it alone
    touches their models, so embedding never races itself)."""

    def __init__(self, factory: EmbedderFactory, *, batch_tokens: int, batch_size: int) -> None:
        self._factory = factory
        self.batch_tokens = batch_tokens
        self.batch_size = batch_size
        self._embedders: dict[str, Embedder] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="impetus-embed")

    def loaded(self) -> list[str]:
        return list(self._embedders)

    async def get(self, name: str) -> Embedder:
        if name in self._embedders:
            return self._embedders[name]
        async with self._locks.setdefault(name, asyncio.Lock()):
            if name not in self._embedders:
                loop = asyncio.get_running_loop()
                log.info("embedder.load.start", model=name)
                self._embedders[name] = await loop.run_in_executor(
                    self._executor, self._factory, name
                )
                log.info("embedder.load.done", model=name)
        return self._embedders[name]

    def unload(self, name: str) -> bool:
        return self._embedders.pop(name, None) is not None

    async def encode(self, embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors (n, dim) in input order and the tokens used."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._encode_sync, embedder, texts)

    def _encode_sync(self, embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        counts = [min(c, embedder.max_seq_length) for c in embedder.count_tokens(texts)]
        order = sorted(range(len(texts)), key=counts.__getitem__)
        out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
        tokens = 0
        batch: list[int] = []
        batch_tokens = 0

        def flush() -> int:
            result = embedder.encode([texts[i] for i in batch], batch_size=len(batch))
            out[batch] = result.vectors
            return sum(result.token_counts)

        for i in order:
            # Padded batches cost (longest × count) tokens; sorted input makes that the budget.
            if batch and (
                len(batch) >= self.batch_size
                or (len(batch) + 1) * max(batch_tokens, counts[i]) > self.batch_tokens
            ):
                tokens += flush()
                batch, batch_tokens = [], 0
            batch.append(i)
            batch_tokens = max(batch_tokens, counts[i])
        if batch:
            tokens += flush()
        return out, tokens

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._embedders.clear()


def _texts(body: EmbeddingRequest, embedder: Embedder) -> list[str]:
    value = body.input
    if isinstance(value, str):
        return [value]
    if all(isinstance(v, int) for v in value):  # one token-id list
        return [embedder.decode(value)]  # type: ignore[arg-type]
    return [v if isinstance(v, str) else embedder.decode(v) for v in value]  # type: ignore[arg-type]


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
    texts = _texts(body, embedder)
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
    result = EmbeddingResponse(
        data=[
            EmbeddingData(index=i, embedding=_encode_vector(v, body.encoding_format))
            for i, v in enumerate(vectors)
        ],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
    return JSONResponse(result.model_dump(mode="json"))
