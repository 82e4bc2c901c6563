"""The MLflow store every benchmark and evaluation logs to: SQLite under data_dir.

`mlflow ui --backend-store-uri sqlite:///data/state/mlflow.db` opens it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.settings import Settings


def tracking_uri(settings: Settings) -> str:
    """MLflow's recommended local store (SQLite, the default since 3.7), under data_dir."""
    return f"sqlite:///{settings.data_dir / 'mlflow.db'}"


def use_experiment(settings: Settings, name: str) -> None:
    """Point MLflow at data_dir's store and make `name` the active experiment (created once,
    with its artifacts under data_dir/mlartifacts)."""
    import mlflow

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(settings))
    if mlflow.get_experiment_by_name(name) is None:
        artifacts = (settings.data_dir / "mlartifacts").resolve().as_uri()
        mlflow.create_experiment(name, artifact_location=artifacts)
    mlflow.set_experiment(name)
