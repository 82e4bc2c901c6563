"""The MLflow store every benchmark and evaluation logs to (SQLite under data_dir), the one
logger of a bench's result, and the reader of an earlier run that `--compare-to` compares with.

`impetus ui mlflow` opens it (flows/commands/ui.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipelines.errors import ImpetusError

if TYPE_CHECKING:
    from flows.bench.results import BenchResult
    from pipelines.settings import Settings

Baseline = tuple[str, dict[str, dict[str, float]]]  # a run id, and metrics by configuration


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
BASELINE_TAG = "impetus_baseline"  # the run a --compare-to run was compared with
REGRESSIONS_TAG = "impetus_regressions"


def log_bench(
    settings: Settings,
    result: BenchResult,
    *,
    figure: Any = None,
    baseline: Baseline | None = None,
) -> BenchResult:
    """Log `result` as one parent run (params, metrics, results.md/csv/json, the optional plot)
    with a nested run per configuration; with `baseline`, compare the configurations' metrics
    (pipelines/evaluation/regression.py, thresholds of settings `bench:`) and log the comparison.
    Fills in the result's run id and comparison, and returns it."""
    import mlflow

    from flows.bench.results import to_csv

    if baseline is not None:
        from pipelines.evaluation import regression

        base_id, base_metrics = baseline
        current = {c.key: c.metrics for c in result.configs}
        deltas, notes = regression.compare(current, base_metrics, settings.bench)
        result.comparison = f"compared with run {base_id}\n\n" + regression.table(deltas, notes)
        result.baseline_run_id = base_id
        result.regressions = sum(d.failed for d in deltas)
        result.notes += notes
    use_experiment(settings, result.experiment)
    with mlflow.start_run(run_name=result.run_name, tags={ROLE_TAG: "bench"}) as parent:
        mlflow.log_params({k: str(v) for k, v in result.params.items()})
        mlflow.log_metrics({k: float(v) for k, v in result.metrics.items()})
        for c in result.configs:
            with mlflow.start_run(run_name=c.key, nested=True, tags={CONFIG_TAG: c.key}):
                mlflow.log_params({k: str(v) for k, v in c.params.items()})
                mlflow.log_metrics({k: float(v) for k, v in c.metrics.items()})
        mlflow.log_text(result.table, "results.md")
        mlflow.log_text(to_csv(result.rows or [result.metrics]), "results.csv")
        mlflow.log_dict({"metrics": result.metrics, "rows": result.rows}, "results.json")
        if figure is not None:
            mlflow.log_figure(figure, "results.png")
        if result.comparison is not None:
            mlflow.log_text(result.comparison, "comparison.md")
            mlflow.set_tags(
                {BASELINE_TAG: result.baseline_run_id, REGRESSIONS_TAG: result.regressions}
            )
        result.run_id = str(parent.info.run_id)
    return result


def bench_results(settings: Settings, experiment: str, run: str | None) -> Baseline | None:
    """A benchmark run's metrics by configuration: `run` is the run id a bench printed (or one
    of its configurations' ids) or `latest` (the newest finished one in `experiment`); None for
    None. Read before the bench starts, so that a wrong id fails at once."""
    if run is None:
        return None
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
