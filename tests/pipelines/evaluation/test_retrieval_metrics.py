"""Retrieval metrics on hand-checked rankings, and the committed question set's shape."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipelines.evaluation import retrieval as evaluate
from pipelines.settings import PROJECT_ROOT


def test_metrics_of_one_question() -> None:
    docs = ["/c/library/os.html", "/c/library/tempfile.html", "/c/library/glob.html"]
    m = evaluate.score(docs, ["library/tempfile.html"])
    assert m["hit@1"] == 0 and m["hit@5"] == 1 and m["hit@10"] == 1
    assert m["mrr@10"] == 0.5
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(3))
    assert evaluate.score(docs, ["library/x.html"])["ndcg@10"] == 0
    # a suffix matches only at a path component boundary
    assert not evaluate.matches("/c/library/xtempfile.html", "library/tempfile.html")


def test_ranked_documents_collapse_chunks() -> None:
    assert evaluate.ranked_documents(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


def test_dataset_shape(tmp_path: Path) -> None:
    questions = evaluate.load_dataset(PROJECT_ROOT / "data" / "eval" / "python-docs.jsonl")
    assert len(questions) >= 60
    assert all(q.sources[0].startswith("library/") for q in questions)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"q": "x"}\n')
    with pytest.raises(evaluate.DatasetError, match=r"bad\.jsonl:1"):
        evaluate.load_dataset(bad)
