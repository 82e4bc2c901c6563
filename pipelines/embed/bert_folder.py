"""What both BERT embedders (MLX and Core ML) read from a sentence-transformers folder.

`BertFolder.read(path)` validates the folder and returns its settings (pooling modes, Normalize,
max_seq_length, lower-casing); `BertTokenizer` is the tokenizer handling both backends share:
truncation to `max_seq_length`, untruncated counts for chunkers, and decode; `BertEmbedderBase` is
the `Embedder` side both share (tokenizer methods, input checks, the truncation warning), so a
backend only writes how a batch of encodings becomes vectors. None of them imports MLX or Core ML,
so the Core ML converter and embedder use them without loading MLX.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Encoding, Tokenizer

from pipelines.embed.base import EmbedderLoadError, Embedding

# HF `hidden_act` values the embedders implement ("gelu" is the exact erf form).
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
# sentence-transformers concatenates the enabled modes in this order.
POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len", "lasttoken")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EmbedderLoadError(f"{path} is missing") from e
    except (OSError, ValueError) as e:
        raise EmbedderLoadError(f"{path} is not readable JSON: {e}") from e


def read_modules(folder: Path) -> tuple[tuple[str, ...], bool]:
    """Pooling modes and whether a Normalize module follows, from modules.json."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():  # a bare Hugging Face BERT: sentence-transformers' defaults
        return ("mean",), False
    modules = sorted(read_json(modules_file), key=lambda m: m.get("idx", 0))
    # Class paths moved between sentence-transformers versions; the class name is what counts.
    types = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    supported = {"Transformer", "Pooling", "Normalize"}
    if not types or types[0] != "Transformer" or not set(types) <= supported:
        raise EmbedderLoadError(
            f"{modules_file} lists modules {types}; expected Transformer, Pooling and optionally "
            "Normalize (Dense and other heads are not supported by the BERT embedders)"
        )
    if "Pooling" not in types:
        return ("mean",), "Normalize" in types
    pooling = modules[types.index("Pooling")]
    cfg = read_json(folder / pooling.get("path", "1_Pooling") / "config.json")
    if cfg.get("pooling_mode_weightedmean_tokens"):
        raise EmbedderLoadError("weighted-mean pooling is not supported by the BERT embedders")
    keys = {
        "cls": "pooling_mode_cls_token",
        "max": "pooling_mode_max_tokens",
        "mean": "pooling_mode_mean_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        "lasttoken": "pooling_mode_lasttoken",
    }
    modes = tuple(m for m in POOLING_MODES if cfg.get(keys[m]))
    if not modes:
        raise EmbedderLoadError(f"{folder / pooling.get('path', '')} enables no pooling mode")
    return modes, "Normalize" in types


@dataclass(frozen=True)
class BertFolder:
    """A validated sentence-transformers BERT folder and the settings its modules declare."""

    path: Path
    config: dict[str, Any]  # the BERT's config.json
    pooling: tuple[str, ...]
    normalize: bool
    max_seq_length: int
    do_lower_case: bool

    @property
    def weights(self) -> Path:
        return self.path / "model.safetensors"

    @classmethod
    def read(cls, path: Path) -> BertFolder:
        """Validate `path`; raises EmbedderLoadError saying what is missing or unsupported."""
        folder = Path(path)
        if not folder.is_dir():
            raise EmbedderLoadError(f"{folder} is not a directory (expected a model folder)")
        config = read_json(folder / "config.json")
        if config.get("model_type") != "bert":
            raise EmbedderLoadError(
                f"{folder / 'config.json'} has model_type {config.get('model_type')!r}; "
                "the embedders run BERT models (model_type 'bert') only"
            )
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise EmbedderLoadError("only absolute position embeddings are supported")
        if config.get("hidden_act", "gelu") not in SUPPORTED_ACTIVATIONS:
            raise EmbedderLoadError(f"unsupported hidden_act {config['hidden_act']!r}")
        # Modules first: an unsupported head is the more useful message than missing weights.
        pooling, normalize = read_modules(folder)
        if not (folder / "model.safetensors").exists():
            raise EmbedderLoadError(
                f"{folder / 'model.safetensors'} is missing: the embedders load safetensors "
                "weights only (convert pytorch_model.bin with `safetensors` first)"
            )
        if not (folder / "tokenizer.json").exists():
            raise EmbedderLoadError(f"{folder / 'tokenizer.json'} is missing (a fast tokenizer)")
        st_config_file = folder / "sentence_bert_config.json"
        st_config = read_json(st_config_file) if st_config_file.exists() else {}
        max_positions = int(config.get("max_position_embeddings", 512))
        max_seq_length = min(int(st_config.get("max_seq_length") or max_positions), max_positions)
        return cls(
            path=folder,
            config=config,
            pooling=pooling,
            normalize=normalize,
            max_seq_length=max_seq_length,
            do_lower_case=bool(st_config.get("do_lower_case", False)),
        )

    def load_tokenizer(self) -> Tokenizer:
        try:
            return Tokenizer.from_file(str(self.path / "tokenizer.json"))
        except Exception as e:  # tokenizers raises a bare Exception on bad files
            raise EmbedderLoadError(f"{self.path / 'tokenizer.json'} cannot be loaded: {e}") from e


class BertTokenizer:
    """The tokenizer side of an embedder: truncating encodes for the model, untruncated counts."""

    def __init__(self, tokenizer: Tokenizer, *, max_seq_length: int, do_lower_case: bool = False):
        self.max_seq_length = max_seq_length
        self._do_lower_case = do_lower_case
        # Two copies of the tokenizer: truncating (for the model) and not (for counting).
        self._full = Tokenizer.from_str(tokenizer.to_str())
        self._full.no_truncation()
        self._full.no_padding()
        self._truncating = Tokenizer.from_str(self._full.to_str())
        self._truncating.enable_truncation(max_length=max_seq_length)
        padding = tokenizer.padding  # the folder's own padding setting may be a fixed length
        self.pad_id: int = padding["pad_id"] if padding else 0

    def _prepare(self, text: str) -> str:
        # sentence-transformers lowercases before tokenizing when the folder asks for it.
        return text.lower() if self._do_lower_case else text

    def encode_truncated(self, texts: Sequence[str]) -> list[Encoding]:
        """Encodings with special tokens, truncated to max_seq_length (`overflowing` if cut)."""
        return self._truncating.encode_batch([self._prepare(t) for t in texts])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        encodings = self._full.encode_batch([self._prepare(t) for t in texts])
        return [len(e.ids) for e in encodings]

    def tokenize(self, text: str) -> list[int]:
        return list(self._full.encode(self._prepare(text), add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int]) -> str:
        """Text for `ids`; ValueError for an id outside the vocabulary (the tokenizer would
        silently drop it, or overflow on a negative or huge one)."""
        size = self._full.get_vocab_size(with_added_tokens=True)
        for i, t in enumerate(ids):
            if not 0 <= t < size:
                raise ValueError(
                    f"token id {t} (position {i}) is outside the vocabulary (0..{size - 1})"
                )
        return self._full.decode(list(ids), skip_special_tokens=True)


class BertEmbedderBase:
    """What both BERT embedders share; subclasses set `name`, `dim`, `max_seq_length` and
    `_tokenizer`, and implement `_encode_into`."""

    name: str
    dim: int
    max_seq_length: int
    _tokenizer: BertTokenizer

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._tokenizer.count_tokens(texts)

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.tokenize(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids)

    def _encode_into(self, vectors: np.ndarray, encodings: list[Encoding], batch_size: int) -> None:
        """Fill `vectors` (one row per encoding, in order) with the embeddings."""
        raise NotImplementedError

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> Embedding:
        if isinstance(texts, str):
            raise TypeError("encode() takes a sequence of texts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return Embedding(vectors=vectors, token_counts=[], truncated=[])
        encodings = self._tokenizer.encode_truncated(texts)
        truncated = [bool(e.overflowing) for e in encodings]
        self._encode_into(vectors, encodings, batch_size)
        if n_truncated := sum(truncated):
            logging.getLogger(type(self).__module__).warning(
                "%s: %d of %d texts exceeded %d tokens and were truncated",
                self.name,
                n_truncated,
                len(texts),
                self.max_seq_length,
            )
        return Embedding(
            vectors=vectors,
            token_counts=[len(e.ids) for e in encodings],
            truncated=truncated,
        )
