"""Reciprocal rank fusion (Cormack et al., 2009), weighted: what hybrid search ranks by."""

from __future__ import annotations

from collections.abc import Sequence


def rrf(
    rankings: Sequence[Sequence[str]], weights: Sequence[float], k: int = 60
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: score(id) = Σ weight_i / (k + rank_i(id)), ranks from 1; best first.

    Ties (same fused score) keep the order in which the ids were first seen, the first ranking
    first, so results are deterministic."""
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if weight == 0:
            continue
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    order = {item: i for i, item in enumerate(scores)}
    return sorted(scores.items(), key=lambda kv: (-kv[1], order[kv[0]]))
