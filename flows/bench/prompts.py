"""Prompt sets that benches and their tests share: story topics, open chat requests, and RAG
requests whose grounded answer copies a context paragraph of data/samples. No heavy imports."""

from __future__ import annotations

from pathlib import Path

TOPICS = (
    "a lighthouse keeper", "the first snow", "a lost key", "a robot gardener", "an old map",
    "a night train", "a quiet library", "a stubborn goat", "the last bakery", "a paper boat",
    "a mountain radio", "a clockmaker", "a desert well", "a city of bridges", "a shy dragon",
    "a winter market",
)  # fmt: skip
SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
RAG_SYSTEM = "Answer from the context only. Quote the context word for word where you can."
RAG_QUESTIONS = (
    "What does the context say? Quote it.",
    "Repeat the first sentence of the context exactly.",
    "Which sentence of the context matters most? Quote it.",
    "Rewrite the context as a bulleted list, keeping its words.",
    "Summarise the context, quoting its key phrases.",
)


def prompts(n: int) -> list[list[dict[str, str]]]:
    """`n` chat requests' messages, each asking for a short story (the topics repeat past 16)."""
    return [
        [{"role": "user", "content": f"Write a short story about {TOPICS[i % len(TOPICS)]}."}]
        for i in range(n)
    ]


CHAT_ASKS = (
    "Write a short story about {}.",
    "Describe {} in three sentences.",
    "Write a short poem about {}.",
)


def context_paragraphs() -> list[str]:
    """The prose paragraphs (≥ 150 characters) of the text samples in data/samples."""
    paragraphs: list[str] = []
    for name in ("impetus-overview.md", "gettysburg-address.txt"):
        text = (SAMPLES / name).read_text()
        paragraphs += [
            " ".join(p.split())
            for p in text.split("\n\n")
            if len(p) >= 150 and not p.lstrip().startswith(("#", "```", "-"))
        ]
    return paragraphs


def rag_prompts(n: int) -> list[list[dict[str, str]]]:
    """n grounded questions: a context paragraph and a question whose answer copies it."""
    paragraphs = context_paragraphs()
    return [
        [
            {"role": "system", "content": RAG_SYSTEM},
            {
                "role": "user",
                "content": f"Context:\n{paragraphs[i % len(paragraphs)]}\n\n"
                f"Question: {RAG_QUESTIONS[i % len(RAG_QUESTIONS)]}",
            },
        ]
        for i in range(n)
    ]


def chat_prompts(n: int) -> list[list[dict[str, str]]]:
    """n open chat requests (stories, descriptions, poems), nothing to copy from."""
    return [
        [{"role": "user", "content": CHAT_ASKS[i % len(CHAT_ASKS)].format(TOPICS[i % len(TOPICS)])}]
        for i in range(n)
    ]
