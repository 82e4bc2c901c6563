"""Grounded prompts: retrieved chunks → numbered sources under a token budget → a system prompt.

    context = assemble(hits, budget=1024, count_tokens=lambda t: len(tokenizer.encode(t)))
    messages = grounded_messages(messages, context)
    citations = context.citations(snippet_chars=240)

Chunks are taken in rank order, duplicates dropped (same chunk id, or the same text after
whitespace is squeezed: overlapping ingests, one page under two paths), and each is kept only if
it still fits the budget, counted with the serving LLM's own tokenizer (`count_tokens`); the
sources are then numbered [1], [2], ... in that order; the system prompt shows the model how to
cite them by number, and a reminder after the question asks it to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.retrieve import SearchHit

# The sources first, then the instruction and a one-line example: SmolLM2-135M copies an example
# far more readily than it follows a rule. With the reminder after the question it cited a source
# in 4 of the 12 sample questions (data/eval/samples.jsonl, seed 0, 64 tokens), against 0 of 12
# with the instruction before the sources, and 0 of 12 with the example but no reminder
# (`python -m flows.bench.cite_rate`; docs/benchmarks.md).
SYSTEM_PROMPT = (
    "Sources:\n\n{sources}\n\nAnswer the question from the sources above in one or two "
    "sentences, and end each sentence with the number of its source in square brackets."
    "\n\nExample:\nQuestion: What is the capital of France?\n"
    "Answer: Paris is the capital of France [1]."
)

# Appended to the last user message of a grounded chat (empty: nothing); a small model follows
# an instruction next to the question more readily than one in the system prompt.
CITE_REMINDER = "Answer with the source number in brackets, like [1]."


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
    used = count_tokens(SYSTEM_PROMPT.format(sources="") + CITE_REMINDER)
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
    messages follow it, so their instructions still apply) and `CITE_REMINDER` after the last
    user message."""
    out = [{"role": "system", "content": context.system_prompt()}, *messages]
    if CITE_REMINDER:
        for i in range(len(out) - 1, 0, -1):
            if out[i].get("role") == "user" and isinstance(out[i].get("content"), str):
                out[i] = {**out[i], "content": f"{out[i]['content']}\n\n{CITE_REMINDER}"}
                break
    return out
