"""The pipeline version: one hash of everything that decides what a document's points are.

    from pipelines.version import pipeline_version
    version = pipeline_version(settings, embedder)   # e.g. "3f0c9a7d1e2b4c5a"

It covers the parser (unstructured's version and our offline NLP revision), the chunker (its
algorithm revision and `chunking` settings) and the embedder (model name, dimension, sequence
length, backend). A change to any of them changes every chunk id (`records.chunk_id_for`), so the
flow sees every document as changed, and `impetus reindex` builds a new physical collection.
Batch size and other settings that do not change the output are left out on purpose.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.embed.base import Embedder
    from pipelines.settings import Settings


def version_inputs(settings: Settings, embedder: Embedder) -> dict[str, Any]:
    """What the version hashes, as a readable record (lineage stores it with each run)."""
    from pipelines.chunk import CHUNKER_VERSION
    from pipelines.parse import PARSER_VERSION

    chunking = settings.chunking.model_dump()
    if not chunking["max_chunks"]:
        del chunking["max_chunks"]  # uncapped: the same version as before the setting existed
    return {
        "parser": PARSER_VERSION,
        "chunker": {"version": CHUNKER_VERSION, **chunking},
        "embedder": {
            "name": embedder.name,
            "dim": embedder.dim,
            "max_seq_length": embedder.max_seq_length,
            "backend": embedder.backend,
        },
    }


def pipeline_version(settings: Settings, embedder: Embedder) -> str:
    """16 hex digits of sha256 over `version_inputs`."""
    blob = json.dumps(version_inputs(settings, embedder), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
