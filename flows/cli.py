"""The `impetus` command line: what operators run.

A dispatch table: each command group lives in `flows/commands/` and imports what it needs inside
its commands, so `impetus --help` stays fast. The console script enters through `flows/launch.py`,
which sets up the process (telemetry off, OpenBLAS under MLX) before this module is imported.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.commands import bench, doctor, ingest, keys, launch, models, rag, serve, ui, up
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
app.add_typer(keys.app, name="keys")
app.command("hardware")(models.hardware)
app.command("ingest")(ingest.ingest)
app.command("reindex")(ingest.reindex)
app.command("lineage")(ingest.lineage)
app.command("doctor")(doctor.doctor)
app.command("serve")(serve.serve)
app.command("up")(up.up)
app.command("ui")(ui.ui)
app.command("launch")(launch.launch)
app.add_typer(bench.app, name="bench")
app.command("search")(rag.search)
app.command("chat")(rag.chat)
app.add_typer(rag.eval_app, name="eval")
bench.app.command("retrieval")(rag.bench_retrieval)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug events.")] = False,
) -> None:
    set_verbose(verbose)


if __name__ == "__main__":  # `python -m flows.cli ...`, as the console script runs
    from flows.process import prepare

    prepare()
    app(prog_name="impetus")
