"""The embedder protocol: what the rest of Impetus codes against to turn text into vectors.

An implementation owns its tokenizer and its model (MLX now, Core ML later); callers never see
either, only `Embedding` records and token ids for chunking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from pipelines.errors import ImpetusError

Backend = Literal["mlx", "coreml"]


class EmbedderLoadError(ImpetusError, RuntimeError):
    """A model folder could not be turned into an embedder (missing files, unsupported model)."""


@dataclass
class Embedding:
    """The result of one `Embedder.encode` call, in input order."""

    vectors: np.ndarray  # float32 (n, dim), unit-norm if the model ends in a Normalize module
    token_counts: list[int]  # tokens per input after truncation, special tokens included
    truncated: list[bool]  # True where the input was longer than max_seq_length


@runtime_checkable
class Embedder(Protocol):
    """Encodes texts into fixed-size vectors; also exposes its tokenizer to chunkers."""

    name: str
    dim: int
    max_seq_length: int
    backend: Backend

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> Embedding:
        """Embed `texts`, truncating each to `max_seq_length` tokens."""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Untruncated token counts, special tokens included."""
        ...

    def tokenize(self, text: str) -> list[int]:
        """Token ids without special tokens (for chunkers that split on token budgets)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text for token ids, special tokens skipped."""
        ...


def truncate_dims(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first `dim` components of each row, renormalised to unit length (Matryoshka)."""
    if not 0 < dim <= vectors.shape[1]:
        raise ValueError(f"dimensions must be between 1 and {vectors.shape[1]}, not {dim}")
    out = vectors[:, :dim]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.maximum(norms, 1e-12)).astype(np.float32)
