"""Deltas that wait behind the one a consumer takes go out merged with it (serving/engine/
mlx_engine.py `coalesce`): text, token ids and logprobs in order, the last delta's counts and
finish; an error behind them is raised after they are delivered; nothing is waited for."""

from __future__ import annotations

import asyncio

from serving.engine.base import Delta, TokenLogprob
from serving.engine.mlx_engine import coalesce


def lp(token: str) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=-0.5)


def test_waiting_deltas_merge_into_one() -> None:
    async def run() -> tuple[Delta, BaseException | None, int]:
        q: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        q.put_nowait(Delta(text=" b", token_ids=[2], logprobs=[lp(" b")], completion_tokens=2))
        q.put_nowait(
            Delta(text=" c", token_ids=[3], logprobs=[lp(" c")], completion_tokens=3,
                  finish_reason="length", prompt_tokens=7)
        )  # fmt: skip
        q.put_nowait(Delta(text="never", token_ids=[9]))  # after the finish: not taken
        first = Delta(text="a", token_ids=[1], logprobs=[lp("a")], completion_tokens=1)
        merged, failed = coalesce(first, q)
        return merged, failed, q.qsize()

    merged, failed, left = asyncio.run(run())
    assert failed is None and left == 1
    assert merged.text == "a b c" and merged.token_ids == [1, 2, 3]
    assert [x.token for x in merged.logprobs or []] == ["a", " b", " c"]
    assert merged.completion_tokens == 3 and merged.prompt_tokens == 7
    assert merged.finish_reason == "length"


def test_an_error_behind_the_deltas_comes_after_them() -> None:
    async def run() -> tuple[Delta, BaseException | None]:
        q: asyncio.Queue[Delta | BaseException] = asyncio.Queue()
        q.put_nowait(Delta(text="b", token_ids=[2]))
        q.put_nowait(RuntimeError("engine failed"))
        return coalesce(Delta(text="a", token_ids=[1]), q)

    merged, failed = asyncio.run(run())
    assert merged.text == "ab" and merged.logprobs is None
    assert isinstance(failed, RuntimeError)


def test_nothing_waiting_is_the_delta_itself() -> None:
    async def run() -> tuple[Delta, BaseException | None]:
        return coalesce(Delta(text="a", token_ids=[1]), asyncio.Queue())

    first, failed = asyncio.run(run())
    assert first == Delta(text="a", token_ids=[1]) and failed is None
