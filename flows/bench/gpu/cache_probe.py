"""Whether a decode batch admitted from cached prefixes steps slower than one prefilled from
scratch, without the server: one `BatchGenerator` with the engine's lean batch, the same prompts
four ways (prefilled from scratch; admitted from fresh per-prompt caches of all but their last
token; from caches of a first round kept and fetched as the engine does; and the second with the
merged batch cache's arrays copied once after admission). Prints the batch cache's shape and each
way's median step. An H100 run of 2026-12-05 had the server's cached batches stepping at 7.8 ms
against 4.9 without the cache; this probe on another H100 put all four ways at 4.0-4.1 ms, and the
server's cached side then stepped at 4.2 ms (docs/benchmarks.md, eleventh run).

    python -m flows.bench.gpu.cache_probe FOLDER [--make llama1b-bf16 --smollm2 DIR] [--streams 64]
        [--trace]     # and the calls of the first step (profile.py's CallTrace), summed by name
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import mlx.core as mx


def own_cache(model: Any, tokens: list[int]) -> list[Any]:
    """A prompt's cache of `tokens`, prefilled alone (what the prefix cache holds)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    model(mx.array([tokens]), cache=cache)
    mx.eval([c.state for c in cache])
    return cache


def first_round(model: Any, prompts: list[list[int]], n: int = 16) -> Any:
    """A `PrefixStore` (memory tier) holding the caches of one round of `prompts`, `n` tokens
    each, kept as the engine keeps them (evaluated, then inserted)."""
    from mlx.utils import tree_flatten
    from mlx_lm.generate import BatchGenerator

    from serving.engine.lean_batch import install
    from serving.engine.prefix_store import PrefixStore

    gen = BatchGenerator(model, completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    install(gen)
    gen.insert(prompts, max_tokens=[n] * len(prompts))
    kept: list[tuple[list[int], Any]] = []
    while len(kept) < len(prompts):
        _, responses = gen.next()
        kept += [(list(r.all_tokens), r.prompt_cache) for r in responses if r.finish_reason]
    gen.close()
    flat: Any = tree_flatten([[c.state for c in cache] for _, cache in kept])
    mx.eval([v for _, v in flat if isinstance(v, mx.array)])
    store = PrefixStore("probe", 1 << 30, None)
    for tokens, cache in kept:
        store.insert(tokens, cache)
    return store


def describe(gen: Any) -> dict[str, Any]:
    c = gen._generation_batch.prompt_cache[0]
    return {
        "class": type(c).__name__,
        "keys": list(c.keys.shape) if c.keys is not None else None,
        "idx": getattr(c, "_idx", None),
        "left_padding": sorted(set(c.left_padding.tolist())),
        "dtype": str(c.keys.dtype) if c.keys is not None else None,
    }


def run(
    model: Any, prompts: list[list[int]], way: str, steps: int, trace: Any = None
) -> dict[str, Any]:
    from mlx_lm.generate import BatchGenerator

    from serving.engine.lean_batch import install

    gen = BatchGenerator(model, completion_batch_size=len(prompts), prefill_batch_size=len(prompts))
    install(gen)
    if way == "scratch":
        gen.insert(prompts, max_tokens=[steps + 8] * len(prompts))
    elif way == "stored":  # as the engine does: a first round's caches, kept, then fetched
        store = first_round(model, prompts)
        fetched = [store.fetch(p) for p in prompts]
        gen.insert(
            [rest for _, rest in fetched],
            max_tokens=[steps + 8] * len(prompts),
            caches=[c for c, _ in fetched],
            all_tokens=[
                p[: len(p) - len(rest)] for p, (_, rest) in zip(prompts, fetched, strict=True)
            ],
        )
    else:
        caches = [own_cache(model, p[:-1]) for p in prompts]
        gen.insert(
            [p[-1:] for p in prompts],
            max_tokens=[steps + 8] * len(prompts),
            caches=caches,
            all_tokens=[p[:-1] for p in prompts],
        )
    times: list[float] = []
    shape: dict[str, Any] | None = None
    first: dict[str, Any] | None = None
    for _ in range(steps):
        started, started_ns = time.perf_counter(), time.time_ns()
        gen.next()
        times.append((time.perf_counter() - started) * 1000)
        if trace is not None and first is None:  # what the first step (admission) ran
            first = trace.window(started_ns, time.time_ns())["total"]
        if shape is None and len(gen._generation_batch):
            shape = describe(gen)
            batch = gen._generation_batch.prompt_cache
            if way == "cached_copied":  # fresh arrays: nothing else can hold the old ones
                for c in batch:
                    c.keys, c.values = c.keys + 0, c.values + 0
            mx.eval([c.state for c in batch])
    gen.close()
    steady = times[len(times) // 4 :]
    return {
        "way": way,
        "step_ms_p50": statistics.median(steady),
        "first_ms": times[:3],
        **(shape or {}),
        **({"first_trace": first} if first is not None else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("folder", help="a model folder, or where to make --make's")
    parser.add_argument("--make", help="a bench model's name (models.py), made in FOLDER")
    parser.add_argument("--smollm2", help="SmolLM2's folder (the tokenizer), for --make")
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--trace", action="store_true", help="the first step's calls (profile.py)")
    args = parser.parse_args()
    trace = None
    if args.trace:
        from flows.bench.gpu.profile import CallTrace

        trace = CallTrace()
        trace.install()
    from mlx_lm import load

    folder = Path(args.folder)
    if args.make:
        from flows.bench.gpu.models import make_folder, specs

        folder = make_folder(specs(tiny=False)[args.make], Path(args.smollm2), folder)
    model, tokenizer = load(str(folder))[:2]
    from flows.bench.gpu.runner import chat_ids
    from flows.bench.prompts import prompts as chats

    prompts = [chat_ids(tokenizer, chat) for chat in chats(args.streams)]
    print(
        mx.default_device(),
        "prompt lengths",
        sorted({len(p) for p in prompts}),
    )
    for _ in range(2):  # the second pass is the one to read (kernels compiled)
        for way in ("scratch", "cached", "stored", "cached_copied"):
            print(json.dumps(run(model, prompts, way, args.steps, trace)), flush=True)
            if trace is not None:
                trace.events.clear()


if __name__ == "__main__":
    main()
