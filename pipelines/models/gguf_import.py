"""Import a llama-architecture GGUF file into a model folder that `mlx_lm.load` reads.

The folder holds `model.safetensors`, `config.json`, `tokenizer.json`, `tokenizer_config.json` and
`generation_config.json`. Q4_0, Q4_1 and Q8_0 tensors stay quantized: their blocks are repacked
into MLX's affine layout (weight, scales, biases per group of 32), which represents them exactly.
Every other type (F16, BF16, K-quants, ...) is dequantized. The q/k projection rows are
un-permuted from llama.cpp's rotary layout back to the Hugging Face one that mlx-lm expects.

Floats (scales, biases, norms, dequantized weights) are stored as float16 where MLX runs on Metal
and as float32 elsewhere: MLX's CPU backend has no fast float16 kernels (a float16 4-bit matmul
runs about 50 times slower there than a float32 one); widening the float16 scales loses nothing.

    from pipelines.models.gguf_import import import_gguf
    report = import_gguf(Path("model.gguf"), Path("data/state/models/smollm2"))

The folder is built next to `out_dir` and renamed into place, so a crash never leaves a
half-written model that looks ready; an existing `out_dir` is replaced.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipelines.errors import ImpetusError

GROUP = 32  # the block size of Q4_0, Q4_1 and Q8_0, kept as MLX's group size
KEPT_BITS = {"Q4_0": 4, "Q4_1": 4, "Q8_0": 8}
# ggml's token types (llama.cpp's llama_token_type)
CONTROL, USER_DEFINED = 3, 4

LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# Pre-tokenizers by `tokenizer.ggml.pre`, as llama.cpp's llama-vocab.cpp splits text for them.
GPT2_PRE = {"default", "gpt-2", "gpt2", "olmo", "jais"}
DIGITS_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva-7b"}
LLAMA3_PRE = {"llama-bpe", "llama3", "smaug-bpe"}
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


class GGUFImportError(ImpetusError):
    """The GGUF file cannot be imported; the message says why and what to do instead."""


@dataclass
class GGUFImportReport:
    """What an import did, for the CLI to print."""

    out_dir: Path
    architecture: str
    n_tensors: int
    quantized: dict[str, int]  # ggml type name -> tensors kept quantized
    dequantized: dict[str, int]  # ggml type name -> tensors stored as floats
    bits: int | None  # the default quantization in config.json; None when nothing is quantized
    group_size: int | None
    seconds: float


def import_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    dtype: Literal["float16", "float32"] | None = None,
) -> GGUFImportReport:
    """Convert `gguf_path` into an mlx-lm model folder at `out_dir`; `on_progress(done, total)`.

    `dtype` is the float type stored; None picks float16 on Metal and float32 elsewhere.
    """
    start = time.perf_counter()
    if dtype is None:
        dtype = _default_dtype()
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    reader = _open(gguf_path)
    meta = _Metadata(reader)

    architecture = meta.get("general.architecture", "")
    if architecture != "llama":
        raise GGUFImportError(
            f"{gguf_path.name}: architecture {architecture or 'unknown'!r} is not supported; "
            "only 'llama' GGUF files import. Use an MLX model from the Hugging Face hub "
            "(`impetus models pull`) for other architectures."
        )
    config = _config(meta, reader, dtype)
    tokenizer, tokenizer_config, generation_config = _tokenizer(meta, config)

    weights: dict[str, Any] = {}
    quantized: Counter[str] = Counter()
    dequantized: Counter[str] = Counter()
    layer_bits: dict[str, int | None] = {}  # module path -> bits, None for float weights
    tensors = [t for t in reader.tensors if t.name != "rope_freqs.weight"]
    for done, tensor in enumerate(tensors, start=1):
        name, module = _hf_name(tensor.name)
        type_name = tensor.tensor_type.name
        if type_name in KEPT_BITS and len(tensor.shape) == 2:
            arrays = _repack(tensor)
            quantized[type_name] += 1
            layer_bits[module] = KEPT_BITS[type_name]
        else:
            arrays = {"weight": _dequantize(tensor)}
            dequantized[type_name] += 1
            if name.endswith(".weight") and arrays["weight"].ndim == 2:
                layer_bits[module] = None
        if module.endswith(("q_proj", "k_proj")):
            n_head = config[
                "num_attention_heads" if module.endswith("q_proj") else "num_key_value_heads"
            ]
            arrays = {k: _unpermute_rows(v, n_head) for k, v in arrays.items()}
        if name.endswith(".bias"):
            weights[name] = arrays["weight"].astype(dtype)
        else:
            weights.update({f"{module}.{k}": _cast(v, dtype) for k, v in arrays.items()})
        if on_progress is not None:
            on_progress(done, len(tensors))

    config["tie_word_embeddings"] = "lm_head.weight" not in weights
    config["attention_bias"] = any(k.endswith("self_attn.q_proj.bias") for k in weights)
    config["mlp_bias"] = any(k.endswith("mlp.gate_proj.bias") for k in weights)
    bits = _quantization(config, layer_bits)

    _write_atomically(out_dir, weights, config, tokenizer, tokenizer_config, generation_config)
    return GGUFImportReport(
        out_dir=out_dir,
        architecture=architecture,
        n_tensors=len(reader.tensors),
        quantized=dict(quantized),
        dequantized=dict(dequantized),
        bits=bits,
        group_size=GROUP if bits is not None else None,
        seconds=time.perf_counter() - start,
    )


def _default_dtype() -> Literal["float16", "float32"]:
    import mlx.core as mx

    return "float16" if mx.metal.is_available() else "float32"


def _cast(a: np.ndarray, dtype: str) -> np.ndarray:
    return a if a.dtype == np.uint32 else a.astype(dtype)


def _open(path: Path) -> Any:
    from gguf import GGUFReader

    if not path.is_file():
        raise GGUFImportError(f"{path}: no such file; pass the path of a .gguf model file.")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFImportError(
            f"{path.name} is not a GGUF file (it does not start with the GGUF magic bytes); "
            "pass a .gguf model file such as llama.cpp writes."
        )
    try:
        return GGUFReader(path)
    except Exception as exc:  # the reader raises bare ValueErrors on truncated or odd files
        raise GGUFImportError(f"{path.name}: cannot read the GGUF file ({exc}).") from exc


class _Metadata:
    """The key/value fields of a GGUF file, as Python values."""

    def __init__(self, reader: Any) -> None:
        self._fields = reader.fields

    def get(self, key: str, default: Any = None) -> Any:
        field = self._fields.get(key)
        return default if field is None else field.contents()

    def require(self, key: str) -> Any:
        value = self.get(key)
        if value is None:
            raise GGUFImportError(f"the GGUF file lacks the metadata key {key!r}; re-convert it.")
        return value


def _config(meta: _Metadata, reader: Any, dtype: str) -> dict[str, Any]:
    """config.json for mlx-lm's llama model, from the llama.* metadata."""
    hidden = int(meta.require("llama.embedding_length"))
    heads = int(meta.require("llama.attention.head_count"))
    kv_heads = int(meta.get("llama.attention.head_count_kv", heads))
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    if int(meta.get("llama.expert_count", 0)) > 0:
        raise GGUFImportError(
            "mixture-of-experts llama GGUF files (Mixtral-style) are not supported; "
            "use an MLX model from the Hugging Face hub instead."
        )
    if int(meta.get("llama.attention.value_length", head_dim)) != head_dim:
        raise GGUFImportError("GGUF files with a value head size unlike the key's are unsupported.")
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise GGUFImportError("GGUF files that rotate only part of each head are unsupported.")
    n_tokens = len(meta.get("tokenizer.ggml.tokens", []))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(meta.require("llama.feed_forward_length")),
        "num_hidden_layers": int(meta.require("llama.block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "rms_norm_eps": float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "max_position_embeddings": int(meta.get("llama.context_length", 2048)),
        "vocab_size": int(meta.get("llama.vocab_size", n_tokens)),
        "torch_dtype": dtype,
    }
    rope_scaling = _rope_scaling(meta, reader, config)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling
    return config


def _rope_scaling(meta: _Metadata, reader: Any, config: dict[str, Any]) -> dict[str, Any] | None:
    kind = meta.get("llama.rope.scaling.type", "none")
    factor = float(meta.get("llama.rope.scaling.factor", 1.0))
    original = meta.get("llama.rope.scaling.original_context_length")
    rope_freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if rope_freqs is not None:
        return _llama3_scaling(np.asarray(rope_freqs.data, dtype=np.float64), config, original)
    if kind in ("none", "") or factor == 1.0:
        return None
    if kind == "linear":
        return {"type": "linear", "factor": factor}
    if kind == "yarn":
        scaling: dict[str, Any] = {"type": "yarn", "factor": factor}
        if original is not None:
            scaling["original_max_position_embeddings"] = int(original)
        return scaling
    raise GGUFImportError(f"rope scaling {kind!r} is not supported (only linear and yarn).")


def _llama3_scaling(
    divisors: np.ndarray, config: dict[str, Any], original: int | None
) -> dict[str, Any]:
    """Llama 3.x GGUFs carry per-frequency divisors; find the llama3 parameters that give them."""
    scaling: dict[str, Any] = {
        "rope_type": "llama3",
        "factor": float(divisors.max()),
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": int(original or 8192),
    }
    dims = config["head_dim"]
    inv_freq = 1.0 / config["rope_theta"] ** (np.arange(0, dims, 2) / dims)
    wavelen = 2 * math.pi / inv_freq
    old = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    smooth = np.clip((old / wavelen - low) / (high - low), 0.0, 1.0)
    expected = 1.0 / ((1 - smooth) / factor + smooth)
    if divisors.shape != expected.shape or not np.allclose(divisors, expected, rtol=1e-3):
        raise GGUFImportError(
            "the GGUF file's rope_freqs tensor matches no llama3 rope scaling known here; "
            "use an MLX model from the Hugging Face hub instead."
        )
    return scaling


def _hf_name(gguf_name: str) -> tuple[str, str]:
    """(HF tensor name, HF module path) for a GGUF tensor name such as blk.3.attn_q.weight."""
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix not in ("weight", "bias"):
        raise GGUFImportError(f"unexpected tensor {gguf_name!r} in a llama GGUF file.")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in LAYER_NAMES:
        module = f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}"
    elif stem in GLOBAL_NAMES:
        module = GLOBAL_NAMES[stem]
    else:
        raise GGUFImportError(
            f"tensor {gguf_name!r} has no counterpart in mlx-lm's llama model; "
            "this GGUF file is not a plain llama model."
        )
    return f"{module}.{suffix}", module


def _repack(tensor: Any) -> dict[str, np.ndarray]:
    """MLX affine weight/scales/biases for a Q4_0, Q4_1 or Q8_0 tensor; exact, no requantizing."""
    cols = int(tensor.shape[0])  # GGUF lists dimensions innermost first
    rows = int(np.prod(tensor.shape[1:]))
    blocks = np.asarray(tensor.data).reshape(rows, cols // GROUP, -1)
    d = _f16(blocks[..., 0:2])
    kind = tensor.tensor_type.name
    if kind == "Q8_0":  # x = d * q, q int8: store q + 128 as uint8 with bias -128 d
        q = (blocks[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        return {"weight": _pack(q, 8, rows), "scales": d, "biases": d * np.float16(-128)}
    if kind == "Q4_0":  # x = d * (q - 8)
        nibbles, biases = blocks[..., 2:], d * np.float16(-8)
    else:  # Q4_1: x = d * q + m
        nibbles, biases = blocks[..., 4:], _f16(blocks[..., 2:4])
    # a block's bytes hold elements j (low nibble) and j + 16 (high nibble)
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)
    return {"weight": _pack(q, 4, rows), "scales": d, "biases": biases}


def _f16(two_bytes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(two_bytes).view(np.float16)[..., 0]


def _pack(q: np.ndarray, bits: int, rows: int) -> np.ndarray:
    """Pack unsigned `bits`-bit values into uint32 words, element j at bit bits * (j % (32/bits))."""
    q = q.reshape(rows, -1)
    if bits == 4:
        q = q[:, 0::2] | (q[:, 1::2] << 4)
    return np.ascontiguousarray(q.astype(np.uint8)).view(np.uint32)


def _dequantize(tensor: Any) -> np.ndarray:
    from gguf.quants import dequantize

    shape = tuple(int(n) for n in reversed(tensor.shape))
    return dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)


def _unpermute_rows(a: np.ndarray, n_head: int) -> np.ndarray:
    """Undo convert_hf_to_gguf.py's permute: per head, rows (pair, half) back to (half, pair)."""
    return (
        a.reshape(n_head, a.shape[0] // n_head // 2, 2, *a.shape[1:])
        .swapaxes(1, 2)
        .reshape(a.shape)
    )


def _quantization(config: dict[str, Any], layer_bits: dict[str, int | None]) -> int | None:
    """Add mlx-lm's "quantization" block; the most common bits is the default, others per layer."""
    counts = Counter(b for b in layer_bits.values() if b is not None)
    if not counts:
        return None
    default = counts.most_common(1)[0][0]
    quantization: dict[str, Any] = {"group_size": GROUP, "bits": default}
    for module, bits in sorted(layer_bits.items()):
        if bits is None:
            quantization[module] = False
        elif bits != default:
            quantization[module] = {"group_size": GROUP, "bits": bits}
    config["quantization"] = quantization
    config["quantization_config"] = quantization
    return default


def _tokenizer(
    meta: _Metadata, config: dict[str, Any]
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """tokenizer.json (a `tokenizers.Tokenizer`), tokenizer_config.json and generation_config.json."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
    )

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise GGUFImportError(
            f"tokenizer model {kind!r} is not supported; only byte-level BPE ('gpt2', as in "
            "SmolLM2 and Llama 3) imports. Use an MLX model from the Hugging Face hub instead."
        )
    tokens: list[str] = meta.require("tokenizer.ggml.tokens")
    types: list[int] = meta.get("tokenizer.ggml.token_type", [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in meta.require("tokenizer.ggml.merges")]
    vocab: dict[str, int] = {}
    for i, text in enumerate(tokens):
        vocab.setdefault(text, i)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))

    pre = meta.get("tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in GPT2_PRE:
        tokenizer.pre_tokenizer = byte_level
    elif pre in DIGITS_PRE:
        digits = pre_tokenizers.Digits(individual_digits=True)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    elif pre in LLAMA3_PRE:
        split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
        no_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([split, no_regex])
    else:
        known = sorted(GPT2_PRE | DIGITS_PRE | LLAMA3_PRE)
        raise GGUFImportError(f"pre-tokenizer {pre!r} is not supported (known: {known}).")
    tokenizer.decoder = decoders.ByteLevel()

    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == CONTROL
        ]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, special=False, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == USER_DEFINED
        ]
    )

    def token_named(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos, eos = token_named("bos"), token_named("eos")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) and bos is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and eos is not None
    if add_bos or add_eos:
        head = [bos] if add_bos and bos else []
        tail = [eos] if add_eos and eos else []
        tokenizer.post_processor = processors.TemplateProcessing(
            single=" ".join([*head, "$A", *tail]),
            pair=" ".join([*head, "$A", *tail, *head, "$B:1", *tail]),
            special_tokens=[(t, vocab[t]) for t in dict.fromkeys(head + tail)],
        )
    else:
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)

    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    for key in ("bos", "eos", "unknown", "padding"):
        if (value := token_named(key)) is not None:
            tokenizer_config[{"unknown": "unk", "padding": "pad"}.get(key, key) + "_token"] = value
    if (template := meta.get("tokenizer.chat_template")) is not None:
        tokenizer_config["chat_template"] = template

    eos_ids = [
        int(i)
        for key in ("eos", "eot", "eom")
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None
    ]
    eos_ids = list(dict.fromkeys(eos_ids))
    generation_config: dict[str, Any] = {
        "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids
    }
    for key, hf_key in (("bos", "bos_token_id"), ("padding", "pad_token_id")):
        if (i := meta.get(f"tokenizer.ggml.{key}_token_id")) is not None:
            generation_config[hf_key] = int(i)
    config.update({k: v for k, v in generation_config.items() if k != "pad_token_id"})
    return tokenizer, tokenizer_config, generation_config


def _write_atomically(
    out_dir: Path,
    weights: dict[str, np.ndarray],
    config: dict[str, Any],
    tokenizer: Any,
    tokenizer_config: dict[str, Any],
    generation_config: dict[str, Any],
) -> None:
    import mlx.core as mx

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".importing", dir=out_dir.parent)
    )
    try:
        mx.save_safetensors(
            str(tmp / "model.safetensors"),
            {k: mx.array(v) for k, v in weights.items()},
            metadata={"format": "mlx"},
        )
        tokenizer.save(str(tmp / "tokenizer.json"))
        for name, data in (
            ("config.json", config),
            ("tokenizer_config.json", tokenizer_config),
            ("generation_config.json", generation_config),
        ):
            (tmp / name).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():  # replace: move the old one aside first, drop it after the rename
            old = Path(
                tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent)
            )
            os.replace(out_dir, old / out_dir.name)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
