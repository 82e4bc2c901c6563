"""parse_document on real files of every supported format, with the network made unreachable.

The fixtures come from tests/fixtures/docs/make_docs.py. Every test here runs with socket
connections and name resolution refused and the hubs' offline switches on, so a code path that
tries to download (unstructured's spaCy model, above all) fails the test instead of passing on a
machine that happens to have network.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.errors import ImpetusError
from pipelines.parse import PARSER_VERSION, ParseError, parse_document
from pipelines.records import ParsedDocument, SourceDocument

DOCS = Path(__file__).parents[1] / "fixtures" / "docs"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NLTK_DATA": "/nonexistent",
    "SPACY_WARNING_IGNORE": "W095",
}


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsed(f"network access during parsing: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for key, value in OFFLINE_ENV.items():
        monkeypatch.setenv(key, value)
    yield


def parse(name: str) -> ParsedDocument:
    return parse_document(SourceDocument.from_path(DOCS / name))


def texts(parsed: ParsedDocument, category: str) -> list[str]:
    return [e.text for e in parsed.elements if e.category == category]


def test_spacy_model_is_not_installed() -> None:
    # The point of the offline NLP: unstructured's en_core_web_sm is absent and stays absent.
    assert importlib.util.find_spec("en_core_web_sm") is None


@pytest.mark.parametrize("name", ["lighthouse.md", "lighthouse.html", "lighthouse.docx"])
def test_structured_formats_keep_headings_and_lists(name: str) -> None:
    parsed = parse(name)
    assert parsed.title == "Lighthouse Keeping"
    titles = texts(parsed, "Title")
    assert titles[:2] == ["Lighthouse Keeping", "Daily Duties"]
    body = " ".join(e.text for e in parsed.elements)
    assert "trimmed the wicks every evening" in body
    assert "Wind the clockwork that turns the lens." in texts(parsed, "ListItem")
    # Heading levels come through as category_depth, which the chunker uses for heading paths.
    depths = [e.metadata.get("category_depth") for e in parsed.elements if e.category == "Title"]
    assert depths[:2] == [0, 1]
    assert parsed.doc.source.endswith(name)


def test_markdown_nested_headings() -> None:
    parsed = parse("lighthouse.md")
    assert texts(parsed, "Title") == [
        "Lighthouse Keeping",
        "Daily Duties",
        "The Long Watch",
        "Storm Nights",
    ]


@pytest.mark.parametrize("name", ["lighthouse.html", "lighthouse.docx"])
def test_tables_are_kept(name: str) -> None:
    tables = texts(parse(name), "Table")
    assert len(tables) == 1
    assert "1890" in tables[0] and "412" in tables[0]


def test_text_file_classified_without_a_spacy_model() -> None:
    parsed = parse("lighthouse.txt")
    assert parsed.title == "LIGHTHOUSE KEEPING"
    assert texts(parsed, "Title") == ["LIGHTHOUSE KEEPING", "Daily Duties"]
    # Single-sentence prose must not read as a heading: the offline tagger finds its verb.
    narrative = texts(parsed, "NarrativeText")
    assert any(t.startswith("The keeper trimmed the wicks") for t in narrative)
    assert texts(parsed, "ListItem") == [
        "Wind the clockwork that turns the lens.",
        "Record the weather in the journal.",
    ]


def test_pdf_text_with_page_numbers() -> None:
    parsed = parse("lighthouse.pdf")
    assert parsed.title == "Lighthouse Keeping"
    pages = {e.text: e.metadata.get("page_number") for e in parsed.elements}
    assert pages["Lighthouse Keeping"] == 1
    assert pages["Daily Duties"] == 2
    body = [e for e in parsed.elements if e.category == "NarrativeText"]
    assert [e.metadata["page_number"] for e in body] == [1, 2]
    assert "trimmed the wicks every evening" in body[1].text


def test_empty_file_gives_no_elements_and_filename_title() -> None:
    parsed = parse("empty.txt")
    assert parsed.elements == []
    assert parsed.title == "empty"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("corrupt.pdf", "cannot parse as pdf"),
        ("corrupt.docx", "cannot parse as docx"),
        ("notes.xyz", "unsupported file type '.xyz'"),
    ],
)
def test_bad_files_raise_parse_error(name: str, reason: str) -> None:
    with pytest.raises(ParseError, match=reason) as info:
        parse(name)
    assert isinstance(info.value, ImpetusError)
    assert name in str(info.value)


def test_misnamed_files_raise_parse_error(tmp_path: Path) -> None:
    fake_pdf = tmp_path / "fake.pdf"
    fake_pdf.write_text("just text, no PDF header\n")
    with pytest.raises(ParseError, match="not a PDF file"):
        parse_document(SourceDocument.from_path(fake_pdf))
    binary_txt = tmp_path / "blob.txt"
    binary_txt.write_bytes(b"\x00\x01\x02binary\x00" * 20)
    with pytest.raises(ParseError, match="binary content"):
        parse_document(SourceDocument.from_path(binary_txt))


def test_missing_and_unreadable_files_raise_parse_error(tmp_path: Path) -> None:
    path = tmp_path / "gone.md"
    shutil.copy(DOCS / "lighthouse.md", path)
    doc = SourceDocument.from_path(path)
    path.unlink()
    with pytest.raises(ParseError, match="file not found"):
        parse_document(doc)
    if os.geteuid() == 0:
        return  # root reads files whatever their mode
    locked = tmp_path / "locked.md"
    shutil.copy(DOCS / "lighthouse.md", locked)
    doc = SourceDocument.from_path(locked)
    locked.chmod(0)
    with pytest.raises(ParseError, match="cannot be read"):
        parse_document(doc)


def test_parsing_is_deterministic() -> None:
    for name in ("lighthouse.md", "lighthouse.txt", "lighthouse.pdf"):
        first, second = parse(name), parse(name)
        assert [(e.category, e.text, e.metadata) for e in first.elements] == [
            (e.category, e.text, e.metadata) for e in second.elements
        ]


def test_parser_version_names_the_offline_nlp() -> None:
    assert PARSER_VERSION.startswith("unstructured-0.")
    assert "offline-nlp" in PARSER_VERSION


def test_html_title_comes_from_the_title_element(tmp_path: Path) -> None:
    page = tmp_path / "tempfile.html"
    page.write_text(
        "<html><head><title>tempfile — Generate temporary files</title></head><body>"
        "<h3>Navigation</h3><p>index modules</p><h1>tempfile</h1>"
        "<p>This module creates temporary files and directories.</p></body></html>"
    )
    parsed = parse_document(SourceDocument.from_path(page))
    assert parsed.title == "tempfile — Generate temporary files"
