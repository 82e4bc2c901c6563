"""Small fakes of the serving seams: an `Engine`, an `Embedder`, a registry with extra models and
an `IndexRunner` (serving/services/indexing.py) for apps that need no Prefect.

They implement the protocols (no patches of internals), so the real app, model manager and
uvicorn run around them. The fake engine is for what the real one cannot do on demand: a full
queue, a failure mid-stream, a slow prefill, and counting the sequences a disconnect freed.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.embed.base import Backend, Embedding
from pipelines.models.store import Kind, ModelEntry, ModelStore
from pipelines.vectorstore import VectorStore
from serving.engine.base import (
    Delta,
    EngineCapabilities,
    EngineClosedError,
    EngineError,
    EngineStats,
    GenerationRequest,
    QueueFullError,
    TokenLogprob,
)
from serving.services.indexing import IndexRun

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
    "xray",
    "yankee",
    "zulu",
]


def prompt_text(request: GenerationRequest) -> str:
    if request.prompt is not None:
        return request.prompt
    if request.prompt_ids is not None:
        return " ".join(map(str, request.prompt_ids))
    return "\n".join(str(m.get("content", "")) for m in request.messages or [])


@dataclass
class FakeEngine:
    """Words from a seeded RNG: deterministic with a seed or at temperature 0, like a real model.

    `capacity` sequences may be open at once (more raise QueueFullError, on submission when
    `reject_on_submit`, else at the first delta); `fail_after` tokens raise `fail_with`;
    `first_token_delay` stands for a long prefill.
    """

    model_name: str
    token_delay: float = 0.0
    first_token_delay: float = 0.0
    capacity: int | None = None
    reject_on_submit: bool = False
    fail_after: int | None = None
    fail_with: type[Exception] = EngineError
    memory_bytes: int = 0
    active: int = 0
    cancelled: int = 0
    finished: int = 0
    requests: int = 0
    closed: bool = False
    caps: EngineCapabilities = field(default_factory=EngineCapabilities)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self.closed:
            raise EngineClosedError(f"{self.model_name} was unloaded")
        if self.reject_on_submit and self._full():
            raise QueueFullError("The queue is full; retry later.", retry_after=2.0)
        return self._run(request)

    def _full(self) -> bool:
        return self.capacity is not None and self.active >= self.capacity

    async def _run(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        if self._full():
            raise QueueFullError("The queue is full; retry later.", retry_after=2.0)
        self.active += 1
        self.requests += 1
        done = False
        try:
            p = request.params
            prompt = prompt_text(request)
            if p.seed is not None:
                rng = random.Random(p.seed)
            elif p.temperature == 0:
                rng = random.Random(prompt)
            else:
                rng = random.Random()
            if self.first_token_delay:
                await asyncio.sleep(self.first_token_delay)
            text, emitted, count = "", 0, 0
            hold = max((len(s) for s in p.stop), default=1) - 1
            while True:
                if self.fail_after is not None and count >= self.fail_after:
                    raise self.fail_with("the fake engine failed on purpose")
                word = rng.choice(WORDS)
                token = word if count == 0 else " " + word
                count += 1
                text += token
                lps = None
                if p.logprobs:
                    others = [w for w in WORDS if w != word][:5]  # not from rng: same text
                    top = [(" " + w, -1.0 - i) for i, w in enumerate(others)]
                    lps = [TokenLogprob(token, -0.5, top=top[: p.top_logprobs])]
                hits = [text.find(s) for s in p.stop if s in text]
                if hits:
                    cut = min(hits)
                    last = self._last(request, text[emitted:cut], "stop", count, lps)
                    last.stop_sequence = next(s for s in p.stop if text.find(s) == cut)
                    yield last
                    done = True
                    return
                if count >= p.max_tokens:
                    yield self._last(request, text[emitted:], "length", count, lps)
                    done = True
                    return
                safe = max(emitted, len(text) - hold)
                yield Delta(
                    text=text[emitted:safe],
                    token_ids=[count],
                    logprobs=lps,
                    completion_tokens=count,
                )
                emitted = safe
                await asyncio.sleep(self.token_delay)
        finally:
            self.active -= 1
            if done:
                self.finished += 1
            else:
                self.cancelled += 1

    def _last(
        self,
        request: GenerationRequest,
        text: str,
        reason: str,
        count: int,
        lps: list[TokenLogprob] | None,
    ) -> Delta:
        return Delta(
            text=text,
            token_ids=[count],
            logprobs=lps,
            finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=self.count_tokens(request),
            completion_tokens=count,
        )

    def count_tokens(self, request: GenerationRequest) -> int:
        return len(prompt_text(request).split()) + 1

    def tokenize(
        self, request: GenerationRequest, add_special_tokens: bool | None = None
    ) -> list[int]:
        return list(range(self.count_tokens(request)))

    def detokenize(self, token_ids: list[int]) -> str:
        return " ".join(WORDS[t % len(WORDS)] for t in token_ids)

    def capabilities(self) -> EngineCapabilities:
        return self.caps

    def stats(self) -> EngineStats:
        return EngineStats(
            model=self.model_name,
            queue_depth=0,
            queue_limit=self.capacity or 0,
            batch_size=self.active,
            requests_total=self.requests,
            memory_bytes=self.memory_bytes,
        )

    async def close(self) -> None:
        self.closed = True


class FakeEmbedder:
    """Unit vectors from a hash of the text; a token is a whitespace-separated word."""

    backend: Backend = "mlx"

    def __init__(self, name: str, dim: int = 16, max_seq_length: int = 32) -> None:
        self.name = name
        self.dim = dim
        self.max_seq_length = max_seq_length

    def encode(self, texts: Sequence[str], *, batch_size: int = 32) -> Embedding:
        vecs = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)
            vecs.append(v / np.linalg.norm(v))
        counts = self.count_tokens(texts)
        return Embedding(
            np.stack(vecs),
            [min(c, self.max_seq_length) for c in counts],
            [c > self.max_seq_length for c in counts],
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def tokenize(self, text: str) -> list[int]:
        return [len(w) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(f"t{i}" for i in ids)


class StoreWithFakes(ModelStore):
    """A model store that lists extra fake models (ready, at `root/<name>`) after the real ones."""

    def __init__(
        self,
        root: Path,
        llms: Sequence[str] = (),
        embedders: Sequence[str] = (),
        *,
        sizes: dict[str, int] | None = None,
        builtins: bool = True,
    ) -> None:
        super().__init__(root)
        sizes = sizes or {}
        self._builtins = builtins
        kinds: list[tuple[Sequence[str], Kind]] = [(llms, "llm"), (embedders, "embedding")]
        self.fakes = [
            ModelEntry(n, kind, "fake", str(root / n), sizes.get(n, 1), "ready", "test:fake")
            for names, kind in kinds
            for n in names
        ]

    def entries(self) -> list[ModelEntry]:
        real = super().entries() if self._builtins else []
        return [*real, *self.fakes]


class FakeIndexRunner:
    """An `IndexRunner` that runs nothing: each run completes at once with an empty summary,
    and it remembers what it was asked to index (paths, collection, prune, the store)."""

    def __init__(self) -> None:
        self.started: list[tuple[list[str], str, bool, VectorStore]] = []
        self._runs: dict[str, IndexRun] = {}
        self.closed = False

    def start(self, paths: list[str], collection: str, prune: bool, store: VectorStore) -> IndexRun:
        self.started.append((paths, collection, prune, store))
        run = IndexRun(f"fake-run-{len(self.started)}", collection, paths, prune)
        run.on_progress("documents", 0, 0)
        run.status, run.summary = "completed", {"run_id": run.id, "documents": {}}
        self._runs[run.id] = run
        return run

    def get(self, run_id: str) -> IndexRun | None:
        return self._runs.get(run_id)

    def runs(self) -> list[IndexRun]:
        return list(self._runs.values())

    def cancel(self, run_id: str) -> IndexRun | None:
        return self._runs.get(run_id)  # every fake run has completed already

    def close(self) -> None:
        self.closed = True
