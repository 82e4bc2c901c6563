"""`impetus up`: the main job on embedded defaults (what `make up` runs).

Makes the default models ready (imports the bundled GGUF once), ingests the committed sample
corpus `data/samples/` into collection `default` (unchanged documents cost nothing on a re-run),
then serves the OpenAI-compatible API on the configured address (127.0.0.1:8000).
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.commands.ingest import ingest
from flows.commands.serve import serve
from flows.console import domain_errors, progress, settings


def up(
    host: Annotated[str | None, typer.Option(help="Address to listen on (serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (serve.port).")] = None,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Prepare models and ingest, then exit.")
    ] = False,
) -> None:
    """Make the default models ready, ingest data/samples/ into `default`, and serve."""
    s = settings()
    from pipelines.models.store import ModelStore
    from pipelines.settings import PROJECT_ROOT

    typer.secho("1/3 models", err=True, bold=True)
    with domain_errors(), progress("importing") as update:
        imported = ModelStore(s.models_dir).import_defaults(on_progress=update)
    typer.echo(
        f"imported {', '.join(e.name for e in imported)}" if imported else "default models ready",
        err=True,
    )
    typer.secho("2/3 ingest data/samples -> collection default", err=True, bold=True)
    ingest([PROJECT_ROOT / "data" / "samples"], collection="default", prune=False, as_json=False)
    if no_serve:
        return
    typer.secho("3/3 serve", err=True, bold=True)
    serve(host=host, port=port, model=None, ray=False, serve_config=None)
