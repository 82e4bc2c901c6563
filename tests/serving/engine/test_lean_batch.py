"""The lean decode batch (serving/engine/lean_batch.py) against mlx-lm's own, side by side on a
small random Llama: the same tokens, and the same log-probabilities for the rows that report them."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("mlx_lm")

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import llama

from serving.engine.lean_batch import install

SHAPE = {
    "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "vocab_size": 512,
    "tie_word_embeddings": True,
}  # fmt: skip
PROMPTS = [[1 + i, 7, 3 * i + 2, 9, 4] for i in range(6)]


def penalize_last(tokens: mx.array, logits: mx.array) -> mx.array:
    """A logits processor: the row's previous token is made unlikely (a row with processors)."""
    return logits.at[:, tokens[-1:]].add(-5.0)


def decode(model: Any, lean: bool, report: set[int]) -> dict[int, list[tuple[int, Any]]]:
    gen = BatchGenerator(model, completion_batch_size=8, prefill_batch_size=8)
    batch = install(gen) if lean else None
    processors = [[penalize_last] if i == 2 else [] for i in range(len(PROMPTS))]
    uids = gen.insert(PROMPTS, max_tokens=[12] * len(PROMPTS), logits_processors=processors)
    if batch is not None:
        batch.report |= {uids[i] for i in report}
    out: dict[int, list[tuple[int, Any]]] = {i: [] for i in range(len(PROMPTS))}
    row = {u: i for i, u in enumerate(uids)}
    while len(gen._generation_batch) or gen._unprocessed_sequences or len(gen._prompt_batch):
        for r in gen.next_generated():
            out[row[r.uid]].append((r.token, r.logprobs))
    gen.close()
    return out


@pytest.mark.parametrize("report", [{1, 4}, set()], ids=["some-reported", "none-reported"])
def test_the_lean_batch_decodes_the_same_tokens_and_reported_rows(report: set[int]) -> None:
    """With no row reported (and all greedy) the logits are not normalized: the same argmax."""
    mx.random.seed(3)
    model = llama.Model(llama.ModelArgs.from_dict(SHAPE))
    mx.eval(model.parameters())
    stock = decode(model, False, report)
    lean = decode(model, True, report)
    for i in range(len(PROMPTS)):
        assert [t for t, _ in lean[i]] == [t for t, _ in stock[i]]
        assert len(lean[i]) == 12
        # the first token comes from the batch that prefilled the row (mlx-lm's own step)
        for (_, mine), (_, theirs) in zip(lean[i][1:], stock[i][1:], strict=True):
            if i in report:
                assert mx.allclose(mine, theirs).item()
            else:
                assert mine is None
