"""`impetus bench embeddings|llm` on their small configurations: the MLflow runs that
`mlflow.search_runs` returns (a parent per bench, a nested run per configuration, the table as
CSV/JSON/Markdown and a plot), and `--compare-to` failing the command on a real regression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flows.conftest import link_models, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

# Speeds and costs are noisy on shared CI machines; these tests judge quality metrics only.
QUALITY_ONLY = {"IMPETUS_BENCH__MAX_SPEED_DROP": "1", "IMPETUS_BENCH__MAX_COST_RISE": "1000"}


def _runs(state: Path, experiment: str) -> object:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=[experiment], order_by=["attributes.start_time"])


def _artifacts(state: Path, run_id: str) -> set[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    return {a.path for a in client.list_artifacts(run_id)}


def test_embedding_bench_logs_one_run_per_model_and_dimension(
    tmp_path: Path, ready_models_dir: Path
) -> None:
    state = tmp_path / "state"
    link_models(state, ready_models_dir)
    r = run_cli(["bench", "embeddings", "--quick", "--json"], state)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout)
    assert [(row["model"], row["dims"]) for row in result["rows"]] == [
        ("all-minilm-l6-v2", 384),
        ("all-minilm-l6-v2", 128),
    ]
    for row in result["rows"]:
        for metric in ("hit_at_1", "hit_at_10", "mrr_at_10", "ndcg_at_10"):
            assert 0 <= row[f"dense_{metric}"] <= 1 and 0 <= row[f"hybrid_{metric}"] <= 1
        assert row["dense_hit_at_10"] >= 0.9  # 12 easy questions over 6 documents
        assert row["embed_chunks_per_s"] > 0 and row["index_bytes"] > 0
        assert 0 < row["dense_query_p50_ms"] <= row["dense_query_p95_ms"]
    full, cut = result["rows"]
    assert cut["vector_bytes"] == full["vector_bytes"] / 3  # 128 of 384 float32 components

    runs = _runs(state, "embedding-bench")
    parent = runs[runs["tags.impetus_role"] == "bench"]
    children = runs[runs["tags.mlflow.parentRunId"] == result["run_id"]]
    assert list(parent["run_id"]) == [result["run_id"]]
    assert set(children["tags.impetus_config"]) == {"all-minilm-l6-v2@384", "all-minilm-l6-v2@128"}
    assert set(children["params.dims"]) == {"384", "128"}
    assert children["metrics.dense_ndcg_at_10"].notna().all()
    assert parent["params.questions"].iloc[0] == "12" and parent["params.documents"].iloc[0] == "6"
    assert {"results.csv", "results.json", "results.md", "results.png"} <= _artifacts(
        state, result["run_id"]
    )
    assert not list((state / "bench").glob("embeddings-*"))  # the scratch store is removed


def test_llm_bench_measures_quantizations_and_fails_on_a_regression(
    tmp_path: Path, ready_models_dir: Path
) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "smollm2-135m-instruct").symlink_to(
        ready_models_dir / "smollm2-135m-instruct", target_is_directory=True
    )
    args = ["bench", "llm", "--quick", "--bits", "16,4", "--json"]
    r = run_cli([*args, "--group-size", "32"], state)
    assert r.returncode == 0, r.stderr[-2000:]
    first = json.loads(r.stdout)
    fp16, q4 = first["rows"]
    assert (fp16["model"], q4["model"]) == (
        "smollm2-135m-instruct-fp16",
        "smollm2-135m-instruct-4bit-g32",
    )
    assert fp16["token_agreement"] == fp16["greedy_agreement"] == 1.0  # the reference itself
    assert 0 <= q4["token_agreement"] <= 1 and 0 <= q4["greedy_agreement"] <= 1
    assert q4["size_bytes"] < fp16["size_bytes"] / 2
    for row in first["rows"]:
        assert row["perplexity"] > 1 and row["decode_tps"] > 0 and row["prompt_tps"] > 0
        assert row["peak_memory_mb"] > 0
    # A baseline whose 4-bit model had a 10 % lower perplexity: the same run now regresses.
    from mlflow.tracking import MlflowClient

    runs = _runs(state, "llm-bench")
    q4_run = runs[runs["tags.impetus_config"] == "smollm2-135m-instruct@4bit"]["run_id"].iloc[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{state / 'mlflow.db'}")
    client.log_metric(q4_run, "perplexity", q4["perplexity"] * 0.9)
    r = run_cli([*args, "--group-size", "32", "--compare-to", q4_run], state, **QUALITY_ONLY)
    assert r.returncode == 3, r.stderr[-2000:]
    second = json.loads(r.stdout)
    assert second["baseline_run_id"] == first["run_id"] and second["regressions"] == 1
    failed = [line for line in second["comparison"].splitlines() if line.endswith("| FAIL |")]
    assert len(failed) == 1 and failed[0].startswith("| smollm2-135m-instruct@4bit | perplexity |")
    assert "1 metric(s) got worse" in r.stderr

    runs = _runs(state, "llm-bench")
    parents = runs[runs["tags.impetus_role"] == "bench"]
    assert list(parents["run_id"]) == [first["run_id"], second["run_id"]]
    assert parents["tags.impetus_baseline"].iloc[1] == first["run_id"]
    children = runs[runs["tags.mlflow.parentRunId"] == first["run_id"]]
    assert set(children["params.bits"]) == {"16", "4"}
    assert children["metrics.perplexity"].notna().all()
    assert {"results.csv", "results.json", "results.png", "comparison.md"} <= _artifacts(
        state, second["run_id"]
    )

    r = run_cli([*args, "--group-size", "32", "--compare-to", "0123456789abcdef"], state)
    assert r.returncode == 1 and "no MLflow run '0123456789abcdef'" in r.stderr
