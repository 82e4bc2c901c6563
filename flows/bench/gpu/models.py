"""The GPU bench's models: folders that `mlx_lm.load`, the engine and `mlx_lm.server` all load, and
the bytes one decode step reads from memory.

Speed does not depend on the weights' values, so a model too big to carry to the GPU machine is
made there with random weights in its shape (`mlx_lm.models.llama`), with the tokenizer of
SmolLM2 (vocabulary 49,152) so that prompts and chat templates are real. SmolLM2-135M keeps its
own weights where they are at hand (`model.safetensors` in its folder) and gets random ones of its
shape and quantization where they are not (the 115 MB file is over one transfer's 64 MiB).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A ~1.2B-parameter Llama (Llama-3.2-1B's shape with SmolLM2's vocabulary): the yardstick.
LLAMA_1B: dict[str, Any] = {
    "model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
    "intermediate_size": 8192, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5, "vocab_size": 49152, "tie_word_embeddings": True,
    "rope_theta": 500000.0, "max_position_embeddings": 8192,
}  # fmt: skip
# A few-MB Llama for trying the runner on a CPU.
LLAMA_TINY: dict[str, Any] = {
    **LLAMA_1B, "hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 512,
    "num_attention_heads": 4, "num_key_value_heads": 2,
}  # fmt: skip
# A Llama whose 64-row decode step takes a few ms on a two-core CPU (the lm-head over SmolLM2's
# vocabulary is most of it): the step time of the 1B model on the H200, where the server's work per
# token decides throughput, for trying the engine's overheads without a GPU.
LLAMA_MICRO: dict[str, Any] = {
    **LLAMA_TINY, "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
}  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
)  # fmt: skip


@dataclass(frozen=True)
class ModelSpec:
    """One bench model: a shape (None: SmolLM2's own folder) and how its weights are stored."""

    name: str
    shape: dict[str, Any] | None
    bits: int | None = None  # None: bf16
    group_size: int = 64


def specs(tiny: bool, micro: bool = False) -> dict[str, ModelSpec]:
    shape, tag = (LLAMA_TINY, "tiny") if tiny else (LLAMA_1B, "llama1b")
    if micro:
        shape, tag = LLAMA_MICRO, "micro"
    return {
        s.name: s
        for s in (
            ModelSpec("smollm2", None),
            ModelSpec(f"{tag}-bf16", shape),
            ModelSpec(f"{tag}-q4", shape, bits=4),
        )
    }


def make_folder(spec: ModelSpec, smollm2: Path, root: Path) -> Path:
    """The folder to load for `spec`: SmolLM2's own when its weights are there, else a new one
    under `root` with random weights (made once)."""
    if spec.shape is None and (smollm2 / "model.safetensors").is_file():
        return smollm2
    out = root / spec.name
    if (out / "model.safetensors").is_file():
        return out
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    if spec.shape is None:  # SmolLM2's shape, quantization and dtype (float32), random values
        config = json.loads((smollm2 / "config.json").read_text())
        quant = config.get("quantization")
    else:
        config = {**spec.shape, "torch_dtype": "bfloat16"}
        quant = {"group_size": spec.group_size, "bits": spec.bits} if spec.bits else None
    model = llama.Model(llama.ModelArgs.from_dict(config))
    model.set_dtype(getattr(mx, config.get("torch_dtype") or "bfloat16"))
    if quant:
        nn.quantize(model, class_predicate=_quant_predicate(quant))
    mx.eval(model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config = {k: v for k, v in config.items() if k not in ("quantization", "quantization_config")}
    config.update({"eos_token_id": 2, "bos_token_id": 1})
    if quant:
        config["quantization"] = quant
    (out / "config.json").write_text(json.dumps(config, indent=1))
    for name in TOKENIZER_FILES:
        if (smollm2 / name).is_file():
            shutil.copy(smollm2 / name, out / name)
    return out


def _quant_predicate(quant: dict[str, Any]) -> Any:
    """nn.quantize's predicate for a config's `quantization` (per-layer overrides by path)."""
    default = {"group_size": quant["group_size"], "bits": quant["bits"]}

    def predicate(path: str, module: Any) -> bool | dict[str, Any]:
        if not hasattr(module, "to_quantized"):
            return False
        override = quant.get(path)
        return dict(override) if isinstance(override, dict) else default

    return predicate


@dataclass(frozen=True)
class StepBytes:
    """What one decode step reads: every weight once, and each sequence's KV cache."""

    weight_bytes: int
    kv_bytes_per_token: int  # all layers, K and V

    def per_step(self, streams: int, context: float) -> float:
        return self.weight_bytes + streams * context * self.kv_bytes_per_token


def step_bytes(model: Any, config: dict[str, Any]) -> StepBytes:
    """Of a loaded model (its parameters as they sit in memory; the KV cache in the dtype of its
    activations, that of its final norm) and its config.json."""
    from mlx.utils import tree_flatten

    kv_itemsize = int(model.model.norm.weight.dtype.size)
    params: Any = tree_flatten(model.parameters())
    weights = sum(v.nbytes for _, v in params)
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    per_token = int(config["num_hidden_layers"]) * 2 * kv_heads * head_dim * kv_itemsize
    return StepBytes(weights, per_token)
