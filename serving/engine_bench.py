"""Quick engine measurements against raw mlx-lm on the same model and prompt (no MLflow; the
benchmark flow is the product's). Prints single-stream decode tok/s of `mlx_lm.stream_generate`
and of `MLXEngine`, their ratio, and the time to first token of a request sharing a long prefix
with an earlier one, prefix cache on and off.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        uv run python -m serving.engine_bench [--model smollm2-135m-instruct] [--tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from pathlib import Path

from serving.engine import GenerationRequest, SamplingParams
from serving.mlx_engine import MLXEngine, load_model

PROMPT = [
    {"role": "user", "content": "Tell me a long story about a lighthouse keeper and a storm."}
]


def raw_decode_tps(model: object, tokenizer: object, prompt: list[int], n: int) -> float:
    from mlx_lm.generate import stream_generate

    last = None
    for response in stream_generate(model, tokenizer, prompt, max_tokens=n):  # type: ignore[arg-type]
        last = response
    assert last is not None
    return float(last.generation_tps)


async def engine_decode_tps(engine: MLXEngine, n: int) -> float:
    req = GenerationRequest(
        "bench", messages=PROMPT, params=SamplingParams(max_tokens=n, temperature=0)
    )
    first = end = 0.0
    count = 0
    async for d in engine.generate(req):
        now = time.perf_counter()
        if count == 0:
            first = now
        count += len(d.token_ids)
        end = now
    # Same definition as mlx-lm's generation_tps: tokens after the first over the time they took.
    return (count - 1) / (end - first) if count > 1 else 0.0


async def ttft(engine: MLXEngine, prompt: str) -> tuple[float, int]:
    req = GenerationRequest(
        "ttft", prompt=prompt, params=SamplingParams(max_tokens=1, temperature=0)
    )
    t = time.perf_counter()
    cached = 0
    async for d in engine.generate(req):
        cached = d.cached_tokens
    return time.perf_counter() - t, cached


def main() -> None:
    from pipelines.models.store import ModelStore
    from pipelines.settings import load_settings

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--path", type=Path, default=None, help="a model folder (default: the registry)"
    )
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefix-tokens", type=int, default=1500)
    args = ap.parse_args()
    path = args.path or ModelStore(load_settings().models_dir).resolve(args.model)

    model, tokenizer = load_model(path)
    prompt = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True)
    engine = MLXEngine.load(path, args.model)
    raw, eng = [], []

    async def run() -> None:
        await engine_decode_tps(engine, 8)  # warm up both
        raw_decode_tps(model, tokenizer, prompt, 8)
        for _ in range(args.rounds):  # interleaved: the machine's load hits both alike
            raw.append(raw_decode_tps(model, tokenizer, prompt, args.tokens))
            eng.append(await engine_decode_tps(engine, args.tokens))
        r, e = statistics.median(raw), statistics.median(eng)
        print(f"single-stream decode, {args.tokens} tokens, median of {args.rounds}:")
        print(f"  mlx_lm.stream_generate {r:8.2f} tok/s   runs {[round(x, 2) for x in raw]}")
        print(f"  MLXEngine              {e:8.2f} tok/s   runs {[round(x, 2) for x in eng]}")
        print(f"  ratio                  {e / r:8.3f}")

        words = " ".join(f"w{i}" for i in range(args.prefix_tokens))
        ids = tokenizer.encode(words)[: args.prefix_tokens]
        prefix = tokenizer.decode(ids)
        await ttft(engine, prefix + "\nQuestion one: what is this?")
        hit, cached = await ttft(engine, prefix + "\nQuestion two: why is this?")
        cold, _ = await ttft(engine, "Fresh. " + prefix + "\nQuestion three?")
        print(
            f"TTFT with a {len(ids)}-token shared prefix: cache hit {hit:.3f} s "
            f"({cached} cached tokens), cold {cold:.3f} s, ratio {hit / cold:.3f}"
        )
        await engine.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
