"""Runs left `running` by a process that died: marked crashed, in lineage and in Prefect.

    crashed = recover_crashed_runs(settings)    # at server and CLI start, and `impetus doctor`

A SIGKILLed server or CLI never records the end of the run it was executing: lineage keeps the
row `running` and Prefect the flow run `Running`, for good. Every process that starts on a
data_dir calls this first: each lineage run whose owner process (pipelines/owner.py) is gone is
marked `crashed` with when and why, and its Prefect flow run (same id) is set to `Crashed`
unless Prefect already holds a final state for it. Nothing here raises for Prefect being
unreachable: lineage is the record; `impetus doctor --repair` sets the Prefect states later.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)


def mark_crashed_in_lineage(settings: Settings) -> list[dict[str, Any]]:
    """Lineage's runs whose owner process is gone, marked crashed (none when no lineage yet)."""
    from pipelines.lineage import Lineage
    from pipelines.owner import is_alive

    if not (settings.data_dir / "lineage.duckdb").is_file():
        return []
    with Lineage.open(settings) as lineage:
        crashed = lineage.mark_crashed(is_alive)
    for run in crashed:
        log.warning("ingest.run_crashed", run_id=run["run_id"], reason=run["crash_reason"])
    return crashed


def mark_crashed_in_prefect(runs: list[dict[str, Any]]) -> list[str]:
    """Set each run's Prefect flow run (same id) to Crashed unless it is already final; returns
    the ids it changed. Prefect must be configured (`prefect_env`) before this is called."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    changed: list[str] = []
    if not runs:
        return changed
    with get_client(sync_client=True) as client:
        for run in runs:
            try:
                flow_run = client.read_flow_run(run["run_id"])
            except (ObjectNotFound, ValueError):  # not a flow run of this Prefect (or not a uuid)
                continue
            if flow_run.state is not None and flow_run.state.is_final():
                continue
            client.set_flow_run_state(flow_run.id, Crashed(message=run["crash_reason"]), force=True)
            changed.append(run["run_id"])
    return changed


def recover_crashed_runs(settings: Settings, *, prefect: bool = True) -> list[dict[str, Any]]:
    """Mark crashed, in lineage then in Prefect, every run whose process is gone; returns them.

    A lineage database another process holds or that cannot be read is logged and skipped
    (`impetus doctor` says what is wrong with it); Prefect being unreachable is logged too."""
    from pipelines.errors import ImpetusError

    try:
        crashed = mark_crashed_in_lineage(settings)
    except ImpetusError as e:
        log.warning("ingest.recovery_skipped", error=str(e))
        return []
    if crashed and prefect:
        try:
            mark_crashed_in_prefect(crashed)
        except Exception as e:  # Prefect down: lineage already says crashed
            log.warning("ingest.recovery_prefect_unreachable", error=f"{type(e).__name__}: {e}")
    return crashed
