"""`impetus bench ...`: benchmarks are Prefect flows that log to MLflow (data_dir/mlflow.db) and
print a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import JsonOpt, domain_errors, echo_json, settings

if TYPE_CHECKING:
    from pipelines.settings import Settings

app = typer.Typer(
    help="Benchmarks: flows that log to MLflow and print a table.", no_args_is_help=True
)


def _prepare() -> Settings:
    """Settings, with Prefect pointed at data_dir before a benchmark flow is imported."""
    s = settings()
    from flows.commands.ingest import prefect_env
    from flows.console import _State

    prefect_env(s, _State.verbose)
    return s


def _report(s: Settings, result: dict[str, Any], as_json: bool, where: str) -> None:
    """The flow's table (or its whole result as JSON) and where its MLflow run and files are."""
    if as_json:
        echo_json(result)
        return
    typer.echo(result["table"])
    typer.echo(
        f"\nMLflow run {result['run_id']} ({s.data_dir / 'mlflow.db'}); {where} in {result[where]}"
    )


@app.command("serving")
def bench_serving(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 1 and 4 streams, 16 tokens, one repetition.")
    ] = False,
    ray: Annotated[
        bool, typer.Option("--ray", help="Also measure `impetus serve --ray` (slow to start).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Our engine and server vs mlx-lm's: decode tok/s, concurrency, prefix cache, start-up."""
    s = _prepare()
    from flows.bench_serving import BenchConfig
    from flows.bench_serving import bench_serving as flow

    cfg = BenchConfig.quick_config(ray=ray) if quick else BenchConfig(ray=ray)
    with domain_errors():
        result = flow(cfg)
    _report(s, result, as_json, "logs")


@app.command("ingest")
def bench_ingest(
    limit: Annotated[
        int, typer.Option("--limit", help="Documents, spread evenly over the corpus (0: all).")
    ] = 0,
    max_chunks: Annotated[
        int, typer.Option("--max-chunks", help="Chunks embedded per document (0: all).")
    ] = 0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Chunk size in tokens.")] = 256,
    overlap_tokens: Annotated[
        int, typer.Option("--overlap-tokens", help="Overlap between chunks in tokens.")
    ] = 32,
    rounds: Annotated[
        int, typer.Option("--rounds", help="Interleaved groups (flow and direct alternate).")
    ] = 2,
    corpus: Annotated[
        str | None,
        typer.Option("--corpus", help="A folder of documents instead of Debian's Python docs."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The `ingest` flow vs the pipeline functions called directly: docs/s, chunks/s, step shares."""
    from flows.console import fail

    if corpus is not None and not Path(corpus).is_dir():
        raise fail(f"--corpus {corpus}: not a folder")
    s = _prepare()
    if corpus is None:
        from pipelines.corpora import CorpusError, python_docs

        try:
            python_docs(s.data_dir)  # fetched once, before any flow starts
        except CorpusError as e:
            raise fail(str(e)) from None
    from flows.bench_ingest import BenchConfig
    from flows.bench_ingest import bench_ingest as flow

    cfg = BenchConfig(limit, max_chunks, max_tokens, overlap_tokens, rounds, corpus)
    with domain_errors():
        result = flow(cfg)
    _report(s, result, as_json, "state")


@app.command("structured")
def bench_structured(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 16 tokens, one round, one repetition.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Aggregate tok/s at 8 streams with half of them JSON-schema constrained vs none (≥ 0.9×)."""
    s = _prepare()
    from flows.bench_structured import StructuredBenchConfig
    from flows.bench_structured import bench_structured as flow

    cfg = StructuredBenchConfig.quick_config() if quick else StructuredBenchConfig()
    with domain_errors():
        result = flow(cfg)
    _report(s, result, as_json, "logs")
