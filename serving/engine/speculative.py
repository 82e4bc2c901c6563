"""Prompt-lookup speculative decoding: draft tokens from the text so far, verified in one forward.

A grounded answer copies from its prompt (a RAG context, a file to edit, the previous turn), so
the tokens that followed the last few tokens the last time they appeared are a cheap draft
(prompt lookup, Saxena 2023; vLLM's and llama.cpp's "ngram" drafters). No draft model: `NgramDrafter`
keeps an index of the n-grams of the prompt and the output so far and proposes the continuation
of the longest (then most recent) match of the sequence's suffix.

The target model scores `[last token] + draft` in one forward; `verify` turns those k+1 rows of
logits into the tokens to emit:
- greedy (temperature 0, or top_k 1): the draft's prefix that equals the argmax, then the argmax
  after it, so the output is the non-speculative output token for token;
- sampling: the draft is a point mass q = δ(d), so speculative sampling (Leviathan et al. 2023)
  accepts d with probability p(d) and, on rejection, samples from p with d removed and
  renormalised (max(0, p − q) normalised); if every draft token is accepted, the row after the
  last one gives one more token. Each emitted token is then distributed as p, the sequence's own
  distribution: the logits processors (logit bias, penalties: sampling.py) run on each row with
  the context that row would have had, and `KeyedSampler.scaled_logits` applies its filters and
  temperature, exactly as the batch does.

What cannot be verified exactly here stays in the batch (`ineligible` says why): a grammar
(llguidance's matcher cannot be rewound cheaply), logprobs (the draft rows' logprobs are the
same, but the delivery code reads rows of the batch), and seeded requests (their key chain would
draw a different sequence than in the batch: a seed promises the same tokens whatever runs
alongside).

`SpecStats` counts steps, drafted, accepted and emitted tokens for `EngineStats`; `DraftLength`
adapts k to the sequence's recent acceptance and says when to stop speculating for a while.
The engine (mlx_engine.py) owns when a sequence leaves and rejoins the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import mlx.core as mx

from serving.engine.base import SamplingParams
from serving.engine.sampling import LogitsProcessor, is_greedy

MAX_NGRAM = 4  # the longest suffix looked up
MIN_NGRAM = 2  # a single token matches too often to predict anything
MAX_DRAFT = 8  # draft tokens per step, at most


def ineligible(params: SamplingParams, constrained: bool) -> str | None:
    """Why a sequence must decode without speculation, or None if it may speculate."""
    if params.speculative == "off":
        return "speculative off for this request"
    if constrained:
        return "structured output (a grammar matcher cannot be rewound)"
    if params.logprobs or params.top_logprobs:
        return "logprobs requested"
    if params.seed is not None and not is_greedy(params):
        return "seeded sampling (its key chain must draw as in the batch)"
    return None


class NgramDrafter:
    """The n-gram index of one sequence's tokens; `propose` drafts from it.

    For each n in [MIN_NGRAM, MAX_NGRAM] it maps an n-gram to the position after its latest
    occurrence. The suffix itself is indexed only after it is looked up, so a match is always an
    earlier occurrence."""

    def __init__(self, tokens: Sequence[int]) -> None:
        self.tokens: list[int] = []
        self._index: dict[tuple[int, ...], int] = {}
        self._indexed = 0  # n-grams ending at positions <= this are in the index
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(tokens)

    def propose(self, k: int) -> list[int]:
        """Up to k tokens that followed the longest recent match of the sequence's suffix."""
        toks = self.tokens
        end = len(toks)
        self._index_until(end - 1)
        if k <= 0:
            return []
        for n in range(min(MAX_NGRAM, end - 1), MIN_NGRAM - 1, -1):
            start = self._index.get(tuple(toks[end - n :]))
            if start is not None:
                return toks[start : start + k]
        return []

    def _index_until(self, last: int) -> None:
        toks, index = self.tokens, self._index
        for e in range(self._indexed + 1, last + 1):
            for n in range(MIN_NGRAM, min(MAX_NGRAM, e) + 1):
                index[tuple(toks[e - n : e])] = e
        self._indexed = max(self._indexed, last)


@dataclass
class DraftLength:
    """How many tokens to draft next: doubles while whole drafts are accepted, falls to just past
    what was accepted otherwise. After `window` drafted tokens with an acceptance under `floor`,
    `backoff` says so once: the engine then decodes the sequence in the batch for a while (where
    mlx-lm overlaps a step with the delivery of the last). A step with no match counts as one
    rejected draft token: a sequence that finds nothing to copy goes back too."""

    k: int = 4
    floor: float = 0.25
    window: int = 32
    _drafted: int = 0
    _accepted: int = 0

    def update(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.k = min(2 * self.k, MAX_DRAFT) if accepted == drafted else max(2, accepted + 1)
        self._drafted += max(drafted, 1)
        self._accepted += accepted

    def backoff(self) -> bool:
        if self._drafted < self.window:
            return False
        low = self._accepted < self.floor * self._drafted
        self._drafted = self._accepted = 0
        return low


@dataclass
class SpecStats:
    """Counters of one engine's speculative steps (mlx_engine.py reports them in EngineStats)."""

    steps: int = 0  # verify forwards
    drafted: int = 0  # draft tokens scored
    accepted: int = 0  # draft tokens accepted
    emitted: int = 0  # tokens the steps produced (accepted + one per step, fewer at a stop)

    def add(self, drafted: int, accepted: int, emitted: int) -> None:
        self.steps += 1
        self.drafted += drafted
        self.accepted += accepted
        self.emitted += emitted


def processed_logits(
    logits: mx.array,
    context: Sequence[int],
    draft: Sequence[int],
    processors: list[LogitsProcessor],
) -> mx.array:
    """Run the sequence's logits processors on each of the k+1 rows with the context that row
    has in the batch: the tokens fed so far (`context`, ending with the token fed first) plus the
    draft tokens fed before it."""
    if not processors:
        return logits
    ctx = list(context)
    rows = []
    for i in range(logits.shape[0]):
        row = logits[i : i + 1]
        tokens = mx.array(ctx + list(draft[:i]))
        for proc in processors:
            row = proc(tokens, row)
        rows.append(row)
    return mx.concatenate(rows, axis=0)


def verify(
    logprobs: mx.array, draft: Sequence[int], scaled_logits: Callable[[mx.array], mx.array] | None
) -> tuple[int, int]:
    """(accepted draft tokens n, the token after them) from the k+1 rows of log-probabilities of
    `[last token] + draft`. `scaled_logits` is the sequence's filters and temperature
    (`KeyedSampler.scaled_logits`); None is greedy, which needs only the logits' order (raw
    logits do)."""
    if scaled_logits is None:
        return accept_greedy(cast(list[int], mx.argmax(logprobs, axis=-1).tolist()), draft)
    return accept_sampled(scaled_logits(logprobs), draft)


def accept_greedy(targets: Sequence[int], draft: Sequence[int]) -> tuple[int, int]:
    """The draft's prefix that the argmax agrees with, then the argmax after it."""
    n = 0
    while n < len(draft) and draft[n] == targets[n]:
        n += 1
    return n, int(targets[n])


def accept_sampled(logits: mx.array, draft: Sequence[int], key: Any = None) -> tuple[int, int]:
    """Speculative sampling with a point-mass draft over k+1 rows of sampling logits (filters and
    temperature applied): accept draft[i] with probability p_i(draft[i]); the first rejection
    samples from p_i without draft[i]; if all are accepted, row k gives the next token. One
    evaluation: every row's residual sample is drawn and the accepted prefix picks one."""
    k = len(draft)
    k1, k2 = mx.random.split(key) if key is not None else (None, None)
    if k:
        d = mx.array(list(draft), dtype=mx.int32)
        rows = mx.arange(k)
        logp = logits[:k] - mx.logsumexp(logits[:k], axis=-1, keepdims=True)
        p_draft = mx.exp(logp[rows, d])
        residual = logits[:k].at[rows, d].add(-mx.inf)
        # A draft token with p = 1 leaves nothing to sample; it is then always accepted.
        logits = mx.concatenate([residual, logits[k:]], axis=0)
        u = mx.random.uniform(shape=(k,), key=k1)
        accept = u < p_draft
    samples = mx.random.categorical(logits, axis=-1, key=k2)
    flags: list[bool] = []
    if k:
        mx.eval(samples, accept)
        flags = cast(list[bool], accept.tolist())
    else:
        mx.eval(samples)
    n = 0
    while n < k and flags[n]:
        n += 1
    return n, cast(list[int], samples.tolist())[n]


__all__ = [
    "DraftLength",
    "NgramDrafter",
    "SpecStats",
    "accept_greedy",
    "accept_sampled",
    "ineligible",
    "processed_logits",
    "verify",
]
