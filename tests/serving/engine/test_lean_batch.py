"""The lean decode batch (serving/engine/lean_batch.py) against mlx-lm's own, side by side on a
small random Llama: the same tokens, and the same log-probabilities for the rows that report them."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("mlx_lm")

import mlx.core as mx
from mlx_lm.generate import BatchGenerator
from mlx_lm.models import llama
from mlx_lm.sample_utils import make_sampler

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


def decode(
    model: Any, lean: bool, report: set[int], sampled: int | None = None
) -> dict[int, list[tuple[int, Any]]]:
    """Each prompt's (token, reported log-probabilities) in one batch; row `sampled` samples."""
    gen = BatchGenerator(model, completion_batch_size=8, prefill_batch_size=8)
    batch = install(gen) if lean else None
    processors = [[penalize_last] if i == 2 else [] for i in range(len(PROMPTS))]
    samplers = [make_sampler(temp=1.0) if i == sampled else None for i in range(len(PROMPTS))]
    uids = gen.insert(
        PROMPTS, max_tokens=[12] * len(PROMPTS), logits_processors=processors, samplers=samplers
    )
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


def test_a_greedy_row_decodes_the_same_beside_a_sampled_one() -> None:
    """A greedy row's tokens do not depend on its neighbours: beside a sampling row (whose logits
    the batch then normalizes) it takes the same argmax as in an all-greedy batch. In bfloat16
    normalizing can change an argmax (with these weights, row 2's tokens under mlx-lm's own batch
    differ from the raw argmax's), so a greedy row fed normalized logits would fail here."""
    mx.random.seed(5)
    model = llama.Model(llama.ModelArgs.from_dict(SHAPE))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    alone = decode(model, True, set())
    mixed = decode(model, True, set(), sampled=5)
    for i in range(5):
        assert [t for t, _ in mixed[i]] == [t for t, _ in alone[i]]


@pytest.mark.parametrize("keep", [0, 1 << 30], ids=["clear-each-chunk", "keep-1GiB"])
def test_the_lean_prompt_batch_prefills_the_same_and_clears_only_past_its_bound(
    keep: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prompts of unequal lengths in chunks of 2 tokens (padding, several chunks): the same tokens
    as mlx-lm's prompt batch; `mx.clear_cache()` after each chunk as mlx-lm does at keep 0, never
    while MLX's cache holds less than `keep`."""
    mx.random.seed(5)
    model = llama.Model(llama.ModelArgs.from_dict(SHAPE))
    mx.eval(model.parameters())
    prompts = [[3, 1 + i, 8, 2 * i + 5, 6, 7, 11][: 3 + i] for i in range(4)]
    clears = 0
    clear = mx.clear_cache

    def counted() -> None:
        nonlocal clears
        clears += 1
        clear()

    monkeypatch.setattr(mx, "clear_cache", counted)

    def run(lean: bool) -> tuple[list[list[int]], int]:
        nonlocal clears
        clears = 0
        gen = BatchGenerator(model, completion_batch_size=8, prefill_step_size=2)
        if lean:
            install(gen, keep_cache_bytes=keep)
        uids = gen.insert(prompts, max_tokens=[5] * len(prompts))
        out: dict[int, list[int]] = {u: [] for u in uids}
        while len(gen._generation_batch) or gen._unprocessed_sequences or len(gen._prompt_batch):
            for r in gen.next_generated():
                out[r.uid].append(r.token)
        gen.close()
        return [out[u] for u in uids], clears

    stock, stock_clears = run(lean=False)
    lean, lean_clears = run(lean=True)
    assert lean == stock
    assert stock_clears >= 3  # several chunks, each cleared
    assert lean_clears == (stock_clears if keep == 0 else 0)


def prefix_cache(model: Any, tokens: list[int], extra: int = 0) -> list[Any]:
    """A prompt's cache of `tokens` (as the prefix cache keeps one), `extra` of them trimmed off
    afterwards (a fetched entry longer than the match: its arrays run past its offset)."""
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([tokens]), cache=cache)
    mx.eval([c.state for c in cache])
    trim_prompt_cache(cache, extra)
    return cache


def test_rows_merge_as_mlx_lm_merges_them() -> None:
    """`merge_rows` gives mlx-lm's batch caches: rows of several lengths, one with nothing cached
    and one trimmed, keys and values in the same left-padded places, the same offsets."""
    from mlx_lm.generate import _merge_caches
    from mlx_lm.models.cache import make_prompt_cache

    from serving.engine.lean_batch import merge_rows

    mx.random.seed(7)
    model = llama.Model(llama.ModelArgs.from_dict(SHAPE))
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    rows = [
        prefix_cache(model, [5, 6, 7, 8]),
        make_prompt_cache(model),  # nothing cached
        prefix_cache(model, [9, 3, 2, 4, 4, 1, 8], extra=2),  # 5 of 7 tokens kept
        prefix_cache(model, [1]),
    ]
    theirs, mine = _merge_caches(rows), merge_rows(rows)
    assert len(mine) == len(theirs) == SHAPE["num_hidden_layers"]
    for a, b in zip(mine, theirs, strict=True):
        assert a.keys.shape == b.keys.shape and a.keys.dtype == b.keys.dtype
        assert mx.array_equal(a.keys, b.keys).item() and mx.array_equal(a.values, b.values).item()
        assert a.offset.tolist() == b.offset.tolist() == [4, 0, 5, 1]
        assert a.left_padding.tolist() == b.left_padding.tolist() == [1, 5, 0, 4]
        assert a._idx == b._idx == 5


@pytest.mark.parametrize("left", ["last-token", "mixed"])
def test_rows_admitted_from_caches_decode_the_same_as_mlx_lm(left: str) -> None:
    """Prompts admitted from cached prefixes of several lengths, with only the last token left to
    prefill (the prompt batch moves to decoding whole) or some with more: the lean generator
    (its merge, its filter) decodes the tokens mlx-lm's does."""
    mx.random.seed(11)
    model = llama.Model(llama.ModelArgs.from_dict(SHAPE))
    mx.eval(model.parameters())
    prompts = [[3, 1 + i, 8, 2 * i + 5, 6, 7, 11][: 3 + i] for i in range(4)]
    cut = [len(p) - (2 if left == "mixed" and i % 2 == 0 else 1) for i, p in enumerate(prompts)]

    def run(lean: bool) -> list[list[int]]:
        gen = BatchGenerator(model, completion_batch_size=8, prefill_batch_size=8)
        if lean:
            install(gen)
        uids = gen.insert(
            [p[n:] for p, n in zip(prompts, cut, strict=True)],
            max_tokens=[6] * len(prompts),
            caches=[prefix_cache(model, p[:n]) for p, n in zip(prompts, cut, strict=True)],
            all_tokens=[p[:n] for p, n in zip(prompts, cut, strict=True)],
        )
        out: dict[int, list[int]] = {u: [] for u in uids}
        while len(gen._generation_batch) or gen._unprocessed_sequences or len(gen._prompt_batch):
            for r in gen.next_generated():
                out[r.uid].append(r.token)
        gen.close()
        return [out[u] for u in uids]

    stock, lean = run(lean=False), run(lean=True)
    assert lean == stock and all(len(t) == 6 for t in lean)
