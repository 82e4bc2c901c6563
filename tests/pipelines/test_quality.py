"""The Great Expectations gates on real chunks and real MiniLM vectors, and on broken ones."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.chunk import chunk_document
from pipelines.embed.base import Embedder
from pipelines.embed.dispatch import load_embedder
from pipelines.parse import parse_document
from pipelines.quality import QualityResult, check_chunks, check_vectors
from pipelines.records import Chunk, SourceDocument
from pipelines.settings import ChunkingSettings, load_settings

DOCS = Path(__file__).parents[1] / "fixtures" / "docs"


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(load_settings())


@pytest.fixture(scope="module")
def chunks(embedder: Embedder) -> list[Chunk]:
    parsed = parse_document(SourceDocument.from_path(DOCS / "lighthouse.md"))
    return chunk_document(parsed, embedder, ChunkingSettings(max_tokens=96), "v1")


@pytest.fixture(scope="module")
def vectors(embedder: Embedder, chunks: list[Chunk]) -> np.ndarray:
    return embedder.encode([c.text for c in chunks]).vectors


def failed(result: QualityResult) -> set[str]:
    return {f.expectation for f in result.failures}


def test_good_chunks_pass(chunks: list[Chunk], embedder: Embedder) -> None:
    result = check_chunks(chunks, embedder.max_seq_length)
    assert result.passed, result.reason
    assert result.failures == [] and result.checked == len(chunks)


def test_empty_document_fails_with_a_reason(embedder: Embedder) -> None:
    result = check_chunks([], embedder.max_seq_length)
    assert not result.passed
    assert failed(result) == {"expect_table_row_count_to_be_between"}
    assert "observed 0" in result.reason


def test_blank_text_is_caught(chunks: list[Chunk], embedder: Embedder) -> None:
    broken = [*chunks[:-1], dataclasses.replace(chunks[-1], text=" \n ")]
    result = check_chunks(broken, embedder.max_seq_length)
    assert not result.passed
    assert failed(result) == {"expect_column_values_to_be_between(text_chars)"}


def test_over_long_chunks_are_caught(chunks: list[Chunk], embedder: Embedder) -> None:
    broken = [*chunks[:-1], dataclasses.replace(chunks[-1], token_count=999)]
    result = check_chunks(broken, embedder.max_seq_length)
    assert not result.passed
    assert failed(result) == {"expect_column_values_to_be_between(token_count)"}
    assert "999" in result.reason and f"max_value={embedder.max_seq_length}" in result.reason
    # The bound is a parameter: a larger model limit lets the same chunk through.
    assert check_chunks(broken, 1024).passed


def test_duplicate_ids_are_caught(chunks: list[Chunk], embedder: Embedder) -> None:
    broken = [*chunks, dataclasses.replace(chunks[0], index=len(chunks))]
    result = check_chunks(broken, embedder.max_seq_length)
    assert failed(result) == {"expect_column_values_to_be_unique(chunk_id)"}
    assert chunks[0].chunk_id in result.reason


def test_good_vectors_pass(chunks: list[Chunk], vectors: np.ndarray, embedder: Embedder) -> None:
    result = check_vectors(chunks, vectors, embedder.dim, unit_norm=True)
    assert result.passed, result.reason


def test_nan_vectors_are_caught(
    chunks: list[Chunk], vectors: np.ndarray, embedder: Embedder
) -> None:
    broken = vectors.copy()
    broken[1, 7] = np.nan
    broken[2, 0] = np.inf
    result = check_vectors(chunks, broken, embedder.dim, unit_norm=True)
    assert not result.passed
    assert failed(result) == {"expect_column_values_to_be_in_set(non_finite)"}
    assert "2 of" in result.reason


def test_wrong_dimension_is_caught(
    chunks: list[Chunk], vectors: np.ndarray, embedder: Embedder
) -> None:
    result = check_vectors(chunks, vectors[:, :128], embedder.dim)
    assert failed(result) == {"expect_column_values_to_be_between(width)"}
    ragged = [*list(vectors[:-1]), vectors[-1][:100]]
    assert failed(check_vectors(chunks, ragged, embedder.dim)) == {
        "expect_column_values_to_be_between(width)"
    }


def test_missing_vectors_and_norms_are_caught(
    chunks: list[Chunk], vectors: np.ndarray, embedder: Embedder
) -> None:
    result = check_vectors(chunks, vectors[:-1] * 3, embedder.dim, unit_norm=True)
    assert failed(result) == {
        "expect_table_row_count_to_equal",
        "expect_column_values_to_be_between(norm)",
    }
    # Without unit_norm, only the count fails.
    assert failed(check_vectors(chunks, vectors[:-1] * 3, embedder.dim)) == {
        "expect_table_row_count_to_equal"
    }


def test_result_serialises_for_lineage(chunks: list[Chunk], embedder: Embedder) -> None:
    result = check_chunks([], embedder.max_seq_length)
    record = result.to_dict()
    assert record["suite"] == "impetus-chunks" and record["passed"] is False
    assert record["failures"][0]["expectation"] == "expect_table_row_count_to_be_between"


def test_per_document_overhead(
    chunks: list[Chunk], vectors: np.ndarray, embedder: Embedder
) -> None:
    """Report, not a gate (timings depend on the machine): GX cost per document, context warm."""
    check_chunks(chunks, embedder.max_seq_length)  # warm
    runs = 5
    start = time.perf_counter()
    for _ in range(runs):
        check_chunks(chunks, embedder.max_seq_length)
    per_chunks = (time.perf_counter() - start) / runs
    start = time.perf_counter()
    for _ in range(runs):
        check_vectors(chunks, vectors, embedder.dim, unit_norm=True)
    per_vectors = (time.perf_counter() - start) / runs
    print(
        f"GX per document ({len(chunks)} chunks): chunks {per_chunks * 1e3:.0f} ms, "
        f"vectors {per_vectors * 1e3:.0f} ms"
    )
    assert per_chunks < 5 and per_vectors < 5  # only catches a context rebuilt per call
