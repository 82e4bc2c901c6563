"""`impetus up`: the main job on embedded defaults (what `make up` runs).

Makes the default models ready (imports the bundled GGUF once), ingests the committed sample
corpus `data/samples/` into collection `default` (skipped while the samples and the settings that
decide their points are those of the last ingest), then serves the OpenAI-compatible API on the configured address (127.0.0.1:8000).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.commands.ingest import ingest
from flows.commands.serve import serve
from flows.console import domain_errors, progress, settings

if TYPE_CHECKING:
    from pipelines.settings import Settings


def samples_fingerprint(s: Settings, root: Path) -> str:
    """A hash of the sample files and of what decides their points (chunking, embedder, store):
    while it is the same, the ingest flow would find every document unchanged, so `up` skips it
    (starting Prefect for nothing costs seconds). `impetus ingest data/samples` still runs it."""
    from pipelines.chunk import CHUNKER_VERSION
    from pipelines.parse import PARSER_VERSION

    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(
            f"{path.relative_to(root)}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\0".encode()
        )
    config = {
        "parser": PARSER_VERSION,
        "chunker": CHUNKER_VERSION,
        "chunking": s.chunking.model_dump(),
        "embedding": [s.models.embedding, s.embedding.backend],
        "vector_store": s.vector_store.model_dump(mode="json"),
        "collection": "default",
    }
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()


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
    samples = PROJECT_ROOT / "data" / "samples"
    marker = s.data_dir / "samples-ingested"
    stamp = samples_fingerprint(s, samples)
    if marker.is_file() and marker.read_text().strip() == stamp:
        typer.secho(
            "2/3 data/samples unchanged since its last ingest: skipped", err=True, bold=True
        )
    else:
        typer.secho("2/3 ingest data/samples -> collection default", err=True, bold=True)
        ingest([samples], collection="default", prune=False, as_json=False)
        marker.write_text(stamp + "\n")
    if no_serve:
        return
    typer.secho("3/3 serve", err=True, bold=True)
    serve(host=host, port=port, model=None, ray=False, serve_config=None)
