"""Loading an MLX LLM folder for computation, the same way everywhere (engine, benchmarks).

MLX's CPU backend has no fast float16 or quantized matmul (a 4- or 8-bit 135M model decodes at
about 0.4 tok/s there against 13 tok/s in float32 with OpenBLAS), so on a host whose MLX device is
the CPU the weights are dequantized and cast to float32 after loading. The model computes with
exactly the values the quantized kernels would use (dequantize(quantize(w))), so quality is that
of the quantization; only speed and memory are float32's. On Metal (and CUDA) a model runs as
stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Compute = Literal["auto", "native", "float32"]


def resolve_compute(compute: Compute = "auto") -> Literal["native", "float32"]:
    """`auto` → float32 where MLX's default device is the CPU, else native."""
    if compute != "auto":
        return compute
    import mlx.core as mx

    return "float32" if mx.default_device().type == mx.DeviceType.cpu else "native"


def load_llm(path: Path, compute: Compute = "auto") -> tuple[Any, Any]:
    """`mlx_lm.load(path)` → (model, tokenizer), evaluated, in the compute dtype."""
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.utils import dequantize_model

    model, tokenizer = mlx_lm.load(str(path))[:2]
    if resolve_compute(compute) == "float32":
        dequantize_model(model)
        model.set_dtype(mx.float32)
    mx.eval(model.parameters())
    return model, tokenizer
