"""mlx-lm's `GenerationBatch` step without the log-probability work that nobody reads, and its
prompt batch without a `clear_cache` after every chunk where that is slow.

mlx-lm's step splits the batch's normalized logits into one array per row (`list(logprobs)`),
schedules each of them with the next step and waits for each with the current one, so that a
response can carry its row. The engine reads a row only for a request that asked for logprobs;
for the others the split is pure overhead: B arrays built, scheduled and evaluated per step. Here
only the rows whose uid is in `report` get theirs (None for the rest). A greedy row takes the
argmax of its raw logits (so its tokens do not depend on its neighbours), and when every row is
greedy and none is reported the logits are not normalized at all: on MLX's CPU backend the
`logsumexp` over a 49,152-token vocabulary costs ~0.6 ms a row (its `exp` runs at ~12 ns an
element), 9 ms of a 16-row step. Everything else is mlx-lm's step as it is (mlx-lm 0.32: the same
forward, processors, sampling and `async_eval` pipelining).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.generate import GenerationBatch, PromptProcessingBatch, _right_pad_prompts
from mlx_lm.sample_utils import greedy_sampler


class LeanGenerationBatch(GenerationBatch):
    """The batch the engine decodes into; `report` holds the uids whose rows it reads."""

    report: set[int]
    greedy_fallback: bool  # the generator's own sampler (rows without one) is mlx-lm's argmax

    @classmethod
    def empty(cls, model: Any, fallback_sampler: Any) -> LeanGenerationBatch:
        batch = super().empty(model, fallback_sampler)
        assert isinstance(batch, LeanGenerationBatch)
        batch.report = set()
        batch.greedy_fallback = False
        return batch

    def _greedy(self, sampler: Any) -> bool:
        return sampler is greedy_sampler or (sampler is None and self.greedy_fallback)

    def _step(self) -> tuple[list[int], list[Any]]:
        b: Any = self  # mlx-lm's attributes are typed loosely
        b._current_tokens = b._next_tokens
        b._current_logprobs = b._next_logprobs
        inputs = b._current_tokens

        logits = b.model(inputs[:, None], cache=b.prompt_cache)[:, -1, :]
        token_context = []
        if any(b.logits_processors):
            processed = []
            for e in range(len(b.uids)):
                row = logits[e : e + 1]
                if processors := b.logits_processors[e] or ():
                    context = b._token_context[e].update_and_fetch(inputs[e : e + 1])
                    token_context.append(context)
                    for processor in processors:
                        row = processor(context, row)
                processed.append(row)
            logits = mx.concatenate(processed, axis=0)
        report = b.report
        reported = bool(report) and any(u in report for u in b.uids)
        own = b.samplers or [None] * len(b.uids)
        greedy = [self._greedy(s) for s in own]
        if reported or not all(greedy):
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        else:  # every row greedy, none reported: argmax needs no normalization
            logprobs = logits

        # A greedy row takes the argmax of its raw logits whatever its neighbours: its tokens do
        # not depend on what else is in the batch.
        samplers = [b.fallback_sampler if s is None else s for s in own]
        if not samplers or all(s is samplers[0] for s in samplers):
            sampler = samplers[0] if samplers else b.fallback_sampler
            sampled = sampler(logits if greedy and greedy[0] else logprobs)
        else:
            sampled = mx.concatenate(
                [
                    s(logits[e : e + 1] if greedy[e] else logprobs[e : e + 1])
                    for e, s in enumerate(samplers)
                ],
                axis=0,
            )

        rows = [logprobs[e] if reported and u in report else None for e, u in enumerate(b.uids)]
        b._next_tokens = sampled
        b._next_logprobs = rows
        mx.async_eval(sampled, [r for r in rows if r is not None], token_context)

        mx.eval(inputs, [r for r in b._current_logprobs if r is not None])
        tokens: list[int] = inputs.tolist()
        for seen, token in zip(b.tokens, tokens, strict=True):
            seen.append(token)
        return tokens, b._current_logprobs


def release_cache(keep_bytes: int) -> None:
    """`mx.clear_cache()` after a prefill chunk, as mlx-lm does, unless MLX's buffer cache holds
    at most `keep_bytes` (0: always clear)."""
    if not keep_bytes or mx.get_cache_memory() > keep_bytes:
        mx.clear_cache()


def merge_rows(caches: list[list[Any]]) -> list[Any]:
    """The batch caches of `caches` (one list of layers per row), as mlx-lm's `_merge_caches`
    makes them, from a few array operations in all where mlx-lm's `BatchKVCache.merge` writes
    each row into each layer one slice at a time: 2,048 operations for 64 rows of a 16-layer
    model, ~10 ms of Python on an H100 machine (flows/bench/gpu/cache_probe.py --trace; the
    launch of the first step that follows took 17-25 ms with either). Every row's layers are
    concatenated along the sequence axis behind one zero token, then gathered into the
    left-padded layout of every layer at once. Rows of other cache kinds, or whose layers differ
    in length, go to mlx-lm's merge."""
    from mlx_lm.generate import _merge_caches
    from mlx_lm.models.cache import BatchKVCache, KVCache

    if not caches or any(type(c) is not KVCache for row in caches for c in row):
        return _merge_caches(caches)
    lengths = [row[0].offset if row[0].keys is not None else 0 for row in caches]
    n_layers = len(caches[0])
    if any(
        len(row) != n_layers or any((c.offset if c.keys is not None else 0) != n for c in row)
        for row, n in zip(caches, lengths, strict=True)
    ):
        return _merge_caches(caches)
    longest = max(lengths)
    if longest == 0:
        return _merge_caches(caches)
    ref = next(row[0] for row, n in zip(caches, lengths, strict=True) if n)
    heads, dtype = ref.keys.shape[1], ref.keys.dtype
    # index[layer, row, t]: where token t of the row's left-padded layer sits in the flat array
    total = n_layers * sum(lengths)
    index = np.full((n_layers, len(caches), longest), total, dtype=np.int32)  # the zero token
    start = 0
    for b, n in enumerate(lengths):
        for j in range(n_layers):
            index[j, b, longest - n :] = np.arange(start + j * n, start + (j + 1) * n)
        start += n_layers * n
    where = mx.array(index.reshape(-1))

    def gathered(attr: str) -> Any:
        pieces = [
            getattr(c, attr)[..., :n, :] for row, n in zip(caches, lengths, strict=True) if n
            for c in row
        ]  # fmt: skip
        dim = pieces[0].shape[3]
        flat = mx.concatenate([*pieces, mx.zeros((1, heads, 1, dim), dtype=dtype)], axis=2)
        out = mx.take(flat, where, axis=2).reshape(heads, n_layers, len(caches), longest, dim)
        return mx.contiguous(out.transpose(1, 2, 0, 3, 4))  # [layer, row, head, token, dim]

    keys, values = gathered("keys"), gathered("values")
    padding = [longest - n for n in lengths]
    merged = []
    for j in range(n_layers):
        cache = BatchKVCache(padding)
        cache.keys, cache.values = keys[j], values[j]
        cache.offset += longest
        cache._idx = longest
        merged.append(cache)
    return merged


class LeanPromptBatch(PromptProcessingBatch):
    """mlx-lm's prompt batch, which calls `mx.clear_cache()` after every prefill chunk (to hand
    the chunk's temporaries back to the system), calling it only while MLX's buffer cache holds
    more than `keep_bytes`. On CUDA a `clear_cache` frees every cached device buffer and took
    5-7 ms on an H200, more than the forward of a 60-token agent turn, on every admission; the
    buffers kept are the next chunk's. `keep_bytes` 0 is mlx-lm's behaviour (the engine keeps it
    on the CPU backend, where freeing is cheap and the memory is the process's own)."""

    keep_bytes: int = 0

    def _release(self) -> None:
        release_cache(self.keep_bytes)

    def _copy(self) -> LeanPromptBatch:  # `split` copies: the copy keeps the threshold
        new = super()._copy()
        new.keep_bytes = self.keep_bytes
        return new

    def filter(self, keep: list[int]) -> None:
        # Keeping every row (a batch whose prompts are all done moves to decoding whole) is
        # mlx-lm's filter without its per-layer gather of every row and its read of the padding
        # (a wait for the GPU in each layer): 5-9 ms of 64 rows' first step on an H100.
        if keep == list(range(len(self.uids))):
            return
        super().filter(keep)

    def prompt(self, tokens: list[list[int]]) -> None:
        # mlx-lm 0.32's `PromptProcessingBatch.prompt`, with `_release` for `clear_cache`
        b: Any = self
        if len(b.uids) != len(tokens):
            raise ValueError("The batch length doesn't match the number of inputs")
        if not tokens:
            return
        for seen, new in zip(b.tokens, tokens, strict=True):
            seen += new
        lengths = [len(p) for p in tokens]
        max_length = max(lengths)
        padding = [max_length - n for n in lengths]
        if max(padding) > 0:
            inputs = _right_pad_prompts(tokens, max_length=max_length)
            for c in b.prompt_cache:
                c.prepare(lengths=lengths, right_padding=padding)
        else:
            inputs = mx.array(tokens)
        while inputs.shape[1] > 0:
            n = min(b.prefill_step_size, inputs.shape[1])
            b.model(inputs[:, :n], cache=b.prompt_cache)
            mx.eval([c.state for c in b.prompt_cache])
            self._release()
            inputs = inputs[:, n:]
        if max(padding) > 0:
            for c in b.prompt_cache:
                c.finalize()
            mx.eval([c.state for c in b.prompt_cache])
            self._release()


def install(generator: Any, keep_cache_bytes: int = 0) -> LeanGenerationBatch:
    """Give a fresh `BatchGenerator` a lean generation batch and a lean prompt batch (before
    anything is inserted) and return the first; the engine adds and removes uids in its
    `report`. `keep_cache_bytes`: `LeanPromptBatch.keep_bytes`."""
    batch = LeanGenerationBatch.empty(generator.model, generator.sampler)
    batch.greedy_fallback = generator.sampler is greedy_sampler
    if len(generator._generation_batch) or len(generator._prompt_batch):
        raise RuntimeError("install the lean batch before inserting sequences")
    generator._generation_batch = batch
    prompts = LeanPromptBatch.empty(
        generator.model, generator.sampler, prefill_step_size=generator.prefill_step_size
    )
    assert isinstance(prompts, LeanPromptBatch)
    prompts.keep_bytes = keep_cache_bytes
    generator._prompt_batch = prompts
    generator._make_batch = partial(_make_batch, generator)
    return batch


def _make_batch(generator: Any, n: int) -> PromptProcessingBatch:
    """mlx-lm 0.32's `BatchGenerator._make_batch` (the next `n` waiting sequences as a prompt
    batch), their caches merged by `merge_rows`."""
    g = generator
    columns: list[list[Any]] = [[] for _ in range(7)]
    for _ in range(n):
        seq = g._unprocessed_sequences.popleft()
        for column, value in zip(
            columns, (seq[0], seq[3], seq[4], seq[5], seq[6], seq[2], seq[7]), strict=True
        ):
            column.append(value)
        g._currently_processing.append([seq[1], 0, sum(len(s) for s in seq[1])])
    uids, caches, tokens, samplers, processors, max_tokens, stops = columns
    batch = PromptProcessingBatch(
        model=g.model, uids=uids, caches=[], tokens=tokens,
        prefill_step_size=g.prefill_step_size, samplers=samplers, fallback_sampler=g.sampler,
        logits_processors=processors, stop_sequences=stops, max_tokens=max_tokens,
    )  # fmt: skip
    batch.prompt_cache = merge_rows(caches)
    return batch
