"""The server's side of RAG: it owns the embedded store, searches it, and starts index runs.

One writer per embedded store (DESIGN.md): the serving process opens the store when it starts and
keeps it, so `POST /v1/rag/index` has its `IndexRunner` (serving/services/indexing.py, implemented
in flows/) run the ingest flow inside this process against that open store, and `impetus ingest`
hands its work here when it finds the store locked. Grounded chat lives here too: retrieval on the
last user message, the context assembled under the LLM's token budget with its own tokenizer (the
engine's `count_tokens`, through the `ModelManager`), and the citations the answer carries.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from pipelines import tracing
from pipelines.errors import ImpetusError
from pipelines.roots import IndexRoots
from serving.services.indexing import IndexRun, IndexRunner, RagIndexError

if TYPE_CHECKING:
    from pipelines.lineage import Lineage
    from pipelines.prompt import Context
    from pipelines.retrieve import Retriever, SearchHit
    from pipelines.settings import Settings
    from pipelines.uploads import UploadStore
    from pipelines.vectorstore import VectorStore
    from serving.engine.manager import ModelManager
    from serving.services.embedders import EmbedderPool

__all__ = [
    "Grounding",
    "IndexRun",
    "RagIndexError",
    "RagService",
    "RunNotCancellable",
    "RunNotFoundError",
]

log = structlog.get_logger(__name__)
RAG_MODES = {True: "on", False: "off", "auto": "auto", "on": "on", "off": "off"}


class RunNotFoundError(ImpetusError):
    """No index run with that id (404)."""


class RunNotCancellable(ImpetusError):
    """The run has ended already, or is not this server's to cancel (409)."""


@dataclass
class Grounding:
    """What grounded chat adds to a request: the new messages and the citations."""

    messages: list[dict[str, Any]]
    citations: list[dict[str, Any]]
    context: Context


class RagService:
    """Store, retriever and index runs of one app (built by `create_app`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        embedders: EmbedderPool,
        manager: ModelManager,
        runner: IndexRunner | None = None,
        open_store: Callable[[Settings], VectorStore] | None = None,
        observe_search: Callable[[float], None] | None = None,
    ) -> None:
        """`open_store(settings)` opens the vector store on first use (default: `create_store`);
        without a `runner`, `POST /v1/rag/index` answers that this server runs no index flows.
        `observe_search(seconds)` is told how long each search took (the app's metrics)."""
        self._observe_search = observe_search
        self.settings = settings
        self.embedders = embedders
        self.manager = manager
        self.runner = runner
        self._open_store = open_store
        self._store: VectorStore | None = None
        self._retriever: Retriever | None = None
        self._open_lock = threading.Lock()
        # What may be indexed, and how documents' paths are shown (pipelines/roots.py).
        self.roots = IndexRoots.from_settings(settings)
        self._uploads: UploadStore | None = None

    def uploads(self) -> UploadStore:
        """The uploaded files' store (data_dir/uploads and files.sqlite3), opened on first use."""
        with self._open_lock:
            if self._uploads is None:
                from pipelines.uploads import UploadStore

                self._uploads = UploadStore.open(self.settings.data_dir)
            return self._uploads

    def public_hit(self, hit: SearchHit) -> dict[str, Any]:
        """A search hit as clients see it: its source relative to its index root."""
        return {**hit.to_dict(), "source": self.roots.display(hit.source)}

    def public_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """An index run as clients see it: paths relative to their roots, errors scrubbed."""
        out = dict(run)
        if isinstance(out.get("paths"), list):
            out["paths"] = [self.roots.display(p) for p in out["paths"]]
        if isinstance(out.get("error"), str):
            out["error"] = self.roots.scrub(out["error"], self.settings.data_dir)
        return out

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

                self._store = (self._open_store or create_store)(self.settings)
                self._retriever = Retriever(
                    self._store, self.settings.rag, data_dir=self.settings.data_dir
                )
            return self._retriever

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
        with self._open_lock:
            if self._store is not None:
                self._store.close()
            self._store = self._retriever = None
            if self._uploads is not None:
                self._uploads.close()
                self._uploads = None

    # -- search ------------------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        collection: str | None = None,
        k: int | None = None,
        mode: str | None = None,
        filter: dict[str, Any] | None = None,
        min_dense_score: float | None = None,
    ) -> list[SearchHit]:
        """Embed the query with the serving embedder pool, then search in a worker thread (a
        `retrieval` span, its steps under it: embed here, dense, sparse and fuse in the retriever).

        With `min_dense_score`, return nothing unless the best dense match reaches it."""
        mode = mode or self.settings.rag.search_mode
        started = time.perf_counter()
        with tracing.span("retrieval", {"impetus.search_mode": mode}):
            hits = await self._search(query, collection, k, mode, filter, min_dense_score)
        if self._observe_search is not None:
            self._observe_search(time.perf_counter() - started)
        return hits

    async def _search(
        self,
        query: str,
        collection: str | None,
        k: int | None,
        mode: str,
        filter: dict[str, Any] | None,
        min_dense_score: float | None,
    ) -> list[SearchHit]:
        s = self.settings.rag
        mode = mode or s.search_mode
        limit = self.settings.serve.embedding_max_input_chars
        if len(query) > limit:  # before the embedder and BM25 tokenize it (seconds for MBs)
            from pipelines.retrieve import RetrievalError

            raise RetrievalError(
                f"The search query is {len(query)} characters; a query may have at most {limit} "
                "(serve.embedding_max_input_chars): search with a shorter question."
            )
        if filter and "source" in filter:  # clients know sources as `display` shows them
            src = filter["source"]
            absolute = self.roots.absolute
            filter = {
                **filter,
                "source": [absolute(v) for v in src] if isinstance(src, list) else absolute(src),
            }
        retriever = await anyio.to_thread.run_sync(self.retriever)
        vector = None
        if mode != "sparse" or min_dense_score is not None:
            embedder = await self.embedders.get(self.settings.models.embedding)
            vectors, _ = await self.embedders.encode(embedder, [query])
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

    async def assemble(self, model: str, hits: list[SearchHit]) -> Context:
        """`hits` as numbered sources within `rag.context_tokens`, counted with `model`'s own
        tokenizer (grounded chat and Responses' file_search both use it)."""
        from pipelines.prompt import assemble
        from serving.engine.base import GenerationRequest

        budget = self.settings.rag.context_tokens
        async with self.manager.use(model) as engine:

            def count(text: str) -> int:
                return int(engine.count_tokens(GenerationRequest("rag-count", prompt=text)))

            return await anyio.to_thread.run_sync(
                lambda: assemble(hits, budget=budget, count_tokens=count)
            )

    async def ground(
        self, model: str, messages: list[dict[str, Any]], extra: dict[str, Any]
    ) -> Grounding | None:
        """Grounded messages and citations for a chat request whose `rag_mode` asks for them."""
        from pipelines.prompt import grounded_messages, last_user_message
        from pipelines.vectorstore import CollectionNotFound
        from serving.engine.base import InvalidRequestError

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
        context = await self.assemble(model, hits)
        if not context.sources:
            return None
        citations = context.citations(self.settings.rag.snippet_chars)
        for c in citations:  # never the server's absolute paths
            c["source"] = self.roots.display(str(c.get("source") or ""))
        return Grounding(grounded_messages(messages, context), citations, context)

    # -- index runs --------------------------------------------------------------------------------

    async def start_index(
        self,
        paths: list[str],
        collection: str,
        prune: bool,
        file_ids: list[str] | None = None,
    ) -> IndexRun:
        """Start an index run on the runner (its id is known on return) against the open store.

        `paths` must lie in the index roots (PathNotAllowed, the same for every path outside,
        existing or not); `file_ids` name uploads (FileNotFound)."""
        paths = self.roots.allowed_all(paths)
        if file_ids:
            uploads = await anyio.to_thread.run_sync(self.uploads)
            paths += [str(uploads.path(uploads.get(f))) for f in file_ids]
        if not paths:
            raise RagIndexError("nothing to index: give paths or file_ids")
        if self.runner is None:
            raise RagIndexError(
                "this server runs no index flows (create_app was given no index runner); run "
                "`impetus ingest` instead"
            )
        runner = self.runner
        retriever = await anyio.to_thread.run_sync(self._owned_retriever)
        store = retriever.store
        return await anyio.to_thread.run_sync(lambda: runner.start(paths, collection, prune, store))

    def _owned_retriever(self) -> Retriever:
        from pipelines.vectorstore import StoreLockedError

        try:
            return self.retriever()
        except StoreLockedError as e:
            raise RagIndexError(
                f"this server does not own the vector store: {e}. Stop the other process, then "
                "retry"
            ) from None

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        """Ask this server's run `run_id` to stop: `cancelling` until it stops between batches,
        then `cancelled`; a pending run is `cancelled` at once. Cancelling it again is a no-op."""
        job = self.runner.cancel(run_id) if self.runner is not None else None
        if job is None:
            if self._lineage_runs(run_id=run_id):
                raise RunNotCancellable(
                    f"index run {run_id!r} is not running in this server (it ran in another "
                    "process or before a restart); nothing to cancel"
                )
            raise RunNotFoundError(f"no index run {run_id!r}; POST /v1/rag/index starts one")
        if job.status in ("completed", "failed"):
            raise RunNotCancellable(f"index run {run_id!r} has {job.status}; nothing to cancel")
        return self.public_run(job.to_dict())

    def stop_runs(self) -> list[str]:
        """Cancel every active index run (the server is shutting down); what was cancelled."""
        if self.runner is None:
            return []
        active = [job for job in self.runner.runs() if job.active]
        for job in active:
            self.runner.cancel(job.id)
        return [f"index run {job.id} ({job.collection}, {job.status})" for job in active]

    def active_runs(self) -> list[str]:
        """The index runs that have not stopped yet."""
        runs = self.runner.runs() if self.runner is not None else []
        return [f"index run {job.id} ({job.status})" for job in runs if job.active]

    def run(self, run_id: str) -> dict[str, Any]:
        """An index run by id: this server's run, else what lineage recorded of it."""
        job = self.runner.get(run_id) if self.runner is not None else None
        if job is not None:
            return self.public_run(job.to_dict())
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
                # Which store, without the server's path: `impetus ingest` compares it with its own.
                "fingerprint": None if vs.url else store_fingerprint(store_path(self.settings)),
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
            out["store"]["error"] = self.roots.scrub(str(e), self.settings.data_dir)
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
        runs = self.runner.runs() if self.runner is not None else []
        jobs = sorted(runs, key=lambda j: j.created_at, reverse=True)
        active = [self.public_run(j.to_dict()) for j in jobs if j.active]
        out["runs"] = active + self._lineage_runs(limit=10)
        return out

    def _lineage(self) -> Lineage | None:
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
            return lin.pipeline_versions()

    def _lineage_runs(self, *, run_id: str | None = None, limit: int = 10) -> list[dict[str, Any]]:
        lin = self._lineage()
        if lin is None:
            return []
        with lin:
            return lin.runs(run_id=run_id, limit=limit)


def store_fingerprint(path: Any) -> str:
    """A store's identity that does not reveal its path (sha256 of the resolved path, 16 hex)."""
    import hashlib
    from pathlib import Path

    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]


async def wait_closed(service: RagService) -> None:
    """Close the service without blocking the event loop (a running index finishes first)."""
    await asyncio.get_running_loop().run_in_executor(None, service.close)
