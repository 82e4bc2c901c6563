"""Quantizations of an MLX LLM through mlx-lm's `convert`: 4-bit, 8-bit and 16-bit float.

    impetus models quantize smollm2-135m-instruct --bits 4    # → smollm2-135m-instruct-4bit
    impetus models quantize smollm2-135m-instruct --bits 16   # → smollm2-135m-instruct-fp16

The 16-bit model is the reference the others are compared against (`impetus bench llm`). When the
source is itself quantized (the built-in model comes from a Q4_1 GGUF), `convert(dequantize=True,
dtype=...)` makes the 16-bit model from it, and the 4- and 8-bit models are quantized from that
16-bit model (`convert(quantize=True, q_bits=..., q_group_size=...)`), which is registered first
if it is missing. So for the built-in model "16-bit" means the GGUF's Q4_1 weights in float16,
not the original bfloat16 checkpoint. Every folder is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipelines.errors import ImpetusError

BITS = (4, 8, 16)
Dtype = Literal["float16", "bfloat16"]
DTYPE_SUFFIX = {"float16": "fp16", "bfloat16": "bf16"}
DEFAULT_GROUP_SIZE = 64


class QuantizeError(ImpetusError, ValueError):
    """The requested quantization cannot be made; the message says why."""


@dataclass(frozen=True)
class Quantization:
    """What one conversion produced."""

    path: Path
    bits: int
    group_size: int | None  # None for the 16-bit float model
    dtype: str
    seconds: float


def derived_name(
    base: str, bits: int, dtype: Dtype = "float16", group_size: int = DEFAULT_GROUP_SIZE
) -> str:
    """The registry name of a quantization: `<base>-4bit`, `<base>-8bit`, `<base>-fp16`, and
    `<base>-4bit-g32` for a group size other than mlx-lm's default 64."""
    check_bits(bits)
    if bits == 16:
        return f"{base}-{DTYPE_SUFFIX[dtype]}"
    return f"{base}-{bits}bit" + ("" if group_size == DEFAULT_GROUP_SIZE else f"-g{group_size}")


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise QuantizeError(
            f"--bits {bits}: use 4, 8 or 16 (16 means 16-bit float, no quantization)"
        )


def is_quantized(folder: Path) -> bool:
    """Whether an MLX model folder holds quantized weights (its config says so)."""
    config = json.loads((folder / "config.json").read_text())
    return "quantization" in config or "quantization_config" in config


def convert_folder(
    src: Path,
    dst: Path,
    bits: int,
    *,
    group_size: int = DEFAULT_GROUP_SIZE,
    dtype: Dtype = "float16",
) -> Quantization:
    """One `mlx_lm.convert` call from an MLX folder to a new folder at `dst` (atomic).

    bits 16: dequantize (if needed) and cast to `dtype`. bits 4/8: `src` must be unquantized."""
    check_bits(bits)
    if bits != 16 and is_quantized(src):
        raise QuantizeError(
            f"{src} is already quantized; make the 16-bit model first and quantize that"
        )
    if dst.exists():
        raise QuantizeError(f"{dst} already exists")
    from mlx_lm.convert import convert

    tmp = dst.with_name(f".{dst.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)  # left by an interrupted conversion
    t0 = time.perf_counter()
    # convert() prints its progress; keep stdout clean for `--json`.
    with contextlib.redirect_stdout(io.StringIO()):
        if bits == 16:
            convert(str(src), str(tmp), dequantize=is_quantized(src), dtype=dtype)
        else:
            convert(
                str(src), str(tmp), quantize=True, q_bits=bits, q_group_size=group_size, dtype=dtype
            )
    tmp.replace(dst)
    return Quantization(
        dst, bits, None if bits == 16 else group_size, dtype, time.perf_counter() - t0
    )
