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
idempotent anyway (deterministic ids, upserts). Both live in flows/ingest/retries.py.

Order per changed document: lineage intent (chunks, points to be written) → upsert the new points
→ lineage commit (the document's current version moves); in a batch every document's intent
comes before any upsert and every upsert before any commit. Old points are deleted only at the
end of the run (`stale_points`), so a search never finds a changed document missing; whatever
step a process is killed at, the next run finds the leftovers the same way and, ids being
deterministic, ends in the state of an uninterrupted run.

Cancelling (`IngestInputs.stop`, set by the server's `POST /v1/rag/runs/{id}/cancel` and its
shutdown): the run checks it between batches and before each of a batch's steps up to its first
write (lineage intent), never between intent, upsert and commit, so every batch is either done
whole or not started. It then deletes the stale points of the documents it did commit, rebuilds
the BM25 index if it changed anything, records the run `cancelled` in lineage and raises
`RunCancelled`; the next run skips what was committed (docs/decisions/index-run-cancel.md).

A batch's parsed elements, chunks and settings go to the tasks wrapped in `quote`: Prefect
otherwise walks every argument, element by element, looking for upstream futures (there are none:
tasks are called, not submitted).

Inputs: the flows `ingest(paths, collection, prune)` and `reindex(collection)` take JSON-able
parameters only (deployments, the Prefect UI); what a run works with beyond them is an explicit
`IngestInputs` (settings, the store to use or None to open its own, a progress callback, the
crash hook of flows/ingest/crash.py) that the flow builds from the process settings, and that
`run_ingest`/`run_reindex`, the plain functions the flows call, receive. A caller with inputs of
its own (the server's index runner with its open store, the CLI with its progress bar) runs
`ingest_flow(inputs)`, the same flow over those inputs; `impetus bench ingest` calls
`run_ingest` with `tasks=False`: the same steps as plain calls, no Prefect.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from prefect import Flow, flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.utilities.annotations import quote

from flows.ingest.crash import CrashHook, crash_hook, no_crash
from flows.ingest.retries import TRANSIENT, Outcomes
from pipelines import tracing
from pipelines.diskspace import check_free, disk_full

if TYPE_CHECKING:
    from pipelines.discover import Discovery
    from pipelines.embed.base import Embedder
    from pipelines.lineage import Lineage
    from pipelines.quality import QualityResult
    from pipelines.records import Chunk, ParsedDocument, SourceDocument
    from pipelines.settings import Settings
    from pipelines.vectorstore import VectorStore

ProgressFn = Callable[[str, int, int], None]
StepFn = Callable[[str, float], None]

# A batch's steps before its first write: a cancel is honoured before any of them.
_BEFORE_WRITES = frozenset(
    {"parse", "chunk", "check_chunks", "embed", "check_vectors", "record_chunks"}
)


class RunCancelled(Exception):
    """The run stopped because it was asked to (its finished batches are kept, whole)."""


@dataclass
class IngestInputs:
    """What an ingest or reindex run works with besides its parameters, passed in, never found."""

    settings: Settings
    # An open store to write to (its owner, a server, closes it); None: the run opens its own.
    store: VectorStore | None = None
    # `progress(label, done, total)` as documents finish (the CLI's bar, a server's run record).
    progress: ProgressFn | None = None
    # Called with each step's name as the run reaches it (flows/ingest/crash.py).
    crash: CrashHook = no_crash
    # True: each step is a Prefect task run (call inside a flow run); False: a plain call.
    tasks: bool = True
    # `on_step(task name, seconds)` after each step (the ingest benchmark's step times).
    on_step: StepFn | None = None
    # True once the run is asked to stop (a cancel, a server shutting down).
    stop: Callable[[], bool] | None = None
    # Called with the summary of a run that was cancelled (what it did before it stopped).
    on_cancelled: Callable[[dict[str, Any]], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestInputs:
        """The inputs of a flow run started with parameters only (CLI, deployment, worker)."""
        return cls(settings, crash=crash_hook())

    def report(self, label: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(label, done, total)

    def check_stop(self, where: str) -> None:
        """Raise `RunCancelled` if the run was asked to stop."""
        if self.stop is not None and self.stop():
            raise RunCancelled(f"cancelled before {where}")


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
    return store.optimize(physical)


@task(name="drop-collection", cache_policy=NO_CACHE, **TRANSIENT)
def drop_collection(store: VectorStore, physical: str) -> None:
    """Drop an old physical collection after the switch."""
    store.drop_collection(physical)


T = TypeVar("T")


def _step(inputs: IngestInputs, task: Any, *args: Any) -> Any:
    """One step: a task run whose arguments Prefect hands over as they are (`quote`: never walked
    for upstream futures, there are none), or, with `tasks=False`, the task's function alone; in
    an `ingest.<task>` span (pipelines/tracing.py: nothing unless tracing is on)."""
    t = time.perf_counter()
    try:
        with tracing.span(f"ingest.{task.name}"):
            if inputs.tasks:
                return task(*(quote(a) for a in args))
            return task.fn(*args)
    finally:
        if inputs.on_step is not None:
            inputs.on_step(task.name, time.perf_counter() - t)


# --- flows ------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What one run works with and what it counts."""

    inputs: IngestInputs
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


def _reason(e: BaseException) -> str:
    return str(e) if type(e).__module__.startswith("pipelines") else f"{type(e).__name__}: {e}"


def _index_batch(run: _Run, batch: list[SourceDocument], states: dict[str, str]) -> None:
    """parse → chunk → check → embed → check → intent → upsert → commit for a batch, each step
    one task run over the batch's documents still in it; a document that fails or is quarantined
    leaves the batch alone, its reason recorded at the end of the batch."""
    s, v, inputs = run.settings, run.version, run.inputs
    docs = {d.doc_id: d for d in batch}
    quality: dict[str, list[dict[str, Any]]] = {k: [] for k in docs}
    failed: dict[str, tuple[str, str]] = {}  # doc id -> (status, reason)

    def step(name: str, keys: Iterable[str], call: Callable[[Any], object]) -> dict[str, Any]:
        keys = list(keys)
        if not keys:
            return {}
        inputs.crash(name)
        if name in _BEFORE_WRITES:
            inputs.check_stop(name)
        out: Outcomes[Any] = Outcomes()
        try:
            call(out)
        except Exception as e:  # retries spent, or the task broke: whatever is unfinished fails
            for k in keys:
                if k not in out.ok:
                    out.errors.setdefault(k, e)
        for error in out.errors.values():  # a full disk fails the run, not one document
            if full := disk_full(error, s.data_dir):
                raise full from None
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
    parsed = step("parse", docs, lambda out: _step(inputs, parse, docs, out))
    chunks = step("chunk", parsed, lambda out: _step(inputs, chunk, parsed, emb, s, v, out))
    check(
        "chunks",
        step(
            "check_chunks",
            chunks,
            lambda out: _step(inputs, check_chunks, chunks, emb.max_seq_length, out),
        ),
    )
    chunks = alive(chunks)
    vectors = step(
        "embed",
        chunks,
        lambda out: _step(inputs, embed, emb, chunks, s.embedding.batch_size, out),
    )
    run.counts["chunks_embedded"] += sum(len(chunks[k]) for k in vectors)
    embedded = {k: (chunks[k], vectors[k]) for k in vectors}
    check(
        "vectors",
        step(
            "check_vectors",
            embedded,
            lambda out: _step(inputs, check_vectors, embedded, emb.dim, out),
        ),
    )
    ready = alive({k: chunks[k] for k in vectors})
    intended = step(
        "record_chunks",
        ready,
        lambda out: _step(
            inputs, record_chunks, run.lineage, run.run_id, run.collection, ready, v, out
        ),
    )
    to_write = {k: embedded[k] for k in intended}
    written = step(
        "upsert",
        to_write,
        lambda out: _step(inputs, upsert, run.store, run.collection, to_write, v, out),
    )
    run.counts["points_upserted"] += sum(written.values())
    commits = {k: (docs[k], [c.chunk_id for c in chunks[k]], quality[k]) for k in written}
    committed = step(
        "record",
        commits,
        lambda out: _step(
            inputs, record_indexed, run.lineage, run.run_id, run.collection, v, commits, out
        ),
    )
    for k in committed:
        run.counts[states[k]] += 1
    _record_failures(run, {k: (docs[k], *failed[k], quality[k]) for k in docs if k in failed})


def _record_failures(
    run: _Run, failures: dict[str, tuple[SourceDocument, str, str, list[dict[str, Any]]]]
) -> None:
    if failures:
        _step(
            run.inputs,
            record_failures,
            run.lineage,
            run.run_id,
            run.collection,
            run.version,
            failures,
            Outcomes(),
        )
        run.counts["failed"] += len(failures)


def _index_all(run: _Run, found: Discovery, states: dict[str, str]) -> None:
    _record_failures(run, {d.doc_id: (d, "failed", reason, []) for d, reason in found.unreadable})
    todo = [d for d in found.documents if states[d.doc_id] != "unchanged"]
    run.counts["unchanged"] += len(found.documents) - len(todo)
    size = run.settings.ingest.batch_documents
    run.inputs.report("documents", 0, len(todo))
    for start in range(0, len(todo), size):
        run.inputs.check_stop(f"batch {start // size + 1}")
        batch = todo[start : start + size]
        # Before any of the batch is written: a full disk is a clear error, not a SIGBUS.
        check_free(run.settings.data_dir, run.settings.ingest.min_free_bytes)
        with tracing.span("ingest.batch", {"impetus.documents": len(batch)}):
            _index_batch(run, batch, states)
        run.inputs.report("documents", start + len(batch), len(todo))


def _collect_garbage(run: _Run) -> None:
    """Delete the points that no longer belong (old versions, pruned documents, crash leftovers)."""
    inputs = run.inputs
    inputs.crash("find_stale")
    stale = _step(inputs, find_stale, run.lineage, run.collection)
    if stale:
        inputs.crash("delete")
        _step(inputs, delete, run.store, run.collection, stale)
        inputs.crash("mark_deleted")
        run.counts["points_deleted"] += _step(
            inputs, mark_deleted, run.lineage, run.collection, stale
        )


def _open(inputs: IngestInputs) -> tuple[VectorStore, Lineage]:
    from pipelines.lineage import Lineage
    from pipelines.vectorstore import create_store

    store = inputs.store if inputs.store is not None else create_store(inputs.settings)
    try:
        return store, Lineage.open(inputs.settings)
    except BaseException:
        _close_store(inputs, store)
        raise


def _close_store(inputs: IngestInputs, store: VectorStore) -> None:
    if inputs.store is not store:  # a store passed in belongs to its owner
        try:
            store.close()
        except Exception as e:  # flushing onto a full disk: say so (the WAL keeps the writes)
            if full := disk_full(e, inputs.settings.data_dir):
                raise full from None
            raise


def _start(
    inputs: IngestInputs, store: VectorStore, lineage: Lineage, run_id: str, physical_for: Any
) -> _Run:
    from pipelines.version import pipeline_version, version_inputs

    settings = inputs.settings
    inputs.crash("load_embedder")
    embedder = _step(inputs, load_embedder, settings)
    version = pipeline_version(settings, embedder)
    physical = physical_for(embedder, version)
    run = _Run(inputs, settings, store, lineage, embedder, version, run_id, physical)
    lineage.start_run(run.run_id, physical, version, version_inputs(settings, embedder))
    return run


def _run_span(kind: str, inputs: IngestInputs, run_id: str, collection: str) -> Any:
    """The root span of a run (a trace of its own), when settings `telemetry` ask for traces."""
    from serving.tracing import ensure_installed

    ensure_installed(inputs.settings)
    return tracing.span(kind, {"impetus.run_id": run_id, "impetus.collection": collection})


def _failed(run: _Run | None, error: BaseException) -> None:
    """Record the run as failed; a full disk may refuse even that (the next start marks it)."""
    if run is None:
        return
    try:
        run.lineage.finish_run(run.run_id, "failed", run.summary())
    except Exception as e:
        if not disk_full(e, run.settings.data_dir):
            raise


def run_ingest(
    inputs: IngestInputs, paths: Sequence[str], collection: str, prune: bool, *, run_id: str
) -> dict[str, Any]:
    """The ingest pipeline: discover, classify, index what changed in batches, prune, collect
    garbage, rebuild the BM25 index; recorded in lineage as run `run_id`. Returns the summary."""
    with _run_span("ingest", inputs, run_id, collection):
        return _ingest(inputs, paths, collection, prune, run_id=run_id)


def _ingest(
    inputs: IngestInputs, paths: Sequence[str], collection: str, prune: bool, *, run_id: str
) -> dict[str, Any]:
    from pipelines.vectorstore import prepare_collection

    settings = inputs.settings
    inputs.crash("discover")
    found = _step(inputs, discover, list(paths))
    store, lineage = _open(inputs)
    run: _Run | None = None
    try:
        run = _start(
            inputs,
            store,
            lineage,
            run_id,
            lambda emb, version: prepare_collection(store, collection, emb.dim, version),
        )
        states = _step(inputs, classify, lineage, run.collection, found.documents, run.version)
        _index_all(run, found, states)
        inputs.check_stop("prune")
        if prune:
            inputs.crash("prune")
            gone = _step(
                inputs,
                prune_documents,
                lineage,
                run.run_id,
                run.collection,
                list(paths),
                found.doc_ids,
            )
            run.counts["deleted"] += len(gone)
        _collect_garbage(run)
        changed = bool(run.counts["points_upserted"] or run.counts["points_deleted"])
        _step(inputs, sparse_index, store, run.collection, settings, changed)
        if changed:
            _step(inputs, optimize, store, run.collection)
        inputs.crash("finish")
        lineage.finish_run(run.run_id, "completed", run.summary())
        return run.summary()
    except RunCancelled:
        if run is not None:
            _wind_down(run)
        raise
    except BaseException as e:
        _failed(run, e)
        if full := disk_full(e, settings.data_dir):
            raise full from None
        raise
    finally:
        lineage.close()
        _close_store(inputs, store)


def _wind_down(run: _Run) -> None:
    """A cancelled run's last steps: the committed documents' old points go, the BM25 index
    follows what changed, and lineage records the run `cancelled` with what it did."""
    try:
        _collect_garbage(run)
        changed = bool(run.counts["points_upserted"] or run.counts["points_deleted"])
        if changed:
            _step(run.inputs, sparse_index, run.store, run.collection, run.settings, True)
    except BaseException:
        run.lineage.finish_run(run.run_id, "failed", run.summary())
        raise
    summary = {**run.summary(), "cancelled": True}
    run.lineage.finish_run(run.run_id, "cancelled", summary)
    if run.inputs.on_cancelled is not None:
        run.inputs.on_cancelled(summary)


def run_reindex(inputs: IngestInputs, collection: str, *, run_id: str) -> dict[str, Any]:
    """Blue/green: rebuild `collection` with the current pipeline version in a new physical
    collection, switch its alias atomically, then drop versions beyond `keep_versions`.

    Until the switch every search is answered by the old physical collection."""
    with _run_span("reindex", inputs, run_id, collection):
        return _reindex(inputs, collection, run_id=run_id)


def _reindex(inputs: IngestInputs, collection: str, *, run_id: str) -> dict[str, Any]:
    from pipelines.discover import discover_documents
    from pipelines.vectorstore import CollectionNotFound, physical_name

    settings = inputs.settings
    store, lineage = _open(inputs)
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

        run = _start(inputs, store, lineage, run_id, target)
        result: dict[str, Any] = {"collection": collection, "from": old, "to": run.collection}
        if run.collection != old:
            sources = [src for _, src in lineage.current_documents(old)]
            present = [s for s in sources if os.path.exists(s)]
            run.counts["deleted"] += len(sources) - len(present)
            found = discover_documents(present) if present else None
            if found is not None:
                states = _step(
                    inputs, classify, lineage, run.collection, found.documents, run.version
                )
                _index_all(run, found, states)
            _collect_garbage(run)
            _step(inputs, sparse_index, store, run.collection, settings, True)
            _step(inputs, optimize, store, run.collection)
            inputs.crash("switch")
            _step(inputs, switch_alias, store, collection, run.collection)
            result["dropped"] = _drop_old_versions(
                run, collection, keep=settings.vector_store.keep_versions
            )
        inputs.crash("finish")
        lineage.finish_run(run.run_id, "completed", run.summary())
        return {**run.summary(), **result}
    except BaseException as e:
        _failed(run, e)
        if full := disk_full(e, settings.data_dir):
            raise full from None
        raise
    finally:
        lineage.close()
        _close_store(inputs, store)


def _process_inputs() -> IngestInputs:
    from pipelines.settings import get_settings

    return IngestInputs.from_settings(get_settings())


@flow(name="ingest", validate_parameters=False)
def ingest(paths: list[str], collection: str = "default", prune: bool = False) -> dict[str, Any]:
    """Ingest files and folders into `collection`; with `prune`, delete documents now gone."""
    return run_ingest(_process_inputs(), paths, collection, prune, run_id=str(flow_run.id))


@flow(name="ingest", validate_parameters=False)
def ingest_in_roots(
    paths: list[str], collection: str = "default", prune: bool = False
) -> dict[str, Any]:
    """`ingest` for deployments (prefect.yaml's scheduled runs, the Prefect UI): only paths
    inside `rag.index_roots` (pipelines/roots.py), as `POST /v1/rag/index` allows."""
    from pipelines.roots import IndexRoots

    inputs = _process_inputs()
    allowed = IndexRoots.from_settings(inputs.settings).allowed_all(paths)
    return run_ingest(inputs, allowed, collection, prune, run_id=str(flow_run.id))


@flow(name="reindex", validate_parameters=False)
def reindex(collection: str = "default") -> dict[str, Any]:
    """Blue/green: rebuild `collection` with the current pipeline version, then switch to it."""
    return run_reindex(_process_inputs(), collection, run_id=str(flow_run.id))


def ingest_flow(inputs: IngestInputs) -> Flow[..., Any]:
    """The `ingest` flow (same name, parameters and run id = lineage run id) over `inputs`; a
    run cancelled through `inputs.stop` ends in Prefect's Cancelled state, not Failed."""

    def run(paths: list[str], collection: str = "default", prune: bool = False) -> Any:
        try:
            return run_ingest(inputs, paths, collection, prune, run_id=str(flow_run.id))
        except RunCancelled as e:
            from prefect.states import Cancelled

            return Cancelled(message=str(e))

    return Flow(run, name="ingest", validate_parameters=False, description=ingest.description)


def reindex_flow(inputs: IngestInputs) -> Flow[..., dict[str, Any]]:
    """The `reindex` flow (same name and parameters) over `inputs`."""

    def run(collection: str = "default") -> dict[str, Any]:
        return run_reindex(inputs, collection, run_id=str(flow_run.id))

    return Flow(run, name="reindex", validate_parameters=False, description=reindex.description)


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
