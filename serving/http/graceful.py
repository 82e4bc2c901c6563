"""The uvicorn server of `impetus serve`: SIGINT/SIGTERM drain the app before it stops, and a
second signal exits at once.

On the first signal the server keeps listening but the app answers new requests 503
`shutting_down` (serving/http/shutdown.py), its index runs are asked to stop, and it says what it
waits for, every few seconds, until nothing is left or `drain_s` has passed; then uvicorn's own
shutdown runs (connections closed, the app's lifespan: the runner closes, the Prefect server it
started stops, the engines close). On a second signal it kills its child servers and exits with
status 130 without waiting for anything (`os._exit`): the index flow is safe to stop at any step
(docs/decisions/index-run-cancel.md).

    server = GracefulServer(uvicorn.Config(app, ...), shutdown=app.state.shutdown)
    server.run()
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

import structlog
import uvicorn

from serving.http.shutdown import Shutdown

log = structlog.get_logger(__name__)

DRAIN_S = 10.0  # how long in-flight requests and index runs get before uvicorn's own shutdown
REPORT_EVERY_S = 2.0


def _say(message: str) -> None:
    """To the operator's terminal, whatever the log level."""
    print(f"impetus: {message}", file=sys.stderr, flush=True)


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` whose signal handler drains `shutdown` first."""

    def __init__(self, config: uvicorn.Config, *, shutdown: Shutdown, drain_s: float = DRAIN_S):
        super().__init__(config)
        self.drainer = shutdown  # not `self.shutdown`: uvicorn.Server has that method
        self.drain_s = drain_s
        self._signalled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        if self._signalled:
            _say(f"second {name}: exiting now (the index flow resumes on the next run)")
            log.warning("shutdown.forced", signal=name, waiting_on=self.drainer.pending())
            self.drainer.force()
            os._exit(130)
        self._signalled = True
        if self._loop is None or not self.started:  # still starting: nothing to drain
            super().handle_exit(sig, frame)
            return
        # The handler runs between two bytecodes of the loop's thread: hand over to the loop.
        self._loop.call_soon_threadsafe(self._start_drain, name)

    def _start_drain(self, name: str) -> None:
        self._drain_task = asyncio.ensure_future(self._drain(name))

    async def _drain(self, name: str) -> None:
        stopped = self.drainer.begin()
        waiting = self.drainer.pending()
        _say(
            f"{name}: shutting down; new requests get 503. "
            + (f"Cancelled: {', '.join(stopped)}. " if stopped else "")
            + (f"Waiting for: {', '.join(waiting)}. " if waiting else "")
            + "Press Ctrl-C again to exit at once."
        )
        log.info("shutdown.draining", signal=name, cancelled=stopped, waiting_on=waiting)
        deadline = time.monotonic() + self.drain_s
        reported = time.monotonic()
        while waiting and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            waiting = self.drainer.pending()
            if waiting and time.monotonic() - reported >= REPORT_EVERY_S:
                reported = time.monotonic()
                _say(f"still waiting for: {', '.join(waiting)}")
                log.info("shutdown.waiting", waiting_on=waiting)
        if waiting:
            log.warning("shutdown.drain_timeout", drain_s=self.drain_s, waiting_on=waiting)
        else:
            log.info("shutdown.drained")
        self.should_exit = True
