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
    device: Annotated[
        str,
        typer.Option(
            "--device",
            help="cpu: measure here. gpu: log --results files that flows/bench/gpu/runner.py "
            "wrote on a GPU machine (flows/bench/gpu/stage.sh says how).",
        ),
    ] = "cpu",
    results: Annotated[
        list[Path] | None,
        typer.Option("--results", help="With --device gpu: a results.json (repeatable)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Our engine and server vs mlx-lm's: decode tok/s, concurrency, prefix cache, start-up."""
    from flows.console import fail

    if device not in ("cpu", "gpu"):
        raise fail(f"--device {device}: use cpu or gpu")
    if device == "gpu":
        missing = [p for p in results or [] if not p.is_file()]
        if not results or missing:
            raise fail(
                f"--device gpu logs the runner's results.json ({', '.join(map(str, missing))} "
                "not found)" if missing else "--device gpu needs --results FILE: run "
                "flows/bench/gpu/runner.py on the GPU machine first (flows/bench/gpu/stage.sh)"
            )  # fmt: skip
        s = _prepare()
        from flows.bench.serving_gpu import bench_serving_gpu

        with domain_errors():
            result = bench_serving_gpu(results)
        report(s, result, as_json)
        return
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


@app.command("speculative")
def bench_speculative(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 1 + 1 prompts, 12 tokens, 2 streams.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Prompt-lookup speculative decoding on vs off: single-stream chat and RAG, 16 streams."""
    s = _prepare()
    from flows.bench.speculative import SpecBenchConfig
    from flows.bench.speculative import bench_speculative as flow

    cfg = SpecBenchConfig.quick_config() if quick else SpecBenchConfig()
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


@app.command("ws")
def bench_ws(
    minutes: Annotated[
        float, typer.Option(min=0.1, help="Minutes per phase (without, then with the clients).")
    ] = 2.0,
    clients: Annotated[int, typer.Option(min=1, help="WebSocket clients on /api/ws.")] = 50,
    rounds: Annotated[
        int, typer.Option(min=1, help="Alternating segments per phase (same machine load).")
    ] = 4,
    as_json: JsonOpt = False,
) -> None:
    """The dashboard's /api/ws under load: 50 clients while 8 chat streams run, against the same
    load without them (every client every snapshot, RSS within 5 %, chat tok/s within 5 %)."""
    s = _prepare()
    from flows.bench.ws import WsBenchConfig
    from flows.bench.ws import bench_ws as flow

    with domain_errors():
        result = flow(WsBenchConfig(minutes=minutes, clients=clients, rounds=rounds))
    report(s, result, as_json)


@app.command("tracing")
def bench_tracing(
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 40 cheap requests and 8 tokens, one round.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """What tracing costs: chat at 8 streams with OTLP export on vs off (≥ 0.98×), and the
    /v1/models p50 it adds."""
    s = _prepare()
    from flows.bench.tracing import TracingBenchConfig
    from flows.bench.tracing import bench_tracing as flow

    cfg = TracingBenchConfig.quick_config() if quick else TracingBenchConfig()
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


@app.command("agent-loop")
def bench_agent_loop(
    turns: Annotated[
        int,
        typer.Option(
            "--turns",
            min=2,
            help="Turns of the conversation; past 20, a history window of 8 "
            "exchanges keeps prompts inside the context (run 200 to check the caps).",
        ),
    ] = 20,
    quick: Annotated[
        bool, typer.Option("--quick", help="CI-sized: 3 turns, a 1.5 KB system prompt.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A coding agent's turns (a ~7 KB system prompt with tools, a new user message each turn):
    TTFT of turns 2..N against the cold first (goal ≤ 0.2×), of the next turn after a restart,
    from the disk tier (≤ 0.3×), and the prefix cache's memory and disk bytes against their caps."""
    s = _prepare()
    from flows.bench.agent_loop import AgentLoopConfig
    from flows.bench.agent_loop import bench_agent_loop as flow

    if quick:
        cfg = AgentLoopConfig.quick_config()
    elif turns > 20:
        cfg = AgentLoopConfig.long_config(turns)
    else:
        cfg = AgentLoopConfig(turns=turns)
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


@app.command("soak")
def bench_soak(
    minutes: Annotated[
        float, typer.Option("--minutes", min=0.5, help="How long the load runs (warm-up included).")
    ] = 30.0,
    streams: Annotated[
        int, typer.Option("--streams", min=1, help="Concurrent clients on the mixed load.")
    ] = 50,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", min=1, help="Tokens per generation (CPU decode is slow).")
    ] = 8,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="Documents for RAG calls (default: data/samples)."),
    ] = None,
    only: Annotated[
        str,
        typer.Option("--only", help="Comma-separated routes of the mix to keep (diagnosis)."),
    ] = "",
    kv_cache_mb: Annotated[
        int,
        typer.Option(
            "--kv-cache-mb", min=0, help="The server's KV budget (serve.kv_cache_bytes), MiB."
        ),
    ] = 0,
    as_json: JsonOpt = False,
) -> None:
    """A long mixed load on one server: errors by kind, latency per route, RSS, fds, threads,
    prefix cache and queue over time, and verdicts (exit 1 when one fails)."""
    from flows.console import fail

    if corpus is not None and not corpus.is_dir():
        raise fail(f"--corpus {corpus}: not a folder")
    s = _prepare()
    from flows.bench.soak import SoakConfig
    from flows.bench.soak import bench_soak as flow
    from flows.bench.soak_load import MIX

    routes = tuple(r for r in only.replace(" ", "").split(",") if r)
    if bad := [r for r in routes if r not in dict(MIX)]:
        raise fail(f"--only {bad[0]}: not a route of the mix ({', '.join(dict(MIX))})")
    cfg = SoakConfig(minutes, streams, max_tokens, corpus=str(corpus.resolve()) if corpus else "")
    cfg.only = routes
    cfg.kv_cache_mb = kv_cache_mb
    with domain_errors():
        result = flow(cfg)
    report(s, result, as_json)
    failed = [n[len("verdict failed: ") :] for n in result.notes if n.startswith("verdict failed")]
    if failed:
        raise fail("soak verdicts failed: " + "; ".join(failed))
