"""The MLX engine on the real bundled model (SmolLM2-135M-Instruct): one engine for the module.

Tests drive the async iterator with `asyncio.run`; the engine serves every event loop, since
each sequence carries its own. Outputs are compared under greedy decoding, where batched and
solo runs must agree token for token; timings are printed, never asserted.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.engine.base import (
    Delta,
    Engine,
    EngineCapabilities,
    EngineClosedError,
    EngineError,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
)

pytest.importorskip("mlx_lm")

from serving.engine.mlx_engine import (
    MLXEngine,
    MLXEngineConfig,
    chat_template_renders_tools,
    load_model,
)

MODEL = "smollm2-135m-instruct"
QUEUE_LIMIT = 4
CACHE_CAP = 32 << 20  # fits one ~300-token prefix (about 46 KB a token in float32), not twenty
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def model_path(ready_models_dir: Path) -> Path:
    from pipelines.models.store import ModelStore

    return ModelStore(ready_models_dir).resolve(MODEL)


@pytest.fixture(scope="module")
def engine(model_path: Path) -> Iterator[MLXEngine]:
    eng = MLXEngine.load(
        model_path,
        MODEL,
        config=MLXEngineConfig(max_batch_size=8),
        queue_limit=QUEUE_LIMIT,
        prefix_cache_bytes=CACHE_CAP,
    )
    yield eng
    asyncio.run(eng.close())


def req(
    rid: str, *, prompt: str | None = None, messages: Any = None, **params: Any
) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 8)
    return GenerationRequest(rid, prompt=prompt, messages=messages, params=SamplingParams(**params))


async def collect(
    engine: MLXEngine, request: GenerationRequest, seen: list[int] | None = None
) -> list[Delta]:
    out = []
    async for d in engine.generate(request):
        out.append(d)
        if seen is not None:
            seen.append(engine.stats().batch_size)
    return out


def run(engine: MLXEngine, request: GenerationRequest) -> list[Delta]:
    return asyncio.run(collect(engine, request))


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def wait_idle(engine: MLXEngine, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = engine.stats()
        if s.batch_size == 0 and s.queue_depth == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"engine still busy: {engine.stats()}")


def test_implements_the_protocol(engine: MLXEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.count_tokens(req("c", messages=POEM)) > 10
    ids = engine.tokenize(req("t", prompt="Hello world"), add_special_tokens=False)
    assert engine.detokenize(ids) == "Hello world"
    assert engine.tokenize(req("m", messages=POEM)) == engine.tokenize(req("m", messages=POEM))
    assert len(engine.tokenize(req("m", messages=POEM))) == engine.count_tokens(
        req("c", messages=POEM)
    )
    assert engine.stats().memory_bytes > 0


def test_greedy_matches_mlx_lm_generate(engine: MLXEngine, model_path: Path) -> None:
    import mlx_lm

    model, tokenizer = load_model(model_path)
    prompt = tokenizer.apply_chat_template(POEM, add_generation_prompt=True)
    expected = mlx_lm.generate(model, tokenizer, prompt, max_tokens=12)
    deltas = run(engine, req("g", messages=POEM, max_tokens=12))
    assert text(deltas) == expected
    last = deltas[-1]
    assert last.finish_reason == "length"
    assert last.completion_tokens == 12
    assert last.prompt_tokens == len(prompt)


def test_concurrent_requests_batch_and_match_solo(engine: MLXEngine) -> None:
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
    solo = [text(run(engine, req(f"s{i}", prompt=p))) for i, p in enumerate(prompts)]
    seen: list[int] = []

    async def together() -> list[list[Delta]]:
        return await asyncio.gather(
            *(collect(engine, req(f"b{i}", prompt=p), seen) for i, p in enumerate(prompts))
        )

    batched = [text(d) for d in asyncio.run(together())]
    assert max(seen) > 1, "the requests never shared a batch"
    assert batched == solo


def test_busy_streams_get_their_tokens_in_groups_and_the_same_text(
    engine: MLXEngine, model_path: Path
) -> None:
    """`coalesce_*`: past `coalesce_streams` streams, a stream's tokens after its first reach its
    queue `coalesce_tokens` at a time (its last group may be shorter), the first alone; the text
    is what each prompt gives alone. Forced on here (CPU steps are longer than the default hold)."""
    prompts = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time", "Dear diary,"]
    solo = [text(run(engine, req(f"s{i}", prompt=p, max_tokens=11))) for i, p in enumerate(prompts)]
    eng = MLXEngine.load(
        model_path,
        MODEL,
        # admit_memory_s None: the fresh engine waits for the burst (its first request would
        # otherwise start alone, one token a delta, until the others join it)
        config=MLXEngineConfig(
            coalesce_streams=2, coalesce_tokens=3, coalesce_hold_ms=60_000, admit_memory_s=None
        ),
        prefix_cache_bytes=0,
    )
    groups: dict[int, list[int]] = {}  # queue id -> tokens per delivery
    deliver = eng._deliver

    def spy(out: dict[Any, list[Any]]) -> None:
        for items in out.values():
            counts: dict[int, int] = {}
            for q, _ in items:
                counts[id(q)] = counts.get(id(q), 0) + 1
            for q, n in counts.items():
                groups.setdefault(q, []).append(n)
        deliver(out)

    eng._deliver = spy  # type: ignore[method-assign]

    async def together() -> list[list[Delta]]:
        return await asyncio.gather(
            *(collect(eng, req(f"b{i}", prompt=p, max_tokens=11)) for i, p in enumerate(prompts))
        )

    try:
        batched = [text(d) for d in asyncio.run(together())]
    finally:
        asyncio.run(eng.close())
    assert batched == solo
    assert len(groups) == len(prompts)
    for sizes in groups.values():
        assert sum(sizes) == 11
        assert sizes[0] == 1, sizes  # the first token never waits
        assert all(n == 3 for n in sizes[1:-1]), sizes
        assert 1 <= sizes[-1] <= 3, sizes


def test_a_held_group_goes_out_when_full_or_when_its_oldest_has_waited() -> None:
    from serving.engine.sequence import LiveSequence
    from serving.engine.stops import StopStrings

    loop = asyncio.new_event_loop()
    try:
        q: asyncio.Queue[Any] = asyncio.Queue()
        seq = LiveSequence("r", [1], SamplingParams(), 10, loop, q, StopStrings([]))
        d = [Delta(text=str(i)) for i in range(8)]
        assert not seq.hold(d[0], 0.0, 3, 0.05)  # nothing sent yet: the first never waits
        seq.send({}, d[0])
        assert seq.hold(d[1], 1.0, 3, 0.05) and seq.hold(d[2], 1.01, 3, 0.05)
        assert not seq.hold(d[3], 1.02, 3, 0.05)  # the third of a group of three
        out = seq.send({}, d[3])
        assert [item for _, item in out[loop]] == d[1:4] and not seq.held
        assert seq.hold(d[4], 2.0, 3, 0.05)
        assert not seq.hold(d[5], 2.06, 3, 0.05)  # the oldest has waited the hold
        assert [item for _, item in seq.send({}, d[5])[loop]] == d[4:6]
    finally:
        loop.close()


def test_seeded_sampling_is_reproducible_while_others_run(engine: MLXEngine) -> None:
    seeded = req("seed", prompt="My favourite animal is", temperature=1.0, seed=1234, max_tokens=10)
    alone = text(run(engine, seeded))

    async def with_traffic() -> list[list[Delta]]:
        others = [
            collect(engine, req(f"o{i}", prompt=f"Story {i}:", temperature=1.0, max_tokens=12))
            for i in range(2)
        ]
        return await asyncio.gather(collect(engine, seeded), *others)

    busy = asyncio.run(with_traffic())
    assert text(busy[0]) == alone
    assert text(run(engine, seeded)) == alone


def test_unseeded_rows_with_equal_params_share_one_sampler() -> None:
    """So that a batch of them samples in one call (mlx-lm's BatchGenerator batches the
    sampler only when every row has the same one); a seeded row keeps its own key chain."""
    import mlx.core as mx

    from serving.engine.sampling import SharedSamplers, make_sampler

    shared = SharedSamplers()
    a = make_sampler(SamplingParams(temperature=1.0), 100, shared)
    assert a is not None
    assert make_sampler(SamplingParams(temperature=1.0), 100, shared) is a
    assert make_sampler(SamplingParams(temperature=1.0, seed=3), 100, shared) is not a
    assert make_sampler(SamplingParams(temperature=0.5), 100, shared) is not a
    assert make_sampler(SamplingParams(temperature=1.0, top_p=0.9), 100, shared) is not a
    assert make_sampler(SamplingParams(temperature=0.0), 100, shared) is None
    logprobs = mx.log(mx.softmax(mx.random.normal((3, 100)), axis=-1))
    tokens = a(logprobs)  # one call, one token a row
    assert tokens.shape == (3,)
    assert all(0 <= t < 100 for t in tokens.tolist())  # type: ignore[union-attr]


def test_stop_string_is_never_emitted(engine: MLXEngine) -> None:
    full = text(run(engine, req("full", messages=POEM, max_tokens=12)))
    stop = full[12:17]
    assert stop.strip(), full
    deltas = run(engine, req("stop", messages=POEM, max_tokens=12, stop=[stop, "zzz-never"]))
    assert text(deltas) == full[: full.index(stop)]
    assert deltas[-1].finish_reason == "stop" and deltas[-1].stop_sequence == stop


def test_max_tokens_finishes_with_length(engine: MLXEngine) -> None:
    deltas = run(engine, req("len", prompt="Count from one to fifty:", max_tokens=5))
    assert deltas[-1].finish_reason == "length"
    assert sum(len(d.token_ids) for d in deltas) == 5 == deltas[-1].completion_tokens


def test_logprobs_and_top_logprobs(engine: MLXEngine) -> None:
    deltas = run(engine, req("lp", messages=POEM, max_tokens=6, logprobs=True, top_logprobs=5))
    entries = [lp for d in deltas for lp in d.logprobs or []]
    assert len(entries) == 6
    for lp in entries:
        assert lp.logprob <= 0.0
        values = [v for _, v in lp.top]
        assert len(values) == 5
        assert all(v <= 0.0 for v in values)
        assert values == sorted(values, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert lp.top[0][0] == lp.token
        assert lp.logprob == pytest.approx(values[0])


def test_logit_bias_forces_a_token(engine: MLXEngine) -> None:
    tokenizer = engine._tokenizer
    forced = tokenizer.encode(" banana", add_special_tokens=False)[0]
    deltas = run(engine, req("bias", messages=POEM, max_tokens=4, logit_bias={forced: 100.0}))
    assert [t for d in deltas for t in d.token_ids] == [forced] * 4


def test_penalties_and_filters_run(engine: MLXEngine) -> None:
    def sampled(rid: str, **penalties: float) -> list[Delta]:
        return run(
            engine,
            req(
                rid,
                prompt="Repeat after me: la la la la",
                temperature=0.8,
                top_p=0.9,
                top_k=40,
                min_p=0.05,
                seed=7,
                max_tokens=6,
                **penalties,
            ),
        )

    deltas = sampled("pen", repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=0.5)
    assert deltas[-1].finish_reason in ("length", "stop")
    # The same request without penalties, same seed (seeded sampling is reproducible: above).
    plain = sampled("plain")
    tokens = [t for d in deltas for t in d.token_ids]
    assert tokens != [t for d in plain for t in d.token_ids], "the penalties changed nothing"


def test_cancellation_frees_the_slot_and_the_engine_still_serves(engine: MLXEngine) -> None:
    async def read_two_then_close() -> None:
        gen = engine.generate(req("long", prompt="Write a very long essay:", max_tokens=200))
        assert isinstance(gen, AsyncIterator)
        got = [await gen.__anext__(), await gen.__anext__()]
        assert engine.stats().batch_size >= 1
        await gen.aclose()  # type: ignore[attr-defined]
        assert got[-1].finish_reason is None

    async def cancel_task() -> None:
        task = asyncio.create_task(
            collect(engine, req("task", prompt="Another essay:", max_tokens=200))
        )
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(read_two_then_close())
    asyncio.run(cancel_task())
    wait_idle(engine)
    assert run(engine, req("after", prompt="Hello", max_tokens=3))[-1].finish_reason is not None


def test_queue_overflow_raises_queue_full(engine: MLXEngine) -> None:
    async def overflow() -> None:
        tasks = [
            asyncio.create_task(collect(engine, req(f"q{i}", prompt=f"Essay {i}:", max_tokens=50)))
            for i in range(QUEUE_LIMIT)
        ]
        await asyncio.sleep(0.05)  # each task is admitted on its first step
        with pytest.raises(QueueFullError) as info:
            await collect(engine, req("one-too-many", prompt="Hi"))
        assert info.value.retry_after > 0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(overflow())
    wait_idle(engine)


def test_prompt_longer_than_the_context_is_invalid(engine: MLXEngine) -> None:
    long = "hello " * 9000
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(req("p", prompt=long))
    assert info.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(req("m", messages=[{"role": "user", "content": long}]))
    assert info.value.param == "messages"
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(req("t", prompt="hi", top_logprobs=50))
    assert info.value.param == "top_logprobs"
    assert not isinstance(info.value, EngineError)  # a 400 of the request, not a failure


def test_request_shapes_the_engine_refuses(engine: MLXEngine) -> None:
    both = GenerationRequest("b", prompt="hi", prompt_ids=[1, 2])
    with pytest.raises(InvalidRequestError, match="exactly one"):
        engine.generate(both)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(InvalidRequestError) as info:
        engine.generate(GenerationRequest("t", prompt="hi", tools=tools))
    assert info.value.param == "tools"


def test_prompt_ids_are_taken_as_they_are(engine: MLXEngine) -> None:
    ids = engine._tokenizer.apply_chat_template(POEM, add_generation_prompt=True)
    params = SamplingParams(max_tokens=8, temperature=0.0)
    by_ids = GenerationRequest("i", prompt_ids=list(ids), params=params)
    assert engine.count_tokens(by_ids) == engine.count_tokens(req("m", messages=POEM))
    assert text(run(engine, by_ids)) == text(run(engine, req("m", messages=POEM)))


def test_capabilities_follow_the_chat_template(engine: MLXEngine) -> None:
    # SmolLM2's template has no tools: the HTTP side writes them into the messages.
    assert engine.capabilities() == EngineCapabilities(
        native_tools=False, tool_prompt_fallback=True, context_window=8192
    )
    assert chat_template_renders_tools("{% if tools %}{{ tools | tojson }}{% endif %}")
    assert not chat_template_renders_tools("{% for message in messages %}{% endfor %}")
    assert not chat_template_renders_tools(None)


@pytest.mark.slow
def test_prefix_cache_reuses_a_shared_prefix(engine: MLXEngine) -> None:
    prefix = "Notes: " + " ".join(f"item{i}" for i in range(100))  # about 300 tokens
    before = engine.stats()
    t = time.perf_counter()
    first = run(engine, req("p1", prompt=prefix + "\nFirst question:", max_tokens=1))
    cold = time.perf_counter() - t
    t = time.perf_counter()
    second = run(engine, req("p2", prompt=prefix + "\nSecond question:", max_tokens=1))
    warm = time.perf_counter() - t
    print(
        f"\nTTFT {first[-1].prompt_tokens}-token prompt: cold {cold:.2f} s, shared prefix {warm:.2f} s"
    )
    after = engine.stats()
    assert first[-1].cached_tokens == 0
    assert second[-1].cached_tokens >= first[-1].prompt_tokens - 8
    assert after.prefix_cache_hits > before.prefix_cache_hits
    assert 0 < after.prefix_cache_bytes <= CACHE_CAP


@pytest.mark.slow
def test_prefix_cache_stays_under_its_byte_cap(engine: MLXEngine) -> None:
    for i in range(12):
        words = " ".join(f"topic{i}-{j}" for j in range(25))  # about 100 tokens, ~5 MB of KV
        run(engine, req(f"d{i}", prompt=f"{i}: {words}", max_tokens=1))
        assert engine.stats().prefix_cache_bytes <= CACHE_CAP
    assert engine.stats().prefix_cache_bytes > CACHE_CAP // 4


@pytest.mark.slow
def test_prefix_cache_holds_no_more_memory_than_it_counts(engine: MLXEngine) -> None:
    """A finished sequence's cache leaves the batch as lazy slices of the batch's KV buffers;
    kept unevaluated, each entry held the whole batch's buffers while counting only its slice
    (the soak saw RSS grow by GBs under a 1 GB cap). MLX's active memory beyond what the engine
    counts (weights, live KV, prefix cache) must not grow with requests."""
    import mlx.core as mx

    def uncounted() -> int:
        wait_idle(engine)
        # Arrays only reachable from garbage cycles are not held by the engine; when the collector
        # runs is timing (one run with three busy workers read 45 MB more without this).
        gc.collect()
        return int(mx.get_active_memory()) - engine.stats().memory_bytes

    async def round_of(i: int) -> None:
        await asyncio.gather(
            *(collect(engine, req(f"m{i}-{j}", prompt=f"Round {i}, note {j}:", max_tokens=4))
              for j in range(QUEUE_LIMIT))
        )  # fmt: skip

    before = uncounted()
    for i in range(8):
        asyncio.run(round_of(i))
    grown = uncounted() - before
    assert grown < 32 << 20, f"{grown >> 20} MB of MLX memory held beyond the counted caches"


@pytest.mark.parametrize("streams", [1, 3])  # alone (solo prefill, speculation); in the batch
def test_a_finished_streams_last_delta_goes_out_before_its_cache_is_kept(
    engine: MLXEngine, streams: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keeping a finished sequence's cache (a copy out of the batch, a disk write queued) waits
    until its step's deltas are delivered; until it is kept the sequence still counts as running,
    so that a client who sees the engine idle sees its memory counted (the test above)."""
    events: list[tuple[str, int]] = []
    deliver, store = engine._deliver, engine._prefix
    assert store is not None

    def deliver_(out: dict[Any, list[Any]]) -> None:
        finished = [d for items in out.values() for _, d in items
                    if isinstance(d, Delta) and d.finish_reason is not None]  # fmt: skip
        events.extend([("last delta", engine.stats().batch_size)] * len(finished))
        deliver(out)

    def insert(tokens: list[int], cache: Any) -> None:
        events.append(("kept", engine.stats().batch_size))
        type(store).insert(store, tokens, cache)

    monkeypatch.setattr(engine, "_deliver", deliver_)
    monkeypatch.setattr(store, "insert", insert)

    async def burst() -> list[list[Delta]]:
        return await asyncio.gather(
            *(collect(engine, req(f"keep-{streams}-{j}", prompt=f"Count to {j + 3}:",
                                  max_tokens=3 + j))
              for j in range(streams))
        )  # fmt: skip

    outs = asyncio.run(burst())
    wait_idle(engine)
    assert all(o[-1].finish_reason == "length" for o in outs)
    kinds = [k for k, _ in events]
    assert kinds.count("last delta") == streams and kinds.count("kept") == streams
    for i, (kind, running) in enumerate(events):
        if kind == "kept":  # after a last delta went out, while its sequence still counts
            assert "last delta" in kinds[:i] and running >= 1, events
    assert engine.stats().batch_size == 0


@pytest.mark.slow
def test_close_ends_pending_requests(model_path: Path) -> None:
    before = _threads_of(MODEL)  # the module's engine has its own
    eng = MLXEngine.load(model_path, MODEL, prefix_cache_bytes=0)
    assert len(_threads_of(MODEL)) == len(before) + 2  # its engine thread and its loader

    async def scenario() -> None:
        task = asyncio.create_task(
            collect(eng, req("x", prompt="Write a long essay:", max_tokens=200))
        )
        await asyncio.sleep(1.0)
        await eng.close()
        with pytest.raises(EngineClosedError):
            await task
        with pytest.raises(EngineClosedError):
            eng.generate(req("y", prompt="hi"))

    asyncio.run(scenario())
    assert eng.stats().memory_bytes == 0
    # The weights were loaded by a helper thread (see MLXEngine._load_weights); close() returns
    # once it has ended too: loading and unloading models does not pile up threads, and no thread
    # that ran MLX is still ending when the interpreter exits (that aborted one exit in six).
    assert _threads_of(MODEL) == before


def _threads_of(model: str) -> list[threading.Thread]:
    """The live threads named for `model`."""
    return [t for t in threading.enumerate() if t.name.endswith(f"-{model}")]


def test_a_folder_that_does_not_load_is_a_clear_error_and_leaves_no_thread(
    tmp_path: Path,
) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EngineError, match="Could not load model 'broken'"):
        MLXEngine.load(tmp_path, "broken")
    assert not _threads_of("broken")


def test_constrained_requests_share_the_batch_and_match_solo(engine: MLXEngine) -> None:
    """A constrained request (a response_format's grammar) decodes inside the continuous batch (serving/engine/grammar.py),
    next to free requests, and gives the same greedy output as alone."""
    import json

    from serving.services import structured

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
        "required": ["city", "sunny"],
        "additionalProperties": False,
    }
    fmt = {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    constraint = structured.from_request(fmt, None, chat=True)
    assert constraint is not None and constraint.kind == "json_schema"

    def constrained(rid: str) -> GenerationRequest:
        r = req(rid, messages=[{"role": "user", "content": "Weather as JSON."}], max_tokens=40)
        r.constraint = constraint
        return r

    solo = run(engine, constrained("js"))
    assert solo[-1].finish_reason == "stop"
    assert set(json.loads(text(solo))) == {"city", "sunny"}
    seen: list[int] = []

    async def together() -> list[list[Delta]]:
        free = [
            collect(engine, req(f"f{i}", prompt=f"Story {i}:", max_tokens=16)) for i in range(2)
        ]
        return await asyncio.gather(collect(engine, constrained("jb"), seen), *free)

    batched = asyncio.run(together())[0]
    assert max(seen) > 1, "the constrained request never shared a batch"
    assert text(batched) == text(solo)
