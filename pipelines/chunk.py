"""Split a parsed document into chunks: by section, bounded in the embedding model's own tokens.

    from pipelines.chunk import chunk_document
    chunks = chunk_document(parsed, embedder, settings.chunking, pipeline_version)

How. A Title element opens a section (consecutive headings with no text between them open one
section together); elements before the first heading form a section of their own. Each section is
cut into units that keep the original text: sentences of its elements, and for a sentence longer
than the budget its words (a single over-long "word" is cut by characters). Units are packed
greedily into chunks whose token count, measured with `Embedder.count_tokens` (special tokens
included), never exceeds `min(max_tokens, embedder.max_seq_length)`, so the encoder truncates
nothing. When a section needs more than one chunk, each further chunk starts with the last
`overlap_tokens` tokens (whole words) of the one before. Sections never share a chunk, so every
chunk sits under one heading (`Chunk.section`; the heading path is `metadata["headings"]`).

The chunker knows nothing of files or models: it sees elements and a tokenizer. Chunk ids come
from `records.chunk_id_for` (document, content hash, pipeline version, position), so the same input
always yields the same ids and any change of content or settings yields new ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from pipelines.embed.base import Embedder
from pipelines.records import Chunk, Element, ParsedDocument, chunk_id_for
from pipelines.settings import ChunkingSettings, Settings

# Bump when the chunking algorithm changes what it produces (part of the pipeline version).
CHUNKER_VERSION = "title-tokens-1"

# A sentence ends at . ! ? (optionally closed by a quote or bracket) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
_WHITESPACE = re.compile(r"\s+")
_ELEMENT_JOINER = "\n\n"


@dataclass
class _Unit:
    """A piece of text packed whole; `joiner` is the whitespace that precedes it in the text."""

    text: str
    tokens: int  # content tokens (no special tokens)
    joiner: str
    page: int | None
    category: str


@dataclass
class _Section:
    headings: list[str]  # heading path, outermost first; empty before the first heading
    elements: list[Element] = field(default_factory=list)
    has_body: bool = False


def chunk_document(
    parsed: ParsedDocument,
    embedder: Embedder,
    settings: ChunkingSettings | Settings,
    pipeline_version: str,
) -> list[Chunk]:
    """The document's chunks in reading order; an empty document gives an empty list."""
    cfg = settings.chunking if isinstance(settings, Settings) else settings
    counter = _TokenCounter(embedder)
    limit = min(cfg.max_tokens, embedder.max_seq_length)
    budget = limit - counter.special
    if budget < 8:
        raise ValueError(
            f"chunking.max_tokens={cfg.max_tokens} leaves {budget} tokens per chunk for "
            f"{embedder.name}; raise it"
        )
    overlap = min(cfg.overlap_tokens, budget // 2)

    doc = parsed.doc
    chunks: list[Chunk] = []
    for section in _sections(parsed.elements):
        if cfg.max_chunks and len(chunks) >= cfg.max_chunks:
            break
        for units, overlap_used in _pack(
            _units(section, counter, budget), counter, budget, overlap
        ):
            text = _join(units)
            index = len(chunks)
            pages = sorted({u.page for u in units if u.page is not None})
            chunks.append(
                Chunk(
                    chunk_id=chunk_id_for(doc.doc_id, doc.content_hash, pipeline_version, index),
                    doc_id=doc.doc_id,
                    source=doc.source,
                    content_hash=doc.content_hash,
                    index=index,
                    text=text,
                    token_count=counter.count(text) + counter.special,
                    title=parsed.title,
                    section=section.headings[-1] if section.headings else None,
                    metadata={
                        "headings": list(section.headings),
                        "page_number": pages[0] if pages else None,
                        "page_numbers": pages,
                        "categories": sorted({u.category for u in units}),
                        "overlap_tokens": overlap_used,
                    },
                )
            )
    return chunks[: cfg.max_chunks] if cfg.max_chunks else chunks


class _TokenCounter:
    """Content-token counts (special tokens excluded) with the embedder's own tokenizer."""

    def __init__(self, embedder: Embedder):
        self._embedder = embedder
        self.special = embedder.count_tokens([""])[0]

    def count(self, text: str) -> int:
        return self._embedder.count_tokens([text])[0] - self.special

    def counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        return [n - self.special for n in self._embedder.count_tokens(list(texts))]


# --- sections ---------------------------------------------------------------------------------


def _sections(elements: Sequence[Element]) -> Iterator[_Section]:
    path: list[tuple[int, str]] = []  # (depth, heading) of the open headings
    current = _Section(headings=[])
    for element in elements:
        if element.category == "Title":
            if current.has_body:
                yield current
                current = _Section(headings=[])
            depth = int(element.metadata.get("category_depth") or 0)
            path = [(d, h) for d, h in path if d < depth] + [(depth, element.text)]
            current.headings = [h for _, h in path]
        else:
            current.has_body = True
        current.elements.append(element)
    if current.elements:
        yield current


# --- units ------------------------------------------------------------------------------------


def _spans(text: str, separator: re.Pattern[str]) -> list[tuple[str, str]]:
    """(joiner, piece) pairs that rebuild `text` exactly, split after each `separator` match."""
    pieces: list[tuple[str, str]] = []
    start, joiner = 0, ""
    for match in separator.finditer(text):
        if match.start() > start:
            # Keep closing quotes/brackets with the sentence; only the whitespace joins.
            end = match.start() + len(match.group(0).rstrip())
            pieces.append((joiner, text[start:end]))
            joiner = match.group(0)[len(match.group(0).rstrip()) :]
            start = match.end()
    if start < len(text):
        pieces.append((joiner, text[start:]))
    return pieces


def _units(section: _Section, counter: _TokenCounter, budget: int) -> list[_Unit]:
    raw: list[tuple[str, str, Element]] = []  # (joiner, text, element)
    for i, element in enumerate(section.elements):
        for j, (joiner, piece) in enumerate(_spans(element.text, _SENTENCE_END)):
            raw.append((joiner if j else (_ELEMENT_JOINER if i else ""), piece, element))
    counts = counter.counts([text for _, text, _ in raw])
    units: list[_Unit] = []
    for (joiner, text, element), tokens in zip(raw, counts, strict=True):
        page = element.metadata.get("page_number")
        if tokens <= budget:
            units.append(_Unit(text, tokens, joiner, page, element.category))
            continue
        for k, (sub, sub_tokens) in enumerate(_split_long(text, counter, budget)):
            units.append(_Unit(sub, sub_tokens, joiner if k == 0 else " ", page, element.category))
    return units


def _split_long(text: str, counter: _TokenCounter, budget: int) -> Iterator[tuple[str, int]]:
    """Cut an over-long sentence into word runs of at most `budget` tokens each."""
    spans = _spans(text, _WHITESPACE)
    counts = counter.counts([w for _, w in spans])
    pending: list[tuple[str, str]] = []
    pending_tokens = 0

    def flush() -> tuple[str, int]:
        joined = "".join((j if k else "") + w for k, (j, w) in enumerate(pending))
        return joined, counter.count(joined)

    for (joiner, word), tokens in zip(spans, counts, strict=True):
        if tokens > budget:  # a URL, a hash, a table row without spaces
            if pending:
                yield flush()
                pending, pending_tokens = [], 0
            yield from _split_chars(word, counter, budget)
            continue
        if pending and pending_tokens + tokens > budget:
            yield flush()
            pending, pending_tokens = [], 0
        pending.append((joiner, word))
        pending_tokens += tokens
    if pending:
        yield flush()


def _split_chars(word: str, counter: _TokenCounter, budget: int) -> Iterator[tuple[str, int]]:
    while word:
        lo, hi = 1, len(word)  # the longest prefix within budget (binary search)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if counter.count(word[:mid]) <= budget:
                lo = mid
            else:
                hi = mid - 1
        yield word[:lo], counter.count(word[:lo])
        word = word[lo:]


# --- packing ----------------------------------------------------------------------------------


def _join(units: Sequence[_Unit]) -> str:
    return "".join((u.joiner if i else "") + u.text for i, u in enumerate(units))


def _pack(
    units: list[_Unit], counter: _TokenCounter, budget: int, overlap: int
) -> Iterator[tuple[list[_Unit], int]]:
    """Greedy packing of a section's units into chunks; yields (units, overlap tokens used)."""
    i = 0
    carry: list[_Unit] = []
    while i < len(units):
        current = list(carry)
        added = 0
        while i < len(units):
            candidate = [*current, units[i]]
            # Sums are exact for WordPiece; the real count guards tokenizers where they are not.
            estimate = sum(u.tokens for u in candidate)
            if estimate > budget or counter.count(_join(candidate)) > budget:
                if added == 0 and current:  # the overlap leaves no room: drop it
                    carry, current = [], []
                    continue
                break
            current, added, i = candidate, added + 1, i + 1
        if added == 0:  # cannot happen: every unit fits alone; guard against an endless loop
            raise RuntimeError("chunker made no progress")
        yield current, sum(u.tokens for u in carry)
        carry = _tail(current, counter, overlap) if i < len(units) else []


def _tail(units: Sequence[_Unit], counter: _TokenCounter, overlap: int) -> list[_Unit]:
    """The last whole words of `units` that fit in `overlap` tokens, as one unit."""
    if overlap <= 0:
        return []
    words = _join(units).split()
    lo, hi = 0, min(len(words), overlap)  # a word is at least one token
    while lo < hi:  # the most trailing words within the overlap budget
        mid = (lo + hi + 1) // 2
        if counter.count(" ".join(words[-mid:])) <= overlap:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        return []
    text = " ".join(words[-lo:])
    last = units[-1]
    return [_Unit(text, counter.count(text), "", last.page, last.category)]
