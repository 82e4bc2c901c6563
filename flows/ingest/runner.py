"""The server's index runner over Prefect: `serving.services.indexing.IndexRunner` for the flows.

    app = create_app(settings, manager=manager, index_runner=PrefectIndexRunner(settings))

Each `POST /v1/rag/index` becomes an `ingest` flow run created up front, so its id (also the
lineage run id) is known when the request returns; the run then executes on this runner's one
worker thread (one run at a time) against the store the server owns, its progress recorded on
its `IndexRun` for `GET /v1/rag/runs/{id}`.

Prefect's API: the one in effect when the runner was built (PREFECT_API_URL, `impetus ui
prefect`'s server, a test harness), else a child server this runner starts on the first run
(flows/prefect_server.py: it stops when the server dies, however it dies) and stops in `close`.

Cancelling (`cancel`, `POST /v1/rag/runs/{id}/cancel`, the server's shutdown): a pending run never
starts; a running one stops between batches (flows/ingest/flow.py says where exactly), is
recorded `cancelled` in lineage and in Prefect, and reads `cancelled` here. The worker thread is
a daemon: a run that does not stop in time cannot hold the process at exit (the flow is safe to
kill at any step).
"""

from __future__ import annotations

import contextvars
import os
import queue
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, cast

import structlog

from serving.services.indexing import IndexRun, RagIndexError

if TYPE_CHECKING:
    from flows.prefect_server import PrefectServer
    from pipelines.settings import Settings
    from pipelines.vectorstore import VectorStore

log = structlog.get_logger(__name__)

CLOSE_TIMEOUT_S = 20.0  # how long `close` waits for a cancelled run to stop


class PrefectIndexRunner:
    """Runs the `ingest` flow in this process, one run at a time, and remembers its runs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._runs: dict[str, IndexRun] = {}
        self._queue: queue.SimpleQueue[tuple[IndexRun, Any, VectorStore] | None] = (
            queue.SimpleQueue()
        )
        self._worker: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.prefect_server: PrefectServer | None = None
        # Flow runs see the Prefect settings in effect where the runner was built (a test
        # harness's temporary API, say), not only the process defaults: threads start with empty
        # contexts.
        self._context = contextvars.copy_context()
        self.recovered = self._recover()

    def _recover(self) -> list[dict[str, Any]]:
        """Runs a killed process left `running`: crashed in lineage now, in Prefect on a
        background thread (reaching Prefect may mean starting its server: not on start-up's
        path). flows/ingest/recovery.py says why."""
        import threading

        from flows.ingest.recovery import mark_crashed_in_prefect, recover_crashed_runs

        crashed = recover_crashed_runs(self.settings, prefect=False)
        if crashed:

            def in_prefect() -> None:
                from flows.prefect_env import prefect_env

                prefect_env(self.settings)
                try:
                    mark_crashed_in_prefect(crashed)
                except Exception as e:
                    log.warning(
                        "rag.recovery_prefect_unreachable", error=f"{type(e).__name__}: {e}"
                    )

            threading.Thread(
                target=self._context.copy().run, args=(in_prefect,), name="crash-recovery",
                daemon=True,
            ).start()  # fmt: skip
        return crashed

    def start(self, paths: list[str], collection: str, prune: bool, store: VectorStore) -> IndexRun:
        """Create the flow run (its id is the run's) and queue it on the worker thread."""
        if self._closed:
            raise RagIndexError(
                "the server is shutting down; start the index run after it restarts"
            )
        flow_run = self._context.copy().run(self._create_flow_run, paths, collection, prune)
        job = IndexRun(str(flow_run.id), collection, paths, prune)
        self._runs[job.id] = job
        with self._lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="rag-index", daemon=True)
                self._worker.start()
        self._queue.put((job, flow_run, store))
        return job

    def get(self, run_id: str) -> IndexRun | None:
        return self._runs.get(run_id)

    def runs(self) -> list[IndexRun]:
        return list(self._runs.values())

    def cancel(self, run_id: str) -> IndexRun | None:
        """Ask run `run_id` to stop; a pending one is cancelled at once. None: no such run."""
        job = self._runs.get(run_id)
        if job is None:
            return None
        if job.active:
            job.stop_requested.set()
            if job.status == "running":
                job.status = "cancelling"
            log.info("rag.index_cancel_requested", run_id=job.id, status=job.status)
        return job

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Cancel every run, wait up to `timeout_s` for the running one to stop (saying what it
        waits for), then stop the Prefect server this runner started."""
        self._closed = True
        for job in self.runs():
            if job.active:
                self.cancel(job.id)
        self._queue.put(None)
        worker = self._worker
        if worker is not None and worker.is_alive():
            running = [j.id for j in self.runs() if j.active]
            if running:
                log.info("shutdown.waiting_for_index_run", runs=running, timeout_s=timeout_s)
            worker.join(timeout_s)
            if worker.is_alive():
                log.warning(
                    "shutdown.index_run_still_running",
                    runs=[j.id for j in self.runs() if j.active],
                    note="left to stop with the process; the next run converges",
                )
        self.stop_prefect_server()

    def stop_prefect_server(self, *, at_once: bool = False) -> None:
        server = self.prefect_server
        if server is None:
            return
        log.info("shutdown.prefect_server", pid=server.pid, at_once=at_once)
        if at_once:
            server.kill()
        else:
            _flush_prefect_workers()
            server.stop()
        self.prefect_server = None
        if os.environ.get("PREFECT_API_URL") == server.api_url:  # no longer there: forget it
            del os.environ["PREFECT_API_URL"]
            if "prefect.context" in sys.modules:
                from prefect.context import refresh_global_settings_context

                refresh_global_settings_context()

    # -- Prefect -----------------------------------------------------------------------------------

    def _ensure_api(self) -> None:
        """Point Prefect at an API: the one in effect, else a child server started here."""
        from prefect.settings import PREFECT_API_URL

        if PREFECT_API_URL.value() or self.prefect_server is not None:
            return
        from flows.prefect_server import PrefectServer

        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 120))
        log.info("prefect_server.start")
        server = PrefectServer.start(
            self.settings.data_dir / "prefect" / "server.log", timeout_s=timeout
        )
        self.prefect_server = server
        os.environ["PREFECT_API_URL"] = server.api_url
        if "prefect.context" in sys.modules:  # imported already: make it read the variable
            from prefect.context import refresh_global_settings_context

            refresh_global_settings_context()
        log.info("prefect_server.started", pid=server.pid, api=server.api_url)

    def _create_flow_run(self, paths: list[str], collection: str, prune: bool) -> Any:
        from flows.prefect_env import prefect_env

        prefect_env(self.settings)
        try:
            with self._lock:
                self._ensure_api()
            from prefect.client.orchestration import get_client

            from flows.ingest.flow import ingest

            params = {"paths": paths, "collection": collection, "prune": prune}
            with get_client(sync_client=True) as client:
                return client.create_flow_run(ingest, parameters=params)
        except Exception as e:
            raise RagIndexError(f"could not create the ingest flow run in Prefect: {e}") from e

    def _mark_cancelled(self, flow_run: Any, message: str) -> None:
        """The flow run's state in Prefect: Cancelled (the engine left it Failed, or Scheduled)."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelled

        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run.id, Cancelled(message=message), force=True)
        except Exception as e:  # the run is cancelled all the same; Prefect's view lags
            log.warning("rag.index_cancel_state_failed", run_id=str(flow_run.id), error=str(e))

    # -- the worker --------------------------------------------------------------------------------

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job, flow_run, store = item
            self._context.copy().run(self._execute, job, flow_run, store)

    def _execute(self, job: IndexRun, flow_run: Any, store: VectorStore) -> None:
        from prefect.exceptions import CancelledRun
        from prefect.flow_engine import run_flow

        from flows.ingest.crash import crash_hook
        from flows.ingest.flow import IngestInputs, RunCancelled, ingest_flow

        if job.should_stop():  # cancelled while it waited: it never starts
            job.status, job.finished_at = "cancelled", time.time()
            self._mark_cancelled(flow_run, "cancelled before it started")
            log.info("rag.index_cancelled", run_id=job.id, started=False)
            return
        inputs = IngestInputs(
            self.settings,
            store=store,
            progress=job.on_progress,
            crash=crash_hook(),
            stop=job.should_stop,
            on_cancelled=lambda summary: setattr(job, "summary", summary),
        )
        job.status, job.started_at = "running", time.time()
        try:
            params = {"paths": job.paths, "collection": job.collection, "prune": job.prune}
            summary = run_flow(ingest_flow(inputs), flow_run=flow_run, parameters=params)
            job.summary = cast(dict[str, Any], summary)
            job.status = "completed"
        except (RunCancelled, CancelledRun) as e:  # the flow returns a Cancelled state
            job.status, job.error = "cancelled", str(e) or "cancelled"
            log.info("rag.index_cancelled", run_id=job.id, started=True, progress=job.progress)
        except BaseException as e:  # the flow run records its failure; the job says why
            job.status, job.error = "failed", str(e) or type(e).__name__
            log.error("rag.index_failed", run_id=job.id, error=job.error)
        finally:
            job.finished_at = time.time()


def _flush_prefect_workers(timeout_s: float = 5.0) -> None:
    """Send Prefect's queued logs and events now, while its API still answers: after it stops,
    their exit-time flush retries a missing server for seconds."""
    for module, name in (
        ("prefect.logging.handlers", "APILogWorker"),
        ("prefect.events.worker", "EventsWorker"),
    ):
        if module in sys.modules:
            try:
                getattr(sys.modules[module], name).drain_all(timeout=timeout_s)
            except Exception as e:
                log.warning("shutdown.prefect_flush_failed", worker=name, error=str(e))
