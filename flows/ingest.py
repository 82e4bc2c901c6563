"""Ingestion as Prefect flows: discover → parse → chunk → check → embed → check → upsert → record,
then prune and delete what no longer belongs; `reindex` rebuilds a collection blue/green.

    impetus ingest data/samples --collection default --prune     # the CLI (flows/commands/ingest.py)
    python -c "from flows.ingest import ingest; ingest(['data/samples'])"   # or call the flow

Each task is one call into `pipelines/`; the flow body only orchestrates. What makes re-runs cheap
and crashes harmless is lineage, not Prefect's result cache: a document whose content hash and
pipeline version are already indexed is skipped before parsing (no parse, no embed, no upsert),
which survives a new PREFECT_HOME, a server switch or a crash; Prefect's cache would have to
persist parsed documents and vectors a second time. Tasks therefore run with `NO_CACHE` (their
inputs are open stores and models), and each task's version is the pipeline version.

Order per changed document: lineage intent (chunks, points to be written) → upsert the new points
→ lineage commit (the document's current version moves). Old points are deleted only at the end
of the run (`stale_points`), so a search never finds a changed document missing; whatever step a
process is killed at, the next run finds the leftovers the same way and, ids being deterministic,
ends in the state of an uninterrupted run.

A document's parsed elements, chunks and settings go to the tasks wrapped in `quote`: Prefect
otherwise walks every argument, element by element, looking for upstream futures (there are none:
tasks are called, not submitted), and that walk was most of the flow's overhead per task run
(`impetus bench ingest` measures it).

Test hook: `IMPETUS_TEST_CRASH_AT=<step>[:N]` SIGKILLs the process the N-th time (default first)
the flow reaches <step>, one of: discover, load_embedder, parse, chunk, check_chunks, embed,
check_vectors, record_chunks, upsert, record, prune, find_stale, delete, mark_deleted, switch,
finish. Tests use it to prove crash safety; it does nothing unless set.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

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


@task(name="parse", cache_policy=NO_CACHE, **TRANSIENT)
def parse(doc: SourceDocument) -> ParsedDocument:
    """Partition one file into elements."""
    from pipelines.parse import parse_document

    return parse_document(doc)


@task(name="chunk", cache_policy=NO_CACHE)
def chunk(
    parsed: ParsedDocument, embedder: Embedder, settings: Settings, version: str
) -> list[Chunk]:
    """Split one document into token-bounded chunks."""
    from pipelines.chunk import chunk_document

    return chunk_document(parsed, embedder, settings, version)


@task(name="check-chunks", cache_policy=NO_CACHE)
def check_chunks(chunks: list[Chunk], max_tokens: int) -> QualityResult:
    """Great Expectations over one document's chunks."""
    from pipelines import quality

    return quality.check_chunks(chunks, max_tokens)


@task(name="embed", cache_policy=NO_CACHE)
def embed(embedder: Embedder, chunks: list[Chunk], batch_size: int) -> np.ndarray:
    """Vectors for one document's chunks."""
    return embedder.encode([c.text for c in chunks], batch_size=batch_size).vectors


@task(name="check-vectors", cache_policy=NO_CACHE)
def check_vectors(chunks: list[Chunk], vectors: np.ndarray, dim: int) -> QualityResult:
    """Great Expectations over one document's vectors."""
    from pipelines import quality

    return quality.check_vectors(chunks, vectors, dim)


@task(name="record-chunks", cache_policy=NO_CACHE, **TRANSIENT)
def record_chunks(
    lineage: Lineage, run_id: str, collection: str, chunks: list[Chunk], version: str
) -> None:
    """Lineage intent: the chunks and the points about to be written."""
    lineage.record_chunks(run_id, collection, chunks, version)


@task(name="upsert", cache_policy=NO_CACHE, **TRANSIENT)
def upsert(
    store: VectorStore, collection: str, chunks: list[Chunk], vectors: np.ndarray, version: str
) -> int:
    """Write one document's points (ids = chunk ids, so a retry overwrites)."""
    from pipelines.vectorstore import upsert_chunks

    return upsert_chunks(store, collection, chunks, vectors, version)


@task(name="record-indexed", cache_policy=NO_CACHE, **TRANSIENT)
def record_indexed(
    lineage: Lineage,
    run_id: str,
    collection: str,
    doc: SourceDocument,
    version: str,
    point_ids: list[str],
    quality: list[dict[str, Any]],
) -> None:
    """Lineage commit: this document version is now the current one."""
    lineage.record_indexed(run_id, collection, doc, version, point_ids, quality)


@task(name="record-failure", cache_policy=NO_CACHE, **TRANSIENT)
def record_failure(
    lineage: Lineage,
    run_id: str,
    collection: str,
    doc: SourceDocument,
    version: str,
    status: str,
    reason: str,
    quality: list[dict[str, Any]],
) -> None:
    """Lineage: this document version failed or was quarantined, and why."""
    lineage.record_failure(run_id, collection, doc, version, status, reason, quality)  # type: ignore[arg-type]


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


def _index_document(run: _Run, doc: SourceDocument, state: str) -> None:
    """parse → chunk → check → embed → check → intent → upsert → commit, for one document."""
    s, v = run.settings, run.version
    quality: list[dict[str, Any]] = []

    def fail(status: str, reason: str) -> None:
        record_failure(run.lineage, run.run_id, run.collection, doc, v, status, reason, quality)
        run.counts["failed"] += 1

    try:
        _crash_point("parse")
        parsed = parse(doc)
        _crash_point("chunk")
        chunks = chunk(_as_is(parsed), run.embedder, _as_is(s), v)
        _crash_point("check_chunks")
        result = check_chunks(_as_is(chunks), run.embedder.max_seq_length)
        quality.append({"stage": "chunks", **result.to_dict()})
        if not result.passed:
            return fail("quarantined", result.reason)
        _crash_point("embed")
        vectors = embed(run.embedder, _as_is(chunks), s.embedding.batch_size)
        run.counts["chunks_embedded"] += len(chunks)
        _crash_point("check_vectors")
        result = check_vectors(_as_is(chunks), vectors, run.embedder.dim)
        quality.append({"stage": "vectors", **result.to_dict()})
        if not result.passed:
            return fail("quarantined", result.reason)
        _crash_point("record_chunks")
        record_chunks(run.lineage, run.run_id, run.collection, _as_is(chunks), v)
        _crash_point("upsert")
        run.counts["points_upserted"] += upsert(
            run.store, run.collection, _as_is(chunks), vectors, v
        )
        _crash_point("record")
        ids = [c.chunk_id for c in chunks]
        record_indexed(run.lineage, run.run_id, run.collection, doc, v, _as_is(ids), quality)
        run.counts[state] += 1
    except Exception as e:  # one document fails alone; its reason is recorded, the run goes on
        reason = (
            str(e) if type(e).__module__.startswith("pipelines") else f"{type(e).__name__}: {e}"
        )
        fail("failed", reason)


def _index_all(run: _Run, found: Discovery, states: dict[str, str]) -> None:
    for doc, reason in found.unreadable:
        record_failure(
            run.lineage, run.run_id, run.collection, doc, run.version, "failed", reason, []
        )
        run.counts["failed"] += 1
    todo = [d for d in found.documents if states[d.doc_id] != "unchanged"]
    run.counts["unchanged"] += len(found.documents) - len(todo)
    _report("documents", 0, len(todo))
    for done, doc in enumerate(todo, 1):
        _index_document(run, doc, states[doc.doc_id])
        _report("documents", done, len(todo))


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
