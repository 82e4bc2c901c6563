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

from typing import Any

import mlx.core as mx
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
    return batch
