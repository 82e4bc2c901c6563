"""Per-sequence sampling for the MLX engine: a sampler that owns its PRNG key, and logits processors.

mlx-lm's `BatchGenerator` takes one sampler and one list of logits processors per sequence; these
build them from `SamplingParams`. A seeded sequence draws from its own key chain (split once per
token), never from MLX's global random state, so it gives the same tokens whatever else shares
the batch. Temperature 0 returns no sampler: the batch's shared greedy argmax runs it.

The batch samples in one call when every row has the same sampler object, and row by row (one
small MLX graph each) otherwise. So unseeded sequences with the same parameters share one
sampler (`SharedSamplers`), which draws every row of a call from one key chain: a batch of
default requests (temperature 1, no seed) samples as one categorical over the batch.
"""

from __future__ import annotations

import secrets
import weakref
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

from serving.engine.base import InvalidRequestError, SamplingParams

Sampler = Callable[[mx.array], mx.array]
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


class KeyedSampler:
    """Top-p, min-p and top-k filters, then a categorical draw with this sequence's own key."""

    def __init__(self, params: SamplingParams, seed: int, vocab_size: int) -> None:
        self._inv_temp = 1.0 / params.temperature
        self._top_p = params.top_p
        self._min_p = params.min_p
        self._top_k = params.top_k if 0 < params.top_k < vocab_size else 0
        self._key = mx.random.key(seed % (1 << 64))

    def __call__(self, logprobs: mx.array) -> mx.array:
        # Lazy: the split is evaluated with the token it samples, so the chain never grows.
        self._key, sub = mx.random.split(self._key)
        return mx.random.categorical(self.scaled_logits(logprobs), key=sub)

    def scaled_logits(self, logprobs: mx.array) -> mx.array:
        """The logits this sampler draws from, row by row: filters, then temperature (the
        speculative verifier, speculative.py, needs the distribution itself)."""
        if 0.0 < self._top_p < 1.0:
            logprobs = apply_top_p(logprobs, self._top_p)
        if self._min_p > 0.0:
            logprobs = apply_min_p(logprobs, self._min_p)
        if self._top_k:
            logprobs = apply_top_k(logprobs, self._top_k)
        return logprobs * self._inv_temp


class SharedSamplers:
    """One `KeyedSampler` per distinct set of sampling parameters, for unseeded sequences.

    Held weakly: a sampler lives while a sequence in the batch uses it."""

    def __init__(self) -> None:
        self._by_params: weakref.WeakValueDictionary[tuple[float, ...], KeyedSampler] = (
            weakref.WeakValueDictionary()
        )

    def get(self, params: SamplingParams, vocab_size: int) -> KeyedSampler:
        top_k = params.top_k if 0 < params.top_k < vocab_size else 0
        key = (params.temperature, params.top_p, params.min_p, float(top_k))
        sampler = self._by_params.get(key)
        if sampler is None:
            sampler = KeyedSampler(params, secrets.randbits(63), vocab_size)
            self._by_params[key] = sampler
        return sampler


def is_greedy(params: SamplingParams) -> bool:
    """Whether the sequence decodes by argmax (no sampler: the batch's shared argmax)."""
    return params.temperature == 0.0 or params.top_k == 1


def make_sampler(
    params: SamplingParams, vocab_size: int, shared: SharedSamplers | None = None
) -> Sampler | None:
    """The sequence's sampler; None means greedy (the batch's shared argmax). An unseeded
    sequence gets the sampler it shares with others of the same parameters, when `shared` is
    given; a seeded one always gets its own key chain."""
    if is_greedy(params):
        return None
    if params.seed is None and shared is not None:
        return shared.get(params, vocab_size)
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    return KeyedSampler(params, seed, vocab_size)


def make_logits_processors(params: SamplingParams, prompt_len: int) -> list[LogitsProcessor]:
    """Logit bias and penalties. `prompt_len` splits the context the batch hands each processor
    (prompt + generated tokens) so that presence and frequency penalties count generated tokens
    only, as OpenAI's do; the repetition penalty covers the whole context window."""
    processors: list[LogitsProcessor] = []
    if params.logit_bias:
        ids = mx.array(list(params.logit_bias.keys()), dtype=mx.int32)
        bias = mx.array(list(params.logit_bias.values()), dtype=mx.float32)

        def logit_bias(_tokens: mx.array, logits: mx.array) -> mx.array:
            return logits.at[:, ids].add(bias.astype(logits.dtype))

        processors.append(logit_bias)

    penalty = params.repetition_penalty
    if penalty != 1.0:

        def repetition(tokens: mx.array, logits: mx.array) -> mx.array:
            selected = logits[:, tokens]
            logits[:, tokens] = mx.where(selected < 0, selected * penalty, selected / penalty)
            return logits

        processors.append(repetition)

    presence = params.presence_penalty
    if presence != 0.0:

        def presence_penalty(tokens: mx.array, logits: mx.array) -> mx.array:
            generated = tokens[prompt_len:]
            if generated.size:
                logits[:, generated] = logits[:, generated] - presence
            return logits

        processors.append(presence_penalty)

    frequency = params.frequency_penalty
    if frequency != 0.0:

        def frequency_penalty(tokens: mx.array, logits: mx.array) -> mx.array:
            generated = tokens[prompt_len:]
            if generated.size:
                # `.at[].subtract` accumulates repeated indices: one penalty per occurrence.
                logits = logits.at[:, generated].subtract(frequency)
            return logits

        processors.append(frequency_penalty)
    return processors


def validate_params(p: SamplingParams, vocab_size: int) -> None:
    """Raise InvalidRequestError (naming the parameter) for values the engine cannot honour."""
    checks = [
        ("max_tokens", p.max_tokens >= 1, "must be at least 1"),
        ("temperature", 0.0 <= p.temperature <= 100.0, "must be between 0 and 100"),
        ("top_p", 0.0 < p.top_p <= 1.0, "must be in (0, 1]"),
        ("top_k", p.top_k >= 0, "must be 0 (off) or positive"),
        ("min_p", 0.0 <= p.min_p <= 1.0, "must be in [0, 1]"),
        ("repetition_penalty", p.repetition_penalty > 0.0, "must be positive (1 is off)"),
        ("presence_penalty", -2.0 <= p.presence_penalty <= 2.0, "must be in [-2, 2]"),
        ("frequency_penalty", -2.0 <= p.frequency_penalty <= 2.0, "must be in [-2, 2]"),
        ("top_logprobs", 0 <= p.top_logprobs <= 20, "must be in [0, 20]"),
    ]
    for name, ok, what in checks:
        if not ok:
            raise InvalidRequestError(f"{name} {what}; got {getattr(p, name)!r}.", param=name)
    for tok, bias in p.logit_bias.items():
        if not (0 <= int(tok) < vocab_size) or not (-100.0 <= bias <= 100.0):
            raise InvalidRequestError(
                f"logit_bias maps token ids in [0, {vocab_size}) to values in "
                f"[-100, 100]; got {tok!r}: {bias!r}.",
                param="logit_bias",
            )
