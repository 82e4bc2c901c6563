"""The engine protocol: generation requests in, an async stream of deltas out, plain Python values.

This is the seam between HTTP and MLX. The FastAPI routes (serving/http/app.py) and the Ray Serve
deployments code against `Engine`; `serving/engine/mlx_engine.py` implements it with one thread that alone
touches MLX. The engine knows nothing of HTTP: it raises the domain errors below, and the app maps
them to OpenAI-shaped responses in one handler. Tests use the real MLX engine on the bundled model,
or a small fake that implements this protocol.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from pipelines.errors import ImpetusError

FinishReason = Literal["stop", "length", "cancelled", "error", "tool_calls"]


@dataclass
class SamplingParams:
    """Per-request sampling; defaults follow OpenAI's."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    repetition_penalty: float = 1.0  # 1: off (multiplicative, over the context window)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None  # a seeded request stays in the batch and is reproducible
    stop: list[str] = field(default_factory=list)  # never emitted
    logprobs: bool = False
    top_logprobs: int = 0  # 0..20


@dataclass
class GenerationRequest:
    """One sequence to generate. Exactly one of `prompt` and `messages` is set.

    `messages` are OpenAI chat messages (dicts); the engine applies the model's chat template.
    `extra` carries options later features add (tools, response_format) without changing the
    signature.
    """

    request_id: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class Delta:
    """A piece of one sequence's output. The last delta has `finish_reason` set."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0  # set on the last delta
    completion_tokens: int = 0  # running count
    cached_tokens: int = 0  # prompt tokens served from the prefix cache (last delta)


@dataclass
class EngineStats:
    """What /api/metrics and /api/health/status report for one engine."""

    model: str
    queue_depth: int = 0
    queue_limit: int = 0
    batch_size: int = 0
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    prefix_cache_hits: int = 0
    prefix_cache_misses: int = 0
    prefix_cache_bytes: int = 0
    prefix_cache_limit_bytes: int = 0
    memory_bytes: int = 0  # weights + caches resident for this model


class EngineError(ImpetusError):
    """Generation failed inside the engine (maps to 500 inference_error)."""


class QueueFullError(EngineError):
    """The bounded queue is full (maps to 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequestError(EngineError):
    """The request cannot be served as asked, e.g. a prompt longer than the context (400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineClosedError(EngineError):
    """The engine was stopped (model unloaded) while the request waited (503)."""


@runtime_checkable
class Engine(Protocol):
    """A loaded model that generates. Implementations own their threads; methods are async-safe."""

    model_name: str

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Stream the sequence's deltas. Raises QueueFullError/InvalidRequestError before the
        first delta. Closing the iterator (client gone) cancels the sequence and frees its cache."""
        ...

    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt tokens the request would use (template applied)."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None:
        """Stop the engine: pending requests end with EngineClosedError, memory is freed."""
        ...
