"""The records that flow through ingestion, each built from the one before:

    SourceDocument ─parse─▶ ParsedDocument ─chunk─▶ Chunk ─embed─▶ EmbeddedChunk ─upsert─▶ point

Ids are deterministic, so a re-run (or a run after a crash) writes the same ids and never
duplicates: a document's id comes from its path, a chunk's id from its document, the document's
content hash, the pipeline version and its position. The chunk id is also the vector store's
point id and the id a citation carries, which is what makes lineage traceable end to end.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# Fixed namespace for Impetus ids (uuid5 is stable across machines and runs).
NAMESPACE = uuid.UUID("6f1c1f5e-8b0a-4c57-9a55-3f4f2a0c9d11")


def doc_id_for(source: str) -> str:
    """A document's id: stable for the same (resolved) path."""
    return str(uuid.uuid5(NAMESPACE, f"doc:{source}"))


def chunk_id_for(doc_id: str, content_hash: str, pipeline_version: str, index: int) -> str:
    """A chunk's id, which is also its point id in the vector store."""
    return str(uuid.uuid5(NAMESPACE, f"chunk:{doc_id}:{content_hash}:{pipeline_version}:{index}"))


def content_hash_of(path: Path) -> str:
    """sha256 of a file's bytes: the document version."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class SourceDocument:
    """A file found in the source, before parsing."""

    doc_id: str
    source: str  # the document's resolved path
    content_hash: str
    size: int
    mtime: float

    @classmethod
    def from_path(cls, path: Path) -> SourceDocument:
        path = path.resolve()
        stat = path.stat()
        return cls(
            doc_id_for(str(path)), str(path), content_hash_of(path), stat.st_size, stat.st_mtime
        )


@dataclass
class Element:
    """One structural element of a parsed document (unstructured's element, made plain)."""

    text: str
    category: str  # Title, NarrativeText, ListItem, Table, ...
    metadata: dict[str, Any] = field(default_factory=dict)  # page_number, ...


@dataclass
class ParsedDocument:
    doc: SourceDocument
    title: str | None
    elements: list[Element]


@dataclass
class Chunk:
    """A span of a document, bounded in the embedding model's tokens."""

    chunk_id: str
    doc_id: str
    source: str
    content_hash: str  # of the document version it came from
    index: int  # position within the document
    text: str
    token_count: int
    title: str | None = None  # document title
    section: str | None = None  # the heading this chunk sits under
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class EmbeddedChunk:
    chunk: Chunk
    vector: np.ndarray  # float32 (dim,)
