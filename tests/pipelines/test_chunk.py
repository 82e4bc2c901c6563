"""chunk_document with the real all-MiniLM-L6-v2 tokenizer: bounds, overlap, headings, ids."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pydantic
import pytest

from pipelines.chunk import chunk_document
from pipelines.embed.base import Embedder
from pipelines.embed.dispatch import load_embedder
from pipelines.parse import parse_document
from pipelines.records import Chunk, Element, ParsedDocument, SourceDocument
from pipelines.settings import ChunkingSettings, load_settings

DOCS = Path(__file__).parents[1] / "fixtures" / "docs"
SMALL = ChunkingSettings(max_tokens=64, overlap_tokens=16)


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(load_settings())


@pytest.fixture(scope="module")
def markdown() -> ParsedDocument:
    return parse_document(SourceDocument.from_path(DOCS / "lighthouse.md"))


def tokens(embedder: Embedder, text: str) -> int:
    return embedder.count_tokens([text])[0]


def in_memory(elements: list[Element], name: str = "mem.md") -> ParsedDocument:
    doc = SourceDocument("doc-1", f"/virtual/{name}", "hash-1", 0, 0.0)
    return ParsedDocument(doc=doc, title="Mem", elements=elements)


def test_chunks_respect_the_token_bound(embedder: Embedder, markdown: ParsedDocument) -> None:
    for settings in (SMALL, load_settings().chunking):
        limit = min(settings.max_tokens, embedder.max_seq_length)
        chunks = chunk_document(markdown, embedder, settings, "v1")
        assert chunks
        for chunk in chunks:
            assert chunk.token_count == tokens(embedder, chunk.text)  # measured, specials included
            assert 0 < chunk.token_count <= limit
            assert chunk.text.strip() == chunk.text and chunk.text


def test_max_tokens_is_capped_at_the_model_limit(embedder: Embedder) -> None:
    sentence = "The keeper wrote the weather, the wind and every passing ship in the journal. "
    parsed = in_memory([Element(sentence * 200, "NarrativeText")])
    chunks = chunk_document(parsed, embedder, ChunkingSettings(max_tokens=2048), "v1")
    assert len(chunks) > 1
    assert max(c.token_count for c in chunks) <= embedder.max_seq_length
    assert max(c.token_count for c in chunks) > embedder.max_seq_length - 30  # packed, not tiny


def test_long_section_overlaps_consecutive_chunks(
    embedder: Embedder, markdown: ParsedDocument
) -> None:
    chunks = [
        c for c in chunk_document(markdown, embedder, SMALL, "v1") if c.section == "The Long Watch"
    ]
    assert len(chunks) > 3
    assert chunks[0].metadata["overlap_tokens"] == 0
    for before, after in itertools.pairwise(chunks):
        used = after.metadata["overlap_tokens"]
        assert 0 < used <= SMALL.overlap_tokens
        # The next chunk opens with the last words of the one before, `used` tokens of them.
        words = after.text.split()
        shared = next(
            n for n in range(len(words), 0, -1) if before.text.endswith(" ".join(words[:n]))
        )
        assert tokens(embedder, " ".join(words[:shared])) - 2 == used


def test_no_overlap_across_sections(embedder: Embedder, markdown: ParsedDocument) -> None:
    chunks = chunk_document(markdown, embedder, SMALL, "v1")
    for before, after in itertools.pairwise(chunks):
        if before.section != after.section:
            assert after.metadata["overlap_tokens"] == 0
            assert after.text.startswith(after.section or "")


def test_every_sentence_lands_in_a_chunk(embedder: Embedder, markdown: ParsedDocument) -> None:
    joined = "\n".join(c.text for c in chunk_document(markdown, embedder, SMALL, "v1"))
    for element in markdown.elements:
        for sentence in element.text.split(". "):
            assert sentence.strip(".") in joined


def test_headings_are_carried(embedder: Embedder, markdown: ParsedDocument) -> None:
    chunks = chunk_document(markdown, embedder, SMALL, "v1")
    assert all(c.title == "Lighthouse Keeping" for c in chunks)
    by_section = {c.section: c.metadata["headings"] for c in chunks}
    assert by_section == {
        "Lighthouse Keeping": ["Lighthouse Keeping"],
        "Daily Duties": ["Lighthouse Keeping", "Daily Duties"],
        "The Long Watch": ["Lighthouse Keeping", "The Long Watch"],
        "Storm Nights": ["Lighthouse Keeping", "The Long Watch", "Storm Nights"],
    }
    duties = next(c for c in chunks if c.section == "Daily Duties")
    assert duties.text.startswith("Daily Duties\n\nThe keeper trimmed the wicks")
    assert "Wind the clockwork" in duties.text


def test_consecutive_headings_open_one_section(embedder: Embedder) -> None:
    parsed = in_memory(
        [
            Element("Intro text before any heading.", "NarrativeText"),
            Element("Part One", "Title", {"category_depth": 0}),
            Element("Chapter 1", "Title", {"category_depth": 1}),
            Element("It was a dark and stormy night.", "NarrativeText"),
        ]
    )
    chunks = chunk_document(parsed, embedder, SMALL, "v1")
    assert [(c.section, c.text) for c in chunks] == [
        (None, "Intro text before any heading."),
        ("Chapter 1", "Part One\n\nChapter 1\n\nIt was a dark and stormy night."),
    ]
    assert chunks[1].metadata["headings"] == ["Part One", "Chapter 1"]


def test_pdf_chunks_keep_page_numbers(embedder: Embedder) -> None:
    parsed = parse_document(SourceDocument.from_path(DOCS / "lighthouse.pdf"))
    chunks = chunk_document(parsed, embedder, SMALL, "v1")
    assert [(c.section, c.metadata["page_numbers"]) for c in chunks] == [
        ("Lighthouse Keeping", [1]),
        ("Daily Duties", [2]),
    ]


def test_over_long_words_are_split_within_bounds(embedder: Embedder) -> None:
    # One whitespace-free "word" of ~600 tokens (WordPiece splits at each hyphen; a plain long
    # run of letters would be a single [UNK]).
    blob = "ab-" * 300
    parsed = in_memory([Element(f"A checksum follows: {blob} and that is all.", "NarrativeText")])
    chunks = chunk_document(parsed, embedder, SMALL, "v1")
    assert len(chunks) > 5
    assert all(c.token_count <= SMALL.max_tokens for c in chunks)
    assert "".join(c.text for c in chunks).count("ab-") >= 300


def test_ids_are_deterministic_and_follow_content(
    embedder: Embedder, markdown: ParsedDocument, tmp_path: Path
) -> None:
    ids = [c.chunk_id for c in chunk_document(markdown, embedder, SMALL, "v1")]
    again = parse_document(SourceDocument.from_path(DOCS / "lighthouse.md"))
    assert [c.chunk_id for c in chunk_document(again, embedder, SMALL, "v1")] == ids
    assert len(set(ids)) == len(ids)
    # Another pipeline version (other settings or model): other ids.
    other = [c.chunk_id for c in chunk_document(markdown, embedder, SMALL, "v2")]
    assert not set(other) & set(ids)
    # Changed content at the same path: a new content hash, so new ids.
    path = tmp_path / "lighthouse.md"
    shutil.copy(DOCS / "lighthouse.md", path)
    before = chunk_document(parse_document(SourceDocument.from_path(path)), embedder, SMALL, "v1")
    path.write_text(path.read_text() + "\nThe light was automated in 1990.\n")
    after = chunk_document(parse_document(SourceDocument.from_path(path)), embedder, SMALL, "v1")
    assert before[0].doc_id == after[0].doc_id
    assert not {c.chunk_id for c in before} & {c.chunk_id for c in after}


def test_chunk_records_point_back_to_the_document(
    embedder: Embedder, markdown: ParsedDocument
) -> None:
    chunks = chunk_document(markdown, embedder, SMALL, "v1")
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert isinstance(chunk, Chunk)
        assert (chunk.doc_id, chunk.source, chunk.content_hash) == (
            markdown.doc.doc_id,
            markdown.doc.source,
            markdown.doc.content_hash,
        )


def test_empty_document_gives_no_chunks(embedder: Embedder) -> None:
    empty = parse_document(SourceDocument.from_path(DOCS / "empty.txt"))
    assert chunk_document(empty, embedder, SMALL, "v1") == []


def test_full_settings_object_is_accepted(embedder: Embedder, markdown: ParsedDocument) -> None:
    settings = load_settings(chunking={"max_tokens": 64, "overlap_tokens": 16})
    texts = [c.text for c in chunk_document(markdown, embedder, settings, "v1")]
    assert texts == [c.text for c in chunk_document(markdown, embedder, SMALL, "v1")]


def test_overlap_must_be_at_most_half() -> None:
    with pytest.raises(pydantic.ValidationError, match="at most half"):
        ChunkingSettings(max_tokens=64, overlap_tokens=40)


def test_max_chunks_keeps_each_documents_first_chunks(
    embedder: Embedder, markdown: ParsedDocument
) -> None:
    from pipelines.version import version_inputs

    every = chunk_document(markdown, embedder, SMALL, "v1")
    capped = SMALL.model_copy(update={"max_chunks": 2})
    assert len(every) > 2
    assert chunk_document(markdown, embedder, capped, "v1") == every[:2]
    # Uncapped, the setting is left out of the pipeline version (existing indexes stay current).
    assert "max_chunks" not in version_inputs(load_settings(), embedder)["chunker"]
    capped_settings = load_settings(chunking={"max_chunks": 2})
    assert version_inputs(capped_settings, embedder)["chunker"]["max_chunks"] == 2
