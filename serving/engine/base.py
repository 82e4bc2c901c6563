"""The engine protocol: typed generation requests in, an async stream of deltas out.

This is the seam between HTTP and MLX. A request is what the engine needs and nothing of a wire
format: the messages (chat-template dicts) or the prompt text or token ids, the chat template's
`tools` argument, an output constraint (a grammar), sampling and stop strings. Translating
OpenAI's (or any other API's) request into it happens on the HTTP side (serving/http/openai/
translate.py), once per request. The FastAPI routes (serving/http/app.py) and the Ray Serve
deployments code against `Engine`; `serving/engine/mlx_engine.py` implements it with one thread that alone
touches MLX, and `serving/engine/process.py` puts that engine in a child process (on a GPU). The
engine knows nothing of HTTP: it raises the domain errors below, and the app maps them to
OpenAI-shaped responses in one handler. Tests use the real MLX engine on the bundled model,
or a small fake that implements this protocol.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
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
    # "auto": prompt-lookup speculative decoding where the engine allows it
    # (serving/engine/speculative.py); "off": never for this request.
    speculative: Literal["auto", "off"] = "auto"


ConstraintKind = Literal["json_object", "json_schema", "tool_calls", "tool_calls_or_json"]


@dataclass(frozen=True)
class Constraint:
    """What a sequence's output must match: an llguidance grammar in its serialized form (what
    `LLMatcher.grammar_from_json_schema` or `grammar_from_lark` return). The engine compiles it
    against its tokenizer; `param` names the request field it came from, for the error that a
    grammar llguidance cannot enforce gives."""

    grammar: str
    kind: ConstraintKind
    param: str


@dataclass
class GenerationRequest:
    """One sequence to generate. Exactly one of `prompt`, `prompt_ids` and `messages` is set.

    `messages` are chat-template messages (dicts with `role` and string `content`, plus what the
    template reads, such as `tool_calls`); the engine applies the model's chat template to them,
    with `tools` (function definitions in the template's shape) as its `tools` argument when set.
    `prompt` is text the engine tokenizes, `prompt_ids` tokens it takes as they are. Stop strings
    are `params.stop`.
    """

    request_id: str
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt_ids: list[int] | None = None
    tools: list[dict[str, Any]] | None = None  # the chat template's `tools=` argument
    constraint: Constraint | None = None  # None: free text
    # Extra chat-template variables (`reasoning_effort`, `enable_thinking`): templates that do
    # not read them ignore them.
    template_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineCapabilities:
    """What a loaded model's chat template can do, for whoever translates requests for it."""

    native_tools: bool = False  # the chat template renders the `tools` it is given
    # A template without native tools may get the tools as a prompt in the messages instead
    # (the engine's configuration); False: such requests are refused.
    tool_prompt_fallback: bool = True
    context_window: int = 0  # tokens of prompt and completion together (0: unknown)


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class SequenceTimings:
    """When one sequence passed each stage in the engine, as `time.time_ns()`: wall-clock time, so
    that whoever reads it, in this process or across Ray, can place the stages as spans."""

    queued_ns: int  # handed to the engine
    admitted_ns: int  # taken into the batch: its prefill starts (or waits for a free slot)
    first_token_ns: int  # its first token sampled
    finished_ns: int  # its last token sampled


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
    stop_sequence: str | None = None  # the stop string that ended the sequence (last delta)
    timings: SequenceTimings | None = None  # the sequence's stages (last delta; None: not timed)


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
    # the prefix cache by tier (prefix_cache_hits counts both; serving/engine/prefix_store.py)
    prefix_cache_memory_hits: int = 0
    prefix_cache_disk_hits: int = 0
    prefix_cache_disk_bytes: int = 0
    prefix_cache_disk_limit_bytes: int = 0  # 0: no disk tier
    prefix_cache_preloaded_bytes: int = 0  # read from disk into memory at load
    memory_bytes: int = 0  # weights + caches resident for this model
    kv_cache_bytes: int = 0  # the decode batch's KV cache
    kv_cache_limit_bytes: int = 0  # the budget it is held to (0: none)
    kv_cache_waits_total: int = 0  # sequences that waited for room in that budget
    # prompt-lookup speculative decoding (serving/engine/speculative.py): verify forwards, draft
    # tokens scored and accepted, tokens the verify steps emitted
    speculative_steps: int = 0
    speculative_drafted_tokens: int = 0
    speculative_accepted_tokens: int = 0
    speculative_emitted_tokens: int = 0

    @property
    def speculative_acceptance_rate(self) -> float:
        """Accepted draft tokens / drafted (0 before any draft)."""
        return self.speculative_accepted_tokens / max(1, self.speculative_drafted_tokens)

    @property
    def speculative_tokens_per_step(self) -> float:
        """Tokens emitted per verify forward (1 would be plain decoding; 0 before any step)."""
        return self.speculative_emitted_tokens / max(1, self.speculative_steps)


class EngineError(ImpetusError):
    """Generation failed inside the engine (maps to 500 inference_error)."""


class QueueFullError(EngineError):
    """The bounded queue is full (maps to 503 with Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidRequestError(ImpetusError):
    """The request cannot be served as asked (400): a bad tool or response_format, a prompt longer
    than the context. Not an engine failure: the translation layer raises it before a request
    reaches the engine, and the engine for what only it can check (context, grammar, template)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineClosedError(EngineError):
    """The engine was stopped (model unloaded) while the request waited (503)."""


class Arrivals:
    """Generation requests the server has received and not yet handed to an engine (it is still
    reading, validating or tokenizing them). An idle engine woken by one of them waits for the
    others (`MLXEngine._burst`): a burst of clients is prefilled as one batch even when the
    server takes longer to read it than the engine's gap between two requests. One per app
    (`ModelManager.arrivals`); the HTTP side counts (serving/http/arrivals.py)."""

    def __init__(self) -> None:
        self._pending = 0
        self._lock = threading.Lock()
        # told each new count, under the lock: engines in other processes (process.py)
        self._watchers: list[Callable[[int], None]] = []

    def enter(self) -> Callable[[], None]:
        """Count a request in; returns what counts it out (idempotent)."""
        self._add(1)
        out = False

        def leave() -> None:
            nonlocal out
            with self._lock:
                if out:
                    return
                out = True
            self._add(-1)

        return leave

    def _add(self, n: int) -> None:
        with self._lock:
            self._pending += n
            for watch in self._watchers:
                watch(self._pending)

    def pending(self) -> int:
        return self._pending

    def watch(self, fn: Callable[[int], None]) -> None:
        """Call `fn(count)` now and at every change (under the lock: it must not block)."""
        with self._lock:
            self._watchers.append(fn)
            fn(self._pending)

    def unwatch(self, fn: Callable[[int], None]) -> None:
        with self._lock:
            if fn in self._watchers:
                self._watchers.remove(fn)


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

    def capabilities(self) -> EngineCapabilities:
        """What the model's chat template renders (for translating requests before `generate`)."""
        ...

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        """The prompt tokens of a request (template applied for messages); for a `prompt`,
        `add_special_tokens` None means as `generate` does (BOS unless the text starts with it)."""
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of token ids."""
        ...

    def stats(self) -> EngineStats: ...

    async def close(self) -> None:
        """Stop the engine: pending requests end with EngineClosedError, memory is freed."""
        ...
