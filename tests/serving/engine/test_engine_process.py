"""The MLX engine in a process of its own (serving/engine/process.py), on the bundled model.

The child is the real `python -m serving.engine.process` with the real `MLXEngine`; its outputs
are compared with an engine in this process under greedy decoding, token for token. What can go
wrong between the two processes is provoked for real: a request the child refuses, a full queue,
a stream dropped without being closed, the child killed, the parent closing it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.engine.base import (
    Arrivals,
    Delta,
    Engine,
    EngineClosedError,
    EngineError,
    GenerationRequest,
    InvalidRequestError,
    QueueFullError,
    SamplingParams,
)
from serving.engine.window import ContextLengthError

pytest.importorskip("mlx_lm")

from serving.engine.mlx_engine import MLXEngine
from serving.engine.process import HOOK_ENV, EngineProcess

MODEL = "smollm2-135m-instruct"
QUEUE_LIMIT = 4
RETRY_AFTER = 2.5
PROMPTS = ["The capital of France is", "1, 2, 3, 4,", "Once upon a time"]
POEM = [{"role": "user", "content": "Write a short poem about the sea."}]


def hook() -> dict[str, Any]:
    """The child's test hook (HOOK_ENV): calls that read the child's engine, and one that makes
    its next `prepare` slow."""
    return {
        "pending_arrivals": lambda engine: engine.arrivals.pending(),
        "admitted": lambda engine: engine._admitted,
        "slow_next_prepare": slow_next_prepare,
    }


def slow_next_prepare(engine: MLXEngine, seconds: float) -> None:
    def slow(request: GenerationRequest) -> Any:
        del engine.prepare  # once: the class's again
        time.sleep(seconds)
        return engine.prepare(request)

    engine.prepare = slow  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def model_path(ready_models_dir: Path) -> Path:
    from pipelines.models.store import ModelStore

    return ModelStore(ready_models_dir).resolve(MODEL)


@pytest.fixture(scope="module")
def remote(model_path: Path) -> Iterator[EngineProcess]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(HOOK_ENV, "tests.serving.engine.test_engine_process:hook")
        eng = EngineProcess.start(
            model_path, MODEL, queue_limit=QUEUE_LIMIT, retry_after=RETRY_AFTER
        )
    yield eng
    asyncio.run(eng.close())


def req(rid: str, prompt: str | None = None, **params: Any) -> GenerationRequest:
    params.setdefault("temperature", 0.0)
    params.setdefault("max_tokens", 8)
    messages = POEM if prompt is None else None
    return GenerationRequest(rid, prompt=prompt, messages=messages, params=SamplingParams(**params))


async def collect(engine: Engine, request: GenerationRequest) -> list[Delta]:
    # as the HTTP side calls it: generate (validating, tokenizing) in a worker thread
    stream = await asyncio.to_thread(engine.generate, request)
    return [d async for d in stream]


def summary(deltas: list[Delta]) -> tuple[str, list[int], str | None, int, int]:
    last = deltas[-1]
    ids = [t for d in deltas for t in d.token_ids]
    return (
        "".join(d.text for d in deltas),
        ids,
        last.finish_reason,
        last.completion_tokens,
        (last.prompt_tokens),
    )


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_streams_what_an_engine_in_this_process_streams(
    remote: EngineProcess, model_path: Path
) -> None:
    assert isinstance(remote, Engine)
    local = MLXEngine.load(model_path, MODEL)
    try:

        async def together(engine: Engine) -> list[list[Delta]]:
            requests = [req(f"p{i}", p, max_tokens=12) for i, p in enumerate(PROMPTS)]
            return await asyncio.gather(*(collect(engine, r) for r in [*requests, req("chat")]))

        theirs = [summary(d) for d in asyncio.run(together(remote))]
        ours = [summary(d) for d in asyncio.run(together(local))]
        assert theirs == ours

        async def on_the_loop() -> list[list[Delta]]:  # agenerate: submitted from the loop
            requests = [req(f"a{i}", p, max_tokens=12) for i, p in enumerate(PROMPTS)]
            streams = [await remote.agenerate(r) for r in [*requests, req("chat")]]

            async def drain(stream: Any) -> list[Delta]:
                return [d async for d in stream]

            return await asyncio.gather(*(drain(s) for s in streams))

        assert [summary(d) for d in asyncio.run(on_the_loop())] == ours
        assert all(s[2] == "length" and s[3] == 12 for s in theirs[:3])
        last = asyncio.run(collect(remote, req("t", "Tell me more.", max_tokens=4)))[-1]
        assert last.timings is not None and last.timings.first_token_ns >= last.timings.queued_ns
        # the calls that are not generation answer as the local engine's do
        chat = req("c")
        assert remote.tokenize(chat) == local.tokenize(chat)
        assert remote.count_tokens(chat) == local.count_tokens(chat)
        ids = remote.tokenize(req("h", "Hello world"), add_special_tokens=False)
        assert remote.detokenize(ids) == "Hello world"
        assert remote.capabilities() == local.capabilities()
        stats = remote.stats()
        assert stats.model == MODEL and stats.requests_total >= 5 and stats.memory_bytes > 0
        assert stats.generation_tokens_total >= 3 * 12
    finally:
        asyncio.run(local.close())


def test_refusals_cross_with_their_fields(remote: EngineProcess) -> None:
    with pytest.raises(InvalidRequestError) as bad:
        remote.generate(req("b", "hi", temperature=-1))
    assert bad.value.param == "temperature"
    too_long = GenerationRequest("l", prompt_ids=[1] * 9000, params=SamplingParams(max_tokens=4))
    with pytest.raises(ContextLengthError) as window:
        remote.generate(too_long)
    assert window.value.context_window == 8192 and window.value.prompt_tokens == 9000
    with pytest.raises(ContextLengthError) as window:  # the same from the event loop
        asyncio.run(remote.agenerate(too_long))
    assert window.value.prompt_tokens == 9000 and window.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as tokens:
        remote.detokenize([10**9])
    assert tokens.value.param == "tokens"
    assert "Traceback" not in str(tokens.value)

    async def overflow() -> None:
        streams: list[Any] = [
            await asyncio.to_thread(remote.generate, req(f"q{i}", "Count:", max_tokens=200))
            for i in range(QUEUE_LIMIT)
        ]
        with pytest.raises(QueueFullError) as full:
            await asyncio.to_thread(remote.generate, req("over", "hi"))
        assert full.value.retry_after == RETRY_AFTER
        for s in streams:
            await anext(s)  # running
            await s.aclose()  # a client gone: the child drops its sequence and frees the slot
        assert (await collect(remote, req("after", "hi", max_tokens=2)))[-1].completion_tokens

    asyncio.run(overflow())
    wait_until(lambda: remote.stats().batch_size == 0 and remote.stats().queue_depth == 0)


def test_a_stream_dropped_unclosed_frees_its_slot(remote: EngineProcess) -> None:
    async def drop() -> None:
        for i in range(QUEUE_LIMIT):
            # never iterated, never closed: only its finalizer can tell the child
            await asyncio.to_thread(remote.generate, req(f"d{i}", "Count:", max_tokens=200))
        gc.collect()

    asyncio.run(drop())
    wait_until(lambda: remote.call("admitted") == 0)
    assert asyncio.run(collect(remote, req("next", "hi", max_tokens=2)))[-1].finish_reason


def test_a_request_cancelled_while_the_child_admits_it_frees_its_slot(
    remote: EngineProcess,
) -> None:
    # The client goes away after the request crossed and before the child answered: the
    # stream's release reaches the child first, which drops the sequence once it has made it.
    remote.call("slow_next_prepare", 0.5)

    async def cancelled() -> None:
        task = asyncio.ensure_future(remote.agenerate(req("c", "Count:", max_tokens=400)))
        await asyncio.sleep(0.1)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled())
    time.sleep(0.6)  # the slow prepare is over: admitted, then released at once
    wait_until(lambda: remote.call("admitted") == 0, timeout=1.0)
    assert remote.stats().batch_size == 0
    assert asyncio.run(collect(remote, req("next", "hi", max_tokens=2)))[-1].finish_reason


def test_a_submit_with_no_answer_in_time_is_released_in_the_child(
    remote: EngineProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From a thread (`generate`) as from the event loop: the caller gets an EngineError and the
    # child, which admits the request after all, drops it rather than decode it for nobody.
    import serving.engine.process as process

    monkeypatch.setattr(process, "CALL_TIMEOUT_S", 0.1)
    remote.call("slow_next_prepare", 0.5)
    with pytest.raises(EngineError, match="did not answer submit"):
        remote.generate(req("t", "Count:", max_tokens=400))
    time.sleep(0.6)
    wait_until(lambda: remote.call("admitted") == 0, timeout=1.0)
    assert remote.stats().batch_size == 0


def test_the_childs_engine_sees_the_requests_still_arriving(remote: EngineProcess) -> None:
    # The child is told whether any are on their way (all the engine reads), at each change.
    arrivals = Arrivals()
    remote.arrivals = arrivals
    try:
        leave = [arrivals.enter(), arrivals.enter()]
        wait_until(lambda: remote.call("pending_arrivals") == 1)
        leave[0]()
        leave[0]()  # counted out once: the other is still on its way
        time.sleep(0.2)
        assert remote.call("pending_arrivals") == 1
        leave[1]()
        wait_until(lambda: remote.call("pending_arrivals") == 0)
        last = arrivals.enter()
        wait_until(lambda: remote.call("pending_arrivals") == 1)
    finally:
        remote.arrivals = None
    last()  # no longer watched: the child keeps what it was told last
    time.sleep(0.2)
    assert remote.call("pending_arrivals") == 1


def test_a_dead_engine_process_ends_its_streams_and_says_so(model_path: Path) -> None:
    eng = EngineProcess.start(model_path, MODEL)

    async def scenario() -> None:
        stream = await asyncio.to_thread(eng.generate, req("k", "Write an essay:", max_tokens=500))
        await anext(stream)
        eng._process.kill()  # what an out-of-memory kill or a crash in MLX looks like
        with pytest.raises(EngineClosedError, match="exited"):
            async for _ in stream:
                pass
        with pytest.raises(EngineClosedError):
            eng.generate(req("after", "hi"))
        await eng.close()

    asyncio.run(scenario())
    assert eng._process.returncode is not None and eng._process.returncode < 0
    assert eng.stats().memory_bytes == 0


def test_close_ends_running_streams_and_the_process(model_path: Path) -> None:
    eng = EngineProcess.start(model_path, MODEL, prefix_cache_bytes=0)

    async def scenario() -> None:
        task = asyncio.create_task(collect(eng, req("x", "Write a long essay:", max_tokens=300)))
        await asyncio.sleep(1.0)
        await eng.close()
        with pytest.raises(EngineClosedError, match="unloaded"):
            await task
        with pytest.raises(EngineClosedError):
            eng.generate(req("y", "hi"))

    asyncio.run(scenario())
    assert eng._process.returncode == 0
    assert eng.stats().memory_bytes == 0


def test_the_engine_process_ends_when_its_parent_is_killed(model_path: Path) -> None:
    """A server killed outright (no shutdown) leaves no engine process holding the model."""
    parent = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys, time\n"
            "from serving.engine.process import EngineProcess\n"
            f"e = EngineProcess.start({str(model_path)!r}, 'orphan')\n"
            "print(e._process.pid, flush=True)\n"
            "time.sleep(600)\n"
        )],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],  # the project root: `serving` imports
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not _alive(child))
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    """Whether `pid` runs (an orphan is reaped by init; a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_folder_that_does_not_load_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="Could not load model 'empty'") as err:
        EngineProcess.start(tmp_path, "empty")
    assert "impetus models list" in str(err.value)
