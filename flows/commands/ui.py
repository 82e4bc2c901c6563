"""`impetus ui prefect|mlflow`: the Prefect and MLflow UIs, on the stores under data_dir.

`impetus ui prefect` runs Prefect's server with its home in data_dir/prefect and records its
address there (flows/prefect_env.py): while it answers, the index runs of `impetus ingest`,
`impetus serve`, and the eval and bench flows on this data_dir report to it instead of a
temporary server of their own. `impetus ui mlflow` runs MLflow's UI on data_dir/mlflow.db, where
the eval and bench flows log. Both run in the foreground until Ctrl-C.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from flows.console import fail, settings


class UI(StrEnum):
    prefect = "prefect"
    mlflow = "mlflow"


DEFAULT_PORTS = {UI.prefect: 4200, UI.mlflow: 5000}


def _exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def ui_command(which: str) -> str:
    """What to run to see a run in its UI (the commands that make runs print it)."""
    return f"impetus ui {which}"


def ui(
    which: Annotated[UI, typer.Argument(help="prefect (flow runs) or mlflow (experiments).")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int | None, typer.Option(help="Port to listen on (prefect 4200, mlflow 5000).")
    ] = None,
) -> None:
    """Start the Prefect or MLflow UI on this data_dir's store and print its URL."""
    s = settings()
    port = port or DEFAULT_PORTS[which]
    bin_dir = Path(sys.executable).parent  # the venv's console scripts sit next to its python
    url = f"http://{host}:{port}"
    if which is UI.prefect:
        from flows.prefect_env import prefect_env, ui_server_file

        prefect_env(s)
        cmd = [str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(port)]
        record = ui_server_file(s)
        record.write_text(f"{url}/api\n")
        where = f"Prefect home {s.data_dir / 'prefect'}"
    else:
        db = s.data_dir / "mlflow.db"
        cmd = [str(bin_dir / "mlflow"), "ui", "--backend-store-uri", f"sqlite:///{db}"]
        cmd += ["--host", host, "--port", str(port), "--workers", "1"]
        record = None
        where = f"store {db}"
    if not Path(cmd[0]).exists():
        raise fail(f"{cmd[0]} is missing; run `make setup` to install the dependencies.")
    typer.secho(f"{which.value} UI on {url} ({where}); Ctrl-C stops it", err=True, bold=True)
    signal.signal(signal.SIGTERM, _exit)  # so that `finally` forgets the address on `kill` too
    try:
        code = subprocess.call(cmd)
    except KeyboardInterrupt:
        code = 0
    finally:
        if record is not None:
            record.unlink(missing_ok=True)
    if code not in (0, -2, 130):
        raise typer.Exit(code)
