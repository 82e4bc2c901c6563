"""mlx-lm's `GenerationBatch` step without the log-probability work that nobody reads.

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
from mlx_lm.generate import GenerationBatch
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


def install(generator: Any) -> LeanGenerationBatch:
    """Give a fresh `BatchGenerator` a lean generation batch (before anything is inserted) and
    return it; the engine adds and removes uids in its `report`."""
    batch = LeanGenerationBatch.empty(generator.model, generator.sampler)
    batch.greedy_fallback = generator.sampler is greedy_sampler
    if len(generator._generation_batch):
        raise RuntimeError("install the lean batch before inserting sequences")
    generator._generation_batch = batch
    return batch
