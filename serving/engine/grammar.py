"""Constrained decoding inside the continuous batch: llguidance token masks applied with MLX ops.

A constrained sequence carries two per-sequence hooks that mlx-lm's `BatchGenerator` already
takes, so it never leaves the batch:
- a logits processor (`GrammarProcessor`), which advances the sequence's `LLMatcher` with the
  tokens generated since its last call and asks the step's `GrammarStep` for a mask;
- a sampler (`GrammarSampler`), which masks the row's log-probabilities and samples (greedy or
  with the sequence's own keyed sampler).

mlx-lm calls every row's processors before any row's sampler, so the first grammar sampler of a
decode step has all constrained rows of that step waiting: it starts the step's forward pass
(`mx.async_eval`), fills one bitmask for all those rows while MLX computes (llguidance drops the
GIL), and turns it into one boolean MLX mask that each row's sampler slices. A matcher that has
finished (or failed) allows only end-of-sequence, which stops the sequence.

The log-probabilities a constrained sequence reports (logprobs=true) are the model's, before the
mask. `compile_matcher` turns a request's `Constraint` (serving/engine/base.py) into the matcher,
at request time, so that a grammar llguidance cannot enforce is a 400 before anything is queued.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import numpy as np

from serving.engine.base import Constraint, InvalidRequestError

log = logging.getLogger(__name__)


class GrammarStep:
    """The engine's constrained rows of the current decode step, and their masks."""

    def __init__(self, vocab_size: int, eos_ids: list[int]) -> None:
        self.vocab_size = vocab_size  # the model's (logits) vocabulary
        self._eos = eos_ids
        self._pending: list[GrammarProcessor] = []
        self._masks: mx.array | None = None
        self._rows: dict[int, int] = {}  # id(processor) -> row of _masks
        self._bitmask = np.zeros((0, 0), dtype=np.int32)
        # Made here, on the engine thread: an MLX array made at import time belongs to the
        # stream of whichever thread imported the module, and fails to evaluate on this one.
        self._shifts = mx.arange(32, dtype=mx.int32)
        self.mask_seconds = 0.0  # total time spent filling masks (for benchmarks)

    def want(self, proc: GrammarProcessor) -> None:
        proc.pending = True
        self._pending.append(proc)

    def mask_for(self, proc: GrammarProcessor, pending_logits: mx.array) -> mx.array:
        """The row's boolean mask (1, vocab); the first row that needs a new mask computes the
        masks of every row waiting."""
        if proc.pending:
            self._fill(pending_logits)
        return self._masks[self._rows[id(proc)]][None]  # type: ignore[index]

    def _fill(self, pending_logits: mx.array) -> None:
        import time

        import llguidance.numpy as lnp

        rows = self._pending
        self._pending = []
        for proc in rows:
            proc.pending = False
        mx.async_eval(pending_logits)  # the forward pass runs while the masks are computed
        t0 = time.perf_counter()
        words = (rows[0].n_vocab + 31) // 32
        if self._bitmask.shape[0] < len(rows) or self._bitmask.shape[1] != words:
            self._bitmask = np.zeros((max(len(rows), 8), words), dtype=np.int32)
        bm = self._bitmask
        for i, proc in enumerate(rows):
            if proc.matcher.is_error() or proc.matcher.is_stopped():
                bm[i] = 0
                for t in self._eos:
                    bm.view(np.uint32)[i, t // 32] |= np.uint32(1 << (t % 32))
            else:
                lnp.fill_next_token_bitmask(proc.matcher, bm, i)
        self.mask_seconds += time.perf_counter() - t0
        packed = mx.array(bm[: len(rows)])
        bits = ((packed[:, :, None] >> self._shifts) & 1).reshape(len(rows), -1).astype(mx.bool_)
        if bits.shape[1] >= self.vocab_size:
            bits = bits[:, : self.vocab_size]
        else:  # the model has more rows than the tokenizer has tokens: those stay disallowed
            pad = mx.zeros((len(rows), self.vocab_size - bits.shape[1]), dtype=mx.bool_)
            bits = mx.concatenate([bits, pad], axis=1)
        self._masks = bits
        self._rows = {id(p): i for i, p in enumerate(rows)}


class GrammarProcessor:
    """Logits processor of one constrained sequence: advance the matcher, request a mask."""

    def __init__(self, matcher: Any, n_vocab: int, prompt_len: int, step: GrammarStep) -> None:
        self.matcher = matcher
        self.n_vocab = n_vocab  # the tokenizer's vocabulary (bitmask width)
        self._prompt_len = prompt_len
        self._consumed = 0
        self._step = step
        self.pending = False  # advanced, waiting for its mask

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        generated = tokens.size - self._prompt_len
        if generated > self._consumed:
            new: list[int] = tokens[self._prompt_len + self._consumed :].tolist()  # type: ignore[assignment]
            self._consumed = generated
            for t in new:
                if not self.matcher.consume_token(t):
                    log.warning("grammar rejected token %d: %s", t, self.matcher.get_error())
                    break
        self._step.want(self)
        return logits


class GrammarSampler:
    """Sampler of one constrained sequence: its mask, then greedy or its own sampler."""

    def __init__(
        self,
        processor: GrammarProcessor,
        step: GrammarStep,
        inner: Callable[[mx.array], mx.array] | None,
    ) -> None:
        self._proc = processor
        self._step = step
        self._inner = inner

    def __call__(self, logprobs: mx.array) -> mx.array:
        allowed = self._step.mask_for(self._proc, logprobs)
        masked = mx.where(allowed, logprobs, mx.array(-float("inf"), dtype=logprobs.dtype))
        if self._inner is None:
            return mx.argmax(masked, axis=-1)
        # renormalise: top-p and min-p read probabilities
        return self._inner(masked - mx.logsumexp(masked, axis=-1, keepdims=True))


def constrain(
    matcher: Any,
    n_vocab: int,
    prompt_len: int,
    step: GrammarStep,
    sampler: Callable[[mx.array], mx.array] | None,
) -> tuple[GrammarProcessor, GrammarSampler]:
    """The processor (append it last) and sampler of a constrained sequence."""
    proc = GrammarProcessor(matcher, n_vocab, prompt_len, step)
    return proc, GrammarSampler(proc, step, sampler)


def compile_matcher(constraint: Constraint, tokenizer: Any) -> Any:
    """An `llguidance.LLMatcher` for the constraint on llguidance's view of the tokenizer;
    InvalidRequestError naming what llguidance could not compile (an unsupported keyword, a bad
    regex) otherwise."""
    import llguidance

    matcher = llguidance.LLMatcher(tokenizer, constraint.grammar, log_level=0)
    if matcher.is_error():
        what = (
            "the tool parameters" if constraint.param == "tools" else "the response_format schema"
        )
        raise InvalidRequestError(
            f"Impetus cannot enforce {what}: {matcher.get_error().strip()}. Remove or rewrite "
            "that part of the schema.",
            param=constraint.param,
        )
    return matcher
