"""The MLX engine: continuous batching on mlx-lm's `BatchGenerator`, behind `serving.engine.base.Engine`.

Seams, one sentence each:
- One thread owns the model, the `BatchGenerator` and the prefix cache: every MLX call after the
  load happens there, and an error there ends the affected requests, never the thread. (The
  weights load in a helper thread: `_load_weights` says why.)
- The async side validates and tokenizes a request, then talks to the thread through a
  thread-safe inbox (admit, cancel, close); deltas come back to each request's asyncio queue by
  `loop.call_soon_threadsafe`, one call per event loop per decode step. Under load (many
  streams, short steps) a stream's deltas after its first are held and delivered a few at a
  time (`coalesce_*`): the event loop's work per event is then paid once per group.
- The decode batch keeps a row's log-probabilities only for requests that report them, and an
  all-greedy batch takes the argmax of the raw logits (lean_batch.py); otherwise it is mlx-lm's
  step.
- New sequences join the running batch between decode steps (mlx-lm interleaves one prefill
  chunk per step); each carries its sampler (a seeded one has its own PRNG key; unseeded ones
  with equal parameters share one, so that the batch samples in one call: sampling.py),
  its own logits processors, and its own stop strings (stops.py). An idle engine admits
  a burst of requests together, so that they are prefilled as one batch.
- Finished sequences leave their KV cache in a prompt-prefix cache capped in bytes, in memory
  and optionally on disk across restarts (prefix_store.py); a later prompt that shares a prefix
  starts from a copy of it. A chat's system prompt and tools are kept on disk as a checkpoint of
  their own (`_checkpoints`), which every conversation with the same agent prompt shares.
- A sequence that runs alone decodes speculatively (prompt lookup: speculative.py): it leaves the
  batch with its KV cache (`BatchGenerator.remove(..., return_prompt_caches=True)`), each step
  verifies `[last token] + draft` in one forward and trims the cache past the first rejected
  token, and it rejoins the batch (`insert` with its cache and tokens) as soon as another
  sequence is admitted, or for a while when its drafts are mostly rejected. Sequences the
  verifier cannot reproduce exactly (grammar, logprobs, seeded sampling) never leave the batch.
  One that arrives at an idle engine never enters it: the engine prefills it on its own cache
  and delivers its first token at once (`_prefill_solo`; docs/decisions/solo-prefill.md).
- On a GPU a load ends with a warm-up (`_warm_up`), and waiting prompts are prefilled together up
  to a token budget (`prefill_batch_tokens`).

- The engine reads no wire format: it applies the chat template to a request's `messages` (with
  its `tools` as the template's argument), or tokenizes `prompt`, or takes `prompt_ids`, and
  compiles its `Constraint` into a matcher (grammar.py); `capabilities()` tells whoever
  translates requests whether the template renders tools.

Measure it against raw `mlx_lm.stream_generate` with `impetus bench serving`
(flows/bench/serving.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import os
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np

from serving.engine.base import (
    Arrivals,
    Delta,
    EngineCapabilities,
    EngineClosedError,
    EngineError,
    EngineStats,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
)
from serving.engine.prefix_store import PrefixStats, PrefixStore, common_prefix
from serving.engine.sampling import validate_params
from serving.engine.segments import SegmentEncoder, for_tokenizer
from serving.engine.sequence import LiveSequence
from serving.engine.speculative import DraftLength, NgramDrafter, SpecStats
from serving.engine.stops import StopStrings
from serving.engine.window import check_chars, fit_window, text_chars

log = logging.getLogger(__name__)

# mlx-lm's batch KV cache grows by this many tokens at a time (BatchKVCache.step).
KV_STEP = 256
# A chat's system prompt and tools shorter than this are not worth a checkpoint file of their own.
MIN_CHECKPOINT_TOKENS = 64
# Renders of chats' system prompts and tools kept for `_checkpoints` (agents resend the same).
HEAD_RENDERS_KEPT = 32
# On a GPU the prompt batch frees MLX's buffer cache after a prefill chunk only past this
# (lean_batch.LeanPromptBatch): a CUDA `clear_cache` costs more than a short prompt's forward.
PROMPT_CACHE_KEEP_BYTES = 1 << 30
# Cached tokens in the warm-up's long prefix (`_warm_up`): past MLX's switch to two-pass decode
# attention at 1,024.
WARMUP_CONTEXT = 2048
# tokens of the prefixes read at load whose chat pieces are kept for the encoder (_seed_pieces)
SEED_TOKENS = 65536
WARM_TOOL = {  # rendered once at load (_warm_template)
    "type": "function",
    "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}},
}


@dataclass(frozen=True)
class MLXEngineConfig:
    """How one MLX engine batches, queues and caches."""

    max_batch_size: int = 16  # sequences decoded together
    prefill_batch_size: int = 8  # prompts prefilled together
    prefill_step_size: int = 512  # prompt tokens per prefill chunk (one chunk between decode steps)
    # More prompts prefilled together when they are short: as many as fit this many tokens of one
    # chunk (at most max_batch_size, at least prefill_batch_size). None: 8192 on a GPU, where a
    # burst of short prompts prefilled 8 at a time paid mlx-lm's per-chunk costs 8 times over
    # (docs/decisions/solo-prefill.md); 0 on the CPU, where a longer chunk holds up decoding.
    prefill_batch_tokens: int | None = None
    queue_limit: int = 64  # waiting + running sequences; past it generate raises QueueFullError
    retry_after: float = 1.0  # seconds, suggested to a client turned away
    prefix_cache_bytes: int = 512 << 20  # 0 turns the prefix cache off
    # Bytes the decode batch's KV cache may take (every row padded to the longest, as mlx-lm's
    # batch cache holds it): a sequence waits for room before it joins; one sequence alone always
    # runs. 0: no bound.
    kv_cache_bytes: int = 1 << 30
    # The disk tier (prefix_store.py): a folder (one subfolder per model and weights) and a byte
    # cap; None or 0 turns it off.
    prefix_cache_dir: Path | None = None
    prefix_cache_disk_bytes: int = 0
    # At load, the disk tier's most recently used entries are read into memory up to this many
    # bytes (PrefixStore.preload): after a restart the last conversation's state is in memory.
    prefix_cache_preload_bytes: int = 256 << 20
    # An idle engine woken by a request takes, before its first step, the requests that follow
    # it by less than admit_gap_s (up to admit_window_s in all): a burst of clients starts as
    # one prefill batch. A lone request waits admit_gap_s at most; 0 turns it off. The wait is
    # paid only while two requests have been in flight at once within admit_memory_s: one client
    # at a time (an agent loop, a single user) never waits, and a first burst after a quiet
    # spell starts with its first request alone (the others join it in the batch). None: every
    # request waits (a fresh engine's first burst is prefilled together). Past a gap, the engine
    # also waits while the server is still reading requests (`MLXEngine.arrivals`), up to the
    # window: an H100 machine's server took 31-62 ms to hand a burst of 64 to the engine, and
    # those that came after the engine's first step joined later batches, their first tokens
    # 60-120 ms after the first ones'. A burst of 128 took 136 ms, past a 100 ms window: the
    # engine prefilled 75 prompts, then 53, each a batch shape not seen before (205 and 168 ms
    # of steps on CUDA, against 40 ms for all 128 at once).
    admit_window_s: float = 0.25
    admit_gap_s: float = 0.003
    admit_memory_s: float | None = 60.0
    max_context_tokens: int | None = None  # None: the model's max_position_embeddings
    # MLX's CPU backend computes float16 about 100x slower than float32, and its quantized matmul
    # does not use BLAS: on the CPU, dequantize to float32 (OpenBLAS GEMMs); Metal keeps 4-bit.
    cpu_float32: bool = True
    # A chat template without tool support gets the tools as a prompt in the messages (the HTTP
    # side writes it: `capabilities()` says so); False turns such requests away with a 400 instead.
    tool_prompt_fallback: bool = True
    # "auto": a sequence running alone decodes speculatively (speculative.py); "off": never.
    speculative: Literal["auto", "off"] = "auto"
    # Tokens a sequence decodes in the batch after its drafts were mostly rejected.
    speculative_backoff_tokens: int = 64
    # A request that may decode speculatively and finds the engine idle is prefilled outside the
    # batch and delivers its first token at once (`_prefill_solo`); False: through the batch.
    solo_prefill: bool = True
    # Run a request's paths once on made-up tokens at load (`_warm_up`); None: on a GPU only (the
    # CPU backend builds no kernels at run time).
    warmup: bool | None = None
    # While at least `coalesce_streams` sequences decode together and steps are short enough that
    # a group of `coalesce_tokens` fills within `coalesce_hold_ms`, a stream's tokens after its
    # first are delivered `coalesce_tokens` at a time (none held longer than `coalesce_hold_ms`):
    # the event loop's work per event (chunk, SSE frame, socket write) is paid once per group.
    # docs/decisions/stream-coalescing.md; 0 streams: off.
    coalesce_streams: int = 8
    coalesce_tokens: int = 4
    coalesce_hold_ms: float = 50.0


class Prepared(NamedTuple):
    """A request validated and tokenized (`MLXEngine.prepare`), ready for `enqueue`."""

    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    matcher: Any
    checkpoints: tuple[int, ...]


class _SoloToken(NamedTuple):
    """One token of a speculative step, shaped like the batch's responses for `_on_token`."""

    token: int
    finish_reason: str | None
    logprobs: Any = None


@dataclass
class _Solo:
    """The sequence decoding speculatively outside the batch. Its cache holds every token of
    `drafter.tokens` but the last, which the next step feeds first."""

    seq: LiveSequence
    cache: list[Any]
    drafter: NgramDrafter
    sampler: Any  # a KeyedSampler, or None for greedy
    processors: list[Any]
    length: DraftLength


@dataclass
class _Counters:
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    running: int = 0
    kv_bytes: int = 0
    kv_waits: int = 0  # sequences that waited for room in the KV budget


def load_model(path: Path, *, cpu_float32: bool = True) -> tuple[Any, Any]:
    """`mlx_lm.load`, then on the CPU backend dequantized to float32 (see MLXEngineConfig and
    pipelines/models/loading.py, which the benchmarks share)."""
    from pipelines.models.loading import load_llm

    return load_llm(path, "auto" if cpu_float32 else "native")


def kv_bytes_per_token(model: Any) -> int:
    """Bytes one token's keys and values take in the model's KV cache, all layers together.
    Read from the cache a one-token forward would fill (the graph is built, not evaluated), so it
    holds for whatever cache mlx-lm makes for the architecture; layers without per-token state
    (recurrent ones) count nothing."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([[0]]), cache=cache)
    total = 0.0
    for c in cache:
        keys, values = getattr(c, "keys", None), getattr(c, "values", None)
        if not (isinstance(keys, mx.array) and isinstance(values, mx.array)):
            continue
        if keys.ndim == 4 and keys.shape[2]:  # (batch, heads, tokens allocated, head_dim)
            total += (keys.nbytes + values.nbytes) / keys.shape[2]
    return int(total)


def chat_template_renders_tools(chat_template: str | None) -> bool:
    """Whether a chat template renders the `tools` it is given (it mentions them at all)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template or "") is not None


class Waiting(Protocol):
    """Deltas waiting for a consumer: an asyncio.Queue, or an engine process's stream
    (process.py)."""

    def empty(self) -> bool: ...
    def get_nowait(self) -> Delta | BaseException: ...


def coalesce(first: Delta, pending: Waiting) -> tuple[Delta, BaseException | None]:
    """`first` merged with the deltas already waiting behind it, and the error that ended them
    (if one did). A consumer that fell behind the decode steps then sends one event for what
    came meanwhile, not one per token: on a fast accelerator a step can take less time than
    delivering a token to every stream, and the per-event work (chunk, SSE frame, socket
    write, a Ray object in Ray mode) would cap throughput. No wait: only what is there now."""
    merged = first
    while merged.finish_reason is None and not pending.empty():
        item = pending.get_nowait()
        if isinstance(item, BaseException):
            return merged, item
        merged = merge_deltas(merged, item)
    return merged, None


def merge_deltas(a: Delta, b: Delta) -> Delta:
    """One delta for `a` then `b`: texts, token ids and logprobs concatenated; the running and
    last-delta fields (counts, finish, stop string, timings) are `b`'s."""
    logprobs = None if a.logprobs is None and b.logprobs is None else [
        *(a.logprobs or []), *(b.logprobs or [])
    ]  # fmt: skip
    return replace(
        b, text=a.text + b.text, token_ids=[*a.token_ids, *b.token_ids], logprobs=logprobs
    )


def _put_all(
    items: list[tuple[asyncio.Queue[Delta | BaseException], Delta | BaseException]],
) -> None:
    for q, item in items:
        q.put_nowait(item)


class MLXEngine:
    """An `Engine` on one MLX model. Build it with `MLXEngine.load(path, name)`."""

    # The app's requests on their way to an engine (set by ModelManager when it loads this one):
    # a burst is collected until they have come (`_burst`). None: the gap alone decides.
    arrivals: Arrivals | None = None

    def __init__(self, path: Path, model_name: str, config: MLXEngineConfig) -> None:
        self.model_name = model_name
        self.path = path
        self.config = config
        self._inbox: queue.SimpleQueue[tuple[str, LiveSequence | None]] = queue.SimpleQueue()
        self._slots = threading.Lock()
        self._admitted = 0
        self._last_together = -math.inf  # time.monotonic() when two requests were last in flight
        self._closed = False
        self._ready = threading.Event()
        self._parked = threading.Event()  # set when the engine thread ends: frees the loader
        self._loader: threading.Thread | None = None  # the thread that loads the weights
        self._load_error: BaseException | None = None
        self._tok_lock = threading.Lock()
        self._head_ids: OrderedDict[bytes, np.ndarray] = OrderedDict()  # under _tok_lock
        self._counters = _Counters()
        self._thread = threading.Thread(
            target=self._run, name=f"mlx-engine-{model_name}", daemon=True
        )
        # Set by the engine thread at load.
        self._tokenizer: Any = None
        self._segments: SegmentEncoder | None = None  # chats tokenized from kept pieces
        self._context = 0
        self._vocab_size = 0
        self._max_token_chars = 0  # the longest vocabulary entry: check_chars's bound
        self._weights_bytes = 0
        self._token_texts: dict[int, str] = {}
        self._ll_tokenizer: Any = None  # llguidance's view of the tokenizer, built on first use
        self._prefix: PrefixStore | None = None  # the prefix cache, opened at load
        self._solo: _Solo | None = None  # the sequence decoding speculatively, if any
        self._spec = SpecStats()
        self._trimmable: bool | None = None  # whether the model's KV cache can roll back
        self._solo_uid = 0  # the uids of solo-prefilled sequences count down from -1
        # Admitted to the engine thread, not yet in the batch: no free row or no room in the KV
        # budget (`_fill`); first come, first served.
        self._waiting: deque[LiveSequence] = deque()
        self._kv_token_bytes = 0  # one token's keys and values, all layers (measured at load)
        self._keep_cache_bytes = 0  # MLX buffer cache kept after a prefill chunk (lean_batch.py)
        self._prefill_tokens = 0  # prefill_batch_tokens, resolved at load

    @classmethod
    def load(
        cls,
        path: str | Path,
        name: str,
        *,
        config: MLXEngineConfig | None = None,
        max_batch_size: int | None = None,
        queue_limit: int | None = None,
        prefix_cache_bytes: int | None = None,
        kv_cache_bytes: int | None = None,
        retry_after: float | None = None,
        prefix_cache_dir: Path | None = None,
        prefix_cache_disk_bytes: int | None = None,
        prefix_cache_preload_bytes: int | None = None,
        speculative: Literal["auto", "off"] | None = None,
        coalesce_streams: int | None = None,
        coalesce_tokens: int | None = None,
        coalesce_hold_ms: float | None = None,
    ) -> MLXEngine:
        """Load the model folder (blocking: call it off the event loop) and start the engine."""
        overrides: dict[str, Any] = {
            "max_batch_size": max_batch_size,
            "queue_limit": queue_limit,
            "prefix_cache_bytes": prefix_cache_bytes,
            "kv_cache_bytes": kv_cache_bytes,
            "retry_after": retry_after,
            "prefix_cache_dir": prefix_cache_dir,
            "prefix_cache_disk_bytes": prefix_cache_disk_bytes,
            "prefix_cache_preload_bytes": prefix_cache_preload_bytes,
            "speculative": speculative,
            "coalesce_streams": coalesce_streams,
            "coalesce_tokens": coalesce_tokens,
            "coalesce_hold_ms": coalesce_hold_ms,
        }
        cfg = replace(
            config or MLXEngineConfig(), **{k: v for k, v in overrides.items() if v is not None}
        )
        engine = cls(Path(path), name, cfg)
        engine._thread.start()
        engine._ready.wait()
        if engine._load_error is not None:
            engine._thread.join()  # it ends at once, after its loader: no thread is left behind
            raise EngineError(
                f"Could not load model {name!r} from {path}: {engine._load_error}. "
                "Check that the folder holds an mlx-lm model (`impetus models list`)."
            ) from engine._load_error
        return engine

    # -- the Engine protocol (async side) ---------------------------------------------------------

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        return self._stream(request.request_id, self.prepare(request))

    def prepare(self, request: GenerationRequest) -> Prepared:
        """Validate, tokenize and fit a request (blocking; raises what `generate` raises before
        the first delta). `enqueue` hands the result to the engine thread."""
        if self._closed:
            raise EngineClosedError(f"Model {self.model_name!r} was unloaded; load it again.")
        params = request.params
        validate_params(params, self._vocab_size)
        prompt = self._encode(request)
        matcher = self._matcher(request)  # a schema llguidance cannot enforce is a 400 here
        param = "messages" if request.messages is not None else "prompt"
        max_tokens = fit_window(
            len(prompt), params.max_tokens, self._context, model=self.model_name, param=param
        )
        if self._admitted >= self.config.queue_limit:
            raise self._queue_full()
        checkpoints = self._checkpoints(request, prompt)
        return Prepared(prompt, params, max_tokens, matcher, checkpoints)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._encode(request))

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        if request.prompt is not None and add_special_tokens is not None:
            self._check_chars(request)
            with self._tok_lock:
                ids = self._tokenizer.encode(request.prompt, add_special_tokens=add_special_tokens)
            return [int(t) for t in ids]
        return self._encode(request)

    def detokenize(self, token_ids: list[int]) -> str:
        bad = [t for t in token_ids if not 0 <= t < self._vocab_size]
        if bad:
            raise InvalidRequestError(
                f"Token ids {bad[:5]} are outside the vocabulary of {self.model_name!r} "
                f"(0..{self._vocab_size - 1}).",
                param="tokens",
            )
        with self._tok_lock:
            return str(self._tokenizer.decode(token_ids))

    def capabilities(self) -> EngineCapabilities:
        return EngineCapabilities(
            native_tools=chat_template_renders_tools(
                getattr(self._tokenizer, "chat_template", None)
            ),
            tool_prompt_fallback=self.config.tool_prompt_fallback,
            context_window=self._context,
        )

    def stats(self) -> EngineStats:
        c = self._counters
        running = c.running
        store = self._prefix
        p = store.stats() if store is not None else PrefixStats()
        return EngineStats(
            model=self.model_name,
            queue_depth=max(0, self._admitted - running),
            queue_limit=self.config.queue_limit,
            batch_size=running,
            requests_total=c.requests_total,
            prompt_tokens_total=c.prompt_tokens_total,
            generation_tokens_total=c.generation_tokens_total,
            prefix_cache_hits=p.memory_hits + p.disk_hits,
            prefix_cache_misses=p.misses,
            prefix_cache_bytes=p.memory_bytes,
            prefix_cache_limit_bytes=self.config.prefix_cache_bytes,
            prefix_cache_memory_hits=p.memory_hits,
            prefix_cache_disk_hits=p.disk_hits,
            prefix_cache_disk_bytes=p.disk_bytes,
            prefix_cache_disk_limit_bytes=p.disk_limit_bytes,
            prefix_cache_preloaded_bytes=p.preloaded_bytes,
            memory_bytes=self._weights_bytes + c.kv_bytes + p.memory_bytes,
            kv_cache_bytes=c.kv_bytes,
            kv_cache_limit_bytes=self.config.kv_cache_bytes,
            kv_cache_waits_total=c.kv_waits,
            speculative_steps=self._spec.steps,
            speculative_drafted_tokens=self._spec.drafted,
            speculative_accepted_tokens=self._spec.accepted,
            speculative_emitted_tokens=self._spec.emitted,
        )

    async def close(self) -> None:
        with self._slots:
            if not self._closed:
                self._closed = True
                self._inbox.put(("close", None))
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def enqueue(self, request_id: str, prepared: Prepared, loop: Any, sink: Any) -> LiveSequence:
        """Admit a prepared request: its deltas go to `sink.put_nowait` by
        `loop.call_soon_threadsafe` (an asyncio queue and its loop, or what an engine process
        sends them through: process.py). Raises QueueFullError or EngineClosedError; `release`
        must follow."""
        p = prepared
        seq = LiveSequence(
            request_id=request_id,
            prompt=p.prompt,
            params=p.params,
            max_tokens=p.max_tokens,
            loop=loop,
            queue=sink,
            stops=StopStrings(p.params.stop),
            matcher=p.matcher,
            checkpoints=p.checkpoints,
        )
        with self._slots:  # under the lock that close() takes: an admit never follows "close"
            if self._closed or not self._thread.is_alive():
                raise EngineClosedError(f"Model {self.model_name!r} was unloaded; load it again.")
            if self._admitted >= self.config.queue_limit:
                raise self._queue_full()
            self._admitted += 1
            if self._admitted > 1:  # another request is in flight: bursts are worth waiting for
                self._last_together = time.monotonic()
            seq.queued_ns = time.time_ns()
            self._inbox.put(("admit", seq))
        return seq

    def release(self, seq: LiveSequence) -> None:
        """A request's end on the consumer's side: a sequence still running (client gone, task
        cancelled) is dropped from the batch; its slot in the queue limit is freed."""
        if not seq.done:
            self._inbox.put(("cancel", seq))
        with self._slots:
            self._admitted -= 1

    async def _stream(self, request_id: str, prepared: Prepared) -> AsyncIterator[Delta]:
        pending: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        seq = self.enqueue(request_id, prepared, asyncio.get_running_loop(), pending)
        try:
            while True:
                item = await pending.get()
                if isinstance(item, BaseException):
                    raise item
                item, failed = coalesce(item, pending)
                yield item
                if failed is not None:
                    raise failed
                if item.finish_reason is not None:
                    return
        finally:
            self.release(seq)

    def _queue_full(self) -> QueueFullError:
        return QueueFullError(
            f"Model {self.model_name!r} has {self.config.queue_limit} requests waiting or running; "
            f"retry in {self.config.retry_after:g} s.",
            retry_after=self.config.retry_after,
        )

    def _encode(self, request: GenerationRequest) -> list[int]:
        given = [request.prompt, request.prompt_ids, request.messages]
        if sum(x is not None for x in given) != 1:
            raise InvalidRequestError(
                "Give exactly one of prompt, prompt_ids and messages.", param="messages"
            )
        if request.messages is None and request.tools is not None:
            raise InvalidRequestError(
                "tools need messages (the chat template renders them).", param="tools"
            )
        if request.prompt_ids is not None:
            ids: Any = request.prompt_ids
        else:
            self._check_chars(request)
            ids = self._tokenize(request)
        if not ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        return [int(t) for t in ids]

    def _check_chars(self, request: GenerationRequest) -> None:
        """The cheap bound (window.py) before a tokenizer sees a long text."""
        text: object = request.prompt if request.messages is None else request.messages
        param = "messages" if request.messages is not None else "prompt"
        check_chars(
            text_chars(text),
            self._context,
            self._max_token_chars,
            model=self.model_name,
            param=param,
        )

    def _tokenize(self, request: GenerationRequest) -> Any:
        tok = self._tokenizer
        with self._tok_lock:
            if request.messages is not None:
                if not request.messages:
                    raise InvalidRequestError("messages must not be empty.", param="messages")
                try:
                    return self._render(request, request.messages, add_generation_prompt=True)
                except Exception as exc:
                    raise InvalidRequestError(
                        f"The model's chat template rejected the messages: {exc}", param="messages"
                    ) from exc
            text = request.prompt or ""
            bos = tok.bos_token
            return tok.encode(text, add_special_tokens=bos is None or not text.startswith(bos))

    def _render(
        self, request: GenerationRequest, messages: list[Any], *, add_generation_prompt: bool
    ) -> list[int]:
        """The chat template applied to `messages` with the request's tools and template
        arguments (under `_tok_lock`)."""
        template_args = dict(request.template_kwargs)
        if request.tools is not None:
            template_args["tools"] = request.tools
        if self._segments is not None:  # the pieces of last turn's render are kept (segments.py)
            text = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                **template_args,
            )  # fmt: skip
            return self._segments.encode(text)
        ids: Any = self._tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, **template_args
        )
        if not isinstance(ids, list):  # a BatchEncoding in some transformers versions
            ids = list(ids["input_ids"])
        return ids

    def _checkpoints(self, request: GenerationRequest, prompt: list[int]) -> tuple[int, ...]:
        """Where in `prompt` a chat's leading system messages (with the tools) end, when the disk
        tier is on: the prefix that agent clients keep the same across turns and conversations,
        kept as a file of its own (prefix_store.py). Found by rendering those messages alone;
        the rest of a conversation needs no checkpoint (a cached turn serves any prefix of it)."""
        store = self._prefix
        if store is None or store.disk is None or not request.messages:
            return ()
        roles = [m.get("role") for m in request.messages]
        head = next((i for i, r in enumerate(roles) if r not in ("system", "developer")), 0)
        if head == 0:
            return ()
        # An agent sends the same system prompt and tools every turn: their render is kept by
        # a digest of what it depends on (tokenizing ~2K tokens again costs 2-3 ms a request).
        key = hashlib.blake2b(
            json.dumps(
                [request.messages[:head], request.tools, request.template_kwargs],
                sort_keys=True,
                default=str,
            ).encode(),
            digest_size=16,
        ).digest()
        with self._tok_lock:
            ids = self._head_ids.get(key)
            if ids is None:
                try:
                    rendered = self._render(
                        request, request.messages[:head], add_generation_prompt=False
                    )
                except Exception:  # a template that needs a user turn: no checkpoint, no error
                    rendered = []
                ids = self._head_ids[key] = np.asarray(rendered, dtype=np.int64)
                while len(self._head_ids) > HEAD_RENDERS_KEPT:
                    self._head_ids.popitem(last=False)
            self._head_ids.move_to_end(key)
        if not len(ids):
            return ()
        n = common_prefix(ids, np.asarray(prompt))
        return (n,) if MIN_CHECKPOINT_TOKENS <= n < len(prompt) else ()

    def _matcher(self, request: GenerationRequest) -> Any:
        """The request's grammar matcher (serving/engine/grammar.py), or None for free text."""
        constraint = request.constraint
        if constraint is None:
            return None
        from serving.engine.grammar import compile_matcher

        with self._tok_lock:
            if self._ll_tokenizer is None:
                import llguidance.hf

                try:
                    self._ll_tokenizer = llguidance.hf.from_tokenizer(
                        self._tokenizer._tokenizer, eos_token=sorted(self._eos_ids)[0]
                    )
                except ValueError as exc:  # llguidance reads fast (Rust) tokenizers only
                    raise InvalidRequestError(
                        f"Model {self.model_name!r} cannot do structured outputs or forced tool "
                        f"calls: {exc}.",
                        param=constraint.param,
                    ) from exc
        return compile_matcher(constraint, self._ll_tokenizer)

    # -- the engine thread: the only place that touches MLX ---------------------------------------

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as exc:
            self._load_error = exc
            self._ready.set()
            self._release_loader()
            return
        self._ready.set()
        try:
            while True:
                try:
                    if not self._serve_once():
                        break
                except Exception:  # a bug of ours: fail what is in flight, keep serving
                    log.exception("mlx engine: unexpected error; failing the live sequences")
                    self._fail_all(EngineError)
        finally:
            self._closed = True
            self._shutdown()
            self._release_loader()

    def _release_loader(self) -> None:
        """Let the loader end, and wait for it: whoever joins the engine thread (close()) then
        knows that no thread of the engine is left. A thread that has run MLX and is still ending
        while the interpreter exits can abort the process ("terminate called without an active
        exception": 5 exits in 24 here before this join, none in 48 after)."""
        self._parked.set()
        if self._loader is not None and self._loader is not threading.current_thread():
            self._loader.join()

    def _load(self) -> None:
        # On CUDA, MLX runs prompt attention through cuDNN, which builds a graph for every new
        # (prompt, cache) shape: 40-80 ms on an H200 against 4-6 ms of compute, paid by nearly
        # every prompt a server sees. MLX's own kernels need no build
        # (docs/decisions/cuda-attention.md). Set before MLX reads it, at the first attention;
        # exporting MLX_CUDA_USE_CUDNN_SDPA=1 keeps cuDNN.
        os.environ.setdefault("MLX_CUDA_USE_CUDNN_SDPA", "0")
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from serving.engine.prefix_store import open_store

        self._mx = mx
        model, tokenizer = self._load_weights()
        self._model = model
        params: Any = tree_flatten(model.parameters())
        self._weights_bytes = sum(v.nbytes for _, v in params)
        self._kv_token_bytes = kv_bytes_per_token(model)
        cfg = json.loads((self.path / "config.json").read_text())
        self._context = self.config.max_context_tokens or int(
            cfg.get("max_position_embeddings", 4096)
        )
        self._vocab_size = int(cfg.get("vocab_size", 0)) or len(tokenizer.vocab)
        self._eos_ids = set(tokenizer.eos_token_ids)
        # Byte-level vocabularies spell each byte as one character, so an entry's length bounds
        # the characters (of the text) its token covers.
        self._max_token_chars = max((len(t) for t in tokenizer.vocab), default=1)
        self._stream_mx = mx.default_stream(mx.default_device())
        self._keep_cache_bytes = PROMPT_CACHE_KEEP_BYTES if mx.default_device() == mx.gpu else 0
        conf = self.config
        self._prefix = open_store(
            self.model_name,
            self.path,
            memory_bytes=conf.prefix_cache_bytes,
            disk_dir=conf.prefix_cache_dir,
            disk_bytes=conf.prefix_cache_disk_bytes,
            load_mode=f"{mx.default_device()} float32={conf.cpu_float32}",
        )
        self._live: dict[int, LiveSequence] = {}
        self._steps = 0
        self._last_step = 0.0  # time.monotonic() of the last batch step's deltas
        self._hold_tokens = max(1, self.config.coalesce_tokens)
        self._hold_s = self.config.coalesce_hold_ms / 1000
        from serving.engine.sampling import SharedSamplers

        self._shared_samplers = SharedSamplers()
        from serving.engine.grammar import GrammarStep

        self._grammar = GrammarStep(
            int(cfg.get("vocab_size", 0)) or self._vocab_size, sorted(self._eos_ids)
        )
        gpu = mx.default_device() == mx.gpu
        budget = self.config.prefill_batch_tokens
        self._prefill_tokens = (8192 if gpu else 0) if budget is None else budget
        self._gen = self._new_generator()
        self._tokenizer = tokenizer
        self._segments = for_tokenizer(tokenizer._tokenizer)
        self._warm_template()
        warmup = self.config.warmup
        if warmup is None:
            warmup = mx.default_device() == mx.gpu
        if warmup:
            self._warm_up()
        if self._prefix is not None and conf.prefix_cache_preload_bytes > 0:
            started = time.perf_counter()
            read = self._prefix.preload(conf.prefix_cache_preload_bytes)
            if read:
                log.info(
                    "mlx engine %s: read %.0f MB of cached prefixes from disk in %.2f s",
                    self.model_name, read / 1e6, time.perf_counter() - started,
                )  # fmt: skip
                self._seed_pieces()

    def _warm_template(self) -> None:
        """Render a one-message chat with one tool: the chat template compiles at its first use
        (4.6 ms here for SmolLM2's), which the first request after every start would pay."""
        request = GenerationRequest(
            "warm-up", messages=[{"role": "user", "content": "hi"}], tools=[WARM_TOOL],
            params=SamplingParams(max_tokens=1),
        )  # fmt: skip
        try:
            with self._tok_lock:
                self._render(request, request.messages or [], add_generation_prompt=True)
        except Exception:  # a template that refuses tools (or this chat): the first request's
            log.debug(
                "mlx engine %s: the chat template did not render the warm-up", self.model_name
            )
        if self._segments is not None:  # its counts are the requests'
            self._segments.hits = self._segments.misses = 0

    def _seed_pieces(self) -> None:
        """The chat pieces of the prefixes read at load, for the encoder's kept pieces
        (segments.py): their conversations' next turns send that text again."""
        if self._segments is None or self._prefix is None:
            return
        started = time.perf_counter()
        budget, added = SEED_TOKENS, 0
        for tokens in self._prefix.preloaded_tokens:
            if budget <= 0:
                break
            added += self._segments.seed(tokens.tolist())
            budget -= len(tokens)
        log.info(
            "mlx engine %s: kept %d chat pieces of the cached prefixes in %.3f s",
            self.model_name, added, time.perf_counter() - started,
        )  # fmt: skip

    def _warm_up(self) -> None:
        """Run the paths of a request once on made-up tokens, before the first request: a
        prompt through the batch, from nothing and from a cached prefix, and solo prefills (8 and
        64 tokens) and a decode step on a long cache. On a GPU the first run of each kind of
        kernel builds it (CUDA compiles them at run time: a fresh process's first agent turn
        took 116-155 ms against 51-60 warm on an H200, its prefill of 38 tokens 26 ms against
        ~10), which otherwise the first requests after every start pay. A long cache is zeros, not a
        prefill: attention over >= 1,024 cached tokens uses other kernels than over a few."""
        from mlx_lm.models.cache import KVCache, make_prompt_cache

        mx, model = self._mx, self._model
        started = time.perf_counter()
        prompt = [i % max(1, self._vocab_size) for i in range(1, 9)]
        long = min(WARMUP_CONTEXT, max(0, self._context - 64))
        with mx.stream(self._stream_mx):
            cache = make_prompt_cache(model)
            model(mx.array([prompt]), cache=cache)
            mx.eval([c.state for c in cache])
            if long and all(type(c) is KVCache for c in cache):
                for c in cache:
                    n_kv, dim = c.keys.shape[1], c.keys.shape[3]
                    c.keys = mx.zeros((1, n_kv, long, dim), dtype=c.keys.dtype)
                    c.values = mx.zeros((1, n_kv, long, c.values.shape[3]), dtype=c.values.dtype)
                    c.offset = long
                # solo prefills after a long prefix: a few tokens, and an agent turn's few dozen
                # (attention over a longer query is another kernel, built at its first use: a
                # fresh process's first 61-token turn on a 3,500-token cache took 45-60 ms in
                # the engine against ~10 warm on an H200, with only the 8-token one warmed)
                for n in (len(prompt), 64):
                    mx.eval(model(mx.array([(prompt * n)[:n]]), cache=cache))
                mx.eval(model(mx.array([prompt[:1]]), cache=cache))  # a decode step
                long_cache: list[Any] | None = cache
            else:
                long_cache = None
        for caches in (None, [long_cache] if long_cache is not None else None):
            (uid,) = self._gen.insert([prompt], max_tokens=[3], caches=caches)
            for _ in range(16):  # a few steps: prefill, the first token, the rest
                _, responses = self._gen.next()
                if any(r.uid == uid and r.finish_reason for r in responses):
                    break
            else:
                self._gen.remove([uid])
        mx.clear_cache()
        log.info(
            "mlx engine %s: warmed up in %.2f s", self.model_name, time.perf_counter() - started
        )

    def _load_weights(self) -> tuple[Any, Any]:
        """`load_model` in a helper thread that then waits until the engine stops.

        Loading allocates and frees hundreds of MB of temporaries (safetensors, dequantized
        copies) through the malloc arena of the thread that loads, and MLX allocates on every op
        of every decode step from the thread that evaluates. Decoding from the thread that had
        loaded ran 6-8 % slower at one stream on the CPU backend (same weights, same loop; see
        docs/decisions/weight-loader-thread.md). The helper stays parked so that its arena is not handed
        to a thread created later."""
        loaded: Future[tuple[Any, Any]] = Future()

        def load() -> None:
            try:
                loaded.set_result(load_model(self.path, cpu_float32=self.config.cpu_float32))
            except BaseException as exc:
                loaded.set_exception(exc)
            self._parked.wait()

        self._loader = threading.Thread(
            target=load, name=f"mlx-load-{self.model_name}", daemon=True
        )
        self._loader.start()
        return loaded.result()

    def _new_generator(self) -> Any:
        from mlx_lm.generate import BatchGenerator, StopSequences

        from serving.engine.lean_batch import install

        self._eos_stops = StopSequences([(t,) for t in self._eos_ids])
        gen = BatchGenerator(
            self._model,
            completion_batch_size=self.config.max_batch_size,
            prefill_batch_size=min(self.config.prefill_batch_size, self.config.max_batch_size),
            prefill_step_size=self.config.prefill_step_size,
            stream=self._stream_mx,
        )
        # the uids whose rows' log-probabilities a step keeps (requests that report them)
        self._report = install(gen, keep_cache_bytes=self._keep_cache_bytes).report
        return gen

    def _serve_once(self) -> bool:
        """Take the inbox's commands, then run one batch step; False once closed."""
        commands = []
        try:
            if not self._live:
                commands.append(self._inbox.get(timeout=1.0))
                commands += self._burst()
            while True:
                commands.append(self._inbox.get_nowait())
        except queue.Empty:
            pass
        for kind, seq in commands:
            if kind == "close":
                return False
            assert seq is not None
            if kind == "admit":
                self._waiting.append(seq)
            elif kind == "cancel":
                self._cancel(seq)
        self._fill()
        if self._solo is not None and len(self._live) > 1:
            self._rejoin()
        if self._live:
            if self._solo is None and self._may_go_solo():
                self._go_solo()
            if self._solo is not None:
                self._spec_step()
            else:
                self._step()
        return True

    def _burst(self) -> list[tuple[str, LiveSequence | None]]:
        """The commands that follow the one that woke an idle engine by less than
        `admit_gap_s` each (at most `admit_window_s` in all), so that requests sent together
        are prefilled as one batch rather than the first alone and the rest a step later; past
        a gap too while the server has requests on their way (`arrivals`)."""
        window, gap = self.config.admit_window_s, self.config.admit_gap_s
        out: list[tuple[str, LiveSequence | None]] = []
        if window <= 0 or gap <= 0:
            return out
        memory = self.config.admit_memory_s
        if memory is not None and time.monotonic() - self._last_together > memory:
            return out  # no other client lately: nobody to wait for
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self._inbox.get(timeout=min(gap, left)))
            except queue.Empty:
                if self.arrivals is not None and self.arrivals.pending():
                    continue  # the server is still reading requests that came with these
                break
            if out[-1][0] == "close":
                break
        return out

    def _fill(self) -> None:
        """Move waiting sequences into the batch, in order, while a row is free and the batch's
        KV cache stays within `kv_cache_bytes`. The head waits rather than being overtaken, so a
        long prompt is not starved by short ones: the batch drains until it fits."""
        while self._waiting and len(self._live) < self.config.max_batch_size:
            seq = self._waiting[0]
            if not self._kv_room(seq):
                if not seq.kv_waited:
                    seq.kv_waited = True
                    self._counters.kv_waits += 1
                return
            self._waiting.popleft()
            if self._may_prefill_solo(seq):
                self._prefill_solo(seq)
            else:
                self._admit(seq)
        if self._prefill_tokens:
            self._size_prefill()

    def _size_prefill(self) -> None:
        """Prefill as many of the waiting prompts together as fit `prefill_batch_tokens` at the
        longest one's chunk (mlx-lm pads the others to it)."""
        gen, conf = self._gen, self.config
        longest = max((sum(map(len, u[1])) for u in gen._unprocessed_sequences), default=0)
        if longest:
            rows = self._prefill_tokens // min(longest, max(1, conf.prefill_step_size))
            gen.prefill_batch_size = max(conf.prefill_batch_size, min(conf.max_batch_size, rows))

    def _kv_room(self, seq: LiveSequence) -> bool:
        """Whether the batch's KV cache, with `seq` in it, fits the budget. mlx-lm's batch cache
        pads every row to the longest and grows by `KV_STEP` tokens, so its size is about rows x
        (longest + one step) x bytes per token."""
        cap = self.config.kv_cache_bytes
        if cap <= 0 or not self._live or not self._kv_token_bytes:
            return True
        longest = max(
            len(seq.prompt), *(len(s.prompt) + s.completion_tokens for s in self._live.values())
        )
        rows = len(self._live) + 1
        return rows * (longest + KV_STEP) * self._kv_token_bytes <= cap

    def _fetch_prefix(self, seq: LiveSequence) -> tuple[Any, list[int]]:
        """The prefix cache's copy of the longest cached prefix of `seq`'s prompt (or None) and
        the tokens left to prefill; registers the prompt's checkpoints."""
        seq.admitted_ns = time.time_ns()
        cache, rest = None, seq.prompt
        if self._prefix is not None:
            cache, rest = self._prefix.fetch(seq.prompt)
            for n in seq.checkpoints:
                self._prefix.want_checkpoint(seq.prompt[:n])
        seq.cached_tokens = len(seq.prompt) - len(rest)
        return cache, rest

    def _admit(
        self, seq: LiveSequence, prefilled: tuple[Any, list[int], Any, list[Any]] | None = None
    ) -> None:
        """Insert `seq` into the batch: from the prefix cache, or (`prefilled`) from the cache,
        the tokens left, the sampler and the processors of a solo prefill handed over."""
        from serving.engine.sampling import make_logits_processors, make_sampler

        c = self._counters
        try:
            if prefilled is None:
                cache, rest = self._fetch_prefix(seq)
                sampler = make_sampler(seq.params, self._vocab_size, self._shared_samplers)
                processors = make_logits_processors(seq.params, len(seq.prompt))
            else:
                cache, rest, sampler, processors = prefilled
            if seq.matcher is not None:
                from serving.engine.grammar import constrain

                n_vocab = self._ll_tokenizer.vocab_size
                proc, sampler = constrain(
                    seq.matcher, n_vocab, len(seq.prompt), self._grammar, sampler
                )
                processors.append(proc)
            (seq.uid,) = self._gen.insert(
                [rest],
                max_tokens=[seq.max_tokens],
                caches=[cache] if cache is not None else None,
                all_tokens=[seq.prompt[: len(seq.prompt) - len(rest)]],
                samplers=[sampler],
                logits_processors=[processors],
                stop_sequences=[self._eos_stops],
            )
            seq.detokenizer = self._tokenizer.detokenizer
            if seq.reports_logprobs:
                self._report.add(seq.uid)
        except Exception as exc:
            log.exception("mlx engine: could not admit %s", seq.request_id)
            self._deliver(seq.send({}, self._failure(seq, exc)))
            return
        self._live[seq.uid] = seq
        c.requests_total += 1
        c.prompt_tokens_total += len(seq.prompt)

    def _cancel(self, seq: LiveSequence) -> None:
        if seq.uid is None and seq in self._waiting:  # never joined the batch
            self._waiting.remove(seq)
            seq.done = True
            return
        if seq.uid is not None and self._live.get(seq.uid) is seq:
            self._drop(seq)
            if self._solo is not None and self._solo.seq is seq:
                self._solo = None
                return
            try:
                self._gen.remove([seq.uid])
            except Exception:
                log.exception(
                    "mlx engine: could not remove %s; resetting the batch", seq.request_id
                )
                self._fail_all(EngineError)

    def _step(self) -> None:
        try:
            _, responses = self._gen.next()
        except Exception:
            log.exception("mlx engine: batch step failed; failing its sequences")
            self._fail_all(EngineError)
            return
        out: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        stopped: list[int] = []
        kept: list[tuple[list[int], Any]] = []  # finished sequences' caches, kept after delivery
        held = 0  # of them, sequences still counted as running until then
        now = time.monotonic()
        hold = self._holding(now, len(responses))
        for r in responses:
            seq = self._live.get(r.uid)
            if seq is None:
                continue
            delta: Delta | BaseException
            try:
                delta = self._on_token(seq, r)
            except Exception as exc:
                log.exception("mlx engine: sequence %s failed", seq.request_id)
                delta = self._failure(seq, exc)
                if r.finish_reason is None:
                    stopped.append(r.uid)
            else:
                if delta.finish_reason is not None:
                    held += self._drop(seq, keeping=self._prefix is not None)
                    if r.finish_reason is None:  # a stop string: still in the batch
                        stopped.append(r.uid)
                    elif self._prefix is not None:
                        kept.append((list(r.all_tokens), r.prompt_cache))
                elif hold and seq.hold(delta, now, self._hold_tokens, self._hold_s):
                    continue
            seq.send(out, delta)
        if stopped:
            try:
                caches = self._gen.remove(stopped, return_prompt_caches=self._prefix is not None)
                kept += [(list(tokens), cache) for cache, tokens in caches.values()]
            except Exception:
                log.exception("mlx engine: could not remove finished sequences; resetting")
                self._fail_all(EngineError)
                held = 0  # the reset counts nothing as running
        self._steps += 1
        if stopped or self._steps % 32 == 0 or len(self._live) != len(responses):
            self._counters.kv_bytes = self._gen.prompt_cache_nbytes
        self._deliver(out)
        self._keep_prefixes(kept, held)

    def _holding(self, now: float, streams: int) -> bool:
        """Whether this step's deltas may be held back (`coalesce_*` in the config): enough
        streams, and steps short enough (the last one's) that a group fills within the hold."""
        last, self._last_step = self._last_step, now
        return (
            0 < self.config.coalesce_streams <= streams
            and (now - last) * (self._hold_tokens - 1) <= self._hold_s
        )

    def _on_token(self, seq: LiveSequence, r: Any) -> Delta:
        if not seq.started:
            self._counters.running += 1
        if r.finish_reason != "stop":
            self._counters.generation_tokens_total += 1
        if seq.matcher is not None and r.finish_reason != "stop" and seq.matcher.is_stopped():
            # The grammar is complete with this token (its processor has consumed it): end now,
            # without a step for end-of-sequence, and as "stop" even on the last allowed token.
            delta = seq.on_token(r.token, "length", r.logprobs, self._token_text)
            delta.finish_reason = "stop"
            return delta
        return seq.on_token(r.token, r.finish_reason, r.logprobs, self._token_text)

    # -- speculative decoding of a sequence that runs alone (speculative.py) ------------------------

    def _speculable(self, seq: LiveSequence) -> bool:
        """Whether `seq` may decode speculatively: its output can be verified exactly, and the
        model's cache can roll back."""
        from serving.engine.speculative import ineligible

        if self.config.speculative != "auto" or seq.completion_tokens < seq.speculate_after:
            return False
        if ineligible(seq.params, seq.matcher is not None) is not None:
            return False
        if self._trimmable is None:
            from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache

            self._trimmable = can_trim_prompt_cache(make_prompt_cache(self._model))
        return self._trimmable

    def _may_go_solo(self) -> bool:
        """One sequence is live, past its first token, and its output can be verified exactly."""
        if len(self._live) != 1:
            return False
        (seq,) = self._live.values()
        return seq.started and self._speculable(seq)

    def _may_prefill_solo(self, seq: LiveSequence) -> bool:
        """`seq` arrives at an idle engine with nobody behind it, and may decode speculatively:
        it is prefilled outside the batch and stays there (`_prefill_solo`)."""
        return (
            not self._live
            and self._solo is None
            and not self._waiting
            and self.config.solo_prefill
            and self._speculable(seq)
        )

    def _prefill_solo(self, seq: LiveSequence) -> None:
        """Prefill a lone sequence on its own cache, sample its first token and deliver it at
        once, then decode it speculatively (`_spec_step`). The batch would prefill the same
        tokens, but with a merged copy of the cached prefix, `mx.clear_cache()` after each chunk
        (5-7 ms on CUDA), a split into the decode batch, and the first token delivered only
        after the second step is launched: on an H200, ~20 ms of a warm agent turn's ~30 ms in
        the engine (docs/decisions/solo-prefill.md). If a request arrives between chunks of a
        long prompt, the sequence joins the batch with what it has prefilled."""
        from mlx_lm.models.cache import make_prompt_cache

        from serving.engine.lean_batch import release_cache
        from serving.engine.sampling import make_logits_processors, make_sampler
        from serving.engine.speculative import processed_logits, verify

        mx = self._mx
        self._solo_uid -= 1
        seq.uid = self._solo_uid
        try:
            cache, rest = self._fetch_prefix(seq)
            if cache is None:
                cache = make_prompt_cache(self._model)
            sampler = make_sampler(seq.params, self._vocab_size, self._shared_samplers)
            processors = make_logits_processors(seq.params, len(seq.prompt))
            step = max(1, self.config.prefill_step_size)
            with mx.stream(self._stream_mx):
                while len(rest) > step:
                    self._model(mx.array([rest[:step]]), cache=cache)
                    mx.eval([c.state for c in cache])
                    release_cache(self._keep_cache_bytes)
                    rest = rest[step:]
                    if not self._inbox.empty():  # someone else came: share the prefill
                        seq.uid = None
                        self._admit(seq, (cache, rest, sampler, processors))
                        return
                logits = self._model(mx.array([rest]), cache=cache)[0, -1:, :]
                logits = processed_logits(logits, seq.prompt, [], processors)
                scaled = getattr(sampler, "scaled_logits", None)  # None: greedy
                if scaled is not None:  # as `_spec_step`: greedy takes the raw argmax
                    logits = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                _, token = verify(logits, [], scaled)
            seq.detokenizer = self._tokenizer.detokenizer
            self._live[seq.uid] = seq
            self._counters.requests_total += 1
            self._counters.prompt_tokens_total += len(seq.prompt)
            deltas, _ = self._emit(seq, [token])
        except Exception as exc:
            log.exception("mlx engine: could not prefill %s", seq.request_id)
            self._deliver(seq.send({}, self._failure(seq, exc)))
            return
        finished = deltas[-1].finish_reason is not None
        if finished:
            held = self._drop(seq, keeping=self._prefix is not None)
        else:
            self._solo = _Solo(
                seq=seq,
                cache=cache,
                drafter=NgramDrafter([*seq.prompt, token]),
                sampler=sampler,
                processors=processors,
                length=DraftLength(),
            )
            self._counters.kv_bytes = sum(c.nbytes for c in cache)
        out: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for d in deltas:
            seq.send(out, d)
        self._deliver(out)
        # The last chunk's temporaries go back after the first token is out: on CUDA a release
        # past the buffer cache's bound took 17-24 ms, once every ~10 warm agent turns.
        release_cache(self._keep_cache_bytes)
        if finished:
            self._keep_prefixes([(seq.prompt, cache)], held)

    def _go_solo(self) -> None:
        """Take the live sequence out of the batch with its cache. The batch has fed its last
        token already and sampled the next one ahead; that sample is dropped, and the cache gives
        back the last token so that the first verify step feeds it again."""
        from mlx_lm.models.cache import trim_prompt_cache

        from serving.engine.sampling import make_logits_processors, make_sampler

        (seq,) = self._live.values()
        assert seq.uid is not None
        try:
            cache, tokens = self._gen.remove([seq.uid], return_prompt_caches=True)[seq.uid]
            trim_prompt_cache(cache, 1)
        except Exception:
            log.exception("mlx engine: could not take %s out of the batch", seq.request_id)
            self._fail_all(EngineError)
            return
        self._solo = _Solo(
            seq=seq,
            cache=cache,
            drafter=NgramDrafter(tokens),
            sampler=make_sampler(seq.params, self._vocab_size, self._shared_samplers),
            processors=make_logits_processors(seq.params, len(seq.prompt)),
            length=DraftLength(),
        )
        self._counters.kv_bytes = sum(c.nbytes for c in cache)

    def _rejoin(self) -> None:
        """Put the speculative sequence back into the batch: its cache, and its last token as
        the one-token prompt the batch feeds next (as an exact prefix-cache hit does)."""
        solo, self._solo = self._solo, None
        assert solo is not None
        seq, tokens = solo.seq, solo.drafter.tokens
        try:
            (uid,) = self._gen.insert(
                [tokens[-1:]],
                max_tokens=[seq.max_tokens - seq.completion_tokens],
                caches=[solo.cache],
                all_tokens=[tokens[:-1]],
                samplers=[solo.sampler],
                logits_processors=[solo.processors],
                stop_sequences=[self._eos_stops],
            )
        except Exception as exc:
            log.exception("mlx engine: could not put %s back into the batch", seq.request_id)
            self._deliver(seq.send({}, self._failure(seq, exc)))
            return
        self._live.pop(seq.uid or -1, None)
        seq.uid = uid
        self._live[uid] = seq
        if seq.reports_logprobs:
            self._report.add(uid)

    def _spec_step(self) -> None:
        """One verify forward of the solo sequence; every emitted token is its own delta."""
        from mlx_lm.models.cache import trim_prompt_cache

        from serving.engine.speculative import processed_logits, verify

        solo = self._solo
        assert solo is not None
        seq, mx = solo.seq, self._mx
        context = solo.drafter.tokens
        left = seq.max_tokens - seq.completion_tokens
        draft = solo.drafter.propose(min(solo.length.k, left - 1))
        scaled = solo.sampler.scaled_logits if solo.sampler is not None else None
        try:
            with mx.stream(self._stream_mx):
                logits = self._model(mx.array([context[-1:] + draft]), cache=solo.cache)[0]
                logits = processed_logits(logits, context, draft, solo.processors)
                if scaled is not None:  # greedy takes the argmax, as the batch does (lean_batch.py)
                    logits = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
                accepted, token = verify(logits, draft, scaled)
            deltas, emitted = self._emit(seq, [*draft[:accepted], token])
        except Exception as exc:
            log.exception("mlx engine: speculative step failed for %s", seq.request_id)
            self._solo = None
            self._deliver(seq.send({}, self._failure(seq, exc)))
            return
        self._spec.add(len(draft), accepted, len(emitted))
        finished = deltas[-1].finish_reason is not None
        kept: list[tuple[list[int], Any]] = []
        held = 0
        if finished:
            self._solo = None
            held = self._drop(seq, keeping=self._prefix is not None)
            fed = context + draft  # what the cache holds now
            final = context + emitted
            keep = len(context) + next(
                (i for i, (a, b) in enumerate(zip(draft, emitted, strict=False)) if a != b),
                min(len(draft), len(emitted)),
            )
            trim_prompt_cache(solo.cache, len(fed) - keep)
            self._counters.kv_bytes = 0
            kept.append((final[:keep], solo.cache))
        else:
            trim_prompt_cache(solo.cache, len(draft) - accepted)
            self._counters.kv_bytes = sum(c.nbytes for c in solo.cache)
            solo.drafter.extend(emitted)
            solo.length.update(len(draft), accepted)
            if solo.length.backoff():
                seq.speculate_after = seq.completion_tokens + self.config.speculative_backoff_tokens
                self._rejoin()
        out: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for d in deltas:
            seq.send(out, d)
        self._deliver(out)
        if finished:
            self._keep_prefixes(kept, held)

    def _emit(self, seq: LiveSequence, tokens: list[int]) -> tuple[list[Delta], list[int]]:
        """The deltas of a step's tokens, in order, up to the first that ends the sequence
        (end-of-sequence, max_tokens, a stop string); and the tokens they took."""
        deltas: list[Delta] = []
        for i, token in enumerate(tokens):
            reason = None
            if token in self._eos_ids:
                reason = "stop"
            elif seq.completion_tokens + 1 >= seq.max_tokens:
                reason = "length"
            deltas.append(self._on_token(seq, _SoloToken(token, reason)))
            if deltas[-1].finish_reason is not None:
                return deltas, tokens[: i + 1]
        return deltas, tokens

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self._tokenizer.decode([token]))
        return text

    def _keep_prefixes(self, kept: list[tuple[list[int], Any]], held: int) -> None:
        """Put finished sequences' caches in the prefix cache, after their last deltas went out:
        keeping evaluates each cache's slice of the batch (a copy) and may queue it for the disk
        tier, which the streams' last tokens need not wait for. The `held` sequences count as
        running until then, so that a client who sees the engine idle sees all of its memory
        counted (weights, live KV, prefix cache)."""
        try:
            kept = [(t, c) for t, c in kept if t and c is not None]
            if self._prefix is None or not kept:
                return
            # A sequence's cache comes out of the batch as lazy slices (`BatchKVCache.extract`):
            # kept unevaluated, each holds the whole batch's KV buffers alive while `nbytes`
            # counts only its slice, so the byte cap never bit and RSS grew by GBs (the soak,
            # issue 19). Evaluating copies the slices out and lets the batch buffers go: one
            # `eval` for all of a step's, one wait for the device.
            from mlx.utils import tree_flatten

            mx = self._mx
            flat: Any = tree_flatten([[c.state for c in cache] for _, cache in kept])
            mx.eval([v for _, v in flat if isinstance(v, mx.array)])
            for tokens, cache in kept:
                self._prefix.insert(tokens, cache)
        finally:
            self._counters.running -= held

    def _drop(self, seq: LiveSequence, keeping: bool = False) -> int:
        """Take `seq` out of the live set. With `keeping`, a sequence that counted as running
        still does, until `_keep_prefixes` keeps its cache: returns 1 then, else 0."""
        seq.done = True
        self._report.discard(seq.uid or -1)
        if seq.uid is not None and self._live.pop(seq.uid, None) is not None and seq.started:
            if keeping:
                return 1
            self._counters.running -= 1
        return 0

    def _failure(self, seq: LiveSequence, exc: BaseException) -> BaseException:
        self._drop(seq)
        if isinstance(exc, EngineError):
            return exc
        err = EngineError(f"Generation failed for request {seq.request_id}: {type(exc).__name__}")
        err.__cause__ = exc
        return err

    def _fail_all(
        self, kind: type[EngineError], message: str | None = None, *, restart: bool = True
    ) -> None:
        """End every live sequence with `kind`; start from a fresh batch unless shutting down."""
        out: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for seq in list(self._live.values()):
            msg = message or f"The engine failed while generating request {seq.request_id}."
            seq.send(out, self._failure(seq, kind(msg)))
        self._live.clear()
        self._solo = None
        self._counters.running = 0
        try:
            self._gen.close()
        except Exception:
            log.exception("mlx engine: closing the batch generator failed")
        self._gen = self._new_generator() if restart else None
        self._counters.kv_bytes = 0
        self._deliver(out)

    def _deliver(self, out: dict[asyncio.AbstractEventLoop, list[Any]]) -> None:
        for loop, items in out.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # that event loop is closed: nobody is listening
                for seq in [s for s in self._live.values() if s.loop is loop]:
                    self._cancel(seq)

    def _shutdown(self) -> None:
        closed = f"Model {self.model_name!r} was unloaded; load it again."
        self._fail_all(EngineClosedError, closed, restart=False)
        out: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        while self._waiting:
            waiting = self._waiting.popleft()
            waiting.done = True
            out.setdefault(waiting.loop, []).append((waiting.queue, EngineClosedError(closed)))
        try:
            while True:
                kind, seq = self._inbox.get_nowait()
                if kind == "admit" and seq is not None:
                    seq.done = True
                    out.setdefault(seq.loop, []).append((seq.queue, EngineClosedError(closed)))
        except queue.Empty:
            pass
        self._deliver(out)
        if self._prefix is not None:
            self._prefix.close()  # writes what the disk tier has queued
        self._prefix = None
        self._model = None
        self._counters.kv_bytes = 0
        self._weights_bytes = 0


__all__ = ["MLXEngine", "MLXEngineConfig"]
