"""`impetus doctor [--repair] [--json]`: check the data_dir's vector store and lineage, repair what
can be repaired (pipelines/doctor.py does the work), and set the Prefect flow runs of runs it
marks crashed to Crashed. Exit status 0 when nothing is left to do, 1 otherwise.

docs/operations.md ("Troubleshooting") says what each finding means.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.console import JsonOpt, echo_json, settings


def doctor(
    repair: Annotated[
        bool, typer.Option("--repair", help="Repair what can be repaired, then report.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Check the vector store and lineage (locks, aliases, crashed runs, points vs lineage)."""
    s = settings()
    from pipelines.doctor import diagnose

    report = diagnose(s, repair=repair)
    prefect_note = None
    if report.crashed_runs:
        from flows.ingest.recovery import mark_crashed_in_prefect
        from flows.prefect_env import prefect_env

        prefect_env(s)
        try:
            changed = mark_crashed_in_prefect(report.crashed_runs)
            prefect_note = f"set {len(changed)} Prefect flow run(s) to Crashed"
        except Exception as e:
            prefect_note = f"could not reach Prefect to set Crashed states: {type(e).__name__}: {e}"
    if as_json:
        echo_json({**report.to_dict(), "prefect": prefect_note})
    else:
        for f in report.findings:
            mark = "ok  " if f.ok else ("done" if f.repaired else "FAIL")
            color = typer.colors.GREEN if f.ok or f.repaired else typer.colors.RED
            typer.secho(f"[{mark}] {f.check}: {f.detail}", fg=color)
            if f.repaired:
                typer.echo(f"       repaired: {f.repaired}")
            if f.action:
                typer.echo(f"       to do: {f.action}")
        if prefect_note:
            typer.echo(f"       prefect: {prefect_note}")
    if not report.ok:
        raise typer.Exit(1)
