"""A BERT sentence encoder as a Core ML MIL program, in the layout the Apple Neural Engine wants.

The recipe is Apple's "Deploying Transformers on the Apple Neural Engine" (ml-ane-transformers,
`ane_transformers/reference/` and `huggingface/distilbert.py`):

- activations are channels-first `(B, C, 1, S)` tensors from the embedding onwards;
- every linear layer is a 1x1 `conv` (the nn.Linear weight `(out, in)` becomes `(out, in, 1, 1)`);
- attention is split per head (`split` on the channel axis; the keys are transposed once to
  `(B, S, 1, C)`), each head is two `einsum`s of the form `nchw,nwhu->nchu` (which is what
  coremltools makes of the reference's `bchq,bkhc->bkhq` and `bkhq,bchk->bchq`) with a softmax
  over the key axis 1 in between;
- layer norm normalises over the channel axis 1, with an epsilon of at least 1e-7 (the reference
  raises BERT's 1e-12, which float16 cannot hold);
- masks are additive with -1e4 (float16-safe), broadcast as `(B, S_keys, 1, 1)`.

One deviation, exact in arithmetic: the 1/sqrt(head_dim) attention scale is folded into the query
projection's weights instead of multiplying every score matrix.

`build_program(weights, spec, seq_len)` returns the MIL program for one fixed sequence length and
batch 1: inputs `input_ids` and `attention_mask` (int32, `(1, seq_len)`), output `embedding`
(`(1, dim)`, pooled as the folder's Pooling module says and L2-normalised if it has Normalize).
Token type ids are all zero for single texts, so type embedding 0 is folded into the position
table. This module needs coremltools (for the builder) and numpy, never torch or MLX.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.embed.base import EmbedderLoadError
from pipelines.embed.bert_folder import BertFolder

INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
MASK_NEG = -1e4  # additive mask value the reference uses; -1e9 overflows float16
MIN_LN_EPS = 1e-7  # ml-ane-transformers' distilbert: 1e-12 is not float16-friendly

_GELU_MODES = {
    "gelu": "EXACT",
    "gelu_new": "TANH_APPROXIMATION",
    "gelu_pytorch_tanh": "TANH_APPROXIMATION",
}


@dataclass(frozen=True)
class EncoderSpec:
    """The shape of the encoder and its head, read from the folder."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int
    layer_norm_eps: float
    hidden_act: str
    pooling: tuple[str, ...]
    normalize: bool

    @property
    def dim(self) -> int:
        return self.hidden_size * len(self.pooling)

    @classmethod
    def from_folder(cls, folder: BertFolder) -> EncoderSpec:
        c = folder.config
        return cls(
            hidden_size=int(c["hidden_size"]),
            num_layers=int(c["num_hidden_layers"]),
            num_heads=int(c["num_attention_heads"]),
            intermediate_size=int(c["intermediate_size"]),
            max_positions=int(c.get("max_position_embeddings", 512)),
            layer_norm_eps=float(c.get("layer_norm_eps", 1e-12)),
            hidden_act=str(c.get("hidden_act", "gelu")),
            pooling=folder.pooling,
            normalize=folder.normalize,
        )


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """The BERT's weights as float32 numpy arrays, Hugging Face names without `bert.`."""
    from safetensors.numpy import load_file

    try:
        raw = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types, and TypeError on bf16
        raise EmbedderLoadError(
            f"{path} cannot be read as float safetensors by numpy: {e} "
            "(bfloat16 weights need converting to float16/float32 first)"
        ) from e
    weights = {}
    for key, value in raw.items():
        key = key.removeprefix("bert.")
        if key.startswith("pooler.") or key == "embeddings.position_ids":
            continue
        weights[key] = value.astype(np.float32)
    return weights


def _check_weights(weights: dict[str, np.ndarray], spec: EncoderSpec) -> None:
    needed = ["embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight"]
    needed += [f"encoder.layer.{i}.output.dense.weight" for i in range(spec.num_layers)]
    missing = [k for k in needed if k not in weights]
    if missing:
        raise EmbedderLoadError(
            f"the safetensors file does not hold the expected BERT weights: {missing[:3]}"
        )


def build_program(weights: dict[str, np.ndarray], spec: EncoderSpec, seq_len: int) -> Any:
    """The MIL program for batch 1 and a fixed `seq_len` (a `coremltools` Program)."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    _check_weights(weights, spec)
    if not 1 <= seq_len <= spec.max_positions:
        raise ValueError(f"seq_len {seq_len} outside 1..{spec.max_positions}")
    C, H = spec.hidden_size, spec.num_heads
    head_dim = C // H
    eps = max(spec.layer_norm_eps, MIN_LN_EPS)
    w = weights

    def conv(x: Any, prefix: str, scale: float = 1.0) -> Any:
        # nn.Linear (out, in) -> 1x1 conv (out, in, 1, 1): the ANE's preferred linear layer.
        weight = (w[f"{prefix}.weight"] * scale)[:, :, None, None]
        return mb.conv(x=x, weight=weight, bias=w[f"{prefix}.bias"] * scale, pad_type="valid")

    def layer_norm(x: Any, prefix: str) -> Any:
        return mb.layer_norm(
            x=x, axes=[1], gamma=w[f"{prefix}.weight"], beta=w[f"{prefix}.bias"], epsilon=eps
        )

    def attention(x: Any, key_mask: Any, prefix: str) -> Any:
        q = conv(x, f"{prefix}.query", scale=head_dim**-0.5)  # (1, C, 1, S), pre-scaled
        k = conv(x, f"{prefix}.key")
        v = conv(x, f"{prefix}.value")
        k_t = mb.transpose(x=k, perm=[0, 3, 2, 1])  # (1, S, 1, C): the one transpose per layer
        qs = mb.split(x=q, num_splits=H, axis=1)  # H x (1, dh, 1, S)
        ks = mb.split(x=k_t, num_splits=H, axis=3)  # H x (1, S, 1, dh)
        vs = mb.split(x=v, num_splits=H, axis=1)  # H x (1, dh, 1, S)
        heads = []
        for qh, kh, vh in zip(qs, ks, vs, strict=True):
            scores = mb.einsum(values=(kh, qh), equation="nchw,nwhu->nchu")  # (1, Sk, 1, Sq)
            probs = mb.softmax(x=mb.add(x=scores, y=key_mask), axis=1)
            heads.append(mb.einsum(values=(vh, probs), equation="nchw,nwhu->nchu"))  # (1,dh,1,Sq)
        return mb.concat(values=heads, axis=1)  # (1, C, 1, S)

    def activation(x: Any) -> Any:
        if spec.hidden_act == "relu":
            return mb.relu(x=x)
        return mb.gelu(x=x, mode=_GELU_MODES[spec.hidden_act])

    # Position and type-0 embeddings are the same for every input of this length: one constant.
    positions = (
        w["embeddings.position_embeddings.weight"][:seq_len]
        + w["embeddings.token_type_embeddings.weight"][0]
    )[None]  # (1, S, C)

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, seq_len), dtype=types.int32),
            mb.TensorSpec(shape=(1, seq_len), dtype=types.int32),
        ],
        opset_version=ct.target.macOS13,
    )
    def encoder(input_ids: Any, attention_mask: Any) -> Any:
        mask = mb.cast(x=attention_mask, dtype="fp32")  # 1 for tokens, 0 for padding
        key_mask = mb.reshape(
            x=mb.mul(x=mb.sub(x=mask, y=1.0), y=-MASK_NEG), shape=[1, seq_len, 1, 1]
        )  # 0 for tokens, -1e4 for padding, along the key axis
        tok = mb.gather(x=w["embeddings.word_embeddings.weight"], indices=input_ids, axis=0)
        x = mb.add(x=tok, y=positions)  # (1, S, C)
        x = mb.expand_dims(x=mb.transpose(x=x, perm=[0, 2, 1]), axes=[2])  # (1, C, 1, S)
        x = layer_norm(x, "embeddings.LayerNorm")
        for i in range(spec.num_layers):
            p = f"encoder.layer.{i}"
            attn = conv(
                attention(x, key_mask, f"{p}.attention.self"), f"{p}.attention.output.dense"
            )
            x = layer_norm(mb.add(x=attn, y=x), f"{p}.attention.output.LayerNorm")
            ffn = conv(activation(conv(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = layer_norm(mb.add(x=ffn, y=x), f"{p}.output.LayerNorm")
        pooled = _pool(spec.pooling, x, mask, seq_len)  # (1, dim, 1, 1)
        if spec.normalize:
            sumsq = mb.reduce_sum(x=mb.mul(x=pooled, y=pooled), axes=[1], keep_dims=True)
            pooled = mb.mul(x=pooled, y=mb.rsqrt(x=mb.maximum(x=sumsq, y=1e-6)))
        return mb.reshape(x=pooled, shape=[1, -1], name=OUTPUT)

    # The builder names inputs after the function's parameters.
    return encoder


def _pool(modes: tuple[str, ...], x: Any, mask: Any, seq_len: int) -> Any:
    """sentence-transformers pooling over the sequence axis 3 of `(1, C, 1, S)` hidden states."""
    from coremltools.converters.mil import Builder as mb

    m = mb.reshape(x=mask, shape=[1, 1, 1, seq_len])
    length = mb.maximum(x=mb.reduce_sum(x=m, axes=[3], keep_dims=True), y=1.0)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(
                mb.slice_by_index(
                    x=x, begin=[0, 0, 0, 0], end=[0, 0, 0, 1], end_mask=[True, True, True, False]
                )
            )
        elif mode == "max":
            masked = mb.add(x=x, y=mb.mul(x=mb.sub(x=m, y=1.0), y=-MASK_NEG))
            parts.append(mb.reduce_max(x=masked, axes=[3], keep_dims=True))
        elif mode in ("mean", "mean_sqrt_len"):
            # Weights before the sum keep float16 partial sums small.
            denom = length if mode == "mean" else mb.sqrt(x=length)
            parts.append(
                mb.reduce_sum(x=mb.mul(x=x, y=mb.real_div(x=m, y=denom)), axes=[3], keep_dims=True)
            )
        elif mode == "lasttoken":
            # Right padding: the last token is where the mask drops from 1 to 0 (or the end).
            if seq_len == 1:
                parts.append(mb.mul(x=x, y=m))
                continue
            shifted = mb.concat(
                values=[
                    mb.slice_by_index(x=m, begin=[0, 0, 0, 1], end=[1, 1, 1, seq_len]),
                    np.zeros((1, 1, 1, 1), np.float32),
                ],
                axis=3,
            )
            parts.append(
                mb.reduce_sum(x=mb.mul(x=x, y=mb.sub(x=m, y=shifted)), axes=[3], keep_dims=True)
            )
    return parts[0] if len(parts) == 1 else mb.concat(values=parts, axis=1)
