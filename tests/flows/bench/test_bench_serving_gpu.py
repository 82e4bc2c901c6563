"""The GPU serving bench: its runner on this CPU (a few-MB Llama, one stream, four tokens), then
`impetus bench serving --device gpu` logging what it wrote as an MLflow run; and the merging of
results files that the device's per-command time limit splits by model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.settings import PROJECT_ROOT
from tests.flows.conftest import run_cli


def run_runner(
    tmp_path: Path, models_dir: Path, *args: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """The runner on the few-MB Llama with `args` (and `env`), in a process of its own; its
    results, which must hold no error and no skipped cell."""
    out = tmp_path / "out"
    runner = ["flows.bench.gpu.runner", str(out), "--tiny", "--models", "tiny-bf16"]
    runner += ["--smollm2", str(models_dir / "smollm2-135m-instruct")]
    runner += ["--work", str(tmp_path / "work"), *args]
    done = subprocess.run(
        [sys.executable, "-m", *runner],
        cwd=PROJECT_ROOT,
        env={**os.environ, "IMPETUS_DATA_DIR": str(tmp_path / "work" / "data"), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert results["errors"] == [] and results["skipped"] == []
    return results


@pytest.mark.slow
def test_runner_results_log_as_an_mlflow_run(
    tmp_path: Path, ready_models_dir: Path, prefect_harness: None
) -> None:
    out = tmp_path / "out"
    results = run_runner(
        tmp_path, ready_models_dir, "--sides", "bare,bare_lean,bare_thread,impetus",
        "--levels", "1", "--forward-levels", "1", "--max-tokens", "4", "--rounds", "1",
        "--agent-model", "tiny-bf16", "--agent-turns", "1",  # and one agent turn
    )  # fmt: skip
    sides = {(c["side"], c["streams"]) for c in results["cells"]}
    assert sides == {
        ("bare", 1), ("bare_lean", 1), ("bare_thread", 1), ("forward", 1), ("impetus", 1),
        ("agent-1", 1),
    }  # fmt: skip
    bare = {c["side"]: c for c in results["cells"] if c["side"].startswith("bare")}
    assert {c["tokens"] for c in bare.values()} == {4} and bare["bare_lean"]["gen_step_ms"] > 0
    agent = next(c for c in results["cells"] if c["side"] == "agent-1")
    # turn 1 cold, then after a restart turn 2 from the disk tier (the system prompt's checkpoint
    # or the conversation's file) read at load, and after another restart turn 3 reading its
    # own; each with the engine's own view of its TTFT
    assert agent["cold_prompt_tokens"] > 1000 and agent["restart_disk_hits"] == 1
    assert agent["restart_preloaded_bytes"] > 0 and agent["ondemand_disk_hits"] == 1
    assert agent["restart_cached_tokens"] > agent["cold_prompt_tokens"] // 2
    assert agent["ondemand_cached_tokens"] > agent["restart_cached_tokens"]
    assert agent["disk_bytes_max"] <= agent["disk_cap_bytes"]
    # each server's requests: a warm-up, then the turn(s)
    assert [len(e["admitted_to_first_token_ms"]) for e in agent["engine"]] == [2, 2, 2]
    impetus = next(c for c in results["cells"] if c["side"] == "impetus")
    assert impetus["tokens"] == 4 and impetus["failed"] == 0 and impetus["bw_fraction"] > 0
    # one stream never enters the batch (prefilled and decoded alone: solo prefill, speculation),
    # so the profile has no batch step; the event loop's side is still timed
    prof = impetus["profile"]
    assert prof["rows"] == 0 and prof["step_ms"] is None and prof["loop_lag_ms"] > 0
    assert len(prof["admitted_to_first_token_ms"]) == 1

    state = tmp_path / "state"
    state.mkdir()
    logged = run_cli(
        ["bench", "serving", "--device", "gpu", "--results", str(out / "results.json"), "--json"],
        state,
    )
    assert logged.returncode == 0, logged.stderr[-4000:]
    result = json.loads(logged.stdout[logged.stdout.index("{") :])
    assert "| impetus | 1 |" in result["table"] and "| bare | 1 |" in result["table"]
    assert "| bare_lean | 1 |" in result["table"] and "| bare_thread | 1 |" in result["table"]
    assert "| tiny-bf16 | 1 (50) |" in result["table"]  # the agent loop's row

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{state / 'mlflow.db'}")
    run = mlflow.get_run(result["run_id"])
    assert run.info.experiment_id == mlflow.get_experiment_by_name("serving-bench").experiment_id
    m = run.data.metrics
    assert m["tiny-bf16_impetus_c1_tps"] == pytest.approx(impetus["tps"])
    assert "tiny-bf16_impetus_c1_prof_step_ms" not in m and m["tiny-bf16_forward_c1_forward_ms"] > 0
    assert m["tiny-bf16_impetus_c1_prof_loop_lag_ms"] > 0
    assert m["tiny-bf16_agent-1_c1_cold_ttft_ms"] == pytest.approx(agent["cold_ttft_ms"])


@pytest.mark.slow
def test_interleaved_rounds_pair_the_bare_loop_with_impetus(
    tmp_path: Path, ready_models_dir: Path
) -> None:
    """`--interleave`: the servers up while the bare loop runs here, their rounds alternating;
    each server's cell carries each round's ratio and their median, and the table shows them.
    With `--thread-engine`, Impetus twice: its engine in a process of its own (as on a GPU,
    forced here), whose profile comes from that process, and in the server's."""
    from flows.bench.serving_gpu import goals, render_table

    results = run_runner(
        tmp_path, ready_models_dir, "--interleave", "--thread-engine", "--levels", "2",
        "--forward-levels", "2", "--max-tokens", "4", "--rounds", "3",
        env={"IMPETUS_SERVE__ENGINE_PROCESS": "on"},
    )  # fmt: skip
    cells = {c["side"]: c for c in results["cells"]}
    assert set(cells) == {"forward", "bare", "impetus", "impetus_thread"}
    bare = cells["bare"]
    assert bare["rounds"] == 3 and bare["tokens"] == 24 and bare["gen_step_ms"] > 0
    for side in ("impetus", "impetus_thread"):
        impetus = cells[side]
        assert impetus["rounds"] == 3 and impetus["tokens"] == 24 and impetus["failed"] == 0
        ratios = impetus["paired_ratios"]
        assert ratios == pytest.approx(
            [i / b for i, b in zip(impetus["round_tps"], bare["round_tps"], strict=True)]
        )
        assert impetus["paired_ratio_median"] == pytest.approx(sorted(ratios)[1])
        profile = impetus["profile"]  # the engine's steps, from whichever process ran them
        assert profile["steps"] > 0 and profile["step_ms"] > 0
        assert len(profile["admitted_to_first_token_ms"]) == 2  # the round's two sequences
        assert "mlx-engine-tiny-bf16" in profile["thread_cpu_s"]
    # the engine process's threads and the server's are both counted
    assert "engine-process" in cells["impetus"]["profile"]["thread_cpu_s"]
    assert "engine-process" not in cells["impetus_thread"]["profile"]["thread_cpu_s"]
    # the yardstick's goals read it where it ran on the 1B model
    for c in results["cells"]:
        c["model"], c["streams"] = "llama1b-bf16", 64
    results["models"] = {"llama1b-bf16": results["models"]["tiny-bf16"]}
    impetus = cells["impetus"]
    assert goals(results)["goal_c64_vs_bare_paired"] == impetus["paired_ratio_median"]
    table = render_table(results)
    assert f"| {impetus['paired_ratio_median']:.2f} (" in table
    assert "| impetus_thread | 64 |" in table


def test_results_files_merge_by_model(tmp_path: Path) -> None:
    from flows.bench.serving_gpu import ResultsError, read_results

    def write(name: str, model: str) -> Path:
        cell: dict[str, Any] = {"model": model, "side": "bare", "streams": 1, "tps": 1.0}
        data = {"machine": {"gpu": name}, "config": {}, "models": {model: {}}, "cells": [cell]}
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**data, "skipped": [], "errors": []}))
        return path

    a, b, again = write("a", "llama1b-bf16"), write("b", "llama1b-q4"), write("c", "llama1b-q4")
    merged = read_results.fn([a, b])
    assert set(merged["models"]) == {"llama1b-bf16", "llama1b-q4"}
    assert len(merged["cells"]) == 2 and merged["machine"] == {"gpu": "a"}
    with pytest.raises(ResultsError, match="llama1b-q4 measured in two files"):
        read_results.fn([a, b, again])


def test_a_shape_probe_reads_by_cache_kind_old_and_new() -> None:
    from flows.bench.serving_gpu import cell_metrics, render_extras

    timings = {"fresh_shape_ms": [40.0, 60.0, 80.0], "seen_shape_ms": [5.0, 6.0]}
    base = {"model": "m", "side": "shape-probe", "streams": 1, "context": 2400, "new_tokens": 40}
    new = {**base, "context_prefill_ms": [900.0, 12.0], "plain": timings, "batch": timings}
    old = {**base, **timings}  # before 2026-12-05: the plain cache, at the top level
    assert cell_metrics(new) == {
        "plain_fresh_shape_ms": 60.0, "plain_seen_shape_ms": 5.5,
        "batch_fresh_shape_ms": 60.0, "batch_seen_shape_ms": 5.5,
    }  # fmt: skip
    assert cell_metrics(old) == {"plain_fresh_shape_ms": 60.0, "plain_seen_shape_ms": 5.5}
    text = render_extras({"cells": [new]})
    assert "- plain: 60.0 / 5.5" in text and "- batch: 60.0 / 5.5" in text


def test_a_level_without_batch_steps_logs_what_it_has() -> None:
    """One stream decodes alone (solo prefill, speculation): no batch step, so the profile's step
    figures are None; the level's own figures still log, the missing ones are left out."""
    from flows.bench.serving_gpu import cell_metrics

    cell = {
        "model": "m", "side": "impetus", "streams": 1, "tps": 300.0, "ttft_p50_ms": 20.0,
        "gen_step_ms": None,
        "profile": {"steps": 0, "step_ms": None, "per_token_ms": None, "loop_lag_ms": 1.5},
    }  # fmt: skip
    m = cell_metrics(cell)
    assert m["tps"] == 300.0 and m["ttft_p50_ms"] == 20.0
    assert "gen_step_ms" not in m and "prof_step_ms" not in m
    assert m["prof_loop_lag_ms"] == 1.5


def test_a_round_timeline_is_ms_from_the_clients_start_and_logs() -> None:
    """The server's instants and the client's share one clock (CLOCK_MONOTONIC): the timeline
    puts the engine's part of the profiled round between the client's start and its end."""
    from flows.bench.gpu.runner import round_timeline
    from flows.bench.serving_gpu import cell_metrics, render_timelines

    server = {
        "first_generate": 100.020, "last_generate": 100.030, "first_step": 100.050,
        "last_step_end": 100.850, "last_deliver": 100.851, "steps_busy_s": 0.78,
        "steps_span_s": 0.80, "fill_busy_s": 0.012, "first_request": 100.004,
        "last_request": 100.028,
    }  # fmt: skip
    tl = round_timeline((100.0, 100.9, 100.86, 100.06, 100.075, 100.001, 100.003), server)
    assert tl is not None and round_timeline((100.0, 100.9, 100.86), None) is None
    assert tl["first_generate"] == 20.0 and tl["first_step"] == 50.0
    assert tl["steps_busy_ms"] == 780.0 and tl["steps_span_ms"] == 800.0
    assert tl["client_last_token"] == 860.0 and tl["client_end"] == 900.0
    assert tl["fill_busy_ms"] == 12.0
    assert tl["client_first_token"] == 60.0 and tl["client_all_started"] == 75.0
    assert tl["client_first_send"] == 1.0 and tl["client_last_send"] == 3.0
    assert tl["first_request"] == 4.0 and tl["last_request"] == 28.0
    cell = {"model": "m", "side": "impetus", "streams": 64, "tps": 9000.0,
            "profile": {"steps": 128, "step_ms": 6.0, "timeline": tl}}  # fmt: skip
    m = cell_metrics(cell)
    assert m["prof_tl_first_step"] == 50.0 and m["prof_tl_client_end"] == 900.0
    text = render_timelines({"cells": [cell]})
    assert (
        "| m impetus 64 | 1–3 | 4–28 | 20–30 | 50 | 780 / 800 | 12 | 60–75 | 850 | 860 | 900 |"
        in text
    )
    # a timeline from before the sends, receipts, admission and first-token instants renders
    old = round_timeline(
        (100.0, 100.9, 100.86),
        {k: v for k, v in server.items() if k not in ("fill_busy_s", "first_request")},
    )
    assert old is not None and "fill_busy_ms" not in old
    cell["profile"]["timeline"] = old
    assert (
        "| m impetus 64 | – | – | 20–30 | 50 | 780 / 800 | – | – | 850 | 860 | 900 |"
        in render_timelines({"cells": [cell]})
    )


def test_client_instants_take_each_streams_first_and_last_token() -> None:
    from flows.bench.gpu.runner import client_instants

    got = client_instants(1.0, 9.0, [[2.0, 5.0], [3.0, 7.0], []], [1.5, 1.1, 1.2])
    assert got == (1.0, 9.0, 7.0, 2.0, 3.0, 1.1, 1.5)  # ... and the first and last request sent
    assert client_instants(1.0, 9.0, [], []) == (1.0, 9.0, 9.0, 9.0, 9.0, 9.0, 9.0)  # nothing


def test_a_burst_from_several_client_processes_merges_as_one_round(tmp_path: Path) -> None:
    """A round's streams dealt out among spawned client processes (the GPU machine runs one per
    16 streams) start at one instant and come back as one round: every stream's tokens, its
    piece times on the clock that all processes share, inside the round's start and end."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from flows.bench.gpu.runner import client_procs, http_burst
    from flows.bench.server import Server
    from tests.serving.http.fake_server import fake_servers

    assert client_procs(1) == 1 and client_procs(128) <= max(1, (os.cpu_count() or 2) // 2)
    with fake_servers(tmp_path) as start:
        url = start().url
        server = Server("fake", url, "fake-llm", proc=None, log=Path())  # type: ignore[arg-type]
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=spawn) as pool:
            http_burst(server, 6, 4, pool, 2)  # as the runner does: processes up first
            got = http_burst(server, 6, 4, pool, 2)
    assert got["failed"] == 0 and got["streams"] == 6
    assert len(got["tokens"]) == 6 and all(t > 0 for t in got["tokens"])
    started, ended, last, first, all_started, first_sent, last_sent = got["client"]
    # one process's first token may come before a busy machine lets the other send: no order
    # between the last send and the first token
    assert started <= first_sent <= last_sent <= ended
    assert first_sent <= first <= all_started <= last <= ended
    assert got["wall_s"] == pytest.approx(ended - started)
    assert all(started <= t <= ended for s in got["stamps"] for t in s)


def test_the_cache_probe_steps_every_way_of_admission() -> None:
    """flows/bench/gpu/cache_probe.py on a tiny random Llama: each way admits every prompt and
    decodes, the batch cache reported (the merged ones longer than the 256-token step)."""
    pytest.importorskip("mlx_lm")
    import mlx.core as mx
    from mlx_lm.models import llama

    from flows.bench.gpu.cache_probe import run
    from flows.bench.gpu.models import LLAMA_MICRO

    mx.random.seed(1)
    model = llama.Model(llama.ModelArgs.from_dict({**LLAMA_MICRO, "vocab_size": 512}))
    mx.eval(model.parameters())
    prompts = [[3, 5 + i, 7, 2 * i + 1, 9][: 3 + i % 3] for i in range(6)]
    for way in ("scratch", "cached", "stored", "cached_copied"):
        got = run(model, prompts, way, steps=6)
        assert got["way"] == way and got["step_ms_p50"] > 0
        assert got["keys"][0] == len(prompts) and got["idx"] >= 5
        assert (got["keys"][2] == 256) == (way == "scratch")
