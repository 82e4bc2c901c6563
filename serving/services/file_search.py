"""RAG the OpenAI way: the Responses API's `file_search` tool over Impetus collections.

    found = await search(rag, model, messages, {"type": "file_search", "vector_store_ids": ["default"]})
    messages = found.messages                      # grounded: numbered sources in a system message
    item = found.call_item(include_results=True)   # the `file_search_call` output item
    notes = found.annotations(answer_text)         # `file_citation`s for the answer's [n] markers

A vector store id is a collection name. The hybrid retriever (serving/services/rag.py) searches
each named collection for the conversation's last user message; the hits are merged by score,
assembled under the RAG token budget and put in front of the conversation exactly as grounded
chat does (pipelines/prompt.py), so the model cites them as [1], [2], ... Each citation becomes
a `file_citation` annotation whose `chunk_id` is the chunk's id in lineage (pipelines/lineage.py
`trace`), and whose `file_id` is `file_id_for` of the chunk's document.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.engine.base import InvalidRequestError

if TYPE_CHECKING:
    from pipelines.prompt import Context
    from pipelines.retrieve import SearchHit
    from pipelines.settings import Settings
    from serving.services.rag import RagService

_MARKER = re.compile(r"\[(\d{1,3})\]")


def file_id_for(source: str, settings: Settings) -> str:
    """The OpenAI-style file id of an indexed document: serving/services/files.py `file_ref` (an
    upload keeps its upload id; any other document gets a stable id from its path in its root)."""
    from pipelines.roots import IndexRoots
    from serving.services.files import file_ref

    return file_ref(source, IndexRoots.from_settings(settings))[0]


@dataclass
class FileSearchResult:
    """What one file_search call found and how it grounds the request."""

    item_id: str
    query: str
    messages: list[dict[str, Any]]
    context: Context | None
    settings: Settings
    hits: list[SearchHit] = field(default_factory=list)

    def _filename(self, hit: SearchHit) -> str:
        return Path(hit.source).name if hit.source else "untitled"

    def call_item(self, include_results: bool, status: str = "completed") -> dict[str, Any]:
        """The `file_search_call` output item (results only when `include` asks for them)."""
        results = None
        if include_results and self.context is not None:
            results = [
                {
                    "file_id": file_id_for(s.hit.source, self.settings),
                    "filename": self._filename(s.hit),
                    "score": s.hit.score,
                    "text": s.hit.text,
                    "attributes": {
                        "chunk_id": s.hit.chunk_id,
                        "index": s.number,
                        "title": s.hit.title,
                        "section": s.hit.section,
                    },
                }
                for s in self.context.sources
            ]
        return {
            "id": self.item_id,
            "type": "file_search_call",
            "status": status,
            "queries": [self.query],
            "results": results,
        }

    def annotations(self, text: str) -> list[dict[str, Any]]:
        """`file_citation`s for the [n] markers in `text` (index: just past the marker). A
        grounded answer that cites nothing (small models often do not) gets one per source
        at the end of the text, so that the answer is still traceable to its chunks."""
        if self.context is None or not self.context.sources:
            return []
        by_number = {s.number: s.hit for s in self.context.sources}
        found = [
            (m.end(), by_number[int(m.group(1))])
            for m in _MARKER.finditer(text)
            if int(m.group(1)) in by_number
        ]
        if not found:
            found = [(len(text), s.hit) for s in self.context.sources]
        return [
            {
                "type": "file_citation",
                "index": index,
                "file_id": file_id_for(hit.source, self.settings),
                "filename": self._filename(hit),
                "chunk_id": hit.chunk_id,  # Impetus's: the lineage trace of the citation
            }
            for index, hit in found
        ]


def last_user_text(messages: list[dict[str, Any]]) -> str | None:
    for m in reversed(messages):
        if m.get("role") == "user" and isinstance(m.get("content"), str) and m["content"].strip():
            return str(m["content"])
    return None


async def search(
    rag: RagService,
    model: str,
    messages: list[dict[str, Any]],
    tool: dict[str, Any],
    item_id: str,
) -> FileSearchResult:
    """Run the file_search tool for `messages` and ground them in what it finds."""
    from pipelines.prompt import grounded_messages

    ids = tool.get("vector_store_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise InvalidRequestError(
            "file_search needs vector_store_ids: a list of collection names (GET /v1/rag/status "
            "lists them).",
            param="tools",
        )
    k = tool.get("max_num_results") or rag.settings.rag.top_k
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 50:
        raise InvalidRequestError(
            "file_search max_num_results must be an integer from 1 to 50.", param="tools"
        )
    query = last_user_text(messages)
    if query is None:
        raise InvalidRequestError("file_search needs a user message with text.", param="input")
    hits: list[SearchHit] = []
    for collection in ids:
        hits += await rag.search(query, collection=collection, k=k)
    hits = sorted(hits, key=lambda h: h.score, reverse=True)[:k]
    result = FileSearchResult(item_id, query, messages, None, rag.settings, hits)
    if not hits:
        return result
    context = await rag.assemble(model, hits)
    if context.sources:
        result.context = context
        result.messages = grounded_messages(messages, context)
    return result
