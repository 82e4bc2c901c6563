"""The server's index runner over Prefect: `serving.services.indexing.IndexRunner` for the flows.

    app = create_app(settings, manager=manager, index_runner=PrefectIndexRunner(settings))

Each `POST /v1/rag/index` becomes an `ingest` flow run created up front, so its id (also the
lineage run id) is known when the request returns; the run then executes on this runner's one
worker thread (one run at a time) against the store the server owns, its progress recorded on
its `IndexRun` for `GET /v1/rag/runs/{id}`.
"""

from __future__ import annotations

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

import structlog

from serving.services.indexing import IndexRun, RagIndexError

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from pipelines.vectorstore import VectorStore

log = structlog.get_logger(__name__)


class PrefectIndexRunner:
    """Runs the `ingest` flow in this process, one run at a time, and remembers its runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runs: dict[str, IndexRun] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rag-index")
        # Flow runs see the Prefect settings in effect where the runner was built (a test
        # harness's temporary API, say), not only the process defaults: threads start with empty
        # contexts.
        self._context = contextvars.copy_context()

    def start(self, paths: list[str], collection: str, prune: bool, store: VectorStore) -> IndexRun:
        """Create the flow run (its id is the run's) and queue it on the worker thread."""
        flow_run = self._context.copy().run(self._create_flow_run, paths, collection, prune)
        job = IndexRun(str(flow_run.id), collection, paths, prune)
        self._runs[job.id] = job
        self._pool.submit(self._context.copy().run, self._execute, job, flow_run, store)
        return job

    def get(self, run_id: str) -> IndexRun | None:
        return self._runs.get(run_id)

    def runs(self) -> list[IndexRun]:
        return list(self._runs.values())

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _create_flow_run(self, paths: list[str], collection: str, prune: bool) -> Any:
        from flows.prefect_env import prefect_env

        prefect_env(self.settings)
        from prefect.client.orchestration import get_client

        from flows.ingest.flow import ingest

        params = {"paths": paths, "collection": collection, "prune": prune}
        try:
            with get_client(sync_client=True) as client:
                return client.create_flow_run(ingest, parameters=params)
        except Exception as e:
            raise RagIndexError(f"could not create the ingest flow run in Prefect: {e}") from e

    def _execute(self, job: IndexRun, flow_run: Any, store: VectorStore) -> None:
        from prefect.flow_engine import run_flow

        from flows.ingest.crash import crash_hook
        from flows.ingest.flow import IngestInputs, ingest_flow

        inputs = IngestInputs(
            self.settings, store=store, progress=job.on_progress, crash=crash_hook()
        )
        job.status, job.started_at = "running", time.time()
        try:
            params = {"paths": job.paths, "collection": job.collection, "prune": job.prune}
            summary = run_flow(ingest_flow(inputs), flow_run=flow_run, parameters=params)
            job.summary = cast(dict[str, Any], summary)
            job.status = "completed"
        except BaseException as e:  # the flow run records its failure; the job says why
            job.status, job.error = "failed", str(e) or type(e).__name__
            log.error("rag.index_failed", run_id=job.id, error=job.error)
        finally:
            job.finished_at = time.time()
