"""Prompt-lookup speculative decoding (serving/engine/speculative.py and its hooks in mlx_engine.py).

The drafter and the verifiers are tested as pure functions: the rejection sampler statistically,
on a small synthetic distribution, with seeded keys (no model). The engine tests run the bundled
SmolLM2-135M: greedy outputs with speculation equal those without it (the reference runs batched
with `speculative: "off"`), on chat prompts and on RAG prompts that copy from a context; a second
request arriving mid-generation takes the speculating sequence back into the batch; stop strings,
max_tokens, cancellation, the per-request "off" and the stats behave as in the batch.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Iterator
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest

from serving.engine.base import Delta, GenerationRequest, SamplingParams

pytest.importorskip("mlx_lm")

import mlx.core as mx

from flows.bench.prompts import chat_prompts, rag_prompts
from serving.engine.mlx_engine import MLXEngine, MLXEngineConfig
from serving.engine.speculative import (
    DraftLength,
    NgramDrafter,
    accept_greedy,
    accept_sampled,
    ineligible,
)

MODEL = "smollm2-135m-instruct"

# -- pure functions ------------------------------------------------------------------------------


def test_drafter_continues_the_longest_most_recent_match() -> None:
    d = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8, 1, 2, 3])
    # the suffix (1, 2, 3) occurred at the start, followed by 4, 5; (2, 3) alone last by 7, 8
    assert d.propose(2) == [4, 5]
    d.extend([4])
    assert d.propose(3) == [5, 9, 2]
    assert d.propose(0) == []
    assert NgramDrafter([5, 6, 7, 8]).propose(4) == []  # no repeated n-gram of 2 or more
    one = NgramDrafter([1, 2, 1, 2])
    assert one.propose(4) == [1, 2]  # only what follows the earlier occurrence


def test_greedy_acceptance_stops_at_the_first_disagreement() -> None:
    assert accept_greedy([4, 5, 6, 7], [4, 5, 9]) == (2, 6)
    assert accept_greedy([4, 5, 6, 7], [4, 5, 6]) == (3, 7)
    assert accept_greedy([8], []) == (0, 8)
    assert accept_greedy([1, 2], [3]) == (0, 1)


def test_draft_length_adapts_and_backs_off_when_acceptance_is_low() -> None:
    length = DraftLength(k=4, window=8)
    length.update(4, 4)
    assert length.k == 8
    length.update(8, 1)
    assert length.k == 2
    assert not length.backoff()  # 5 of 12 accepted: above the floor
    for _ in range(4):
        length.update(2, 0)
    assert length.backoff()
    for _ in range(8):
        length.update(0, 0)  # nothing to copy
    assert length.backoff() and length.k == 2


def test_what_never_speculates() -> None:
    assert ineligible(SamplingParams(temperature=0.0), constrained=False) is None
    assert ineligible(SamplingParams(temperature=0.7, top_p=0.9), constrained=False) is None
    assert ineligible(SamplingParams(temperature=0.0, seed=3), constrained=False) is None
    assert ineligible(SamplingParams(speculative="off"), constrained=False)
    assert ineligible(SamplingParams(), constrained=True)
    assert ineligible(SamplingParams(logprobs=True), constrained=False)
    assert ineligible(SamplingParams(temperature=0.7, seed=3), constrained=False)


def _chi2(counts: Counter[int], probs: list[float], n: int) -> float:
    return sum((counts[i] - n * p) ** 2 / (n * p) for i, p in enumerate(probs) if p > 0)


def test_rejection_sampling_keeps_the_distribution() -> None:
    """Rows 0 and 1 are p0 and p1; the draft is [d0, d1]. The first emitted token must be
    distributed as p0, and the second, given that the first was d0, as p1 (Leviathan et al.);
    a token of probability 0 (filtered) is never emitted."""
    p0 = [0.05, 0.4, 0.25, 0.2, 0.1, 0.0]
    p1 = [0.3, 0.1, 0.1, 0.45, 0.05, 0.0]
    p2 = [0.2, 0.2, 0.2, 0.2, 0.2, 0.0]
    logits = mx.log(mx.array([p0, p1, p2]))
    draft = [1, 3]
    trials = 3000
    keys = mx.random.split(mx.random.key(7), trials)
    first: Counter[int] = Counter()
    second: Counter[int] = Counter()
    for t in range(trials):
        n, token = accept_sampled(logits, draft, key=keys[t])
        emitted = [*draft[:n], token]
        first[emitted[0]] += 1
        if emitted[0] == draft[0]:
            second[emitted[1]] += 1
    n_second = sum(second.values())
    # chi-square, 4 degrees of freedom: 18.47 is the 0.001 critical value; the keys are fixed,
    # so the test is deterministic.
    assert _chi2(first, p0, trials) < 18.47, first
    assert _chi2(second, p1, n_second) < 18.47, second
    assert first[5] == second[5] == 0
    assert abs(n_second / trials - p0[1]) < 0.04


# -- the engine on the bundled model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def engine(ready_models_dir: Path) -> Iterator[MLXEngine]:
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    # The prefix cache lets a prompt's second run skip its prefill (the reference runs first).
    eng = MLXEngine.load(
        path,
        MODEL,
        config=MLXEngineConfig(max_batch_size=16),
        queue_limit=64,
        prefix_cache_bytes=768 << 20,
    )
    yield eng
    asyncio.run(eng.close())


def req(rid: str, messages: Any, **params: Any) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 8)
    return GenerationRequest(rid, messages=messages, params=SamplingParams(**params))


async def collect(engine: MLXEngine, request: GenerationRequest) -> list[Delta]:
    return [d async for d in engine.generate(request)]


def run(engine: MLXEngine, request: GenerationRequest) -> list[Delta]:
    return asyncio.run(collect(engine, request))


def tokens(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


RAG = rag_prompts(1)[0]


@pytest.mark.slow
def test_greedy_outputs_equal_the_batch_on_fifty_prompts(engine: MLXEngine) -> None:
    prompts = chat_prompts(20) + rag_prompts(30)

    async def batched() -> list[list[Delta]]:
        return await asyncio.gather(
            *(
                collect(engine, req(f"ref{i}", p, max_tokens=6, speculative="off"))
                for i, p in enumerate(prompts)
            )
        )

    reference = [tokens(d) for d in asyncio.run(batched())]
    before = engine.stats()
    for i, p in enumerate(prompts):
        deltas = run(engine, req(f"spec{i}", p, max_tokens=6))
        assert tokens(deltas) == reference[i], f"prompt {i} differs: {p[-1]['content'][:80]}"
        # a delta per verify step's token, or several merged when the reader lagged
        # (mlx_engine.coalesce): the running count always matches what was delivered
        counts = [d.completion_tokens for d in deltas if d.token_ids]
        assert counts == list(accumulate(len(d.token_ids) for d in deltas if d.token_ids))
    after = engine.stats()
    assert after.speculative_accepted_tokens > before.speculative_accepted_tokens
    assert after.speculative_steps > before.speculative_steps


@pytest.mark.slow
def test_a_second_request_takes_the_sequence_back_into_the_batch(engine: MLXEngine) -> None:
    other = chat_prompts(2)[1]
    # long enough that the engine, which runs ahead of the reader, is still at it when the
    # second request arrives
    solo_first = tokens(run(engine, req("a0", RAG, max_tokens=48, speculative="off")))
    solo_second = tokens(run(engine, req("b0", other, speculative="off")))
    steps = engine.stats().speculative_steps

    async def overlapping() -> tuple[list[Delta], list[Delta], int]:
        first: list[Delta] = []
        gen = engine.generate(req("a1", RAG, max_tokens=48))
        async for d in gen:
            first.append(d)
            if engine.stats().speculative_steps > steps:
                break  # speculating alone now
        second = asyncio.create_task(collect(engine, req("b1", other)))
        most = 0
        async for d in gen:
            first.append(d)
            most = max(most, engine.stats().batch_size)
        return first, await second, most

    first, second, most = asyncio.run(overlapping())
    assert most == 2, "the second request never shared the batch with the first"
    assert tokens(first) == solo_first
    assert tokens(second) == solo_second


def test_stop_strings_and_max_tokens_on_the_speculative_path(engine: MLXEngine) -> None:
    full = run(engine, req("full", RAG, max_tokens=24))
    assert full[-1].finish_reason == "length" and full[-1].completion_tokens == 24
    assert len(tokens(full)) == 24
    whole = text(full)
    stop = whole[len(whole) // 2 : len(whole) // 2 + 6]
    assert stop.strip(), whole
    deltas = run(engine, req("stop", RAG, max_tokens=24, stop=[stop]))
    assert text(deltas) == whole[: whole.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_sequence == stop


def test_cancelling_a_speculating_sequence_frees_the_engine(engine: MLXEngine) -> None:
    steps = engine.stats().speculative_steps

    async def read_then_close() -> None:
        gen = engine.generate(req("long", RAG, max_tokens=200))
        async for _ in gen:
            if engine.stats().speculative_steps > steps:
                break
        await gen.aclose()  # type: ignore[attr-defined]

    asyncio.run(read_then_close())
    for _ in range(200):
        if engine.stats().batch_size == 0:
            break
        time.sleep(0.05)
    assert engine.stats().batch_size == 0
    assert run(engine, req("after", RAG, max_tokens=3))[-1].finish_reason == "length"


def test_per_request_off_and_sampling_and_the_metrics(engine: MLXEngine) -> None:
    from serving.http.metrics import Metrics

    before = engine.stats()
    run(engine, req("off", RAG, speculative="off"))
    assert engine.stats().speculative_steps == before.speculative_steps
    sampled = run(engine, req("t", RAG, temperature=0.8, top_p=0.9, max_tokens=12))
    assert sampled[-1].completion_tokens == len(tokens(sampled)) > 0
    after = engine.stats()
    assert after.speculative_steps > before.speculative_steps
    assert 0.0 <= after.speculative_acceptance_rate <= 1.0
    assert after.speculative_tokens_per_step >= 1.0
    scraped = Metrics(lambda: [engine.stats()]).render().decode()
    rate = f'impetus_speculative_acceptance_rate{{model="{MODEL}"}} '
    assert rate + repr(after.speculative_acceptance_rate) in scraped
    steps = f'impetus_speculative_steps_total{{model="{MODEL}"}} {float(after.speculative_steps)}'
    assert steps in scraped
    assert f'impetus_speculative_tokens_per_step{{model="{MODEL}"}}' in scraped
    assert math.isfinite(after.speculative_tokens_per_step)


# -- solo prefill: a lone request that may speculate never enters the batch ----------------------


def batch_prompt_tokens(engine: MLXEngine) -> int:
    """Prompt tokens mlx-lm's BatchGenerator has processed so far (its own counter)."""
    return int(engine._gen._counters.prompt_tokens)


def test_a_lone_request_is_prefilled_outside_the_batch(engine: MLXEngine) -> None:
    first, second = chat_prompts(24)[21:23]
    before = batch_prompt_tokens(engine)
    run(engine, req("through-batch", first, max_tokens=3, speculative="off"))
    assert batch_prompt_tokens(engine) > before  # the counter sees a batch prefill
    before = batch_prompt_tokens(engine)
    solo = run(engine, req("solo", second, max_tokens=6))
    assert batch_prompt_tokens(engine) == before, "a lone request was prefilled in the batch"
    assert solo[0].token_ids, "the first delta carries the first token"
    # the same greedy tokens through the batch (from the prefix the solo run left behind)
    assert tokens(solo) == tokens(run(engine, req("ref", second, max_tokens=6, speculative="off")))


@pytest.fixture(scope="module")
def small_steps(ready_models_dir: Path) -> Iterator[MLXEngine]:
    """Prefill chunks of 16 tokens, no prefix cache: a long prompt takes many chunks. Warmed up
    at load, as on a GPU."""
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    config = MLXEngineConfig(
        max_batch_size=4, prefill_step_size=16, prefix_cache_bytes=0, warmup=True
    )
    eng = MLXEngine.load(path, MODEL, config=config)
    yield eng
    asyncio.run(eng.close())


def test_the_warm_up_leaves_a_clean_engine(small_steps: MLXEngine) -> None:
    engine = small_steps
    # it ran prompts through the batch (from nothing and from a long cached prefix)...
    assert batch_prompt_tokens(engine) >= 2 * 7
    # ...and left nothing behind: no request counted, no row, no KV held
    stats = engine.stats()
    assert (stats.requests_total, stats.batch_size, stats.kv_cache_bytes) == (0, 0, 0)
    assert not engine._gen._generation_batch.uids and not engine._gen._prompt_batch.uids
    assert run(engine, req("after-warm-up", chat_prompts(1)[0], max_tokens=2))[-1].finish_reason


@pytest.mark.slow
def test_a_request_arriving_mid_prefill_joins_it_in_the_batch(small_steps: MLXEngine) -> None:
    engine = small_steps
    text_ = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(30))
    long = [{"role": "user", "content": text_ + " Which line mentions a cat?"}]
    short = chat_prompts(1)
    long_alone = tokens(run(engine, req("long0", long, max_tokens=5, speculative="off")))
    short_alone = tokens(run(engine, req("short0", short[0], max_tokens=5, speculative="off")))
    n_long = engine.count_tokens(req("n", long))
    n_short = engine.count_tokens(req("n", short[0]))
    assert n_long > 20 * 16

    async def overlapping() -> tuple[list[Delta], list[Delta]]:
        first = asyncio.create_task(collect(engine, req("long1", long, max_tokens=5)))
        await asyncio.sleep(0.15)  # a few of its ~40 chunks in
        second = await collect(engine, req("short1", short[0], max_tokens=5))
        return await first, second

    before = batch_prompt_tokens(engine)
    first, second = asyncio.run(overlapping())
    shared = batch_prompt_tokens(engine) - before
    assert tokens(first) == long_alone
    assert tokens(second) == short_alone
    # the batch prefilled the short prompt (all but its last token) and part of the long one's,
    # not all of it: the long one had done a chunk or more alone
    assert n_short + 16 <= shared <= n_long + n_short - 18, (shared, n_long, n_short)


def test_short_prompts_are_prefilled_together_up_to_a_token_budget(ready_models_dir: Path) -> None:
    """`prefill_batch_tokens`: a burst of short prompts is prefilled in one batch (here 6, past
    `prefill_batch_size` 2), with the same greedy tokens as one at a time."""
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    config = MLXEngineConfig(
        max_batch_size=6, prefill_batch_size=2, prefill_batch_tokens=2048, prefix_cache_bytes=0
    )
    engine = MLXEngine.load(path, MODEL, config=config)
    try:
        prompts = chat_prompts(6)
        alone = [tokens(run(engine, req(f"a{i}", p, max_tokens=3))) for i, p in enumerate(prompts)]
        assert engine._gen.prefill_batch_size >= 2

        async def burst() -> list[list[Delta]]:
            return await asyncio.gather(
                *(collect(engine, req(f"b{i}", p, max_tokens=3)) for i, p in enumerate(prompts))
            )

        together = [tokens(d) for d in asyncio.run(burst())]
        assert together == alone
        longest = max(engine.count_tokens(req("n", p)) for p in prompts)
        assert engine._gen.prefill_batch_size == min(6, 2048 // min(longest, 512)) == 6
    finally:
        asyncio.run(engine.close())


def test_a_lone_client_never_waits_for_a_burst(ready_models_dir: Path) -> None:
    """The burst wait (`admit_gap_s`) is paid only while requests have lately run together: a
    fresh engine's lone request starts at once; after two ran at once, a lone request waits for
    followers; `admit_memory_s` later it starts at once again. A 1 s gap makes the difference
    plain on a busy machine (a gap of 3 ms is the default)."""
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    config = MLXEngineConfig(
        admit_gap_s=1.0, admit_window_s=1.0, admit_memory_s=4.0, prefix_cache_bytes=0
    )
    engine = MLXEngine.load(path, MODEL, config=config)

    def waited_s(rid: str) -> float:
        deltas = run(engine, req(rid, [{"role": "user", "content": "Say hi."}], max_tokens=2))
        t = deltas[-1].timings
        assert t is not None
        return (t.admitted_ns - t.queued_ns) / 1e9

    async def two_at_once() -> list[list[Delta]]:
        return await asyncio.gather(
            *(collect(engine, req(f"b{i}", p, max_tokens=2)) for i, p in enumerate(chat_prompts(2)))
        )

    try:
        assert waited_s("fresh") < 0.5
        assert all(d[-1].finish_reason == "length" for d in asyncio.run(two_at_once()))
        assert waited_s("after a burst") >= 0.9
        time.sleep(4.2)
        assert waited_s("after a quiet spell") < 0.5
    finally:
        asyncio.run(engine.close())


def test_a_burst_waits_for_the_requests_the_server_is_still_reading(
    ready_models_dir: Path,
) -> None:
    """Past the gap, an idle engine woken by a request keeps collecting while the app still has
    requests on their way (`Arrivals`, counted by serving/http/arrivals.py), up to the window:
    a request the server read 0.6 s later is prefilled with the first. With nothing on its way,
    the first starts after the gap."""
    from pipelines.models.store import ModelStore
    from serving.engine.base import Arrivals

    path = ModelStore(ready_models_dir).resolve(MODEL)
    config = MLXEngineConfig(
        admit_gap_s=0.05, admit_window_s=5.0, admit_memory_s=None, prefix_cache_bytes=0
    )
    engine = MLXEngine.load(path, MODEL, config=config)
    engine.arrivals = arrivals = Arrivals()
    first, second = chat_prompts(2)

    async def late_follower() -> list[list[Delta]]:
        leave = arrivals.enter()  # the server is reading the second request

        async def second_read() -> list[Delta]:
            await asyncio.sleep(0.6)
            deltas = collect(engine, req("second", second, max_tokens=2))
            task = asyncio.ensure_future(deltas)
            await asyncio.sleep(0)  # submitted: its admission is queued before it counts out
            leave()
            return await task

        return await asyncio.gather(
            collect(engine, req("first", first, max_tokens=2)), second_read()
        )

    def timings(deltas: list[Delta]) -> Any:
        t = deltas[-1].timings
        assert t is not None
        return t

    try:
        a, b = (timings(d) for d in asyncio.run(late_follower()))
        assert arrivals.pending() == 0
        assert (a.admitted_ns - a.queued_ns) / 1e9 >= 0.5  # waited for the one on its way
        assert abs(a.admitted_ns - b.admitted_ns) / 1e9 < 0.3  # and took both together
        alone = timings(run(engine, req("alone", first, max_tokens=2)))
        assert (alone.admitted_ns - alone.queued_ns) / 1e9 < 0.4  # nothing on its way: the gap
    finally:
        asyncio.run(engine.close())
