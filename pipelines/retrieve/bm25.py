"""BM25 over a collection's chunk texts: a local inverted index in numpy, one per physical collection.

    index = BM25Index.build(store.scroll(physical), k1=1.2, b=0.75)
    index.save(data_dir / "bm25" / physical)
    index.search("temporary directory", k=10, filter={"source": [...]})

Why local and not Qdrant sparse vectors: the index is built from the payload texts every adapter
already returns, so sparse results are the same whichever store holds the data, the
`VectorStore` protocol and the collections' schema stay as they are (no re-index of existing
collections), and a query over 100k chunks costs about a millisecond (flows/bench/retrieval.py).

Layout: postings in CSR form by term (`term_ptr`, `post_doc`, `post_w`) with each posting's BM25
weight precomputed (idf · tf·(k1+1) / (tf + k1·(1-b+b·len/avglen))), so a query is a slice per
term and one `np.bincount`. The writer of a collection (the ingest flow, in the process that owns
the store) rebuilds the file after every run that changed it; readers reload when it changes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.vectorstore.base import PointRecord

FORMAT = 1
_WORD = re.compile(r"\w+", re.UNICODE)
# Function words carry no topic; dropping them keeps postings short and scores focused.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "me",
        "my",
        "of",
        "on",
        "or",
        "so",
        "that",
        "the",
        "their",
        "then",
        "there",
        "these",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "i'd",
        "i'm",
    ]
)
# Payload fields kept per chunk (for hits and filters).
META_FIELDS = ("chunk_id", "doc_id", "source", "title", "section", "text")
FILTER_FIELDS = ("doc_id", "source")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens without stop words, with a light plural strip (files → file)."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOPWORDS:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
            w = w[:-1]
        out.append(w)
    return out


@dataclass(frozen=True)
class SparseHit:
    index: int  # position in the index
    score: float


class BM25Index:
    """An immutable BM25 index over chunks (see the module docstring for its layout)."""

    def __init__(
        self,
        meta: list[dict[str, Any]],
        vocab: dict[str, int],
        term_ptr: np.ndarray,
        post_doc: np.ndarray,
        post_w: np.ndarray,
        params: dict[str, Any],
    ) -> None:
        self.meta = meta
        self.vocab = vocab
        self.term_ptr = term_ptr
        self.post_doc = post_doc
        self.post_w = post_w
        self.params = params
        self._codes: dict[str, tuple[dict[str, int], np.ndarray]] = {}
        for field in FILTER_FIELDS:
            values = [str(m.get(field) or "") for m in meta]
            table: dict[str, int] = {}
            codes = np.fromiter((table.setdefault(v, len(table)) for v in values), np.int32)
            self._codes[field] = (table, codes)

    def __len__(self) -> int:
        return len(self.meta)

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def build(cls, points: Iterable[PointRecord], *, k1: float = 1.2, b: float = 0.75) -> BM25Index:
        """Index every point's payload `text`."""
        meta: list[dict[str, Any]] = []
        vocab: dict[str, int] = {}
        rows: list[int] = []
        cols: list[int] = []
        tfs: list[int] = []
        lengths: list[int] = []
        for p in points:
            payload = p.payload
            m = {f: payload.get(f) for f in META_FIELDS}
            m["chunk_id"] = m["chunk_id"] or p.id
            doc = len(meta)
            meta.append(m)
            terms = tokenize(str(payload.get("text") or ""))
            lengths.append(len(terms))
            for word, count in Counter(terms).items():
                rows.append(vocab.setdefault(word, len(vocab)))
                cols.append(doc)
                tfs.append(count)
        n = len(meta)
        term = np.asarray(rows, dtype=np.int64)
        doc_ids = np.asarray(cols, dtype=np.int32)
        tf = np.asarray(tfs, dtype=np.float32)
        length = np.asarray(lengths, dtype=np.float32)
        avg = float(length.mean()) if n and length.mean() > 0 else 1.0
        df = np.bincount(term, minlength=len(vocab)).astype(np.float32)
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = k1 * (1.0 - b + b * length[doc_ids] / avg)
        weight = idf[term] * tf * (k1 + 1.0) / (tf + norm)
        order = np.argsort(term, kind="stable")
        term_ptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(term, minlength=len(vocab)), out=term_ptr[1:])
        params = {"format": FORMAT, "k1": k1, "b": b, "points": n}
        return cls(meta, vocab, term_ptr, doc_ids[order], weight[order].astype(np.float32), params)

    # -- searching ---------------------------------------------------------------------------------

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every chunk for `query` (0 where no term matches)."""
        ids = [self.vocab[t] for t in set(tokenize(query)) if t in self.vocab]
        if not ids:
            return np.zeros(len(self.meta), dtype=np.float32)
        docs = np.concatenate([self.post_doc[self.term_ptr[i] : self.term_ptr[i + 1]] for i in ids])
        ws = np.concatenate([self.post_w[self.term_ptr[i] : self.term_ptr[i + 1]] for i in ids])
        return np.bincount(docs, weights=ws, minlength=len(self.meta)).astype(np.float32)

    def mask(self, filter: Mapping[str, Any] | None) -> np.ndarray | None:
        """Chunks whose payload matches every `field: value | [values]`; None for no filter."""
        if not filter:
            return None
        mask = np.ones(len(self.meta), dtype=bool)
        for field, value in filter.items():
            values = [value] if isinstance(value, str | int | bool) else list(value)
            if field in self._codes:
                table, codes = self._codes[field]
                wanted = [table[str(v)] for v in values if str(v) in table]
                mask &= np.isin(codes, np.asarray(wanted, dtype=np.int32))
            else:
                keep = {str(v) for v in values}
                mask &= np.fromiter((str(m.get(field)) in keep for m in self.meta), bool)
        return mask

    def search(
        self, query: str, k: int = 10, filter: Mapping[str, Any] | None = None
    ) -> list[SparseHit]:
        """The `k` best-scoring chunks that contain at least one query term, best first."""
        if not self.meta or k <= 0:
            return []
        scores = self.scores(query)
        mask = self.mask(filter)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        # Ties broken by chunk position, so results are deterministic.
        top = top[np.lexsort((top, -scores[top]))]
        return [SparseHit(int(i), float(scores[i])) for i in top if scores[i] > 0]

    # -- persistence -------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write the index atomically (a new directory swapped in by rename)."""
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.tmp")
        tmp.mkdir()
        np.savez(
            tmp / "postings.npz", term_ptr=self.term_ptr, post_doc=self.post_doc, post_w=self.post_w
        )
        terms = sorted(self.vocab, key=self.vocab.__getitem__)
        with (tmp / "index.json").open("w") as f:
            json.dump({"params": self.params, "terms": terms, "meta": self.meta}, f)
        old = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.old")
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)

    @classmethod
    def load(cls, directory: Path) -> BM25Index | None:
        """The index saved in `directory`, or None when there is none (or of an older format)."""
        try:
            with (directory / "index.json").open() as f:
                data = json.load(f)
            arrays = np.load(directory / "postings.npz")
        except (FileNotFoundError, ValueError, OSError):
            return None
        if data.get("params", {}).get("format") != FORMAT:
            return None
        vocab = {t: i for i, t in enumerate(data["terms"])}
        return cls(
            data["meta"],
            vocab,
            arrays["term_ptr"],
            arrays["post_doc"],
            arrays["post_w"],
            data["params"],
        )


def index_dir(root: Path, physical: str) -> Path:
    """Where the index of a physical collection lives under `root` (data_dir/bm25)."""
    return root / physical


def prune_indexes(root: Path, keep: Sequence[str]) -> None:
    """Remove the indexes of physical collections that no longer exist."""
    if not root.is_dir():
        return
    for d in root.iterdir():
        if d.is_dir() and d.name not in keep:
            shutil.rmtree(d, ignore_errors=True)
