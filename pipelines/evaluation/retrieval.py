"""Retrieval metrics over a labelled question set: hit@k, MRR@10 and nDCG@10 (binary relevance).

A dataset is JSON lines `{"q": question, "sources": [relevant document paths]}`; sources may be
relative (to a corpus root): a retrieved document matches when its path ends with the labelled
path at a component boundary. Ranking is by document: a question's retrieved chunks are collapsed
to their documents in rank order (a page's second chunk does not count twice), as BEIR does.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ImpetusError

CUTOFFS = (1, 5, 10)
METRICS = ("hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10")


class DatasetError(ImpetusError, ValueError):
    """A dataset line is not `{"q": str, "sources": [str, ...]}`."""


@dataclass(frozen=True)
class Question:
    q: str
    sources: tuple[str, ...]


def load_dataset(path: Path) -> list[Question]:
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            q, sources = row["q"], row["sources"]
            if (
                not isinstance(q, str)
                or not sources
                or not all(isinstance(s, str) for s in sources)
            ):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise DatasetError(
                f'{path}:{n}: expected {{"q": "question", "sources": ["path", ...]}}'
            ) from None
        out.append(Question(q, tuple(sources)))
    if not out:
        raise DatasetError(f"{path} holds no questions")
    return out


def matches(retrieved: str, labelled: str) -> bool:
    """Whether a retrieved document path is the labelled one (equal, or ends with /labelled)."""
    r, lab = retrieved.replace("\\", "/"), labelled.replace("\\", "/").lstrip("./")
    return r == lab or r.endswith("/" + lab)


def ranked_documents(sources: Iterable[str]) -> list[str]:
    """Chunk sources in rank order → distinct documents in rank order."""
    seen: dict[str, None] = {}
    for s in sources:
        seen.setdefault(s, None)
    return list(seen)


def relevance(docs: Sequence[str], labelled: Sequence[str]) -> list[int]:
    return [int(any(matches(d, lab) for lab in labelled)) for d in docs]


def score(docs: Sequence[str], labelled: Sequence[str]) -> dict[str, float]:
    """The metrics of one question, given its retrieved documents in rank order."""
    rel = relevance(docs[:10], labelled)
    out = {f"hit@{k}": float(any(rel[:k])) for k in CUTOFFS}
    first = next((i for i, r in enumerate(rel) if r), None)
    out["mrr@10"] = 0.0 if first is None else 1.0 / (first + 1)
    dcg = sum(r / math.log2(i + 2) for i, r in enumerate(rel))
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(len(labelled), 10)))
    out["ndcg@10"] = dcg / ideal if ideal else 0.0
    return out


def mean(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    return {m: sum(r[m] for r in rows) / len(rows) for m in METRICS} if rows else {}


def table(results: dict[str, dict[str, float]], n: int) -> str:
    """A Markdown table: one row per search mode, one column per metric."""
    head = "| mode | " + " | ".join(METRICS) + " |"
    rule = "|---|" + "---:|" * len(METRICS)
    rows = [
        f"| {mode} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |"
        for mode, m in results.items()
    ]
    return "\n".join([head, rule, *rows, "", f"{n} questions"])
