"""The engine's KV budget (`kv_cache_bytes`) on the bundled model: a sequence waits for room
before it joins the batch, one alone always runs, and waiting changes no output.

Each test loads its own engine (the budget is the engine's config); prompts are short and
max_tokens small, since the CPU backend is slow.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("mlx_lm")

from serving.engine.base import Delta, GenerationRequest, SamplingParams
from serving.engine.mlx_engine import KV_STEP, MLXEngine, kv_bytes_per_token, load_model

MODEL = "smollm2-135m-instruct"
LONG = "Summarise this report. " + "The quarterly figures rose in every region. " * 40
SHORT = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time", "Water boils at"]


@pytest.fixture(scope="module")
def model_path(ready_models_dir: Path) -> Path:
    from pipelines.models.store import ModelStore

    return ModelStore(ready_models_dir).resolve(MODEL)


def _engine(path: Path, kv_cache_bytes: int) -> MLXEngine:
    return MLXEngine.load(path, MODEL, kv_cache_bytes=kv_cache_bytes, prefix_cache_bytes=0)


@pytest.fixture
def unbounded(model_path: Path) -> Iterator[MLXEngine]:
    eng = _engine(model_path, 0)
    yield eng
    asyncio.run(eng.close())


def req(rid: str, prompt: str, max_tokens: int = 6) -> GenerationRequest:
    return GenerationRequest(
        rid, prompt=prompt, params=SamplingParams(temperature=0.0, max_tokens=max_tokens)
    )


async def _collect(engine: MLXEngine, request: GenerationRequest, seen: list[int]) -> str:
    out: list[Delta] = []
    async for d in engine.generate(request):
        out.append(d)
        seen.append(engine.stats().batch_size)
    assert out[-1].finish_reason is not None
    return "".join(d.text for d in out)


def _together(engine: MLXEngine, requests: list[GenerationRequest]) -> tuple[list[str], list[int]]:
    seen: list[int] = []

    async def main() -> list[str]:
        return list(await asyncio.gather(*(_collect(engine, r, seen) for r in requests)))

    return asyncio.run(main()), seen


def test_bytes_per_token_is_what_the_config_says(model_path: Path) -> None:
    cfg = json.loads((model_path / "config.json").read_text())
    heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    model, _ = load_model(model_path)  # float32 on the CPU
    assert kv_bytes_per_token(model) == 2 * cfg["num_hidden_layers"] * heads * head_dim * 4


def test_a_long_prompt_waits_for_room_and_no_output_changes(
    model_path: Path, unbounded: MLXEngine
) -> None:
    requests = [req("long", LONG)] + [req(f"s{i}", p) for i, p in enumerate(SHORT)]
    free, free_seen = _together(unbounded, requests)
    assert max(free_seen) == len(requests)  # without a budget all five share the batch

    # Room for the long prompt and one more row padded to it, not for five.
    n_long = len(unbounded.tokenize(req("n", LONG)))
    per_token = unbounded._kv_token_bytes
    cap = 2 * (n_long + KV_STEP) * per_token
    eng = _engine(model_path, cap)
    try:
        bounded, seen = _together(eng, requests)
        stats = eng.stats()
    finally:
        asyncio.run(eng.close())
    assert bounded == free  # greedy: waiting for room changes nothing in the outputs
    assert stats.kv_cache_limit_bytes == cap
    assert stats.kv_cache_waits_total >= 1
    assert max(seen) < len(requests)
    assert stats.queue_depth == 0 and stats.batch_size == 0


def test_one_sequence_runs_alone_however_small_the_budget(model_path: Path) -> None:
    eng = _engine(model_path, 1)
    try:
        texts, seen = _together(eng, [req(f"s{i}", p, 4) for i, p in enumerate(SHORT)])
        waits = eng.stats().kv_cache_waits_total
    finally:
        asyncio.run(eng.close())
    assert all(texts) and max(seen) == 1  # one at a time, each to its end
    assert waits == len(SHORT) - 1


def test_a_waiting_request_can_be_cancelled_and_the_engine_goes_on(model_path: Path) -> None:
    eng = _engine(model_path, 1)  # the second request waits while the first runs

    async def scenario() -> None:
        first = asyncio.create_task(_collect(eng, req("first", LONG, 40), []))
        while eng.stats().batch_size == 0:
            await asyncio.sleep(0.01)
        second = asyncio.create_task(_collect(eng, req("second", "Hello", 4), []))
        while eng.stats().kv_cache_waits_total == 0:
            await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(asyncio.CancelledError):
            await second
        assert await first
        assert await _collect(eng, req("after", "Hello", 3), [])

    try:
        asyncio.run(scenario())
        stats = eng.stats()
    finally:
        asyncio.run(eng.close())
    assert stats.queue_depth == 0 and stats.batch_size == 0
    assert stats.requests_total == 2  # the cancelled one never joined the batch


def test_close_ends_a_waiting_request(model_path: Path) -> None:
    from serving.engine.base import EngineClosedError

    eng = _engine(model_path, 1)

    async def scenario() -> None:
        first = asyncio.create_task(_collect(eng, req("first", LONG, 200), []))
        second = asyncio.create_task(_collect(eng, req("second", "Hello", 4), []))
        while eng.stats().kv_cache_waits_total == 0:
            await asyncio.sleep(0.01)
        await eng.close()
        for task in (first, second):
            with pytest.raises(EngineClosedError):
                await task

    asyncio.run(scenario())
