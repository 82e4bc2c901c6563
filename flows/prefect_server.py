"""The Prefect API server that `impetus serve` runs for its index flows: a child process that
never outlives the server.

Left to itself, Prefect starts a temporary server (`SubprocessASGIServer`) the first time a flow
run needs an API and stops it from an `atexit` hook; a server killed with SIGKILL never runs the
hook, and the child kept running, orphaned. This module starts the same server
(`prefect.server.api.server:create_app` under uvicorn, the UI off) as
`python -m flows.prefect_server --parent PID`, and the child watches its parent: when its parent
id changes (the parent died, whatever the way, and the child was re-parented) it stops itself
within a second. A watchdog thread rather than Linux's `prctl(PR_SET_PDEATHSIG)` because that
signal fires when the *thread* that forked the child ends (here a worker thread of the server),
and it does not exist on macOS; the watchdog works on both.

The child runs in its own session, so a Ctrl-C in the terminal reaches the server alone, which
stops its index run first (it needs the API for that) and then this child.

    server = PrefectServer.start(data_dir / "prefect" / "server.log")   # then PREFECT_API_URL
    server.stop()
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HOST = "127.0.0.1"
# Prefect's own environment for its temporary server (SubprocessASGIServer._run_uvicorn_command).
_SERVER_ENV = {
    "PREFECT_UI_ENABLED": "0",
    "PREFECT__SERVER_EPHEMERAL": "1",
    "PREFECT__SERVER_FINAL": "1",
}
POLL_S = 0.5  # how often the child looks at its parent


class PrefectServerError(RuntimeError):
    """The child server exited or did not answer in time (the message has its log's tail)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PrefectServer:
    """A running child Prefect API server on 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, log: Path, timeout_s: float = 120.0) -> PrefectServer:
        """Start the child and wait until its API answers /health."""
        import httpx

        port = _free_port()
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "flows.prefect_server", "--port", str(port)]
        argv += ["--parent", str(os.getpid())]
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **_SERVER_ENV},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = cls(proc, port, log)
        deadline = time.monotonic() + timeout_s
        # One client for all the polls (`httpx.get` builds a client and an SSL context per call:
        # ~27 ms of CPU each, taken from the child it waits for).
        with httpx.Client(timeout=2) as client:
            while True:
                if proc.poll() is not None:
                    raise PrefectServerError(
                        f"the Prefect server exited ({proc.returncode})" + _tail(log)
                    )
                try:
                    if client.get(f"{server.api_url}/health").status_code == 200:
                        return server
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    server.stop()
                    raise PrefectServerError(
                        f"the Prefect server did not answer in {timeout_s:g} s"
                    )
                time.sleep(0.1)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def kill(self) -> None:
        """At once (a second Ctrl-C)."""
        if self.proc.poll() is None:
            self.proc.kill()


def _tail(log: Path, n: int = 2000) -> str:
    try:
        return ":\n" + log.read_bytes()[-n:].decode(errors="replace")
    except OSError:
        return ""


# -- the child ---------------------------------------------------------------------------------


def watch_parent(parent: int, poll_s: float = POLL_S) -> threading.Thread:
    """A daemon thread that stops this process once `parent` is no longer its parent: SIGTERM
    to itself (uvicorn shuts down), and `os._exit` if that has not ended it 5 s later."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        print(f"prefect_server: parent {parent} is gone; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True, help="stop when this pid is gone")
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:  # the parent died before we got here
        sys.exit(1)
    watch_parent(args.parent)
    os.environ.update(_SERVER_ENV)
    import uvicorn

    uvicorn.run(
        "prefect.server.api.server:create_app",
        factory=True,
        host=HOST,
        port=args.port,
        log_level="error",
        lifespan="on",
    )


if __name__ == "__main__":
    main()
