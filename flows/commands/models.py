"""`impetus models ...` and `impetus hardware`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.console import JsonOpt, domain_errors, echo_json, fail, human_size, progress, settings

if TYPE_CHECKING:
    from pipelines.models.store import ModelStore
    from pipelines.settings import Settings

app = typer.Typer(help="The model registry: list, import and pull models.", no_args_is_help=True)


def _store(s: Settings) -> ModelStore:
    from pipelines.models.store import ModelStore

    return ModelStore(s.models_dir)


@app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """List the registry: name, kind, status, size and default sampling of each model."""
    s = settings()
    from pipelines.hardware import loaded_blas

    with domain_errors():
        entries = _store(s).entries()
    if as_json:
        echo_json([e.to_dict() for e in entries])
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    # Fits 80 columns: the folder of each model is in `--json`, the store's folder in the caption.
    table = Table(
        caption=f"in {s.models_dir} (BLAS: {loaded_blas()})",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    for col in ("name", "kind", "status", "size"):
        table.add_column(col, no_wrap=True)
    table.add_column("sampling defaults", overflow="fold")
    for e in entries:
        table.add_row(e.name, e.kind, e.status, human_size(e.size), e.defaults.describe())
    Console().print(table)


@app.command("import")
def models_import(
    file: Annotated[
        Path | None,
        typer.Argument(help="A llama-architecture .gguf file. Omit to import the built-in models."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Registry name for the imported model.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model of the same name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a GGUF file into MLX format (Q4_0/Q4_1/Q8_0 stay quantized), or the defaults."""
    s = settings()
    store = _store(s)
    if file is not None and not name:
        raise fail("--name is required when importing a file (e.g. --name my-llama).")
    with domain_errors(), progress("importing") as update:
        if file is None:
            done = store.import_defaults(on_progress=update)
        else:
            assert name is not None
            done = [store.import_gguf(file, name, on_progress=update, overwrite=overwrite)]
    if as_json:
        echo_json([e.to_dict() for e in done])
    elif not done:
        typer.echo("The built-in models are ready; nothing to import.")
    else:
        for e in done:
            typer.echo(f"{e.name}: {e.status} at {e.path} ({human_size(e.size)})")


@app.command("pull")
def models_pull(
    repo_id: Annotated[str, typer.Argument(help="A Hugging Face repo id, e.g. mlx-community/...")],
    name: Annotated[
        str | None, typer.Option(help="Registry name (default: the repo's name).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a model of the same name.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a model from the Hugging Face Hub (needs network)."""
    s = settings()
    with domain_errors():
        entry = _store(s).pull(repo_id, name, overwrite=overwrite)
    if as_json:
        echo_json(entry.to_dict())
    else:
        typer.echo(f"{entry.name}: {entry.status} at {entry.path}")


@app.command("quantize")
def models_quantize(
    name: Annotated[str, typer.Argument(help="A registry LLM, e.g. smollm2-135m-instruct.")],
    bits: Annotated[
        list[int] | None,
        typer.Option("--bits", help="4, 8 or 16 (16-bit float); repeatable. Default: all three."),
    ] = None,
    group_size: Annotated[
        int, typer.Option("--group-size", help="Weights per quantization group (32, 64 or 128).")
    ] = 64,
    dtype: Annotated[
        str, typer.Option("--dtype", help="The 16-bit float type: float16 or bfloat16.")
    ] = "float16",
    overwrite: Annotated[bool, typer.Option(help="Convert again even if it exists.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make 4-bit, 8-bit and 16-bit versions of an LLM with mlx-lm's convert; registered as
    NAME-4bit, NAME-8bit and NAME-fp16 (NAME-4bit-g32 for another group size; a quantized
    source goes through its 16-bit version)."""
    s = settings()
    if dtype not in ("float16", "bfloat16"):
        raise fail(f"--dtype {dtype}: use float16 or bfloat16")
    if group_size not in (32, 64, 128):
        raise fail(f"--group-size {group_size}: use 32, 64 or 128")
    store = _store(s)
    done = []
    with domain_errors():
        for b in bits or [16, 8, 4]:
            e = store.quantize(name, b, group_size=group_size, dtype=dtype, overwrite=overwrite)  # type: ignore[arg-type]
            done.append(e)
            if not as_json:
                typer.echo(f"{e.name}: {e.status} at {e.path} ({human_size(e.size)}; {e.source})")
    if as_json:
        echo_json([e.to_dict() for e in done])


@app.command("convert-coreml")
def models_convert_coreml(
    name: Annotated[str, typer.Argument(help="A registry embedding model, e.g. all-minilm-l6-v2.")],
    bucket: Annotated[
        list[int] | None,
        typer.Option(
            "--bucket",
            help="Sequence length of a package (repeatable; capped at the model's limit).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Convert again even if cached.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert an embedding model to Core ML packages for the Neural Engine (cached by weights)."""
    s = settings()
    from pipelines.embed.base import EmbedderLoadError
    from pipelines.embed.coreml_bert import DEFAULT_BUCKETS, ensure_coreml

    store = _store(s)
    with domain_errors():
        if (kind := store.get(name).kind) != "embedding":
            raise fail(f"{name!r} is an {kind} model; convert-coreml takes an embedding model.")
        folder = store.resolve(name)
    buckets = tuple(bucket) if bucket else DEFAULT_BUCKETS
    try:
        with progress("converting") as update:
            result = ensure_coreml(
                folder, s.models_dir, name, buckets, force=force, on_progress=update
            )
    except (EmbedderLoadError, ValueError) as exc:
        raise fail(str(exc)) from None
    info = {
        "name": name,
        "path": str(result.path),
        "buckets": list(result.buckets),
        "dim": result.dim,
        "cached": result.cached,
        "seconds": round(result.seconds, 2),
    }
    if as_json:
        echo_json(info)
    else:
        how = "already converted" if result.cached else f"converted in {result.seconds:.1f} s"
        buckets_text = ", ".join(str(b) for b in result.buckets)
        typer.echo(f"{name}: {how}; buckets {buckets_text} at {result.path}")


def hardware(as_json: JsonOpt = False) -> None:
    """Show OS, chip, memory, MLX device, Neural Engine / Core ML and the BLAS in use."""
    settings()
    from pipelines.hardware import detect

    info = detect().to_dict()
    if as_json:
        echo_json(info)
    else:
        for key, value in info.items():
            typer.echo(f"{key:16} {value}")
