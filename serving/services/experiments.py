"""The latest benchmark and evaluation runs, for the dashboard's Experiments page.

The bench and eval flows log to MLflow's SQLite store under data_dir (flows/bench/tracking.py;
serving does not import flows/, so the store's place is repeated here: `data_dir/mlflow.db`).
MLflow is imported only when that store exists and the page asks, in a worker thread: a server
without experiments never pays for it. `create_app(experiments=...)` takes another provider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

# limit -> run rows (run_id, experiment, name, status, start_time, params, metrics, url)
ExperimentsProvider = Callable[[int], list[dict[str, Any]]]


def mlflow_runs(settings: Settings) -> ExperimentsProvider:
    """The newest runs of every experiment in data_dir/mlflow.db (none when it does not exist)."""

    def latest(limit: int) -> list[dict[str, Any]]:
        db = settings.data_dir / "mlflow.db"
        if not db.is_file():
            return []
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{db}")
        experiments = {e.experiment_id: e.name for e in client.search_experiments()}
        if not experiments:
            return []
        runs = client.search_runs(
            list(experiments), order_by=["attributes.start_time DESC"], max_results=limit
        )
        ui = settings.serve.mlflow_ui_url
        return [
            {
                "run_id": r.info.run_id,
                "experiment": experiments.get(r.info.experiment_id, r.info.experiment_id),
                "name": r.info.run_name,
                "status": r.info.status,
                "start_time": r.info.start_time / 1000 if r.info.start_time else None,
                "params": dict(r.data.params),
                "metrics": {k: float(v) for k, v in r.data.metrics.items()},
                "url": f"{ui.rstrip('/')}/#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}"
                if ui
                else None,
            }
            for r in runs
        ]

    return latest
