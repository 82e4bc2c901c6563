"""The memory budget counts the process's real footprint (serving/engine/memory.py), not only the
engines' own estimates, and /api/health/status reports both.

The manager runs with fake engines (whose estimates are whatever the test says) and a reader of
the process's memory the test controls, so the 507 decision is checked against known figures;
the reader itself and the status route run for real (psutil, MLX, the in-process server with the
bundled LLM).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from pipelines.settings import load_settings
from serving.engine.manager import GC_YOUNG_THRESHOLD, InsufficientMemoryError, ModelManager
from serving.engine.memory import ProcessMemory, process_memory
from tests.serving.fakes import FakeEngine, StoreWithFakes
from tests.serving.servers import RunningServer

MiB = 1 << 20


def _manager(tmp_path: Path, footprint: list[int] | None) -> ModelManager:
    """Models a (default), b and c of 100 MiB each, estimated by their engines at 100 MiB, in a
    1000 MiB budget; `footprint[0]` is what the process reader says (None: no reader)."""
    store = StoreWithFakes(
        tmp_path, llms=["a", "b", "c"], sizes=dict.fromkeys("abc", 100 * MiB), builtins=False
    )

    def engine(name: str, path: Path) -> FakeEngine:
        fake = FakeEngine(name)
        fake.memory_bytes = 100 * MiB
        return fake

    reader = None if footprint is None else (lambda: ProcessMemory(rss_bytes=footprint[0]))
    return ModelManager(
        store, engine, default_model="a", memory_budget_bytes=1000 * MiB, process_memory=reader
    )


def test_the_footprint_is_the_larger_of_rss_and_mlx() -> None:
    assert ProcessMemory(rss_bytes=5, mlx_active_bytes=1, mlx_cache_bytes=2).footprint_bytes == 5
    metal = ProcessMemory(rss_bytes=5, mlx_active_bytes=4, mlx_cache_bytes=3)
    assert metal.mlx_bytes == 7 and metal.footprint_bytes == 7


def test_the_reader_sees_rss_and_mlx_memory() -> None:
    import mlx.core as mx

    before = process_memory()
    assert before.rss_bytes > 10 * MiB
    held = mx.ones((8 * MiB // 4,), dtype=mx.float32)  # 8 MiB that MLX holds
    mx.eval(held)
    during = process_memory()
    assert during.mlx_active_bytes >= before.mlx_active_bytes + 8 * MiB
    assert during.footprint_bytes >= during.rss_bytes
    del held


def test_a_large_footprint_refuses_a_load_the_estimates_would_allow(tmp_path: Path) -> None:
    async def scenario() -> None:
        # Engines alone: a and b are 200 MiB of 1000, so c loads.
        estimates = _manager(tmp_path / "e", None)
        for name in "abc":
            await estimates.load(name)
        assert sorted(estimates.loaded()) == ["a", "b", "c"]
        await estimates.close()

        footprint = [0]
        measured = _manager(tmp_path / "p", footprint)
        await measured.load("a")
        await measured.load("b")
        # Then the process grows to 950 MiB (MLX's cache, tokenizers, the heap): c needs 100 more.
        footprint[0] = 950 * MiB
        assert measured.memory_in_use() == 950 * MiB
        async with measured.use("b"):  # b busy, a the default: nothing may be evicted
            with pytest.raises(InsufficientMemoryError) as caught:
                await measured.load("c")
        message = str(caught.value)
        assert "950 of 1000 MiB" in message and "footprint" in message
        assert sorted(measured.loaded()) == ["a", "b"]  # the resident models untouched
        # b idle: evicting it is taken to free its 100 MiB, which makes room for c.
        await measured.load("c")
        assert sorted(measured.loaded()) == ["a", "c"]
        # A footprint below the estimates never lowers the figure the budget counts.
        footprint[0] = 10 * MiB
        assert measured.memory_in_use() == 200 * MiB
        report = measured.memory_report()
        assert report["budget_counts"] == "process"
        assert report["engines_bytes"] == 200 * MiB
        assert report["process_footprint_bytes"] == 10 * MiB
        assert report["idle_ttl_s"] == measured.idle_ttl_s  # the dashboard's Models page shows it
        await measured.close()

    asyncio.run(scenario())


def test_serve_counts_the_process(tmp_path: Path) -> None:
    """`impetus serve` builds its manager with `from_settings`: the budget counts the process."""
    settings = load_settings(data_dir=tmp_path / "state")
    manager = ModelManager.from_settings(settings, lambda name, path: FakeEngine(name))
    report = manager.memory_report()
    assert report["budget_counts"] == "process"
    assert report["in_use_bytes"] >= report["process_footprint_bytes"] > 0


def test_health_status_reports_the_engines_and_the_process(server: RunningServer) -> None:
    if server.mode != "inprocess":
        pytest.skip("the Ray ingress holds no model: its process figures say nothing of them")
    r = httpx.get(f"{server.base_url}/api/health/status", timeout=30)
    assert r.status_code == 200
    memory = r.json()["memory"]
    # The fields that were there before stay.
    assert memory["budget_bytes"] > 0 and memory["in_use_bytes"] > 0
    assert memory["engines_bytes"] > 0  # the bundled LLM is resident
    assert memory["process_rss_bytes"] > memory["engines_bytes"] // 2
    assert memory["mlx_active_bytes"] > 0  # its weights are MLX arrays in this process
    assert memory["process_footprint_bytes"] >= memory["process_rss_bytes"]
    print(
        f"engines report {memory['engines_bytes'] / MiB:.0f} MiB; the process holds "
        f"{memory['process_rss_bytes'] / MiB:.0f} MiB resident, MLX "
        f"{memory['mlx_active_bytes'] / MiB:.0f} MiB active + "
        f"{memory['mlx_cache_bytes'] / MiB:.0f} MiB cache"
    )


def test_the_load_record_follows_later_loads(tmp_path: Path) -> None:
    """A model first loaded at start-up (load_in_background) and later unloaded and loaded again
    through the API reads "loaded" in /api/health/status, not "loading" forever; a later load
    that does not fit reads "failed" with the reason."""

    async def scenario() -> list[tuple[str, str | None]]:
        manager = _manager(tmp_path, footprint=[0])
        seen = []
        await manager.load_in_background("b")
        seen.append((manager.load_states["b"].state, manager.load_states["b"].error))
        await manager.unload("b")
        await manager.load("b")
        seen.append((manager.load_states["b"].state, manager.load_states["b"].error))
        await manager.unload("b")
        manager.memory_budget_bytes = 1 * MiB  # nothing fits now
        with pytest.raises(InsufficientMemoryError):
            await manager.load("b")
        seen.append((manager.load_states["b"].state, None))
        return seen

    assert asyncio.run(scenario()) == [("loaded", None), ("loaded", None), ("failed", None)]


def test_loads_and_unloads_leave_the_heap_frozen_and_free_the_model(tmp_path: Path) -> None:
    """After a load every object alive is out of the collector's full passes (gc.freeze); an
    unload gives them back, so the model's objects, a reference cycle among them too, are
    freed."""
    import gc
    import weakref

    class Cyclic(FakeEngine):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.me = self  # a cycle: only the collector frees it

    store = StoreWithFakes(tmp_path, llms=["a", "b"], sizes=dict.fromkeys("ab", MiB))
    refs: list[weakref.ref[Cyclic]] = []

    def engine(name: str, path: Path) -> Cyclic:
        fake = Cyclic(name)
        refs.append(weakref.ref(fake))
        return fake

    async def scenario() -> None:
        manager = ModelManager(store, engine, default_model="a", memory_budget_bytes=1 << 40)
        await manager.load("a")
        await manager.load("b")
        assert gc.get_freeze_count() > 0 and refs[1]() is not None
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        await manager.unload("b")
        assert gc.get_freeze_count() == 0
        await asyncio.sleep(0)  # the load's callbacks, which still hold b, run
        gc.collect()  # as a full collection later would
        assert refs[1]() is None and refs[0]() is not None  # b freed, a still loaded
        await manager.close()

    threshold = gc.get_threshold()
    try:
        asyncio.run(scenario())
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
