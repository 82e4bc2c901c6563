"""The pool of loaded embedders that /v1/embeddings, RAG and the Ray ingress share.

Embedders load on first use, by registry name; one thread runs them all (it alone touches their
models, so embedding never races itself). A list of texts is sorted by length and encoded in
batches of at most `batch_tokens` padded tokens and `batch_size` texts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import structlog

from pipelines import tracing
from pipelines.embed.base import Embedder

log = structlog.get_logger(__name__)

EmbedderFactory = Callable[[str], Embedder]
T = TypeVar("T")


class EmbedderPool:
    """Embedders by registry name, loaded on first use; one thread runs them all (it alone
    touches their models, so embedding never races itself)."""

    def __init__(
        self,
        factory: EmbedderFactory,
        *,
        batch_tokens: int,
        batch_size: int,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        """`observe(model, seconds)` is told how long each `encode` took (the app's metrics)."""
        self._factory = factory
        self._observe = observe
        self.batch_tokens = batch_tokens
        self.batch_size = batch_size
        self._embedders: dict[str, Embedder] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="impetus-embed")

    def loaded(self) -> list[str]:
        return list(self._embedders)

    def peek(self, name: str) -> Embedder | None:
        """The embedder `name` if it is loaded (loads nothing)."""
        return self._embedders.get(name)

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

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` on the embedders' thread (tokenizer work that must not race an encode)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def encode(self, embedder: Embedder, texts: Sequence[str]) -> tuple[np.ndarray, int]:
        """Vectors (n, dim) in input order and the tokens used (in an `embed` span)."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        with tracing.span("embed", {"impetus.model": embedder.name, "impetus.inputs": len(texts)}):
            out = await loop.run_in_executor(self._executor, self._encode_sync, embedder, texts)
        if self._observe is not None:
            self._observe(embedder.name, time.perf_counter() - started)
        return out

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
