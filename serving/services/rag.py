"""The server's side of RAG: it owns the embedded store, searches it, and runs ingest flows in itself.

One writer per embedded store (DESIGN.md): the serving process opens the store when it starts and
keeps it, so `POST /v1/rag/index` runs the ingest flow inside this process against that open store
(`flows.ingest.flow.bound`), one run at a time, and `impetus ingest` hands its work here when it finds
the store locked. Each index request becomes a Prefect flow run created up front, so its id (also
the lineage run id) is known when the request returns; the run then executes on this service's
worker thread and `GET /v1/rag/runs/{id}` reads its progress. Grounded chat lives here too:
retrieval on the last user message, the context assembled under the LLM's token budget with its
own tokenizer (the engine's `count_tokens`), and the citations the answer carries.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import anyio
import structlog

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    from pipelines.prompt import Context
    from pipelines.retrieve import Retriever, SearchHit
    from pipelines.settings import Settings
    from pipelines.vectorstore import VectorStore
    from serving.http.deps import ServingContext

log = structlog.get_logger(__name__)
RAG_MODES = {True: "on", False: "off", "auto": "auto", "on": "on", "off": "off"}


class RagIndexError(ImpetusError):
    """An index run could not be started or the store is not this server's (500 rag_index_error)."""


class RunNotFoundError(ImpetusError):
    """No index run with that id (404)."""


@dataclass
class IndexJob:
    """One `POST /v1/rag/index`: a flow run executing in this process."""

    id: str
    collection: str
    paths: list[str]
    prune: bool
    status: str = "pending"  # pending | running | completed | failed
    progress: dict[str, dict[str, int]] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

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


@dataclass
class Grounding:
    """What grounded chat adds to a request: the new messages and the citations."""

    messages: list[dict[str, Any]]
    citations: list[dict[str, Any]]
    context: Context


class RagService:
    """Store, retriever and index runs of one app (built by `create_app`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: VectorStore | None = None
        self._retriever: Retriever | None = None
        self._open_lock = threading.Lock()
        self._jobs: dict[str, IndexJob] = {}
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-index")
        # Flow runs see the Prefect settings in effect where the app was built (a test harness's
        # temporary API, say), not only the process defaults: threads start with empty contexts.
        self._context = contextvars.copy_context()

    # -- the store ---------------------------------------------------------------------------------

    def open(self) -> bool:
        """Open (and so own) the store; False, logged, when another process holds it."""
        from pipelines.vectorstore import StoreLockedError

        try:
            self.retriever()
            return True
        except StoreLockedError as e:
            log.warning("rag.store_locked", error=str(e))
            return False

    def retriever(self) -> Retriever:
        """The retriever over the store, opening the store on first use."""
        with self._open_lock:
            if self._retriever is None:
                from pipelines.retrieve import Retriever
                from pipelines.vectorstore import create_store

                self._store = create_store(self.settings)
                self._retriever = Retriever(
                    self._store, self.settings.rag, data_dir=self.settings.data_dir
                )
            return self._retriever

    def close(self) -> None:
        self._runner.shutdown(wait=True, cancel_futures=True)
        with self._open_lock:
            if self._store is not None:
                self._store.close()
            self._store = self._retriever = None

    # -- search ------------------------------------------------------------------------------------

    async def search(
        self,
        ctx: ServingContext,
        query: str,
        *,
        collection: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        filter: dict[str, Any] | None = None,
        min_dense_score: float | None = None,
    ) -> list[SearchHit]:
        """Embed the query with the serving embedder pool, then search in a worker thread.

        With `min_dense_score`, return nothing unless the best dense match reaches it."""
        s = self.settings.rag
        mode = mode or s.search_mode
        retriever = await anyio.to_thread.run_sync(self.retriever)
        vector = None
        if mode != "sparse" or min_dense_score is not None:
            embedder = await ctx.embedders.get(self.settings.models.embedding)
            vectors, _ = await ctx.embedders.encode(embedder, [query])
            vector = vectors[0]

        def run() -> list[SearchHit]:
            name = collection or s.collection
            if min_dense_score is not None:
                best = retriever.dense(name, vector, 1)  # type: ignore[arg-type]
                if not best or best[0].score < min_dense_score:
                    return []
            return retriever.search(
                query, collection=name, k=k, mode=mode, filter=filter, vector=vector
            )

        return await anyio.to_thread.run_sync(run)

    async def ground(
        self, ctx: ServingContext, model: str, messages: list[dict[str, Any]], extra: dict[str, Any]
    ) -> Grounding | None:
        """Grounded messages and citations for a chat request whose `rag_mode` asks for them."""
        from pipelines.prompt import assemble, grounded_messages, last_user_message
        from pipelines.vectorstore import CollectionNotFound
        from serving.engine.base import GenerationRequest, InvalidRequestError

        raw = extra.get("rag_mode")
        mode = RAG_MODES.get(raw) if isinstance(raw, bool | str) else None
        if mode is None:
            raise InvalidRequestError('rag_mode must be true, false or "auto"', param="rag_mode")
        if mode == "off":
            return None
        top_k = extra.get("rag_top_k")
        if top_k is not None and (
            not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100
        ):
            raise InvalidRequestError(
                "rag_top_k must be an integer from 1 to 100", param="rag_top_k"
            )
        query = last_user_message(messages)
        if query is None:
            if mode == "auto":
                return None
            raise InvalidRequestError("rag_mode needs a user message with text", param="messages")
        try:
            hits = await self.search(
                ctx,
                query,
                collection=extra.get("rag_collection"),
                k=top_k,
                mode=extra.get("rag_search_mode"),
                min_dense_score=self.settings.rag.auto_min_score if mode == "auto" else None,
            )
        except CollectionNotFound:
            if mode == "auto":
                return None
            raise
        if not hits:
            return None
        budget = self.settings.rag.context_tokens
        async with ctx.manager.use(model) as engine:

            def count(text: str) -> int:
                return int(engine.count_tokens(GenerationRequest("rag-count", prompt=text)))

            context = await anyio.to_thread.run_sync(
                lambda: assemble(hits, budget=budget, count_tokens=count)
            )
        if not context.sources:
            return None
        return Grounding(
            grounded_messages(messages, context),
            context.citations(self.settings.rag.snippet_chars),
            context,
        )

    # -- index runs --------------------------------------------------------------------------------

    async def start_index(self, paths: list[str], collection: str, prune: bool) -> IndexJob:
        """Create the flow run (its id is returned) and queue it on the worker thread."""
        retriever = await anyio.to_thread.run_sync(self._owned_retriever)
        store = retriever.store
        flow_run = await anyio.to_thread.run_sync(
            self._context.copy().run, self._create_flow_run, paths, collection, prune
        )
        job = IndexJob(str(flow_run.id), collection, paths, prune)
        self._jobs[job.id] = job
        self._runner.submit(self._context.copy().run, self._execute, job, flow_run, store)
        return job

    def _owned_retriever(self) -> Retriever:
        from pipelines.vectorstore import StoreLockedError

        try:
            return self.retriever()
        except StoreLockedError as e:
            raise RagIndexError(
                f"this server does not own the vector store: {e}. Stop the other process, then "
                "retry"
            ) from None

    def _create_flow_run(self, paths: list[str], collection: str, prune: bool) -> Any:
        _prefect_env(self.settings)
        from prefect.client.orchestration import get_client

        from flows.ingest import flow as flows

        params = {"paths": paths, "collection": collection, "prune": prune}
        try:
            with get_client(sync_client=True) as client:
                return client.create_flow_run(flows.ingest, parameters=params)
        except Exception as e:
            raise RagIndexError(f"could not create the ingest flow run in Prefect: {e}") from e

    def _execute(self, job: IndexJob, flow_run: Any, store: VectorStore) -> None:
        from prefect.flow_engine import run_flow

        from flows.ingest import flow as flows

        def progress(label: str, done: int, total: int) -> None:
            job.progress[label] = {"done": done, "total": total}

        job.status, job.started_at = "running", time.time()
        flows.on_progress(progress)
        try:
            with flows.bound(self.settings, store):
                params = {"paths": job.paths, "collection": job.collection, "prune": job.prune}
                summary = run_flow(flows.ingest, flow_run=flow_run, parameters=params)
            job.summary = cast(dict[str, Any], summary)
            job.status = "completed"
        except BaseException as e:  # the flow run records its failure; the job says why
            job.status, job.error = "failed", str(e) or type(e).__name__
            log.error("rag.index_failed", run_id=job.id, error=job.error)
        finally:
            flows.on_progress(None)
            job.finished_at = time.time()

    def run(self, run_id: str) -> dict[str, Any]:
        """An index run by id: this server's job, else what lineage recorded of it."""
        job = self._jobs.get(run_id)
        if job is not None:
            return job.to_dict()
        for r in self._lineage_runs(run_id=run_id):
            return {"id": run_id, "object": "rag.index_run", "flow_run_id": run_id, **r}
        raise RunNotFoundError(f"no index run {run_id!r}; POST /v1/rag/index starts one")

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Collections (alias → physical, points, pipeline version), BM25 indexes, last runs."""
        from pipelines.vectorstore import StoreLockedError, store_path

        vs = self.settings.vector_store
        out: dict[str, Any] = {
            "object": "rag.status",
            "store": {
                "kind": vs.kind,
                "url": vs.url,
                "path": None if vs.url else str(store_path(self.settings)),
                "owned": False,
            },
            "defaults": {
                "collection": self.settings.rag.collection,
                "search_mode": self.settings.rag.search_mode,
                "top_k": self.settings.rag.top_k,
            },
            "collections": [],
            "runs": [],
        }
        try:
            retriever = self.retriever()
        except StoreLockedError as e:
            out["store"]["error"] = str(e)
            return out
        out["store"]["owned"] = True
        store = retriever.store
        aliases = store.aliases()
        targets = set(aliases.values())
        names = [(a, p) for a, p in sorted(aliases.items())]
        names += [(p, p) for p in store.collections() if p not in targets]
        versions = self._pipeline_versions()
        for name, physical in names:
            info = store.collection_info(physical)
            if info is None:
                continue
            out["collections"].append(
                {
                    "name": name,
                    "physical": physical,
                    "points": info.points,
                    "dim": info.dim,
                    "distance": info.distance,
                    "pipeline_version": versions.get(physical),
                    "versions": sorted(c for c in store.collections() if c.startswith(f"{name}__")),
                }
            )
        jobs = sorted(self._jobs.values(), key=lambda j: j.created_at, reverse=True)
        active = [j.to_dict() for j in jobs if j.status in ("pending", "running")]
        out["runs"] = active + self._lineage_runs(limit=10)
        return out

    def _lineage(self) -> Any:
        from pipelines.lineage import Lineage

        if not (self.settings.data_dir / "lineage.duckdb").is_file():
            return None
        try:
            return Lineage.open(self.settings)
        except Exception as e:  # held by another process: status says less, not fails
            log.warning("rag.lineage_unavailable", error=str(e))
            return None

    def _pipeline_versions(self) -> dict[str, str]:
        lin = self._lineage()
        if lin is None:
            return {}
        with lin:
            rows = lin.db.execute(
                "SELECT collection, arg_max(pipeline_version, started_at) FROM runs "
                "GROUP BY collection"
            ).fetchall()
        return {c: v for c, v in rows}

    def _lineage_runs(self, *, run_id: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        import json

        lin = self._lineage()
        if lin is None:
            return []
        sql = (
            "SELECT run_id, collection, status, pipeline_version, started_at, finished_at, counts "
            "FROM runs"
        )
        args: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args.append(run_id)
        sql += " ORDER BY started_at DESC LIMIT ?"
        args.append(limit)
        with lin:
            rows = lin.db.execute(sql, args).fetchall()
        out = []
        for rid, coll, status, version, started, finished, counts in rows:
            out.append(
                {
                    "run_id": rid,
                    "collection": coll,
                    "status": status,
                    "pipeline_version": version,
                    "started_at": str(started) if started else None,
                    "finished_at": str(finished) if finished else None,
                    "summary": json.loads(counts) if isinstance(counts, str) else counts,
                }
            )
        return out


def _prefect_env(settings: Settings) -> None:
    """Prefect's home under data_dir, as the CLI sets it (before Prefect is first imported)."""
    from flows.commands.ingest import prefect_env

    prefect_env(settings)


async def wait_closed(service: RagService) -> None:
    """Close the service without blocking the event loop (a running index finishes first)."""
    await asyncio.get_running_loop().run_in_executor(None, service.close)
