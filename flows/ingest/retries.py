"""Retries of the ingest tasks: which errors are worth retrying, and the per-document bookkeeping
(`Outcomes`) that lets a retried batch task redo only the documents not yet done.

A domain error (`ImpetusError`: a corrupt file, a locked store) is final; any other error may be
transient (store and database I/O, a file still being written) and is retried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from prefect.tasks import exponential_backoff

from pipelines.errors import ImpetusError

K = TypeVar("K")
R = TypeVar("R")


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the error is a domain error (corrupt file, locked store): those stay."""
    from pipelines.diskspace import is_disk_full

    error = state.data
    return not isinstance(error, ImpetusError) and not (
        isinstance(error, BaseException) and is_disk_full(error)
    )


# Where failures can be transient (store and database I/O, a file still being written): three
# retries at about 0.5 s, 1 s, 2 s, each ±50 % jitter so that retrying workers do not line up.
TRANSIENT: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=0.5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
}


class UnfinishedBatch(Exception):
    """A batch task left documents failed in a way that may pass on a retry (not a domain error).

    Deliberately not an `ImpetusError`: it is the signal that makes Prefect retry."""


def _domain(error: BaseException | None) -> bool:
    return isinstance(error, ImpetusError)


@dataclass
class Outcomes(Generic[R]):
    """What a batch task did per document (keyed by doc id): a result for each one that went
    through, the error for each one that did not. A document's failure never fails the others.

    The flow hands each batch task an empty one (as is, never copied) and keeps it. A Prefect
    retry calls the task again with the same object, so a retry redoes only the documents not
    yet done and not failed for good (a domain error, such as a corrupt file, is final); once the
    retries are spent, the flow still reads what was done and why the rest failed."""

    ok: dict[str, R] = field(default_factory=dict)
    errors: dict[str, Exception] = field(default_factory=dict)

    def pending(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if k not in self.ok and not _domain(self.errors.get(k))]

    def each(self, items: dict[str, K], fn: Callable[[K], R]) -> None:
        """`fn` on each pending item, one document at a time."""
        for key in self.pending(items):
            try:
                self.ok[key] = fn(items[key])
            except Exception as e:
                self.errors[key] = e
            else:
                self.errors.pop(key, None)

    def whole_or_each(
        self, items: dict[str, K], whole: Callable[[list[K]], list[R]], one: Callable[[K], R]
    ) -> None:
        """`whole` on all pending items in one call; if that raises, `one` on each, so that the
        document at fault fails alone and the others still go through."""
        keys = self.pending(items)
        if not keys:
            return
        try:
            results = whole([items[k] for k in keys])
        except Exception:
            self.each({k: items[k] for k in keys}, one)
            return
        for key, result in zip(keys, results, strict=True):
            self.ok[key] = result
            self.errors.pop(key, None)

    def settle(self) -> Outcomes[R]:
        """Raise while a document failed in a way that may pass (so that Prefect retries)."""
        transient = [(k, e) for k, e in self.errors.items() if not _domain(e)]
        if transient:
            key, error = transient[0]
            raise UnfinishedBatch(
                f"{len(transient)} document(s) failed, first {key}: {type(error).__name__}: {error}"
            ) from error
        return self
