"""`impetus bench ...`: benchmarks are Prefect flows that log to MLflow (data_dir/mlflow.db) and
print a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import JsonOpt, domain_errors, echo_json, settings

if TYPE_CHECKING:
    from flows.bench.results import BenchResult
    from pipelines.settings import Settings

app = typer.Typer(
    help="Benchmarks: flows that log to MLflow and print a table.", no_args_is_help=True
)


def _prepare() -> Settings:
    """Settings, with Prefect pointed at data_dir before a benchmark flow is imported."""
    s = settings()
    from flows.console import _State
    from flows.prefect_env import prefect_env

    prefect_env(s, _State.verbose)
    return s


def report(s: Settings, result: BenchResult, as_json: bool) -> None:
    """The bench's table (or its whole result as JSON), notes, where its MLflow run and files are,
    the comparison with --compare-to, and exit 3 on a regression."""
    if as_json:
        echo_json(result.to_dict())
    else:
        typer.echo(result.table)
        for note in result.notes:
            typer.echo(f"note: {note}")
        from flows.commands.ui import ui_command

        db = s.data_dir / "mlflow.db"
        typer.echo(f"\nMLflow run {result.run_id} in {db}; see it with `{ui_command('mlflow')}`")
        typer.echo(f"its Prefect flow run: `{ui_command('prefect')}`")
        if result.files:
            typer.echo(f"files in {result.files}")
        if result.comparison:
            typer.echo("\n" + result.comparison)
    if result.regressions:
        from flows.console import fail

        raise fail(
            f"{result.regressions} metric(s) got worse than run {result.baseline_run_id} past "
            "their thresholds (settings `bench:`)",
            code=3,
        )


@app.command("serving")
def bench_serving(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="CI-sized: 1 and 4 streams, 16 tokens, a 600-token prefix, once."
        ),
    ] = False,
    ray: Annotated[
        bool, typer.Option("--ray", help="Also measure `impetus serve --ray` (slow to start).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Our engine and server vs mlx-lm's: decode tok/s, concurrency, prefix cache, start-up."""
    s = _prepare()
    from flows.bench.serving import BenchConfig
    from flows.bench.serving import bench_serving as flow

    cfg = BenchConfig.quick_config(ray=ray) if quick else BenchConfig(ray=ray)
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


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
    from flows.bench.ingest import BenchConfig
    from flows.bench.ingest import bench_ingest as flow

    cfg = BenchConfig(limit, max_chunks, max_tokens, overlap_tokens, rounds, corpus)
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


@app.command("structured")
def bench_structured(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 16 tokens, one round, one repetition.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Aggregate tok/s at 8 streams with half of them JSON-schema constrained vs none (≥ 0.9×)."""
    s = _prepare()
    from flows.bench.structured import StructuredBenchConfig
    from flows.bench.structured import bench_structured as flow

    cfg = StructuredBenchConfig.quick_config() if quick else StructuredBenchConfig()
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


@app.command("auth")
def bench_auth(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 60 cheap requests and 8 tokens, one round.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """What keys and rate limits cost: /v1/models p50 added (≤ 1 ms), chat at 8 streams (≥ 0.98×)."""
    s = _prepare()
    from flows.bench.auth import AuthBenchConfig
    from flows.bench.auth import bench_auth as flow

    cfg = AuthBenchConfig.quick_config() if quick else AuthBenchConfig()
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


@app.command("apis")
def bench_apis(
    quick: Annotated[
        bool,
        typer.Option("--quick", help="CI-sized: 8 tokens, one round, a 400-token first turn."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Chat completions vs Responses vs Messages (tok/s, TTFT at 1 and 8 streams; goal ≤ 5 %
    cost) and a previous_response_id follow-up's TTFT, prefix cache on vs off (≤ 0.3×)."""
    s = _prepare()
    from flows.bench.apis import ApisBenchConfig
    from flows.bench.apis import bench_apis as flow

    cfg = ApisBenchConfig.quick_config() if quick else ApisBenchConfig()
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


CompareOpt = Annotated[
    str | None,
    typer.Option(
        "--compare-to",
        help="An earlier run of this bench (its run id, or `latest`): print the deltas and exit "
        "with status 3 when a metric got worse past the thresholds of settings `bench:`.",
    ),
]


def _ints(text: str, what: str) -> tuple[int, ...]:
    from flows.console import fail

    try:
        values = tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise fail(f"{what} {text!r}: expected comma-separated integers, e.g. 256,128,64") from None
    if not values or any(v < 0 for v in values):
        raise fail(f"{what} {text!r}: expected comma-separated integers ≥ 0")
    return values


@app.command("embeddings")
def bench_embeddings(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="A registry embedding model (repeatable; default: the configured one)."
        ),
    ] = None,
    dims: Annotated[
        str, typer.Option("--dims", help="Dimensions to keep, comma-separated; 0 is the full size.")
    ] = "0,256,128,64",
    dataset: Annotated[
        Path | None,
        typer.Option(
            "--dataset", help="Labelled questions (JSON lines); default: the python-docs set."
        ),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="The documents the dataset's sources name (a folder)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick", help="CI-sized: data/eval/samples.jsonl over data/samples, dims 0,128."
        ),
    ] = False,
    compare_to: CompareOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Embedding models × dimensions: retrieval metrics, throughput, index size, query latency."""
    from flows.console import fail

    for path, what in ((dataset, "--dataset"), (corpus, "--corpus")):
        if path is not None and not path.exists():
            raise fail(f"{what} {path}: no such file or folder")
    s = _prepare()
    from flows.bench.embeddings import EmbeddingBenchConfig
    from flows.bench.embeddings import bench_embeddings as flow

    kw: dict[str, Any] = {"models": tuple(model or ()), "compare_to": compare_to}
    cfg = EmbeddingBenchConfig.quick_config(**kw) if quick else EmbeddingBenchConfig(**kw)
    if not quick or dims != "0,256,128,64":
        cfg.dims = _ints(dims, "--dims")
    if dataset is not None:
        cfg.dataset, cfg.corpus = str(dataset), str(corpus) if corpus else None
    elif corpus is not None:
        cfg.corpus = str(corpus)
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)


@app.command("llm")
def bench_llm(
    model: Annotated[
        str | None, typer.Option("--model", help="A registry LLM (default: the configured one).")
    ] = None,
    bits: Annotated[
        str, typer.Option("--bits", help="Quantizations, comma-separated (16 is always measured).")
    ] = "16,8,4",
    group_size: Annotated[
        int, typer.Option("--group-size", help="Weights per quantization group (32, 64, 128).")
    ] = 64,
    text: Annotated[
        Path | None,
        typer.Option(
            "--text", help="Held-out text for perplexity (default: CPython's pydoc topics)."
        ),
    ] = None,
    compute: Annotated[
        str,
        typer.Option(
            "--compute",
            help="auto (float32 on a CPU-only host, as the engine), native (as stored) or float32.",
        ),
    ] = "auto",
    quick: Annotated[
        bool,
        typer.Option("--quick", help="CI-sized: 64-token perplexity, 4 decode tokens, 1 trial."),
    ] = False,
    compare_to: CompareOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """LLM quantizations (16/8/4-bit via `impetus models quantize`): speed, memory, perplexity,
    agreement with the 16-bit model."""
    from flows.console import fail

    b = _ints(bits, "--bits")
    if bad := [x for x in b if x not in (4, 8, 16)]:
        raise fail(f"--bits {bad[0]}: use 4, 8 or 16")
    if group_size not in (32, 64, 128):
        raise fail(f"--group-size {group_size}: use 32, 64 or 128")
    if compute not in ("auto", "native", "float32"):
        raise fail(f"--compute {compute}: use auto, native or float32")
    if text is not None and not text.is_file():
        raise fail(f"--text {text}: no such file")
    s = _prepare()
    from flows.bench.llm import LLMBenchConfig
    from flows.bench.llm import bench_llm as flow

    kw: dict[str, Any] = {
        "model": model,
        "bits": b,
        "group_size": group_size,
        "text": str(text) if text else None,
        "compute": compute,
        "compare_to": compare_to,
    }
    cfg = LLMBenchConfig.quick_config(**kw) if quick else LLMBenchConfig(**kw)
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)
