"""The prefix cache's tiers (serving/engine/prefix_store.py): caps, the disk format, restarts.

Most tests drive a `PrefixStore` with real mlx-lm `KVCache` layers of random values (a turn is
an insert of a longer token sequence), so that many turns take milliseconds; one test runs the
real engine on the bundled SmolLM2 across a restart. Turn-over-turn reuse through the HTTP APIs
is tests/serving/http/test_prefix_cache_sdk.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("mlx_lm")

import mlx.core as mx
from mlx_lm.models.cache import KVCache

from serving.engine import prefix_store
from serving.engine.base import GenerationRequest, SamplingParams
from serving.engine.prefix_store import DiskTier, PrefixStore, token_key

LAYERS, HEADS, DIM = 2, 2, 16
PER_TOKEN = LAYERS * 2 * HEADS * DIM * 4  # bytes of float32 KV per token


def kv(n: int, dtype: Any = mx.float32, seed: int = 0) -> list[KVCache]:
    """A cache of `n` tokens, as the engine hands one over (evaluated, exactly `n` long)."""
    mx.random.seed(seed)
    cache = []
    for _ in range(LAYERS):
        c = KVCache()
        c.keys = mx.random.normal((1, HEADS, n, DIM)).astype(dtype)
        c.values = mx.random.normal((1, HEADS, n, DIM)).astype(dtype)
        c.offset = n
        mx.eval(c.keys, c.values)
        cache.append(c)
    return cache


def disk(folder: Path, cap: int, **kw: Any) -> DiskTier:
    return DiskTier(folder, cap, model="m", weights="w", **kw)


def folder_bytes(folder: Path) -> int:
    """The folder's size now (the writer may remove a file while it is listed)."""
    total = 0
    for f in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):
            total += f.stat().st_size
    return total


def test_a_restart_serves_a_longer_prompt_from_disk(tmp_path: Path) -> None:
    for dtype in (mx.float32, mx.bfloat16):
        folder = tmp_path / str(dtype)
        tokens = list(range(100, 300))
        cache = kv(len(tokens), dtype)
        store = PrefixStore("m", 64 << 20, disk(folder, 64 << 20))
        store.insert(tokens, cache)
        store.close()

        again = PrefixStore("m", 64 << 20, disk(folder, 64 << 20))
        got, rest = again.fetch([*tokens[:150], 7, 8, 9])
        assert rest == [7, 8, 9] and got is not None
        for mine, theirs in zip(got, cache, strict=True):
            assert mine.offset == 150 and mine.keys.dtype == dtype
            k, v = mine.state[0][..., :150, :], mine.state[1][..., :150, :]
            assert mx.array_equal(k, theirs.keys[..., :150, :]).item()
            assert mx.array_equal(v, theirs.values[..., :150, :]).item()
        s = again.stats()
        assert (s.disk_hits, s.memory_hits, s.misses) == (1, 0, 0)
        got, rest = again.fetch([*tokens, 5])  # now in memory
        assert rest == [5] and again.stats().memory_hits == 1
        assert isinstance(got, prefix_store.Layers)  # kept as the memory tier's own kind
        again.close()


def test_a_fetched_copy_grows_without_touching_the_kept_entry() -> None:
    """A fetch hands out new layer objects over the same arrays (no `copy.deepcopy`): the copy is
    trimmed to the prompt and grows as a decode would, and the entry kept in memory still has
    every token and value it had."""
    store = PrefixStore("m", 1 << 30)
    tokens = list(range(10, 30))
    store.insert(tokens, kv(20))
    kept = [np.array(c.keys) for c in kv(20)]  # the same random values (same seed)
    cache, rest = store.fetch([*tokens[:12], 99])
    assert rest == [99] and [c.offset for c in cache] == [12] * LAYERS
    for c in cache:  # a decode appends past the trimmed prefix: overwrites positions 12.. of it
        c.update_and_fetch(mx.ones((1, HEADS, 3, DIM)), mx.ones((1, HEADS, 3, DIM)))
        assert c.offset == 15
    again, rest = store.fetch([*tokens, 99])
    assert rest == [99] and [c.offset for c in again] == [20] * LAYERS
    for c, k in zip(again, kept, strict=True):
        np.testing.assert_array_equal(np.array(c.keys[..., :20, :]), k)
    assert isinstance(again, prefix_store.Layers)  # a copy's copy takes the cheap path too


@pytest.mark.parametrize("device_memory", [False, True])
def test_the_writer_gets_views_of_the_cache_or_of_device_copies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_memory: bool
) -> None:
    """Where memory is unified the writer reads the cache's own arrays; where kernels write device
    memory (CUDA, forced here) it reads copies cut to the written length, and either way the
    file holds the same values."""
    monkeypatch.setattr(prefix_store, "_device_memory", lambda _mx: device_memory)
    cache = kv(40, mx.bfloat16)
    views = prefix_store._host_views(mx, cache, 30)
    for c, (k, v) in zip(cache, views, strict=True):
        own = np.asarray(c.keys.view(mx.uint16))
        assert np.shares_memory(k, own) is not device_memory
        assert k.shape[2] == (30 if device_memory else 40)
        np.testing.assert_array_equal(k[..., :30, :], own[..., :30, :])
        np.testing.assert_array_equal(
            v[..., :30, :], np.asarray(c.values.view(mx.uint16))[..., :30, :]
        )
    store = PrefixStore("m", 1 << 20, disk(tmp_path, 1 << 30))
    store.insert(list(range(30)), cache)
    store.close()
    (entry,) = disk(tmp_path, 1 << 30).entries()
    loaded = prefix_store._read_cache(tmp_path / f"{entry.key}.safetensors")
    for c, back in zip(cache, loaded, strict=True):
        assert back.offset == 30 and back.keys.dtype == mx.bfloat16
        assert mx.array_equal(back.keys, c.keys[..., :30, :]).item()
        assert mx.array_equal(back.values, c.values[..., :30, :]).item()


def test_caps_hold_over_many_turns(tmp_path: Path) -> None:
    """A conversation of 60 turns, each 20 tokens longer, with other conversations between: the
    memory tier and the disk folder stay within their caps at every turn, and a conversation's
    earlier turns on disk give way to its latest."""
    mem_cap, disk_cap = 60 * PER_TOKEN * 10, 40 * PER_TOKEN * 10
    folder = tmp_path / "pc"
    store = PrefixStore("m", mem_cap, disk(folder, disk_cap))
    system = list(range(1000, 1100))
    conversation = list(system)
    for turn in range(60):
        conversation += [turn] * 20
        store.insert(list(conversation), kv(len(conversation), seed=turn))
        other = [*system, 9000 + turn, *range(50)]
        store.insert(other, kv(len(other), seed=turn))
        store.want_checkpoint(system)
        s = store.stats()
        assert s.memory_bytes <= mem_cap and s.disk_bytes <= disk_cap
        assert folder_bytes(folder) <= disk_cap
    store.close()
    entries = disk(folder, disk_cap).entries()
    assert entries and sum(e.nbytes for e in entries) == folder_bytes(folder) <= disk_cap
    whole = [e for e in entries if not e.checkpoint and len(e.tokens) > len(system) + 50]
    assert len(whole) <= 1  # one file per conversation: its latest turn that fit
    assert any(e.checkpoint and len(e.tokens) == len(system) for e in entries)


def test_corrupt_foreign_and_half_written_files_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "pc"
    tokens = list(range(200))
    store = PrefixStore("m", 0, disk(folder, 64 << 20))
    store.insert(tokens, kv(len(tokens)))
    store.close()
    (path,) = folder.iterdir()
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) // 2])  # the header intact, the arrays cut short
    (folder / "junk.safetensors").write_bytes(b"\x00" * 64)
    (folder / f"{token_key([1, 2])}.safetensors").write_bytes(whole)  # a name that lies
    (folder / f".{path.name}.tmp").write_bytes(whole[:100])  # a write killed midway
    other = DiskTier(folder, 64 << 20, model="other", weights="w")  # another model's folder
    assert other.entries() == []
    other.close()

    with caplog.at_level(logging.WARNING, logger="serving.engine.prefix_store"):
        again = PrefixStore("m", 0, disk(folder, 64 << 20))
        cache, rest = again.fetch([*tokens, 1])
    assert cache is None and rest == [*tokens, 1]
    assert again.stats().misses == 1 and again.disk is not None and again.disk.entries() == []
    assert not (folder / f".{path.name}.tmp").exists() and not path.exists()
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "junk.safetensors" in warned and "does not match" in warned and path.name in warned
    again.close()


@pytest.mark.parametrize("device_memory", [False, True])
def test_a_restart_preloads_the_newest_files_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device_memory: bool
) -> None:
    """At load the newest files are read into memory, newest first, while they fit the budget; a
    file that is a prefix of one read is skipped; the first hit on a preloaded entry counts as a
    disk hit (it came from disk) and later ones as memory hits. On CUDA (forced here) the arrays
    are copies made on the device, with the same values."""
    import os
    import time

    monkeypatch.setattr(prefix_store, "_device_memory", lambda _mx: device_memory)
    folder = tmp_path / "pc"
    system = list(range(1000, 1100))
    old = [*system, *range(50)]  # an older conversation
    last = [*system, *range(500, 600)]  # the one running before the restart
    # a queue that keeps every job: the writer may not have taken the first when the next come
    store = PrefixStore("m", 64 << 20, disk(folder, 64 << 20, queue_size=8))
    caches = {}
    for i, tokens in enumerate([old, last]):
        caches[i] = kv(len(tokens), seed=i)
        store.insert(tokens, caches[i])
        store.want_checkpoint(system)
    store.close()
    by_len = {len(e.tokens): e for e in disk(folder, 64 << 20).entries()}
    assert set(by_len) == {len(system), len(old), len(last)}  # the checkpoint, both conversations
    now = time.time()
    for age, n in ((30, len(old)), (20, len(system)), (10, len(last))):
        path = folder / f"{by_len[n].key}.safetensors"
        os.utime(path, (now - age, now - age))

    # a budget for the newest file and the checkpoint, not for the older conversation
    budget = by_len[len(last)].nbytes + by_len[len(system)].nbytes
    again = PrefixStore("m", 64 << 20, disk(folder, 64 << 20))
    assert again.preload(budget) == by_len[len(last)].nbytes  # the checkpoint is a prefix of it
    s = again.stats()
    assert s.preloaded_bytes == by_len[len(last)].nbytes and s.memory_bytes > 0
    got, rest = again.fetch([*last, 7])
    assert rest == [7] and got is not None
    for mine, theirs in zip(got, caches[1], strict=True):
        assert mx.array_equal(mine.state[0], theirs.keys).item()
        assert mx.array_equal(mine.state[1], theirs.values).item()
    assert (again.stats().disk_hits, again.stats().memory_hits) == (1, 0)
    again.fetch([*last, 7])
    assert (again.stats().disk_hits, again.stats().memory_hits) == (1, 1)
    got, rest = again.fetch([*old, 3])  # not preloaded: read from disk now
    assert rest == [3] and (again.stats().disk_hits, again.stats().memory_hits) == (2, 1)
    again.close()

    # the older conversation, read last, is now the newest file; the checkpoint is its prefix
    small = PrefixStore("m", 64 << 20, disk(folder, 64 << 20))
    assert small.preload(by_len[len(last)].nbytes - 1) == by_len[len(old)].nbytes
    small.close()
    none = PrefixStore("m", 0, disk(folder, 64 << 20))  # no memory tier: nothing to fill
    assert none.preload(1 << 30) == 0
    none.close()


# -- the real engine across a restart ------------------------------------------------------------

MODEL = "smollm2-135m-instruct"
AGENT = "You are a careful coding agent. Read files before you change them. " * 6
CHAT = [
    {"role": "system", "content": AGENT},
    {"role": "user", "content": "Which file holds the engine?"},
]


@pytest.fixture(scope="module")
def model_path(ready_models_dir: Path) -> Path:
    from pipelines.models.store import ModelStore

    return ModelStore(ready_models_dir).resolve(MODEL)


def answer(
    model_path: Path, folder: Path, messages: Any, preload: int = 0
) -> tuple[str, int, Any, tuple[int, int]]:
    """One greedy answer from a freshly loaded engine (then closed): text, cached tokens, stats,
    and the chat-piece encoder's (hits, misses)."""
    from serving.engine.mlx_engine import MLXEngine

    eng = MLXEngine.load(
        model_path, MODEL, prefix_cache_dir=folder, prefix_cache_disk_bytes=256 << 20,
        prefix_cache_preload_bytes=preload,
    )  # fmt: skip

    async def run() -> tuple[str, int]:
        req = GenerationRequest(
            "r", messages=messages, params=SamplingParams(temperature=0.0, max_tokens=12)
        )
        text, cached = "", -1
        async for d in eng.generate(req):
            text += d.text
            if d.finish_reason is not None:
                cached = d.cached_tokens
        return text, cached

    try:
        text, cached = asyncio.run(run())
        assert eng._segments is not None
        return text, cached, eng.stats(), (eng._segments.hits, eng._segments.misses)
    finally:
        asyncio.run(eng.close())


@pytest.mark.slow
@pytest.mark.parametrize("preload", [0, 256 << 20])
def test_after_a_restart_the_disk_tier_gives_the_cold_answer(
    model_path: Path, tmp_path: Path, preload: int
) -> None:
    """Read by the first turn (no preload) or at load (preload): the same answer, every prompt
    token but the last from disk. Read at load, the entry's chat pieces are kept too: the turn
    encodes none of its text again."""
    cold, cached, stats, (_, cold_misses) = answer(model_path, tmp_path, CHAT, preload)
    assert stats.prefix_cache_preloaded_bytes == 0  # an empty folder
    assert cached == 0 and stats.prefix_cache_disk_limit_bytes == 256 << 20
    (folder,) = tmp_path.glob("*/*")  # <model>/<weights fingerprint>
    files = DiskTier(folder, 256 << 20, model=MODEL, weights=folder.name)
    (checkpoint,) = [e for e in files.entries() if e.checkpoint]  # the agent prompt, alone
    (whole,) = [e for e in files.entries() if not e.checkpoint]
    files.close()
    assert len(AGENT) // 8 < len(checkpoint.tokens) < len(whole.tokens) - 8
    assert np.array_equal(whole.tokens[: len(checkpoint.tokens)], checkpoint.tokens)

    warm, cached, stats, (hits, misses) = answer(model_path, tmp_path, CHAT, preload)
    assert stats.prefix_cache_disk_hits == 1 and stats.prefix_cache_memory_hits == 0
    assert stats.prefix_cache_preloaded_bytes == (whole.nbytes if preload else 0)
    assert cached == stats.prompt_tokens_total - 1  # all but the token that starts the answer
    assert warm == cold
    # the system and user messages (the warm-up at load kept the special tokens, "\n" and
    # "assistant\n"); read at load, the entry's pieces are kept as well
    assert cold_misses == 2
    assert misses == (0 if preload else cold_misses), (hits, misses)


@pytest.mark.slow
def test_an_agent_prompt_is_rendered_once_for_its_checkpoint(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Agents resend the same system prompt and tools every turn: the engine renders them alone
    (to find where the checkpoint ends) once, not once a turn; other ones get their own."""
    from serving.engine.mlx_engine import MLXEngine

    eng = MLXEngine.load(
        model_path, MODEL, prefix_cache_dir=tmp_path, prefix_cache_disk_bytes=64 << 20
    )
    heads: list[int] = []  # the message count of every render of a head alone
    render = eng._render

    def counted(request: GenerationRequest, messages: Any, **kw: Any) -> list[int]:
        if not kw["add_generation_prompt"]:
            heads.append(len(messages))
        return render(request, messages, **kw)

    monkeypatch.setattr(eng, "_render", counted)

    def checkpoint(messages: Any) -> tuple[tuple[int, ...], list[int]]:
        req = GenerationRequest("r", messages=messages, params=SamplingParams(max_tokens=1))
        prompt = eng._encode(req)
        return eng._checkpoints(req, prompt), prompt

    try:
        first, prompt = checkpoint(CHAT)
        again, longer = checkpoint([*CHAT, {"role": "assistant", "content": "Done."}, *CHAT[1:]])
        assert heads == [1] and first == again
        (n,) = first
        assert longer[:n] == prompt[:n] and len(AGENT) // 8 < n < len(prompt)
        other, _ = checkpoint([{"role": "system", "content": AGENT + " Be brief."}, *CHAT[1:]])
        assert heads == [1, 1] and other[0] > n
    finally:
        asyncio.run(eng.close())
