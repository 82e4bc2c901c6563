"""Parse a source file into plain elements with `unstructured`, fully offline.

    from pipelines.parse import parse_document
    parsed = parse_document(SourceDocument.from_path(Path("data/samples/impetus.md")))
    parsed.title, [(e.category, e.text) for e in parsed.elements]

Supported: .md/.markdown, .txt/.text, .html/.htm, .docx and .pdf (text layer only, unstructured's
"fast" strategy through pdfminer: no torch, no OCR, no layout model). Anything else, and any file
that cannot be read or parsed, raises `ParseError`; the ingest flow records the reason and
quarantines that one document.

How parsing stays offline. unstructured 0.27 classifies text (is this line a title, narrative
text, plain text?) with spaCy: `unstructured.nlp.tokenize._get_nlp()` calls
`spacy.load("en_core_web_sm")`, and when that model is not installed it downloads the model wheel
from GitHub (explosion/spacy-models releases) and installs it into site-packages at run time. No
environment variable turns this off. The text, Markdown, HTML, DOCX and PDF partitioners all reach
it (through `is_possible_narrative_text` / `is_possible_title`), and without network it fails with
"Failed to download spaCy model" (or hangs for its 120 s timeout behind a dropping firewall).
unstructured 0.27 no longer uses NLTK data at all.

Before the first partition we therefore hand unstructured a pipeline that needs no model: the seam
is `unstructured.nlp.tokenize._get_nlp`, the one function through which every `sent_tokenize`,
`word_tokenize` and `pos_tag` call gets its `Language`; we replace it with one returning
`spacy.blank("en")` + spaCy's rule-based `sentencizer` + `_VerbTagger` below (a small rule-based
tagger: unstructured only asks whether a short line contains a verb, to tell narrative text from
a title). `_install_spacy_model` is replaced with a function that raises, so no code path can
download or write into site-packages. The result is deterministic and the same on every machine,
which `PARSER_VERSION` (part of the pipeline version) records. unstructured's own analytics ping is
off through `DO_NOT_TRACK` (pipelines.telemetry). If unstructured changes that seam,
`_install_offline_nlp` fails loudly rather than letting a download through.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.errors import ImpetusError
from pipelines.records import Element, ParsedDocument, SourceDocument

# Bump when the offline NLP or the element post-processing changes what parsing produces.
_NLP_REVISION = 2

SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".md": "md",
    ".markdown": "md",
    ".txt": "text",
    ".text": "text",
    ".html": "html",
    ".htm": "html",
    ".docx": "docx",
    ".pdf": "pdf",
}

# Element metadata worth carrying into chunks and lineage (all JSON-serialisable).
_KEPT_METADATA = ("page_number", "category_depth", "parent_id", "text_as_html", "languages")
# Layout furniture that carries no content for retrieval.
_DROPPED_CATEGORIES = frozenset({"PageBreak", "Header", "Footer", "PageNumber"})


class ParseError(ImpetusError):
    """A document could not be parsed; the message names the file and the reason."""


def _unstructured_version() -> str:
    from importlib.metadata import version

    try:
        return version("unstructured")
    except Exception:  # pragma: no cover - unstructured is a hard dependency
        return "unknown"


PARSER_VERSION = f"unstructured-{_unstructured_version()}+offline-nlp-{_NLP_REVISION}"


def parse_document(doc: SourceDocument) -> ParsedDocument:
    """Partition `doc` into elements; raises ParseError for unsupported, unreadable or corrupt files."""
    path = Path(doc.source)
    kind = SUPPORTED_EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        supported = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise ParseError(
            f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; "
            f"supported: {supported}"
        )
    _check_readable(path, kind)
    partition = _partitioner(kind)
    try:
        raw = partition(str(path))
    except ParseError:
        raise
    except Exception as e:  # every parser has its own exception zoo; the reason is what matters
        raise ParseError(f"{path}: cannot parse as {kind}: {type(e).__name__}: {e}") from e
    elements = [el for el in (_plain(r) for r in raw) if el is not None]
    title = (
        (_html_title(path) if kind == "html" else None)
        or next((e.text for e in elements if e.category == "Title"), None)
        or _title_from(path)
    )
    return ParsedDocument(doc=doc, title=title, elements=elements)


# --- checks before handing a file to unstructured ---------------------------------------------


def _check_readable(path: Path, kind: str) -> None:
    try:
        with path.open("rb") as f:
            head = f.read(1024)
    except FileNotFoundError as e:
        raise ParseError(f"{path}: file not found (was it moved or deleted?)") from e
    except IsADirectoryError as e:
        raise ParseError(f"{path}: is a directory, not a file") from e
    except OSError as e:
        raise ParseError(f"{path}: cannot be read: {e.strerror or e}") from e
    # Cheap signature checks: some parsers accept garbage silently and return nothing, which
    # would pass for an empty document instead of a corrupt one.
    if kind == "pdf" and b"%PDF-" not in head:
        raise ParseError(f"{path}: not a PDF file (no %PDF- header); is it corrupt or misnamed?")
    if kind == "docx" and not head.startswith(b"PK\x03\x04"):
        raise ParseError(
            f"{path}: not a .docx file (not a ZIP package); is it corrupt, or an old .doc file?"
        )
    if kind in ("text", "md", "html") and b"\x00" in head and not _is_utf16(head):
        raise ParseError(f"{path}: binary content in a {kind} file; is it corrupt or misnamed?")


def _is_utf16(head: bytes) -> bool:
    return head.startswith((b"\xff\xfe", b"\xfe\xff"))


# --- unstructured, loaded lazily and offline --------------------------------------------------

_lock = threading.Lock()
_partitioners: dict[str, Callable[[str], list[Any]]] = {}


def _partitioner(kind: str) -> Callable[[str], list[Any]]:
    """The partition function for `kind`, importing unstructured (offline) on first use."""
    with _lock:
        if not _partitioners:
            from pipelines import telemetry

            telemetry.disable()  # before unstructured is imported: its analytics ping
            # Its "try our commercial offering" banner would land on stdout (and in --json).
            os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
            _install_offline_nlp()
            _partitioners.update(_load_partitioners())
        return _partitioners[kind]


def _load_partitioners() -> dict[str, Callable[[str], list[Any]]]:
    from unstructured.partition.docx import partition_docx
    from unstructured.partition.html import partition_html
    from unstructured.partition.md import partition_md
    from unstructured.partition.text import partition_text

    return {
        "md": lambda f: partition_md(filename=f),
        "text": lambda f: partition_text(filename=f),
        "html": lambda f: partition_html(filename=f),
        "docx": lambda f: partition_docx(filename=f, infer_table_structure=True),
        "pdf": _partition_pdf_text,
    }


def _partition_pdf_text(filename: str) -> list[Any]:
    """unstructured's "fast" PDF strategy without `unstructured.partition.pdf`.

    That module imports `unstructured_inference` (torch, onnxruntime, layout models) and `pi_heif`
    at the top, even for the fast strategy, so it cannot be imported here. This does what its
    fast path does: pdfminer's text boxes page by page, each classified by unstructured's own
    `element_from_text` (which also marks page headers and footers by position), keeping the
    page number. Scanned pages without a text layer yield nothing (that needs OCR).
    """
    from pdfminer.high_level import extract_pages
    from pdfminer.layout import LAParams, LTTextContainer
    from unstructured.cleaners.core import clean_extra_whitespace
    from unstructured.documents.coordinates import PixelSpace
    from unstructured.partition.text import element_from_text

    elements = []
    for page_number, layout in enumerate(extract_pages(filename, laparams=LAParams()), start=1):
        system = PixelSpace(width=layout.width, height=layout.height)
        for box in layout:
            if not isinstance(box, LTTextContainer):
                continue
            text = clean_extra_whitespace(box.get_text())
            if not text.strip():
                continue
            x1, y1, x2, y2 = box.bbox  # PDF space: origin bottom-left
            top, bottom = layout.height - y2, layout.height - y1
            points = ((x1, top), (x1, bottom), (x2, bottom), (x2, top))
            element = element_from_text(text, coordinates=points, coordinate_system=system)
            element.metadata.page_number = page_number
            elements.append(element)
    return elements


def _install_offline_nlp() -> None:
    """Make unstructured's NLP use a model-free spaCy pipeline (see the module docstring)."""
    from unstructured.nlp import tokenize

    if getattr(tokenize._get_nlp, "_impetus_offline", False):
        return
    for name in ("_get_nlp", "_install_spacy_model", "_process_cached"):
        if not hasattr(tokenize, name):
            raise RuntimeError(
                f"unstructured {_unstructured_version()} has no unstructured.nlp.tokenize.{name}; "
                "pipelines/parse.py must be updated to keep parsing offline"
            )

    nlp = _offline_nlp()

    def get_nlp() -> Any:
        return nlp

    def no_download() -> None:
        raise RuntimeError(
            "Impetus parses offline: unstructured tried to download a spaCy model "
            "(pipelines/parse.py should have prevented this)"
        )

    get_nlp._impetus_offline = True  # type: ignore[attr-defined]
    tokenize._get_nlp = get_nlp  # type: ignore[assignment]
    tokenize._install_spacy_model = no_download
    tokenize._process_cached.cache_clear()  # nothing parsed with another pipeline may linger


def _offline_nlp() -> Any:
    import spacy
    from spacy.language import Language

    if not Language.has_factory("impetus_verb_tagger"):
        Language.component("impetus_verb_tagger", func=_VerbTagger())
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    nlp.add_pipe("impetus_verb_tagger")
    return nlp


def _wordset(words: str) -> frozenset[str]:
    return frozenset(words.split())


# Closed-class verbs (auxiliaries, modals) and frequent lexical verbs. unstructured asks only
# "does this short line contain a verb?"; these plus the suffix rules below answer it well enough
# for prose, while headings ("Getting Started", "Chapter 3. The Voyage") stay verb-free.
_AUXILIARIES = _wordset(
    "am is are was were be been being 's 're 'm has have had having 've 'd do does did done "
    "doing can could will would shall should may might must 'll ca wo ai isn aren wasn weren "
    "hasn haven hadn doesn didn don couldn wouldn shouldn mustn"
)
_VERBS = _wordset(
    "accept add allow appear apply ask become begin believe belong bring build buy call carry "
    "cause change check choose come consider contain continue cost create cut decide describe "
    "die drive eat enable end enter expect explain fall feel fill find follow forget get give go "
    "grow happen hear help hold include keep know lead learn leave let lie like listen live load "
    "look lose love make mean meet move need offer open pay play point provide put reach read "
    "receive remain remember report require return run say see seem sell send serve set show "
    "sit sleep speak spend stand start stay stop store suggest support take talk teach tell "
    "tend think travel try turn understand use wait walk want watch win wish work write "
    "went gone came made said saw seen took taken gave given knew known thought told found left "
    "felt kept held brought began begun ran wrote written stood sat spoke spoken lost paid met "
    "sent built led understood"
)
_PRONOUNS = _wordset("i we you they he she it who that which")


def _verb_tag(word: str, prev: str) -> str | None:
    """A Penn tag for `word` if it reads as a verb, else None (unstructured checks VB*)."""
    lower = word.lower()
    if lower in _AUXILIARIES:
        return "VBZ" if lower in ("is", "has", "does", "'s") else "VBP"
    if lower in _VERBS:
        return "VB"
    if len(lower) > 3 and lower.endswith("s") and lower[:-1] in _VERBS:
        return "VBZ"
    if len(lower) > 4 and lower.endswith("es") and lower[:-2] in _VERBS:
        return "VBZ"
    if not word.islower():
        return None  # capitalised words are names and heading words, not verbs
    if len(lower) > 4 and lower.endswith("ed"):
        return "VBD"
    if len(lower) > 5 and lower.endswith("ing"):
        return "VBG"
    if prev in _PRONOUNS and len(lower) > 2 and lower.isalpha():
        return "VBP"  # "they sail", "it works"
    return None


class _VerbTagger:
    """spaCy component: sets `tag_` to a VB* tag on verb-like tokens, "XX" elsewhere."""

    def __call__(self, doc: Any) -> Any:
        prev = ""
        for token in doc:
            token.tag_ = _verb_tag(token.text, prev) or "XX"
            prev = token.text.lower()
        return doc


# --- unstructured elements → records.Element --------------------------------------------------

_WHITESPACE = re.compile(r"[ \t\u00a0]+")


def _plain(raw: Any) -> Element | None:
    category = getattr(raw, "category", None) or type(raw).__name__
    if category in _DROPPED_CATEGORIES:
        return None
    text = _WHITESPACE.sub(" ", str(getattr(raw, "text", "") or "")).strip()
    if not text:
        return None
    meta = raw.metadata.to_dict() if getattr(raw, "metadata", None) is not None else {}
    metadata = {k: meta[k] for k in _KEPT_METADATA if meta.get(k) is not None}
    return Element(text=text, category=category, metadata=metadata)


def _html_title(path: Path) -> str | None:
    # The page's <title> names the document; its first heading is often site chrome (Sphinx
    # pages start with a "Navigation" heading).
    from bs4 import BeautifulSoup

    try:
        head = BeautifulSoup(path.read_bytes(), "lxml").title
    except Exception:
        return None
    text = " ".join(head.get_text().split()) if head is not None else ""
    return text or None


def _title_from(path: Path) -> str:
    return path.stem.replace("_", " ").replace("-", " ").strip() or path.name
