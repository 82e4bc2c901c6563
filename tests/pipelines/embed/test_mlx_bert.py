"""MLXBertEmbedder on the bundled all-MiniLM-L6-v2, against sentence-transformers' own vectors.

The reference vectors come from tests/fixtures/minilm_reference/make_reference.py. On Linux the
MLX CPU backend is slow without OpenBLAS preloaded (see DESIGN.md), hence the `slow` marks.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from pipelines.embed import Embedder, EmbedderLoadError, Embedding
from pipelines.embed.mlx_bert import BUNDLED_MINILM_NAME, MLXBertEmbedder, bundled_minilm_folder

REFERENCE = Path(__file__).parents[2] / "fixtures" / "minilm_reference" / "reference.json"


@pytest.fixture(scope="module")
def embedder() -> MLXBertEmbedder:
    return MLXBertEmbedder.from_folder(bundled_minilm_folder(), name=BUNDLED_MINILM_NAME)


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def encoded(embedder: MLXBertEmbedder, reference: dict) -> Embedding:
    # batch_size 8 spreads the texts over several batches of different padded lengths.
    return embedder.encode([item["text"] for item in reference["items"]], batch_size=8)


def test_shape_and_settings(embedder: MLXBertEmbedder, reference: dict) -> None:
    assert isinstance(embedder, Embedder)
    assert embedder.name == BUNDLED_MINILM_NAME
    assert embedder.backend == "mlx"
    assert embedder.dim == reference["dim"] == 384
    assert embedder.max_seq_length == reference["max_seq_length"] == 256


@pytest.mark.slow
def test_matches_sentence_transformers(encoded: Embedding, reference: dict) -> None:
    expected = np.array([item["vector"] for item in reference["items"]], dtype=np.float32)
    assert encoded.vectors.shape == expected.shape
    assert encoded.vectors.dtype == np.float32
    cosine = (encoded.vectors * expected).sum(axis=1) / (
        np.linalg.norm(encoded.vectors, axis=1) * np.linalg.norm(expected, axis=1)
    )
    worst = int(cosine.argmin())
    print(f"min cosine {cosine.min():.7f} for {reference['items'][worst]['text'][:40]!r}")
    assert cosine.min() >= 0.999


@pytest.mark.slow
def test_vectors_are_unit_norm(encoded: Embedding) -> None:
    np.testing.assert_allclose(np.linalg.norm(encoded.vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_token_counts_and_truncation(encoded: Embedding, reference: dict) -> None:
    items = reference["items"]
    assert encoded.token_counts == [item["token_count"] for item in items]
    assert encoded.truncated == [item["truncated"] for item in items]
    assert sum(encoded.truncated) >= 3  # the fixture must keep exercising truncation


def test_truncation_is_logged(embedder: MLXBertEmbedder, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.embed.mlx_bert"):
        result = embedder.encode(["short", "word " * 300, "word " * 255])
    assert result.truncated == [False, True, True]
    assert result.token_counts == [3, 256, 256]
    assert "2 of 3 texts exceeded 256 tokens" in caplog.text


def test_count_tokens_is_untruncated(embedder: MLXBertEmbedder, reference: dict) -> None:
    items = reference["items"]
    counts = embedder.count_tokens([item["text"] for item in items])
    assert counts == [item["untruncated_token_count"] for item in items]


def test_tokenize_and_decode(embedder: MLXBertEmbedder) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = embedder.tokenize(text)
    assert len(ids) + 2 == embedder.count_tokens([text])[0]  # [CLS] and [SEP] left out
    assert embedder.decode(ids) == text.lower()  # the tokenizer lowercases
    assert embedder.tokenize("") == []


@pytest.mark.slow
def test_batch_equals_single(embedder: MLXBertEmbedder, reference: dict) -> None:
    # Mixed lengths so batches carry padding; a wrong mask or a lost order would show here.
    texts = [item["text"] for item in reference["items"][:10]]
    texts.insert(3, reference["items"][-4]["text"])  # 256 tokens
    batched = embedder.encode(texts, batch_size=4).vectors
    singles = np.concatenate([embedder.encode([t]).vectors for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_empty_input(embedder: MLXBertEmbedder) -> None:
    result = embedder.encode([])
    assert result.vectors.shape == (0, 384)
    assert result.vectors.dtype == np.float32
    assert result.token_counts == []
    assert result.truncated == []


def test_rejects_a_bare_string(embedder: MLXBertEmbedder) -> None:
    with pytest.raises(TypeError):
        embedder.encode("not a list")  # type: ignore[arg-type]


# --- folders that are not a loadable BERT ------------------------------------------------------


def _copy_without_weights(dst: Path) -> Path:
    shutil.copytree(bundled_minilm_folder(), dst, ignore=shutil.ignore_patterns("*.safetensors"))
    return dst


def test_missing_safetensors(tmp_path: Path) -> None:
    folder = _copy_without_weights(tmp_path / "model")
    with pytest.raises(EmbedderLoadError, match=r"model\.safetensors is missing"):
        MLXBertEmbedder.from_folder(folder)


def test_not_bert(tmp_path: Path) -> None:
    folder = _copy_without_weights(tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(EmbedderLoadError, match="model_type 'llama'"):
        MLXBertEmbedder.from_folder(folder)


def test_wrong_weights(tmp_path: Path) -> None:
    folder = _copy_without_weights(tmp_path / "model")
    mx.save_safetensors(str(folder / "model.safetensors"), {"foo.weight": mx.zeros((2, 2))})
    with pytest.raises(EmbedderLoadError, match="expected BERT weights"):
        MLXBertEmbedder.from_folder(folder)


def test_unsupported_module(tmp_path: Path) -> None:
    folder = _copy_without_weights(tmp_path / "model")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(2, {"idx": 2, "name": "2", "path": "2_Dense", "type": "Dense"})
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(EmbedderLoadError, match="Dense"):
        MLXBertEmbedder.from_folder(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(EmbedderLoadError, match="not a directory"):
        MLXBertEmbedder.from_folder(tmp_path / "nowhere")
