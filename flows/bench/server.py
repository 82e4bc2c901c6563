"""Server processes for benches and tests: `impetus serve` (or `mlx_lm.server`) as a subprocess on
a free 127.0.0.1 port, timed from launch to live and to ready, and always stopped.

The process runs in its own session, logs to a file, and is stopped with SIGINT (the server, and
Ray Serve under `--ray`, shut down cleanly), then its process group killed if it lingers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from pipelines.settings import Settings

HOST = "127.0.0.1"
START_TIMEOUT_S = 900.0  # Ray on a busy two-core machine takes minutes
LIVE, READY = "/api/health/live", "/api/health/ready"


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log's tail."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(f"{message}:\n{tail(log)}")
        self.log = log


@dataclass
class Server:
    name: str
    url: str
    model: str  # what requests put in "model"
    proc: subprocess.Popen[bytes]
    log: Path
    live_s: float = float("nan")
    ready_s: float = float("nan")
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (a key)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def serve_argv(port: int, *args: str) -> list[str]:
    """`impetus serve` on 127.0.0.1:`port`, run by this interpreter."""
    return [sys.executable, "-m", "flows.cli", "serve", "--host", HOST, "--port", str(port), *args]


def tail(log: Path, n: int = 3000) -> str:
    return log.read_bytes()[-n:].decode(errors="replace") if log.exists() else ""


@contextmanager
def launch(
    name: str,
    argv: list[str],
    env: dict[str, str],
    *,
    port: int,
    log_dir: Path,
    model: str = "",
    live_path: str = LIVE,
    ready_path: str | None = READY,
    timeout_s: float = START_TIMEOUT_S,
    grace_s: float = 60.0,
    cwd: Path | None = None,
) -> Iterator[Server]:
    """Start `argv` (a server on 127.0.0.1:`port`), wait for `live_path` and then `ready_path`
    (None: only live) to answer 200, timing both from launch; stop it at exit."""
    log = log_dir / f"{name}.log"
    url = f"http://{HOST}:{port}"
    with open(log, "wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = Server(name, url, model, proc, log)
        try:
            deadline = started + timeout_s
            _poll(server, live_path, deadline)
            server.live_s = time.monotonic() - started
            if ready_path is not None:
                _poll(server, ready_path, deadline)
                server.ready_s = time.monotonic() - started
            yield server
        finally:
            stop(proc, grace_s)


def _poll(server: Server, path: str, deadline: float) -> None:
    # One client for all the polls: each `httpx.get` builds a client and its SSL context (~27 ms
    # of CPU here, certifi's bundle parsed again), which at 20 polls a second took a third of a
    # core from the server it waited for.
    with httpx.Client(timeout=2) as client:
        while True:
            if server.proc.poll() is not None:
                raise ServerStartError(
                    f"{server.name} exited ({server.proc.returncode}) before {path}", server.log
                )
            with suppress(httpx.HTTPError):
                if client.get(server.url + path).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise ServerStartError(f"{server.url}{path} did not answer 200 in time", server.log)
            time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGINT, then SIGKILL to the process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc on Linux, else `ps -o time=`): less
    sensitive than wall time to what else runs on a shared machine."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file():
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    out = subprocess.run(["ps", "-o", "time=", "-p", str(pid)], capture_output=True, text=True)
    days, _, clock = out.stdout.strip().rpartition("-")
    seconds = 0.0
    for part in clock.split(":"):  # [[hh:]mm:]ss[.ff]
        seconds = seconds * 60 + float(part)
    return seconds + 86400 * int(days or 0)


def run_probe(
    settings: Settings, module: str, command: str, args: dict[str, Any], timeout_s: float
) -> Any:
    """`python -m MODULE COMMAND ARGS_JSON` in the bench environment; its last stdout line, as
    JSON (a probe measures in a process of its own, so the bench's imports and threads are not
    in its figures)."""
    import json

    out = subprocess.run(
        [sys.executable, "-m", module, command, json.dumps(args)],
        env=bench_env(settings),
        capture_output=True,
        timeout=timeout_s,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {command} probe failed:\n{out.stderr.decode()[-3000:]}")
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def bench_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of every process a bench measures: same BLAS, same data_dir, telemetry off."""
    from pipelines import telemetry
    from pipelines.hardware import blas_preload

    telemetry.disable()
    env = {**os.environ, "IMPETUS_DATA_DIR": str(settings.data_dir), **extra}
    preload = blas_preload(env)
    if preload:
        env["LD_PRELOAD"] = preload
    env["_IMPETUS_REEXEC"] = "1"  # the launcher must not re-exec: LD_PRELOAD is set here
    env["RAY_ENABLE_UV_RUN_RUNTIME_ENV"] = "0"
    return env


def impetus_serve(
    settings: Settings, log_dir: Path, *, ray: bool = False, name: str = "impetus", **env: str
) -> AbstractContextManager[Server]:
    """`impetus serve` (`--ray`) with the bench environment and `env` on top."""
    port = free_port()
    argv = serve_argv(port, *(["--ray"] if ray else []))
    return launch(
        name, argv, bench_env(settings, **env), port=port, model=settings.models.llm,
        log_dir=log_dir,
    )  # fmt: skip


def mlx_lm_server(
    settings: Settings, model_path: Path, log_dir: Path
) -> AbstractContextManager[Server]:
    """`python -m mlx_lm.server` on `model_path`, with the bench environment."""
    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_path)]
    argv += ["--host", HOST, "--port", str(port), "--log-level", "WARNING"]
    return launch(
        "mlx-lm", argv, bench_env(settings), port=port, model="default_model", log_dir=log_dir,
        live_path="/health", ready_path="/health",
    )  # fmt: skip
