"""Grounded prompts: retrieved chunks → numbered sources under a token budget → a system prompt.

    context = assemble(hits, budget=1024, count_tokens=lambda t: len(tokenizer.encode(t)))
    messages = grounded_messages(messages, context)
    citations = context.citations(snippet_chars=240)

Chunks are taken in rank order, duplicates dropped (same chunk id, or the same text after
whitespace is squeezed: overlapping ingests, one page under two paths), and each is kept only if
it still fits the budget, counted with the serving LLM's own tokenizer (`count_tokens`); the
sources are then numbered [1], [2], ... in that order, and the system prompt asks the model to
cite them by number.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.retrieve import SearchHit

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources below. After each claim, cite the "
    "source it comes from by its number in square brackets, like [1] or [2]. If the sources do "
    "not contain the answer, say that you do not know.\n\nSources:\n\n{sources}"
)


@dataclass
class Source:
    """A numbered source of the context: the hit and how many tokens its block costs."""

    number: int
    hit: SearchHit
    tokens: int


@dataclass
class Context:
    """The sources that fit, in the order they are numbered."""

    sources: list[Source] = field(default_factory=list)
    tokens: int = 0
    dropped: int = 0  # hits left out for the budget

    def text(self) -> str:
        return "\n\n".join(block(s.number, s.hit) for s in self.sources)

    def system_prompt(self) -> str:
        return SYSTEM_PROMPT.format(sources=self.text())

    def citations(self, snippet_chars: int = 240) -> list[dict[str, Any]]:
        """What a grounded answer carries: one entry per numbered source."""
        return [
            {
                "index": s.number,
                "chunk_id": s.hit.chunk_id,
                "source": s.hit.source,
                "title": s.hit.title,
                "score": s.hit.score,
                "snippet": snippet(s.hit.text, snippet_chars),
            }
            for s in self.sources
        ]


def block(number: int, hit: SearchHit) -> str:
    """One source as the model sees it: number, title and section, then the text."""
    label = hit.title or (Path(hit.source).name if hit.source else "untitled")
    if hit.section and hit.section != hit.title:
        label += f" — {hit.section}"
    return f"[{number}] {label}\n{hit.text.strip()}"


def snippet(text: str, chars: int) -> str:
    text = " ".join(text.split())
    if len(text) <= chars:
        return text
    cut = text[:chars].rsplit(" ", 1)[0]
    return cut + "…"


def _key(text: str) -> str:
    return " ".join(text.split()).lower()


def assemble(
    hits: Sequence[SearchHit], *, budget: int, count_tokens: Callable[[str], int]
) -> Context:
    """Deduplicate `hits` (in rank order) and keep those whose blocks fit `budget` tokens."""
    ctx = Context()
    seen_ids: set[str] = set()
    seen_texts: set[str] = set()
    # The prompt's own words and the separators between blocks cost tokens too.
    used = count_tokens(SYSTEM_PROMPT.format(sources=""))
    for hit in hits:
        key = _key(hit.text)
        if hit.chunk_id in seen_ids or not key or key in seen_texts:
            continue
        seen_ids.add(hit.chunk_id)
        seen_texts.add(key)
        cost = count_tokens(block(len(ctx.sources) + 1, hit) + "\n\n")
        if used + cost > budget:
            ctx.dropped += 1
            continue
        used += cost
        ctx.sources.append(Source(len(ctx.sources) + 1, hit, cost))
    ctx.tokens = used
    return ctx


def last_user_message(messages: Sequence[dict[str, Any]]) -> str | None:
    """The text of the conversation's last user message: what retrieval searches for."""
    for m in reversed(messages):
        if m.get("role") == "user":
            content = m.get("content")
            return content if isinstance(content, str) and content.strip() else None
    return None


def grounded_messages(messages: Sequence[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
    """The conversation with the sources in a system message first (the caller's own system
    messages follow it, so their instructions still apply)."""
    return [{"role": "system", "content": context.system_prompt()}, *messages]
