"""The MLflow store every benchmark and evaluation logs to: SQLite under data_dir.

`mlflow ui --backend-store-uri sqlite:///data/state/mlflow.db` opens it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.errors import ImpetusError

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


class BaselineError(ImpetusError):
    """The run to compare with cannot be found; the message says what to pass instead."""


ROLE_TAG = "impetus_role"  # "bench" on a benchmark's parent run
CONFIG_TAG = "impetus_config"  # a configuration's key on each child run


def bench_results(
    settings: Settings, experiment: str, run: str
) -> tuple[str, dict[str, dict[str, float]]]:
    """A benchmark run's metrics by configuration: `run` is the run id a bench printed (or one
    of its configurations' ids) or `latest` (the newest finished one in `experiment`)."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri(settings))
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise BaselineError(
            f"MLflow has no {experiment!r} runs in {settings.data_dir} yet: run the bench once "
            "without --compare-to"
        )
    if run == "latest":
        found = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.{ROLE_TAG} = 'bench' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if not found:
            raise BaselineError(f"no finished {experiment!r} run to compare with yet")
        parent = found[0]
    else:
        try:
            parent = client.get_run(run)
        except MlflowException:
            raise BaselineError(
                f"no MLflow run {run!r} in {tracking_uri(settings)}: pass a run id a bench "
                "printed, or `latest`"
            ) from None
        if parent.info.experiment_id != exp.experiment_id:
            raise BaselineError(f"run {run} is not an {experiment!r} run")
        if parent.data.tags.get(ROLE_TAG) != "bench" and "mlflow.parentRunId" in parent.data.tags:
            parent = client.get_run(parent.data.tags["mlflow.parentRunId"])
    children = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    return parent.info.run_id, {
        c.data.tags[CONFIG_TAG]: dict(c.data.metrics) for c in children if CONFIG_TAG in c.data.tags
    }
