"""The MLX engine: continuous batching on mlx-lm's `BatchGenerator`, behind `serving.engine.base.Engine`.

Seams, one sentence each:
- One thread owns the model, the `BatchGenerator` and the prefix cache: every MLX call after the
  load happens there, and an error there ends the affected requests, never the thread. (The
  weights load in a helper thread: `_load_weights` says why.)
- The async side validates and tokenizes a request, then talks to the thread through a
  thread-safe inbox (admit, cancel, close); deltas come back to each request's asyncio queue by
  `loop.call_soon_threadsafe`, one call per event loop per decode step.
- New sequences join the running batch between decode steps (mlx-lm interleaves one prefill
  chunk per step); each carries its sampler (a seeded one has its own PRNG key; unseeded ones
  with equal parameters share one, so that the batch samples in one call: sampling.py),
  its own logits processors, and its own stop strings (stops.py). An idle engine admits
  a burst of requests together, so that they are prefilled as one batch.
- Finished sequences leave their KV cache in a prompt-prefix cache (mlx-lm's `LRUPromptCache`)
  capped in bytes; a later prompt that shares a prefix starts from a copy of it.

- The engine reads no wire format: it applies the chat template to a request's `messages` (with
  its `tools` as the template's argument), or tokenizes `prompt`, or takes `prompt_ids`, and
  compiles its `Constraint` into a matcher (grammar.py); `capabilities()` tells whoever
  translates requests whether the template renders tools.

Measure it against raw `mlx_lm.stream_generate` with `impetus bench serving`
(flows/bench/serving.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from serving.engine.base import (
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
from serving.engine.sampling import validate_params
from serving.engine.sequence import LiveSequence
from serving.engine.stops import StopStrings
from serving.engine.window import fit_window

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MLXEngineConfig:
    """How one MLX engine batches, queues and caches."""

    max_batch_size: int = 16  # sequences decoded together
    prefill_batch_size: int = 8  # prompts prefilled together
    prefill_step_size: int = 512  # prompt tokens per prefill chunk (one chunk between decode steps)
    queue_limit: int = 64  # waiting + running sequences; past it generate raises QueueFullError
    retry_after: float = 1.0  # seconds, suggested to a client turned away
    prefix_cache_bytes: int = 512 << 20  # 0 turns the prefix cache off
    # An idle engine woken by a request takes, before its first step, the requests that follow
    # it by less than admit_gap_s (up to admit_window_s in all): a burst of clients starts as
    # one prefill batch. A lone request waits admit_gap_s at most; 0 turns it off.
    admit_window_s: float = 0.02
    admit_gap_s: float = 0.003
    max_context_tokens: int | None = None  # None: the model's max_position_embeddings
    # MLX's CPU backend computes float16 about 100x slower than float32, and its quantized matmul
    # does not use BLAS: on the CPU, dequantize to float32 (OpenBLAS GEMMs); Metal keeps 4-bit.
    cpu_float32: bool = True
    # A chat template without tool support gets the tools as a prompt in the messages (the HTTP
    # side writes it: `capabilities()` says so); False turns such requests away with a 400 instead.
    tool_prompt_fallback: bool = True


@dataclass
class _Counters:
    requests_total: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    hits: int = 0
    misses: int = 0
    running: int = 0
    kv_bytes: int = 0
    prefix_bytes: int = 0


def load_model(path: Path, *, cpu_float32: bool = True) -> tuple[Any, Any]:
    """`mlx_lm.load`, then on the CPU backend dequantized to float32 (see MLXEngineConfig and
    pipelines/models/loading.py, which the benchmarks share)."""
    from pipelines.models.loading import load_llm

    return load_llm(path, "auto" if cpu_float32 else "native")


def chat_template_renders_tools(chat_template: str | None) -> bool:
    """Whether a chat template renders the `tools` it is given (it mentions them at all)."""
    return bool(chat_template) and re.search(r"\btools\b", chat_template or "") is not None


def _put_all(
    items: list[tuple[asyncio.Queue[Delta | BaseException], Delta | BaseException]],
) -> None:
    for q, item in items:
        q.put_nowait(item)


class MLXEngine:
    """An `Engine` on one MLX model. Build it with `MLXEngine.load(path, name)`."""

    def __init__(self, path: Path, model_name: str, config: MLXEngineConfig) -> None:
        self.model_name = model_name
        self.path = path
        self.config = config
        self._inbox: queue.SimpleQueue[tuple[str, LiveSequence | None]] = queue.SimpleQueue()
        self._slots = threading.Lock()
        self._admitted = 0
        self._closed = False
        self._ready = threading.Event()
        self._parked = threading.Event()  # set when the engine thread ends: frees the loader
        self._loader: threading.Thread | None = None  # the thread that loads the weights
        self._load_error: BaseException | None = None
        self._tok_lock = threading.Lock()
        self._counters = _Counters()
        self._thread = threading.Thread(
            target=self._run, name=f"mlx-engine-{model_name}", daemon=True
        )
        # Set by the engine thread at load.
        self._tokenizer: Any = None
        self._context = 0
        self._vocab_size = 0
        self._weights_bytes = 0
        self._token_texts: dict[int, str] = {}
        self._ll_tokenizer: Any = None  # llguidance's view of the tokenizer, built on first use

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
        retry_after: float | None = None,
    ) -> MLXEngine:
        """Load the model folder (blocking: call it off the event loop) and start the engine."""
        overrides: dict[str, Any] = {
            "max_batch_size": max_batch_size,
            "queue_limit": queue_limit,
            "prefix_cache_bytes": prefix_cache_bytes,
            "retry_after": retry_after,
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
        return self._stream(request.request_id, prompt, params, max_tokens, matcher)

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(self._encode(request))

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        if request.prompt is not None and add_special_tokens is not None:
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
        return EngineStats(
            model=self.model_name,
            queue_depth=max(0, self._admitted - running),
            queue_limit=self.config.queue_limit,
            batch_size=running,
            requests_total=c.requests_total,
            prompt_tokens_total=c.prompt_tokens_total,
            generation_tokens_total=c.generation_tokens_total,
            prefix_cache_hits=c.hits,
            prefix_cache_misses=c.misses,
            prefix_cache_bytes=c.prefix_bytes,
            prefix_cache_limit_bytes=self.config.prefix_cache_bytes,
            memory_bytes=self._weights_bytes + c.kv_bytes + c.prefix_bytes,
        )

    async def close(self) -> None:
        with self._slots:
            if not self._closed:
                self._closed = True
                self._inbox.put(("close", None))
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    async def _stream(
        self,
        request_id: str,
        prompt: list[int],
        params: SamplingParams,
        max_tokens: int,
        matcher: Any = None,
    ) -> AsyncIterator[Delta]:
        seq = LiveSequence(
            request_id=request_id,
            prompt=prompt,
            params=params,
            max_tokens=max_tokens,
            loop=asyncio.get_running_loop(),
            queue=asyncio.Queue(),
            stops=StopStrings(params.stop),
            matcher=matcher,
        )
        with self._slots:  # under the lock that close() takes: an admit never follows "close"
            if self._closed or not self._thread.is_alive():
                raise EngineClosedError(f"Model {self.model_name!r} was unloaded; load it again.")
            if self._admitted >= self.config.queue_limit:
                raise self._queue_full()
            self._admitted += 1
            self._inbox.put(("admit", seq))
        try:
            while True:
                item = await seq.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Closed early (client gone, task cancelled): the thread drops it from the batch.
            if not seq.done:
                self._inbox.put(("cancel", seq))
            with self._slots:
                self._admitted -= 1

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
            ids = self._tokenize(request)
        if not ids:
            raise InvalidRequestError("The prompt is empty.", param="prompt")
        return [int(t) for t in ids]

    def _tokenize(self, request: GenerationRequest) -> Any:
        tok = self._tokenizer
        with self._tok_lock:
            if request.messages is not None:
                if not request.messages:
                    raise InvalidRequestError("messages must not be empty.", param="messages")
                template_args = dict(request.template_kwargs)
                if request.tools is not None:
                    template_args["tools"] = request.tools
                try:
                    ids: Any = tok.apply_chat_template(
                        request.messages, add_generation_prompt=True, **template_args
                    )
                except Exception as exc:
                    raise InvalidRequestError(
                        f"The model's chat template rejected the messages: {exc}", param="messages"
                    ) from exc
                if not isinstance(ids, list):  # a BatchEncoding in some transformers versions
                    ids = list(ids["input_ids"])
                return ids
            text = request.prompt or ""
            bos = tok.bos_token
            return tok.encode(text, add_special_tokens=bos is None or not text.startswith(bos))

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
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.models.cache import LRUPromptCache

        self._mx = mx
        model, tokenizer = self._load_weights()
        self._model = model
        params: Any = tree_flatten(model.parameters())
        self._weights_bytes = sum(v.nbytes for _, v in params)
        cfg = json.loads((self.path / "config.json").read_text())
        self._context = self.config.max_context_tokens or int(
            cfg.get("max_position_embeddings", 4096)
        )
        self._vocab_size = int(cfg.get("vocab_size", 0)) or len(tokenizer.vocab)
        self._eos_ids = set(tokenizer.eos_token_ids)
        self._stream_mx = mx.default_stream(mx.default_device())
        self._prefix = (
            LRUPromptCache(max_size=1 << 30, max_bytes=self.config.prefix_cache_bytes)
            if self.config.prefix_cache_bytes > 0
            else None
        )
        self._live: dict[int, LiveSequence] = {}
        self._steps = 0
        from serving.engine.sampling import SharedSamplers

        self._shared_samplers = SharedSamplers()
        from serving.engine.grammar import GrammarStep

        self._grammar = GrammarStep(
            int(cfg.get("vocab_size", 0)) or self._vocab_size, sorted(self._eos_ids)
        )
        self._gen = self._new_generator()
        self._tokenizer = tokenizer

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

        self._eos_stops = StopSequences([(t,) for t in self._eos_ids])
        return BatchGenerator(
            self._model,
            completion_batch_size=self.config.max_batch_size,
            prefill_batch_size=min(self.config.prefill_batch_size, self.config.max_batch_size),
            prefill_step_size=self.config.prefill_step_size,
            stream=self._stream_mx,
        )

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
                self._admit(seq)
            elif kind == "cancel":
                self._cancel(seq)
        if self._live:
            self._step()
        return True

    def _burst(self) -> list[tuple[str, LiveSequence | None]]:
        """The commands that follow the one that woke an idle engine by less than
        `admit_gap_s` each (at most `admit_window_s` in all), so that requests sent together
        are prefilled as one batch rather than the first alone and the rest a step later."""
        window, gap = self.config.admit_window_s, self.config.admit_gap_s
        out: list[tuple[str, LiveSequence | None]] = []
        if window <= 0 or gap <= 0:
            return out
        deadline = time.monotonic() + window
        while (left := deadline - time.monotonic()) > 0:
            try:
                out.append(self._inbox.get(timeout=min(gap, left)))
            except queue.Empty:
                break
            if out[-1][0] == "close":
                break
        return out

    def _admit(self, seq: LiveSequence) -> None:
        from mlx_lm.models.cache import trim_prompt_cache

        from serving.engine.sampling import make_logits_processors, make_sampler

        c = self._counters
        try:
            cache, rest = None, seq.prompt
            if self._prefix is not None:
                cache, rest = self._prefix.fetch_nearest_cache(self.model_name, seq.prompt)
                if cache is not None and not rest:  # an exact hit: recompute the last token
                    trim_prompt_cache(cache, 1)
                    rest = seq.prompt[-1:]
                if cache is None:
                    c.misses += 1
                else:
                    c.hits += 1
            seq.cached_tokens = len(seq.prompt) - len(rest)
            sampler = make_sampler(seq.params, self._vocab_size, self._shared_samplers)
            processors = make_logits_processors(seq.params, len(seq.prompt))
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
                all_tokens=[seq.prompt[: seq.cached_tokens]],
                samplers=[sampler],
                logits_processors=[processors],
                stop_sequences=[self._eos_stops],
            )
            seq.detokenizer = self._tokenizer.detokenizer
        except Exception as exc:
            log.exception("mlx engine: could not admit %s", seq.request_id)
            self._deliver({seq.loop: [(seq.queue, self._failure(seq, exc))]})
            return
        self._live[seq.uid] = seq
        c.requests_total += 1
        c.prompt_tokens_total += len(seq.prompt)

    def _cancel(self, seq: LiveSequence) -> None:
        if seq.uid is not None and self._live.get(seq.uid) is seq:
            self._drop(seq)
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
                    self._drop(seq)
                    if r.finish_reason is None:  # a stop string: still in the batch
                        stopped.append(r.uid)
                    elif self._prefix is not None:
                        self._keep_prefix(list(r.all_tokens), r.prompt_cache)
            out.setdefault(seq.loop, []).append((seq.queue, delta))
        if stopped:
            try:
                caches = self._gen.remove(stopped, return_prompt_caches=self._prefix is not None)
                for cache, tokens in caches.values():
                    self._keep_prefix(list(tokens), cache)
            except Exception:
                log.exception("mlx engine: could not remove finished sequences; resetting")
                self._fail_all(EngineError)
        self._steps += 1
        if stopped or self._steps % 32 == 0 or len(self._live) != len(responses):
            self._counters.kv_bytes = self._gen.prompt_cache_nbytes
        self._deliver(out)

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

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = str(self._tokenizer.decode([token]))
        return text

    def _keep_prefix(self, tokens: list[int], cache: Any) -> None:
        if self._prefix is None or not tokens or cache is None:
            return
        self._prefix.insert_cache(self.model_name, tokens, cache)
        self._counters.prefix_bytes = self._prefix.nbytes

    def _drop(self, seq: LiveSequence) -> None:
        seq.done = True
        if seq.uid is not None and self._live.pop(seq.uid, None) is not None and seq.started:
            self._counters.running -= 1

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
            out.setdefault(seq.loop, []).append((seq.queue, self._failure(seq, kind(msg))))
        self._live.clear()
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
        try:
            while True:
                kind, seq = self._inbox.get_nowait()
                if kind == "admit" and seq is not None:
                    seq.done = True
                    out.setdefault(seq.loop, []).append((seq.queue, EngineClosedError(closed)))
        except queue.Empty:
            pass
        self._deliver(out)
        self._prefix = None
        self._model = None
        self._counters.prefix_bytes = self._counters.kv_bytes = 0
        self._weights_bytes = 0


__all__ = ["MLXEngine", "MLXEngineConfig"]
