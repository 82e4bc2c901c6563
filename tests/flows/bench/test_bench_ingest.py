"""`bench_ingest` on five tiny documents: both sides index them all, and one MLflow run holds the
throughput, step shares and overhead, with the table as an artifact."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.bench.ingest import STEPS, BenchConfig, bench_ingest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DOCS = {
    "one.md": "# One\n\nThe first document talks about vector stores and lineage.\n",
    "two.txt": "The second document is plain text about Prefect flows and retries.",
    "three.md": "# Three\n\n## A section\n\nBlue/green re-indexing switches an alias.\n",
    "four.txt": "Four: DuckDB records which run wrote which point.",
    "five.md": "# Five\n\nGreat Expectations checks every chunk before it is embedded.\n",
}


def test_bench_logs_an_mlflow_run_with_its_metrics(data_dir: Path, tmp_path: Path) -> None:
    import mlflow

    from flows.bench.tracking import tracking_uri
    from pipelines.settings import get_settings

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name, text in DOCS.items():
        (corpus / name).write_text(text)
    cfg = BenchConfig(
        corpus=str(corpus), max_tokens=64, overlap_tokens=8, rounds=2, batch_documents=2
    )
    result = bench_ingest(cfg)

    m = result.metrics
    assert m["documents"] == 5 and m["failed_direct"] == m["failed_flow"] == 0
    assert m["chunks"] >= 5
    # Each step is one task run per batch of two: groups of 3 and 2 documents make 3 batches.
    assert m["batch_documents"] == 2
    assert 3 * 8 <= m["flow_task_runs"] < 5 * 8
    for side in ("direct", "flow"):
        assert m[f"{side}_docs_per_s"] > 0 and m[f"{side}_chunks_per_s"] > 0
        assert m[f"{side}_embed_s"] > 0 and m[f"{side}_parse_s"] > 0
        shares = sum(m[f"{side}_{step}_share"] for step in (*STEPS, "unaccounted"))
        assert shares == pytest.approx(1.0)
    assert "flow overhead" in result.table and "2 documents a batch" in result.table

    mlflow.set_tracking_uri(tracking_uri(get_settings()))
    run = mlflow.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["flow_overhead_pct"] == pytest.approx(m["flow_overhead_pct"])
    assert run.data.params["max_tokens"] == "64"
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "ingest-bench"
    assert str(data_dir) in experiment.artifact_location
