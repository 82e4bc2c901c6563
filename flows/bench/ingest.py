"""The ingestion benchmark: the `ingest` flow against the same pipeline functions called directly,
on real documents nobody here wrote (Debian's python3.11-doc HTML), in one run.

    impetus bench ingest                                  # all ~530 pages (hours on a 2-core CPU)
    impetus bench ingest --max-chunks 1                   # every page, only its first chunk embedded
    impetus bench ingest --limit 50 --max-tokens 128      # 50 pages spread over the manual
    impetus bench ingest --corpus DIR                     # any folder instead

Measured: documents/s and chunks/s of both sides, the share of time in each step (parse, chunk,
quality, embed, upsert, lineage, other), and the flow's overhead = flow wall time / direct wall
time - 1 (goal ≤ 15 %). The direct side does what the flow does (discover, load the embedder,
classify, then per batch of `ingest.batch_documents` documents parse → chunk → check → one embed
call → check → one intent → one upsert → a commit per document, then garbage collection and the
BM25 index) with no Prefect in between, into a data_dir of its own, so both sides index every
document as new and embed the same encoder batches; what the flow adds is its task runs (one per
step per batch) and Prefect's work between them. One untimed document through each side first
takes the process's one-off costs (imports, library set-up) out of the comparison. The documents
are split into `rounds` interleaved groups and the two sides alternate which goes first, so load
from other processes on a shared machine falls on both. The flow's step times are its task runs'
durations (read back from Prefect after each flow run, which takes a second or more of polling
and is left out of the flow's wall time); what is left of its wall time is orchestration between
tasks.

Both sides batch by the `ingest.batch_documents` setting (IMPETUS_INGEST__BATCH_DOCUMENTS), or
by `BenchConfig.batch_documents` where that is set; the table says which size ran.

`--max-chunks N` keeps only each document's first N chunks (chunking.max_chunks): parsing and
chunking still see every page in full; embedding, upserting and lineage see N chunks per page.
One MLflow run per benchmark (experiment `ingest-bench`, flows/bench/tracking.py) holds the
parameters, the metrics, the machine's load average and the table, with a nested run per side.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefect import flow

from flows.bench.results import BenchResult, machine, split_by_prefix

EXPERIMENT = "ingest-bench"
COLLECTION = "bench"
STEPS = ("parse", "chunk", "quality", "embed", "upsert", "lineage", "other")
# The flow's task names (flows/ingest/flow.py) by the step they belong to; unnamed ones are "other".
TASK_STEP = {
    "parse": "parse",
    "chunk": "chunk",
    "check-chunks": "quality",
    "check-vectors": "quality",
    "embed": "embed",
    "upsert": "upsert",
    "classify": "lineage",
    "record-chunks": "lineage",
    "record-indexed": "lineage",
    "record-failures": "lineage",
    "find-stale": "lineage",
    "mark-deleted": "lineage",
    "prune": "lineage",
}


@dataclass
class BenchConfig:
    """What to ingest and with which chunk settings."""

    limit: int = 0  # pages, spread evenly over the corpus (0: all)
    max_chunks: int = 0  # chunks kept per document (0: all)
    max_tokens: int = 256
    overlap_tokens: int = 32
    rounds: int = 2  # interleaved groups; the sides alternate going first
    corpus: str | None = None  # a folder of documents instead of the Python docs
    batch_documents: int = 0  # documents per batch on both sides (0: ingest.batch_documents)


@dataclass
class Side:
    """One side's totals: wall time, seconds per step, documents and chunks indexed."""

    wall_s: float = 0.0
    docs: int = 0
    chunks: int = 0
    failed: int = 0
    task_runs: int = 0
    readback_s: float = 0.0  # reading task runs back from Prefect: the benchmark's, not the flow's

    def __post_init__(self) -> None:
        self.steps: defaultdict[str, float] = defaultdict(float)


# -- the corpus ----------------------------------------------------------------------------------


def corpus_files(cfg: BenchConfig, data_dir: Path) -> list[Path]:
    """The documents, in path order; `limit` of them spread evenly over the corpus."""
    from pipelines.parse import SUPPORTED_EXTENSIONS

    if cfg.corpus:
        root = Path(cfg.corpus)
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS)
    else:
        from pipelines.corpora import python_docs

        root = python_docs(data_dir)
        files = sorted(p for p in root.rglob("*.html") if p.is_file())
    if cfg.limit and cfg.limit < len(files):
        files = [files[i * len(files) // cfg.limit] for i in range(cfg.limit)]
    return files


@contextmanager
def environment(**env: str) -> Iterator[None]:
    """IMPETUS_* overrides that the flows read at their edge (get_settings), for one block."""
    from pipelines.settings import get_settings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    get_settings.cache_clear()
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        get_settings.cache_clear()


def side_env(cfg: BenchConfig, data_dir: Path, models: Path) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "models").exists():
        (data_dir / "models").symlink_to(models.resolve(), target_is_directory=True)
    return {
        "IMPETUS_DATA_DIR": str(data_dir),
        "IMPETUS_CHUNKING__MAX_TOKENS": str(cfg.max_tokens),
        "IMPETUS_CHUNKING__OVERLAP_TOKENS": str(cfg.overlap_tokens),
        "IMPETUS_CHUNKING__MAX_CHUNKS": str(cfg.max_chunks),
        **(
            {"IMPETUS_INGEST__BATCH_DOCUMENTS": str(cfg.batch_documents)}
            if cfg.batch_documents
            else {}
        ),
    }


# -- the direct side: the pipeline functions, no Prefect -----------------------------------------


def direct_ingest(paths: Sequence[str], collection: str, side: Side) -> None:
    """The `ingest` flow's pipeline function with Prefect off (each step a plain call), its steps
    timed into `side.steps` by the same task names the flow side reads back."""
    from flows.ingest.flow import IngestInputs, run_ingest
    from pipelines.settings import get_settings

    def timed(task_name: str, seconds: float) -> None:
        side.steps[TASK_STEP.get(task_name, "other")] += seconds

    inputs = IngestInputs(get_settings(), tasks=False, on_step=timed)
    summary = run_ingest(inputs, list(paths), collection, False, run_id=f"direct-{time.time_ns()}")
    side.docs += summary["documents"]["new"] + summary["documents"]["changed"]
    side.chunks += summary["chunks_embedded"]
    side.failed += summary["documents"]["failed"]


# -- the flow side -------------------------------------------------------------------------------


def flow_ingest(paths: Sequence[str], collection: str, side: Side) -> None:
    """The `ingest` flow as a subflow; its task runs' durations give the step times."""
    from flows.ingest.flow import ingest

    summary = ingest(list(paths), collection=collection)
    side.docs += summary["documents"]["new"] + summary["documents"]["changed"]
    side.chunks += summary["chunks_embedded"]
    side.failed += summary["documents"]["failed"]
    t = time.perf_counter()
    durations = task_durations(summary["run_id"])
    side.readback_s += time.perf_counter() - t
    for name, seconds in durations:
        side.steps[TASK_STEP.get(name, "other")] += seconds
        side.task_runs += 1


def task_durations(flow_run_id: str, settle_s: float = 60.0) -> list[tuple[str, float]]:
    """(task name, seconds from running to done) of every task run of a flow run.

    Task run states reach the server as events, a little after the flow returns: read until two
    reads agree and every run has ended (or `settle_s` passes)."""
    deadline = time.monotonic() + settle_s
    last: list[tuple[str, float]] | None = None
    while True:
        runs = _read_task_runs(flow_run_id)
        done = [(r.name.rsplit("-", 1)[0], r.end_time, r.start_time) for r in runs]
        out = [(n, (e - s).total_seconds()) for n, e, s in done if e and s]
        if (last is not None and len(out) == len(last) == len(runs)) or (
            time.monotonic() > deadline
        ):
            return out
        last = out
        time.sleep(1.0)


def _read_task_runs(flow_run_id: str) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,  # 3.8.8's server rejects sort=null
                limit=200,
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < 200:
                return runs


# -- the benchmark -------------------------------------------------------------------------------


@flow(name="bench-ingest", log_prints=False)
def bench_ingest(cfg: BenchConfig | None = None) -> BenchResult:
    """Both sides on the same documents, interleaved; one MLflow run; the metrics and table."""
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or BenchConfig()
    settings = get_settings()
    files = corpus_files(cfg, settings.data_dir)
    if not files:
        raise ValueError("no documents to benchmark: the corpus folder holds no supported files")
    run_dir = settings.data_dir / "bench" / time.strftime("ingest-%Y%m%d-%H%M%S")
    envs = {name: side_env(cfg, run_dir / name, settings.models_dir) for name in ("direct", "flow")}
    sides = {"direct": Side(), "flow": Side()}
    run_side = {"direct": direct_ingest, "flow": flow_ingest}
    # Untimed: one document through each side first, so that neither pays the process's one-off
    # costs (imports, unstructured's and Great Expectations' set-up, the first task runs).
    for name in ("direct", "flow"):
        with environment(**side_env(cfg, run_dir / f"warmup-{name}", settings.models_dir)):
            run_side[name]([str(files[0])], COLLECTION, Side())
    load_start = os.getloadavg()
    rounds = max(1, min(cfg.rounds, len(files)))
    for r in range(rounds):
        group = [str(p) for p in files[r::rounds]]
        for name in ("direct", "flow") if r % 2 == 0 else ("flow", "direct"):
            with environment(**envs[name]):
                side, readback = sides[name], sides[name].readback_s
                t = time.perf_counter()
                run_side[name](group, COLLECTION, side)
                side.wall_s += time.perf_counter() - t - (side.readback_s - readback)
    load_end = os.getloadavg()

    metrics = _metrics(sides, len(files))
    metrics.update({"loadavg1_start": load_start[0], "loadavg1_end": load_end[0]})
    metrics["batch_documents"] = float(cfg.batch_documents or settings.ingest.batch_documents)
    corpus = cfg.corpus or "python3.11-doc"
    params = {
        **asdict(cfg),
        "corpus": corpus,
        "embedding_model": settings.models.embedding,
        **machine(),
    }
    per_side = split_by_prefix(metrics, sides, {name: {"side": name} for name in sides})
    result = BenchResult(
        "ingest", EXPERIMENT, f"{corpus.rsplit('/', 1)[-1]}-{len(files)}",
        render_table(metrics, cfg), params, metrics, per_side, files=str(run_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def _metrics(sides: dict[str, Side], n_files: int) -> dict[str, float]:
    d, f = sides["direct"], sides["flow"]
    m: dict[str, float] = {
        "documents": float(n_files),
        "chunks": float(d.chunks),
        "failed_direct": float(d.failed),
        "failed_flow": float(f.failed),
        "flow_task_runs": float(f.task_runs),
        "flow_overhead_pct": 100.0 * (f.wall_s / d.wall_s - 1.0),
        "flow_overhead_ms_per_task_run": 1000.0 * (f.wall_s - d.wall_s) / max(f.task_runs, 1),
    }
    for name, side in sides.items():
        m[f"{name}_wall_s"] = side.wall_s
        m[f"{name}_docs_per_s"] = side.docs / side.wall_s
        m[f"{name}_chunks_per_s"] = side.chunks / side.wall_s
        accounted = 0.0
        for step in STEPS:
            m[f"{name}_{step}_s"] = side.steps[step]
            accounted += side.steps[step]
        # Direct: Python between the timed calls; flow: orchestration between task runs.
        m[f"{name}_unaccounted_s"] = side.wall_s - accounted
        for step in (*STEPS, "unaccounted"):
            m[f"{name}_{step}_share"] = m[f"{name}_{step}_s"] / side.wall_s
    return m


def render_table(m: dict[str, float], cfg: BenchConfig) -> str:
    """The results table (Markdown), as docs/benchmarks.md shows it."""
    rows = [
        f"{m['documents']:.0f} documents, {m['chunks']:.0f} chunks "
        f"(max_tokens {cfg.max_tokens}, overlap {cfg.overlap_tokens}, "
        f"max_chunks {cfg.max_chunks or 'all'}, {m['batch_documents']:.0f} documents a batch); "
        f"load average {m['loadavg1_start']:.1f} → "
        f"{m['loadavg1_end']:.1f}",
        "",
        "| measure | direct (pipeline functions) | `ingest` flow |",
        "|---|---|---|",
        f"| wall time, s | {m['direct_wall_s']:.1f} | {m['flow_wall_s']:.1f} |",
        f"| documents/s | {m['direct_docs_per_s']:.2f} | {m['flow_docs_per_s']:.2f} |",
        f"| chunks/s | {m['direct_chunks_per_s']:.2f} | {m['flow_chunks_per_s']:.2f} |",
    ]
    for step in STEPS:
        rows.append(
            f"| {step}: s (share) | {m[f'direct_{step}_s']:.1f} "
            f"({m[f'direct_{step}_share']:.1%}) | {m[f'flow_{step}_s']:.1f} "
            f"({m[f'flow_{step}_share']:.1%}) |"
        )
    rows.append(
        f"| between steps: s (share) | {m['direct_unaccounted_s']:.1f} "
        f"({m['direct_unaccounted_share']:.1%}) | {m['flow_unaccounted_s']:.1f} "
        f"({m['flow_unaccounted_share']:.1%}) |"
    )
    rows.append(
        f"| flow overhead (goal ≤ 15 %) | | {m['flow_overhead_pct']:+.1f} % "
        f"({m['flow_overhead_ms_per_task_run']:.0f} ms per task run, "
        f"{m['flow_task_runs']:.0f} task runs) |"
    )
    return "\n".join(rows)
