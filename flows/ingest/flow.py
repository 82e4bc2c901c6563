"""Ingestion as Prefect flows: discover → parse → chunk → check → embed → check → upsert → record,
then prune and delete what no longer belongs; `reindex` rebuilds a collection blue/green.

    impetus ingest data/samples --collection default --prune     # the CLI (flows/commands/ingest.py)
    python -c "from flows.ingest.flow import ingest; ingest(['data/samples'])"   # or call the flow

Each task is one call into `pipelines/`; the flow body only orchestrates. What makes re-runs cheap
and crashes harmless is lineage, not Prefect's result cache: a document whose content hash and
pipeline version are already indexed is skipped before parsing (no parse, no embed, no upsert),
which survives a new PREFECT_HOME, a server switch or a crash; Prefect's cache would have to
persist parsed documents and vectors a second time. Tasks therefore run with `NO_CACHE` (their
inputs are open stores and models), and each task's version is the pipeline version.

Batches: the documents to index go through the steps `ingest.batch_documents` at a time
(configs/impetus.yaml, default 16), each step one task run over the batch: a task run costs
Prefect tens of milliseconds whatever it does, so per document it was most of the flow's overhead
(`impetus bench ingest` measures it). The embed step encodes all of a batch's chunks in one call
(fuller encoder batches), intent and upsert write the batch in one transaction and one store call;
the Great Expectations suites and the lineage commit still run per document, inside their task.
A batch task never fails a batch for one document: it returns `Outcomes`, a result per document
that went through and the error of each that did not (a one-call step that raises is redone one
document at a time to find the one at fault). A document that fails (corrupt file: its reason)
or is quarantined (its suite's failures) leaves the batch alone, and is recorded at the batch's
end. Tasks doing I/O retry transient errors (`TRANSIENT`: any error that is not a domain error);
a retry gets the same `Outcomes` and redoes only the documents not yet done, and every write is
idempotent anyway (deterministic ids, upserts).

Order per changed document: lineage intent (chunks, points to be written) → upsert the new points
→ lineage commit (the document's current version moves); in a batch every document's intent
comes before any upsert and every upsert before any commit. Old points are deleted only at the
end of the run (`stale_points`), so a search never finds a changed document missing; whatever
step a process is killed at, the next run finds the leftovers the same way and, ids being
deterministic, ends in the state of an uninterrupted run.

A batch's parsed elements, chunks and settings go to the tasks wrapped in `quote`: Prefect
otherwise walks every argument, element by element, looking for upstream futures (there are none:
tasks are called, not submitted).

Test hook: `IMPETUS_TEST_CRASH_AT=<step>[:N]` SIGKILLs the process the N-th time (default first)
the flow reaches <step> (the per-document steps are reached once per batch, so `parse:2` is the
start of the second batch), one of: discover, load_embedder, parse, chunk, check_chunks, embed,
check_vectors, record_chunks, upsert, record, prune, find_stale, delete, mark_deleted, switch,
finish. Tests use it to prove crash safety; it does nothing unless set.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import numpy as np
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

if TYPE_CHECKING:
    from pipelines.discover import Discovery
    from pipelines.embed.base import Embedder
    from pipelines.lineage import Lineage
    from pipelines.quality import QualityResult
    from pipelines.records import Chunk, ParsedDocument, SourceDocument
    from pipelines.settings import Settings
    from pipelines.vectorstore import VectorStore


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry unless the error is a domain error (corrupt file, locked store): those stay."""
    from pipelines.errors import ImpetusError

    return not isinstance(state.data, ImpetusError)


# Where failures can be transient (store and database I/O, a file still being written): three
# retries at about 0.5 s, 1 s, 2 s, each ±50 % jitter so that retrying workers do not line up.
TRANSIENT: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=0.5),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _transient,
}

# --- tasks: one call into pipelines/ each -----------------------------------------------------


@task(name="discover", cache_policy=NO_CACHE, **TRANSIENT)
def discover(paths: Sequence[str]) -> Discovery:
    """Find and hash the source files."""
    from pipelines.discover import discover_documents

    return discover_documents(paths)


@task(name="load-embedder", cache_policy=NO_CACHE)
def load_embedder(settings: Settings) -> Embedder:
    """Load the embedding model named by the settings."""
    from pipelines.embed.dispatch import load_embedder as load

    return load(settings)


@task(name="classify", cache_policy=NO_CACHE, **TRANSIENT)
def classify(
    lineage: Lineage, collection: str, docs: list[SourceDocument], version: str
) -> dict[str, str]:
    """new | changed | unchanged per document, from lineage."""
    return dict(lineage.classify(collection, docs, version))


# --- per-document outcomes of a batch task ------------------------------------------------------

K = TypeVar("K")
R = TypeVar("R")


class UnfinishedBatch(Exception):
    """A batch task left documents failed in a way that may pass on a retry (not a domain error)."""


def _domain(error: BaseException | None) -> bool:
    from pipelines.errors import ImpetusError

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


# --- tasks: one call into pipelines/ each, over one batch of documents -------------------------


@task(name="parse", cache_policy=NO_CACHE, **TRANSIENT)
def parse(docs: dict[str, SourceDocument], out: Outcomes[ParsedDocument]) -> Outcomes[Any]:
    """Partition each file of a batch into elements."""
    from pipelines.parse import parse_document

    out.each(docs, parse_document)
    return out.settle()


@task(name="chunk", cache_policy=NO_CACHE)
def chunk(
    parsed: dict[str, ParsedDocument],
    embedder: Embedder,
    settings: Settings,
    version: str,
    out: Outcomes[list[Chunk]],
) -> Outcomes[Any]:
    """Split each document of a batch into token-bounded chunks."""
    from pipelines.chunk import chunk_document

    out.each(parsed, lambda p: chunk_document(p, embedder, settings, version))
    return out


@task(name="check-chunks", cache_policy=NO_CACHE)
def check_chunks(
    chunks: dict[str, list[Chunk]], max_tokens: int, out: Outcomes[QualityResult]
) -> Outcomes[Any]:
    """Great Expectations over each document's chunks (one suite run per document)."""
    from pipelines import quality

    out.each(chunks, lambda cs: quality.check_chunks(cs, max_tokens))
    return out


@task(name="embed", cache_policy=NO_CACHE)
def embed(
    embedder: Embedder,
    chunks: dict[str, list[Chunk]],
    batch_size: int,
    out: Outcomes[np.ndarray],
) -> Outcomes[Any]:
    """Vectors for all of a batch's chunks in one encoder call, split back per document."""

    def whole(groups: list[list[Chunk]]) -> list[np.ndarray]:
        texts = [c.text for group in groups for c in group]
        vectors = embedder.encode(texts, batch_size=batch_size).vectors
        return list(np.split(vectors, np.cumsum([len(g) for g in groups])[:-1]))

    out.whole_or_each(chunks, whole, lambda group: whole([group])[0])
    return out


@task(name="check-vectors", cache_policy=NO_CACHE)
def check_vectors(
    embedded: dict[str, tuple[list[Chunk], np.ndarray]], dim: int, out: Outcomes[QualityResult]
) -> Outcomes[Any]:
    """Great Expectations over each document's vectors (one suite run per document)."""
    from pipelines import quality

    out.each(embedded, lambda cv: quality.check_vectors(cv[0], cv[1], dim))
    return out


@task(name="record-chunks", cache_policy=NO_CACHE, **TRANSIENT)
def record_chunks(
    lineage: Lineage,
    run_id: str,
    collection: str,
    chunks: dict[str, list[Chunk]],
    version: str,
    out: Outcomes[None],
) -> Outcomes[Any]:
    """Lineage intent, one transaction for the batch: the chunks and the points about to be
    written (a retry rewrites the same rows)."""

    def whole(groups: list[list[Chunk]]) -> list[None]:
        lineage.record_chunks(run_id, collection, [c for g in groups for c in g], version)
        return [None] * len(groups)

    out.whole_or_each(chunks, whole, lambda group: whole([group])[0])
    return out.settle()


@task(name="upsert", cache_policy=NO_CACHE, **TRANSIENT)
def upsert(
    store: VectorStore,
    collection: str,
    embedded: dict[str, tuple[list[Chunk], np.ndarray]],
    version: str,
    out: Outcomes[int],
) -> Outcomes[Any]:
    """Write a batch's points in one call (ids = chunk ids, so a retry overwrites)."""
    from pipelines.vectorstore import upsert_chunks

    def whole(groups: list[tuple[list[Chunk], np.ndarray]]) -> list[int]:
        chunks = [c for cs, _ in groups for c in cs]
        upsert_chunks(store, collection, chunks, np.concatenate([v for _, v in groups]), version)
        return [len(cs) for cs, _ in groups]

    out.whole_or_each(embedded, whole, lambda group: whole([group])[0])
    return out.settle()


@task(name="record-indexed", cache_policy=NO_CACHE, **TRANSIENT)
def record_indexed(
    lineage: Lineage,
    run_id: str,
    collection: str,
    version: str,
    indexed: dict[str, tuple[SourceDocument, list[str], list[dict[str, Any]]]],
    out: Outcomes[None],
) -> Outcomes[Any]:
    """Lineage commit, per document: this document version is now the current one."""
    out.each(
        indexed,
        lambda d: lineage.record_indexed(run_id, collection, d[0], version, d[1], d[2]),
    )
    return out.settle()


@task(name="record-failures", cache_policy=NO_CACHE, **TRANSIENT)
def record_failures(
    lineage: Lineage,
    run_id: str,
    collection: str,
    version: str,
    failures: dict[str, tuple[SourceDocument, str, str, list[dict[str, Any]]]],
    out: Outcomes[None],
) -> None:
    """Lineage: these document versions failed or were quarantined, and why."""
    out.each(
        failures,
        lambda f: lineage.record_failure(run_id, collection, f[0], version, f[1], f[2], f[3]),  # type: ignore[arg-type]
    )
    for error in out.errors.values():
        raise error  # a retry (where it may pass) records only the ones left


@task(name="prune", cache_policy=NO_CACHE, **TRANSIENT)
def prune_documents(
    lineage: Lineage, run_id: str, collection: str, roots: list[str], present: set[str]
) -> list[str]:
    """Mark deleted the documents whose files are gone from under `roots`."""
    return lineage.mark_missing(run_id, collection, roots, present)


@task(name="find-stale", cache_policy=NO_CACHE, **TRANSIENT)
def find_stale(lineage: Lineage, collection: str) -> list[str]:
    """Points that are not of their document's current version (or whose document is gone)."""
    return lineage.stale_points(collection)


@task(name="delete", cache_policy=NO_CACHE, **TRANSIENT)
def delete(store: VectorStore, collection: str, point_ids: list[str]) -> None:
    """Delete points from the store (deleting a missing id is a no-op, so retries are safe)."""
    store.delete(collection, point_ids)


@task(name="mark-deleted", cache_policy=NO_CACHE, **TRANSIENT)
def mark_deleted(lineage: Lineage, collection: str, point_ids: list[str]) -> int:
    """Lineage: these points are gone."""
    return lineage.mark_deleted(collection, point_ids)


@task(name="switch-alias", cache_policy=NO_CACHE, **TRANSIENT)
def switch_alias(store: VectorStore, alias: str, physical: str) -> None:
    """Point the collection's alias at the rebuilt physical collection, atomically."""
    store.set_alias(alias, physical)


@task(name="sparse-index", cache_policy=NO_CACHE, **TRANSIENT)
def sparse_index(store: VectorStore, physical: str, settings: Settings, changed: bool) -> int:
    """Rebuild the collection's BM25 index when the run changed it (or it is missing/stale)."""
    from pipelines.retrieve import Retriever

    retriever = Retriever(store, settings.rag, data_dir=settings.data_dir)
    index = retriever.build_sparse_index(physical) if changed else retriever.sparse_index(physical)
    return len(index)


@task(name="optimize", cache_policy=NO_CACHE, **TRANSIENT)
def optimize(store: VectorStore, physical: str) -> bool:
    """Build the vector index now where the store does not on its own (Qdrant Edge)."""
    run = getattr(store, "optimize", None)
    return bool(run(physical)) if run is not None else False


@task(name="drop-collection", cache_policy=NO_CACHE, **TRANSIENT)
def drop_collection(store: VectorStore, physical: str) -> None:
    """Drop an old physical collection after the switch."""
    store.drop_collection(physical)


# --- progress and the crash hook ----------------------------------------------------------------

T = TypeVar("T")
ProgressFn = Callable[[str, int, int], None]
_progress: list[ProgressFn] = []


def on_progress(fn: ProgressFn | None) -> None:
    """Register `fn(label, done, total)`, called as documents finish (the CLI's progress bar)."""
    _progress[:] = [fn] if fn else []


def _report(label: str, done: int, total: int) -> None:
    for fn in _progress:
        fn(label, done, total)


_reached: Counter[str] = Counter()


def _crash_point(step: str) -> None:
    """Test hook (see the module docstring): SIGKILL at IMPETUS_TEST_CRASH_AT=<step>[:N]."""
    target = os.environ.get("IMPETUS_TEST_CRASH_AT")
    if not target:
        return
    name, _, nth = target.partition(":")
    if name != step:
        return
    _reached[step] += 1
    if _reached[step] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --- the process that owns the store -----------------------------------------------------------

# A server that owns the embedded store (one writer) runs the flows inside itself with its own
# settings and its open store, instead of the process settings and a store of their own.
_bound: ContextVar[tuple[Settings, VectorStore] | None] = ContextVar(
    "impetus_ingest_bound", default=None
)


@contextmanager
def bound(settings: Settings, store: VectorStore) -> Iterator[None]:
    """Run the flows called inside this block with `settings` and the already open `store`."""
    token = _bound.set((settings, store))
    try:
        yield
    finally:
        _bound.reset(token)


def _settings() -> Settings:
    from pipelines.settings import get_settings

    b = _bound.get()
    return b[0] if b is not None else get_settings()


def _close_store(store: VectorStore) -> None:
    b = _bound.get()
    if b is None or b[1] is not store:  # a bound store belongs to its owner
        store.close()


# --- flows ------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one run works with and what it counts."""

    settings: Settings
    store: VectorStore
    lineage: Lineage
    embedder: Embedder
    version: str
    run_id: str
    collection: str  # physical
    counts: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        c = self.counts
        return {
            "run_id": self.run_id,
            "documents": {k: c[k] for k in ("new", "changed", "unchanged", "deleted", "failed")},
            "chunks_embedded": c["chunks_embedded"],
            "points_upserted": c["points_upserted"],
            "points_deleted": c["points_deleted"],
        }


def _as_is(value: T) -> T:
    """`value` wrapped in Prefect's `quote`: handed to the task unchanged and never walked."""
    return cast(T, quote(value))


def _reason(e: BaseException) -> str:
    return str(e) if type(e).__module__.startswith("pipelines") else f"{type(e).__name__}: {e}"


def _index_batch(run: _Run, batch: list[SourceDocument], states: dict[str, str]) -> None:
    """parse → chunk → check → embed → check → intent → upsert → commit for a batch, each step
    one task run over the batch's documents still in it; a document that fails or is quarantined
    leaves the batch alone, its reason recorded at the end of the batch."""
    s, v = run.settings, run.version
    docs = {d.doc_id: d for d in batch}
    quality: dict[str, list[dict[str, Any]]] = {k: [] for k in docs}
    failed: dict[str, tuple[str, str]] = {}  # doc id -> (status, reason)

    def step(name: str, keys: Iterable[str], call: Callable[[Any], object]) -> dict[str, Any]:
        keys = list(keys)
        if not keys:
            return {}
        _crash_point(name)
        out: Outcomes[Any] = Outcomes()
        try:
            call(_as_is(out))
        except Exception as e:  # retries spent, or the task broke: whatever is unfinished fails
            for k in keys:
                if k not in out.ok:
                    out.errors.setdefault(k, e)
        for k, error in out.errors.items():
            failed[k] = ("failed", _reason(error))
        return {k: r for k, r in out.ok.items() if k not in out.errors}

    def check(stage: str, results: dict[str, QualityResult]) -> None:
        for k, result in results.items():
            quality[k].append({"stage": stage, **result.to_dict()})
            if not result.passed:
                failed[k] = ("quarantined", result.reason)

    def alive(items: dict[str, T]) -> dict[str, T]:
        return {k: item for k, item in items.items() if k not in failed}

    emb = run.embedder
    parsed = step("parse", docs, lambda out: parse(_as_is(docs), out))
    chunks = step("chunk", parsed, lambda out: chunk(_as_is(parsed), emb, _as_is(s), v, out))
    check(
        "chunks",
        step(
            "check_chunks",
            chunks,
            lambda out: check_chunks(_as_is(chunks), emb.max_seq_length, out),
        ),
    )
    chunks = alive(chunks)
    vectors = step(
        "embed",
        chunks,
        lambda out: embed(emb, _as_is(chunks), s.embedding.batch_size, out),
    )
    run.counts["chunks_embedded"] += sum(len(chunks[k]) for k in vectors)
    embedded = {k: (chunks[k], vectors[k]) for k in vectors}
    check(
        "vectors",
        step("check_vectors", embedded, lambda out: check_vectors(_as_is(embedded), emb.dim, out)),
    )
    ready = alive({k: chunks[k] for k in vectors})
    intended = step(
        "record_chunks",
        ready,
        lambda out: record_chunks(run.lineage, run.run_id, run.collection, _as_is(ready), v, out),
    )
    to_write = {k: embedded[k] for k in intended}
    written = step(
        "upsert",
        to_write,
        lambda out: upsert(run.store, run.collection, _as_is(to_write), v, out),
    )
    run.counts["points_upserted"] += sum(written.values())
    commits = {k: (docs[k], [c.chunk_id for c in chunks[k]], quality[k]) for k in written}
    committed = step(
        "record",
        commits,
        lambda out: record_indexed(
            run.lineage, run.run_id, run.collection, v, _as_is(commits), out
        ),
    )
    for k in committed:
        run.counts[states[k]] += 1
    _record_failures(run, {k: (docs[k], *failed[k], quality[k]) for k in docs if k in failed})


def _record_failures(
    run: _Run, failures: dict[str, tuple[SourceDocument, str, str, list[dict[str, Any]]]]
) -> None:
    if failures:
        record_failures(
            run.lineage,
            run.run_id,
            run.collection,
            run.version,
            _as_is(failures),
            _as_is(Outcomes()),
        )
        run.counts["failed"] += len(failures)


def _index_all(run: _Run, found: Discovery, states: dict[str, str]) -> None:
    _record_failures(run, {d.doc_id: (d, "failed", reason, []) for d, reason in found.unreadable})
    todo = [d for d in found.documents if states[d.doc_id] != "unchanged"]
    run.counts["unchanged"] += len(found.documents) - len(todo)
    size = run.settings.ingest.batch_documents
    _report("documents", 0, len(todo))
    for start in range(0, len(todo), size):
        batch = todo[start : start + size]
        _index_batch(run, batch, states)
        _report("documents", start + len(batch), len(todo))


def _collect_garbage(run: _Run) -> None:
    """Delete the points that no longer belong (old versions, pruned documents, crash leftovers)."""
    _crash_point("find_stale")
    stale = find_stale(run.lineage, run.collection)
    if stale:
        _crash_point("delete")
        delete(run.store, run.collection, stale)
        _crash_point("mark_deleted")
        run.counts["points_deleted"] += mark_deleted(run.lineage, run.collection, stale)


def _open(settings: Settings) -> tuple[VectorStore, Lineage]:
    from pipelines.lineage import Lineage
    from pipelines.vectorstore import create_store

    b = _bound.get()
    store = b[1] if b is not None else create_store(settings)
    try:
        return store, Lineage.open(settings)
    except BaseException:
        _close_store(store)
        raise


def _start(settings: Settings, store: VectorStore, lineage: Lineage, physical_for: Any) -> _Run:
    from pipelines.version import pipeline_version, version_inputs

    _crash_point("load_embedder")
    embedder = load_embedder(settings)
    version = pipeline_version(settings, embedder)
    physical = physical_for(embedder, version)
    run = _Run(settings, store, lineage, embedder, version, str(flow_run.id), physical)
    lineage.start_run(run.run_id, physical, version, version_inputs(settings, embedder))
    return run


@flow(name="ingest", validate_parameters=False)
def ingest(paths: list[str], collection: str = "default", prune: bool = False) -> dict[str, Any]:
    """Ingest files and folders into `collection`; with `prune`, delete documents now gone."""
    from pipelines.vectorstore import prepare_collection

    settings = _settings()
    _crash_point("discover")
    found = discover(paths)
    store, lineage = _open(settings)
    run: _Run | None = None
    try:
        run = _start(
            settings,
            store,
            lineage,
            lambda emb, version: prepare_collection(store, collection, emb.dim, version),
        )
        states = classify(lineage, run.collection, found.documents, run.version)
        _index_all(run, found, states)
        if prune:
            _crash_point("prune")
            gone = prune_documents(lineage, run.run_id, run.collection, list(paths), found.doc_ids)
            run.counts["deleted"] += len(gone)
        _collect_garbage(run)
        changed = bool(run.counts["points_upserted"] or run.counts["points_deleted"])
        sparse_index(store, run.collection, settings, changed)
        if changed:
            optimize(store, run.collection)
        _crash_point("finish")
        lineage.finish_run(run.run_id, "completed", run.summary())
        return run.summary()
    except BaseException:
        if run is not None:
            lineage.finish_run(run.run_id, "failed", run.summary())
        raise
    finally:
        lineage.close()
        _close_store(store)


@flow(name="reindex", validate_parameters=False)
def reindex(collection: str = "default") -> dict[str, Any]:
    """Blue/green: rebuild `collection` with the current pipeline version in a new physical
    collection, switch its alias atomically, then drop versions beyond `keep_versions`.

    Until the switch every search is answered by the old physical collection."""
    from pipelines.discover import discover_documents
    from pipelines.vectorstore import CollectionNotFound, physical_name

    settings = _settings()
    store, lineage = _open(settings)
    run: _Run | None = None
    try:
        old = store.resolve(collection)
        if old not in store.collections():
            raise CollectionNotFound(f"collection {collection!r} does not exist; ingest it first")

        def target(emb: Embedder, version: str) -> str:
            physical = physical_name(collection, version)
            if physical != old:
                store.ensure_collection(physical, emb.dim)
            return physical

        run = _start(settings, store, lineage, target)
        result: dict[str, Any] = {"collection": collection, "from": old, "to": run.collection}
        if run.collection != old:
            sources = [src for _, src in lineage.current_documents(old)]
            present = [s for s in sources if os.path.exists(s)]
            run.counts["deleted"] += len(sources) - len(present)
            found = discover_documents(present) if present else None
            if found is not None:
                states = classify(lineage, run.collection, found.documents, run.version)
                _index_all(run, found, states)
            _collect_garbage(run)
            sparse_index(store, run.collection, settings, True)
            optimize(store, run.collection)
            _crash_point("switch")
            switch_alias(store, collection, run.collection)
            result["dropped"] = _drop_old_versions(
                run, collection, keep=settings.vector_store.keep_versions
            )
        _crash_point("finish")
        lineage.finish_run(run.run_id, "completed", run.summary())
        return {**run.summary(), **result}
    except BaseException:
        if run is not None:
            lineage.finish_run(run.run_id, "failed", run.summary())
        raise
    finally:
        lineage.close()
        _close_store(store)


def _drop_old_versions(run: _Run, collection: str, keep: int) -> list[str]:
    """Physical versions of `collection` other than the live one, oldest beyond `keep` dropped."""
    prefix = f"{collection}__"
    old = [c for c in run.store.collections() if c.startswith(prefix) and c != run.collection]
    old.sort(key=lambda c: str(run.lineage.last_run_at(c) or ""), reverse=True)
    dropped = old[keep:]
    for physical in dropped:
        drop_collection(run.store, physical)
        run.lineage.drop_collection(physical)
    return dropped
