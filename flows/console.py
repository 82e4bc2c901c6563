"""What every CLI command shares: settings with logging configured, errors, JSON and progress bars."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from pipelines.settings import Settings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class _State:
    verbose = False


def set_verbose(verbose: bool) -> None:
    _State.verbose = verbose


def settings() -> Settings:
    """The process's settings, with logging configured from them."""
    from pipelines import log
    from pipelines.settings import SettingsError, get_settings

    try:
        s = get_settings()
    except SettingsError as exc:
        raise fail(str(exc), code=2) from None
    log.configure("debug" if _State.verbose else s.log.level, s.log.format)
    return s


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error that says what to do; raise the result to exit non-zero (no traceback)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn the core's domain errors into one clear line and exit status 1."""
    from pipelines.errors import ImpetusError

    try:
        yield
    except ImpetusError as exc:
        raise fail(str(exc)) from None


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


@contextmanager
def progress(description: str) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar on stderr; yields `update(label, done, total)`."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(label: str, done: int, total: int) -> None:
        if label not in tasks:
            tasks[label] = bar.add_task(f"{description} {label}", total=total)
        bar.update(tasks[label], completed=done, total=total)

    with bar:
        yield update


def api_error(r: Any) -> typer.Exit:
    """A failed answer of a running Impetus server, as `fail` does it (its error message)."""
    try:
        message = r.json()["error"]["message"]
    except Exception:
        message = r.text[:500]
    return fail(f"the server answered {r.status_code}: {message}")
