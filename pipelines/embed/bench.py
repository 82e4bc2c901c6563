"""Embedding throughput of the default encoder on 256-token chunks (a quick measurement, no MLflow).

Run it twice to compare BLAS libraries on Linux (the launcher is not involved here):

    uv run python -m pipelines.embed.bench                       # MLX's bundled reference BLAS
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        uv run python -m pipelines.embed.bench                   # Debian's OpenBLAS
"""

from __future__ import annotations

import argparse
import time

from pipelines.embed.dispatch import load_embedder
from pipelines.hardware import loaded_blas
from pipelines.settings import load_settings

# Public-domain prose (the Gettysburg Address), repeated until a chunk reaches the token target.
_TEXT = (
    "Four score and seven years ago our fathers brought forth on this continent, a new nation, "
    "conceived in Liberty, and dedicated to the proposition that all men are created equal. Now we "
    "are engaged in a great civil war, testing whether that nation, or any nation so conceived and "
    "so dedicated, can long endure. "
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    embedder = load_embedder(load_settings(embedding={"backend": "mlx"}))
    ids = embedder.tokenize(_TEXT * 20)[
        : args.tokens - 4
    ]  # room for [CLS], [SEP] and re-tokenizing
    chunk = embedder.decode(ids)
    texts = [chunk] * args.chunks
    embedder.encode(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    t = time.perf_counter()
    out = embedder.encode(texts, batch_size=args.batch_size)
    dt = time.perf_counter() - t
    tokens = sum(out.token_counts) / len(texts)
    print(
        f"blas={loaded_blas()} chunks={len(texts)} tokens/chunk={tokens:.0f} "
        f"batch={args.batch_size} seconds={dt:.2f} chunks/s={len(texts) / dt:.2f}"
    )


if __name__ == "__main__":
    main()
