"""Context assembly: rank order, duplicates dropped, the token budget held, sources numbered."""

from __future__ import annotations

from pipelines.prompt import (
    CITE_REMINDER,
    SYSTEM_PROMPT,
    assemble,
    block,
    grounded_messages,
    last_user_message,
)
from pipelines.retrieve import SearchHit


def hit(i: int, text: str, source: str = "/docs/a.md") -> SearchHit:
    return SearchHit(f"id-{i}", source, f"Title {i}", None, 1.0 / (i + 1), text)


def words(text: str) -> int:
    return len(text.split())


def test_dedupes_numbers_and_keeps_rank_order() -> None:
    hits = [
        hit(0, "alpha beta gamma"),
        hit(1, "delta epsilon"),
        hit(0, "alpha beta gamma"),  # same chunk again
        hit(2, "  Alpha   beta gamma "),  # same text, another chunk (overlapping ingest)
        hit(3, "zeta eta"),
    ]
    ctx = assemble(hits, budget=1000, count_tokens=words)
    assert [s.hit.chunk_id for s in ctx.sources] == ["id-0", "id-1", "id-3"]
    assert [s.number for s in ctx.sources] == [1, 2, 3]
    assert ctx.text().startswith("[1] Title 0\nalpha beta gamma\n\n[2] Title 1")
    cites = ctx.citations(snippet_chars=8)
    assert [c["index"] for c in cites] == [1, 2, 3]
    assert cites[0] == {
        "index": 1,
        "chunk_id": "id-0",
        "source": "/docs/a.md",
        "title": "Title 0",
        "score": 1.0,
        "snippet": "alpha…",
    }


def test_budget_counts_with_the_given_tokenizer() -> None:
    base = words(SYSTEM_PROMPT.format(sources="") + CITE_REMINDER)
    one = words(block(1, hit(0, "w " * 10)) + "\n\n")
    hits = [hit(0, "w " * 10), hit(1, "x " * 500), hit(2, "y " * 10)]
    ctx = assemble(hits, budget=base + 2 * one, count_tokens=words)
    # the long chunk does not fit and is skipped; the next one that fits is taken
    assert [s.hit.chunk_id for s in ctx.sources] == ["id-0", "id-2"]
    assert ctx.dropped == 1 and ctx.tokens <= base + 2 * one
    assert [s.number for s in ctx.sources] == [1, 2]
    empty = assemble(hits, budget=base, count_tokens=words)
    assert empty.sources == [] and empty.dropped == 3


def test_messages_and_the_question() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "What is a lighthouse?"},
    ]
    assert last_user_message(msgs) == "What is a lighthouse?"
    assert last_user_message([{"role": "assistant", "content": "x"}]) is None
    ctx = assemble([hit(0, "A tower with a lamp.")], budget=500, count_tokens=words)
    out = grounded_messages(msgs, ctx)
    assert out[0]["role"] == "system" and "[1] Title 0" in out[0]["content"]
    assert "Paris is the capital of France [1]." in out[0]["content"]
    # the reminder follows the question; the earlier turns are as they were
    assert out[1:-1] == msgs[:-1]
    assert out[-1] == {"role": "user", "content": f"What is a lighthouse?\n\n{CITE_REMINDER}"}
    assert msgs[-1]["content"] == "What is a lighthouse?"  # the caller's list is not changed
