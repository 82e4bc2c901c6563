"""The seam between the server and orchestration: what runs index flows for `POST /v1/rag/index`.

Serving never imports flows (DESIGN.md's layers), so `create_app` receives an `IndexRunner`: the
real one (flows/ingest/runner.py) creates a Prefect flow run up front, so that its id (also the
lineage run id) is known when the request returns, and executes it on a worker thread against
the store the server owns; tests pass a small fake where they need no Prefect.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    from pipelines.vectorstore import VectorStore


class RagIndexError(ImpetusError):
    """An index run could not be started or the store is not this server's (500 rag_index_error)."""


@dataclass
class IndexRun:
    """One index run started by this server: its id, what it indexes and how far it got."""

    id: str
    collection: str
    paths: list[str]
    prune: bool
    # pending | running | cancelling | completed | failed | cancelled
    status: str = "pending"
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    # Set by `IndexRunner.cancel`; the run reads it between batches (flows/ingest/flow.py).
    stop_requested: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running", "cancelling")

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    def on_progress(self, label: str, done: int, total: int) -> None:
        """A progress callback for the run: `label` is at `done` of `total`."""
        self.progress[label] = {"done": done, "total": total}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "rag.index_run",
            "flow_run_id": self.id,
            "collection": self.collection,
            "paths": self.paths,
            "prune": self.prune,
            "status": self.status,
            "progress": self.progress,
            "summary": self.summary,
            "error": self.error,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class IndexRunner(Protocol):
    """Starts index runs in this process and remembers them while it lives.

    `start` blocks (call it in a worker thread) until the run exists and its id is known, raising
    `RagIndexError` when it cannot; the run itself goes on in the background, updating its
    `IndexRun`. `cancel` asks a run to stop (a pending one never starts; a running one stops
    between batches, then reads `cancelled`) and returns it, None for an unknown id. `close`
    cancels what runs, waits a bounded time for it to stop, and starts no more."""

    def start(
        self, paths: list[str], collection: str, prune: bool, store: VectorStore
    ) -> IndexRun: ...

    def get(self, run_id: str) -> IndexRun | None: ...

    def runs(self) -> list[IndexRun]: ...

    def cancel(self, run_id: str) -> IndexRun | None: ...

    def close(self) -> None: ...
