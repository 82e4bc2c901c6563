"""The `impetus` command line: what operators run.

A dispatch table: each command group lives in `flows/commands/` and imports what it needs inside
its commands, so `impetus --help` stays fast. On Linux the launcher re-executes itself once with
Debian's OpenBLAS preloaded when it is installed (MLX's CPU wheel bundles the slow reference BLAS;
see DESIGN.md). `IMPETUS_BLAS=reference` opts out.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from flows.commands import models
from flows.console import set_verbose

app = typer.Typer(
    name="impetus",
    help="Local-first RAG and an OpenAI-compatible MLX endpoint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(models.app, name="models")
app.command("hardware")(models.hardware)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug events.")] = False,
) -> None:
    set_verbose(verbose)


def _reexec_with_openblas() -> None:
    from pipelines.hardware import blas_preload

    preload = blas_preload(dict(os.environ))
    if preload is None or os.environ.get("_IMPETUS_REEXEC"):
        return
    env = {**os.environ, "LD_PRELOAD": preload, "_IMPETUS_REEXEC": "1"}
    # `-m flows.cli` works for the console script and for `python -m flows.cli` alike.
    os.execve(sys.executable, [sys.executable, "-m", "flows.cli", *sys.argv[1:]], env)


def main() -> None:
    """Entry point of the `impetus` console script."""
    from pipelines import telemetry

    telemetry.disable()
    _reexec_with_openblas()
    app(prog_name="impetus")


if __name__ == "__main__":
    main()
