"""The serving bench's GPU figures, measured on the GPU machine and logged here.

    impetus bench serving --device gpu --results results.json

The GPU machine has no MLflow (nor network, nor uv): `flows/bench/gpu/runner.py` measures there
(flows/bench/gpu/stage.sh and device.sh say how it gets there) and writes results.json; this flow
reads that file and logs it as one MLflow run of the serving bench's experiment (`serving-bench`,
run name `gpu`), with a nested run per cell (model × side × streams), and returns its table:

- per model, every side and level: aggregate and per-stream tok/s, TTFT and inter-token p50/p95,
  failed requests, the share of the memory-bandwidth limit;
- the issue's goals on the bf16 yardstick: Impetus single-stream vs the bare loop, aggregate vs
  the bare loop at 64/128 streams and vs `mlx_lm.server` at 16/64, time outside the forward;
- one engine step's time split at 1/16/64 streams (flows/bench/gpu/profile.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.results import BenchResult, Config, markdown
from flows.bench.serving import EXPERIMENT
from pipelines.errors import ImpetusError

YARDSTICK = "llama1b-bf16"
# Experiments (runner.py): bare_lean / bare_thread: the bare loop on the engine's lean batch / in
# a thread of its own; impetus_nohold: one SSE event per token; impetus_nospec: speculation off
# (few streams); impetus_si: a 0.5 ms GIL switch interval; impetus_pf64 / impetus_pf8: 64 prompts
# prefilled together / 8 at a time (the default before prefill_batch_tokens); impetus_thread: the
# engine in the server's process (serve.engine_process off; the default on a GPU is its own).
SIDES = (
    "bare", "bare_lean", "bare_thread", "impetus", "impetus_thread", "impetus_nohold",
    "impetus_nospec", "impetus_si", "impetus_pf64", "impetus_pf8", "mlx_lm",
)  # fmt: skip
CELL_METRICS = (
    "tps", "stream_tps_p50", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms", "failed",
    "bw_fraction", "gen_step_ms", "forward_ms", "sampling_ms", "paired_ratio_median",
)  # fmt: skip
CELL_COLUMNS = [
    ("side", "side", "s"), ("streams", "streams", "d"), ("tps", "aggregate tok/s", ",.0f"),
    ("vs_bare", "÷ bare", ".2f"), ("paired", "÷ bare, rounds paired (median)", "s"),
    ("stream", "per-stream tok/s p50", ".0f"),
    ("ttft", "TTFT p50 / p95 ms", "s"), ("itl", "inter-token p50 / p95 ms", "s"),
    ("failed", "failed", "s"), ("bw", "of bandwidth limit", "s"),
]  # fmt: skip
PROFILE_COLUMNS = [
    ("model", "model", "s"), ("streams", "streams", "d"), ("forward", "forward", ".2f"),
    ("sampling", "+ sampling", ".2f"), ("bare_step", "bare loop step", ".2f"),
    ("step", "engine step", ".2f"), ("gen_step", "of which mlx-lm step", ".2f"),
    ("per_token", "per-token work", ".2f"), ("deliver", "delivery", ".3f"),
    ("lag", "to the event loop", ".2f"), ("loop_cpu", "event loop CPU", ".2f"),
    ("outside", "outside the forward", "s"),
]  # fmt: skip
TIMELINE_COLUMNS = [
    ("cell", "model, side, streams", "s"), ("sent", "client sends", "s"),
    ("received", "the app receives", "s"), ("reach", "requests reach the engine", "s"),
    ("first_step", "first batch step", ".0f"), ("steps", "steps busy / span", "s"),
    ("fill", "admitting", "s"), ("first_tokens", "client's first tokens", "s"),
    ("last_step", "last step ends", ".0f"), ("last_token", "client's last token", ".0f"),
    ("end", "client's end", ".0f"),
]  # fmt: skip
PROFILED = (
    "impetus",
    "impetus_thread",
    "impetus_nohold",
)  # the sides whose engine step the profile table shows
PROFILE_METRICS = (
    "step_ms", "gen_step_ms", "per_token_ms", "deliver_ms", "loop_lag_ms", "loop_callback_ms",
)  # fmt: skip


def key(cell: dict[str, Any]) -> str:
    return f"{cell['model']}_{cell['side']}_c{cell['streams']}"


def cell_metrics(cell: dict[str, Any]) -> dict[str, float]:
    """A cell's numbers (its engine profile's under `prof_`; a speculative, agent-loop or shape
    probe cell's own scalars, the shape probe's lists as medians)."""
    if cell["side"] == "speculative" or cell["side"].startswith("agent-"):
        return {
            k: float(v) for k, v in cell.items() if isinstance(v, int | float) and k != "streams"
        }
    if cell["side"] == "shape-probe":
        return {
            f"{kind}_{k}": _median(ms[k])
            for kind, ms in _probe_kinds(cell).items()
            for k in ("fresh_shape_ms", "seen_shape_ms")
        }
    out = {m: float(cell[m]) for m in CELL_METRICS if cell.get(m) is not None}
    prof = cell.get("profile") or {}
    # a profile without a full step (a level whose rows never all ran) has None figures
    out.update({f"prof_{m}": float(prof[m]) for m in PROFILE_METRICS if prof.get(m) is not None})
    # the profiled round's instants, ms from the client's start (runner.round_timeline)
    out.update({f"prof_tl_{k}": float(v) for k, v in (prof.get("timeline") or {}).items()})
    if prof.get("steps"):
        for thread, name in (("MainThread", "loop"), (f"mlx-engine-{cell['model']}", "engine")):
            cpu = prof.get("thread_cpu_s", {}).get(thread)
            if cpu is not None:
                out[f"prof_{name}_cpu_ms_per_step"] = cpu * 1000 / prof["steps"]
    return out


def find(results: dict[str, Any], model: str, side: str, streams: int) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in results["cells"]
            if (c["model"], c["side"], c["streams"]) == (model, side, streams)
        ),
        None,
    )


def goals(results: dict[str, Any]) -> dict[str, float]:
    """The issue's goals on the yardstick, as ratios (absent where a cell is missing)."""
    out: dict[str, float] = {}

    def tps(side: str, b: int) -> float | None:
        c = find(results, YARDSTICK, side, b)
        return None if c is None or not c.get("tps") else float(c["tps"])

    def ratio(name: str, a: float | None, b: float | None) -> None:
        if a is not None and b:
            out[name] = a / b

    ratio("goal_single_vs_bare", tps("impetus", 1), tps("bare", 1))
    for b in (64, 128):
        ratio(f"goal_c{b}_vs_bare", tps("impetus", b), tps("bare", b))
        paired = (find(results, YARDSTICK, "impetus", b) or {}).get("paired_ratio_median")
        if paired is not None:  # --interleave: the rounds' ratios, each pair side by side
            out[f"goal_c{b}_vs_bare_paired"] = float(paired)
    for b in (16, 64):
        ratio(f"goal_c{b}_vs_mlx_lm", tps("impetus", b), tps("mlx_lm", b))
    for b in (1, 16, 64):
        imp, fwd = find(results, YARDSTICK, "impetus", b), find(results, YARDSTICK, "forward", b)
        step = ((imp or {}).get("profile") or {}).get("step_ms")
        if step and fwd:
            out[f"goal_c{b}_outside_forward"] = 1 - float(fwd["forward_ms"]) / float(step)
    return out


GOAL_ROWS = [
    ("Impetus HTTP 1 stream ÷ bare loop", "goal_single_vs_bare", "≥ 0.95×"),
    ("Impetus 64 streams ÷ bare loop", "goal_c64_vs_bare", "≥ 1.3×"),
    ("Impetus 128 streams ÷ bare loop", "goal_c128_vs_bare", "≥ 1.3×"),
    ("the same, rounds paired (--interleave), median: 64 streams", "goal_c64_vs_bare_paired", "≥ 1.3×"),
    ("the same, rounds paired (--interleave), median: 128 streams", "goal_c128_vs_bare_paired", "≥ 1.3×"),
    ("Impetus 16 streams ÷ mlx_lm.server", "goal_c16_vs_mlx_lm", "≥ 1.5×"),
    ("Impetus 64 streams ÷ mlx_lm.server", "goal_c64_vs_mlx_lm", "≥ 1.5×"),
    ("engine step outside the forward timed alone, 64 streams", "goal_c64_outside_forward", "≤ 20 %"),
]  # fmt: skip


def render_table(results: dict[str, Any]) -> str:
    """Markdown: the goals, then each model's cells, then the step profile."""
    g = goals(results)
    rows = [
        {"goal": name, "value": _fmt_goal(k, g.get(k)), "target": target}
        for name, k, target in GOAL_ROWS
    ]
    columns = [("goal", "goal", "s"), ("value", "measured", "s"), ("target", "target", "s")]
    parts = []
    if any(c["side"] in SIDES for c in results["cells"]):
        parts += [f"Goals on {YARDSTICK} (tok/s ratios measured in one run)\n"]
        parts.append(markdown(rows, columns))
    for model, info in results["models"].items():
        weights = "real weights" if info.get("real_weights") else "random weights"
        parts.append(
            f"\n{model} ({info['weight_bytes'] / 1e9:.2f} GB of weights, {weights}; "
            f"{info['prompt_tokens_mean']:.0f}-token prompts)\n"
        )
        parts.append(markdown(model_rows(results, model), CELL_COLUMNS))
    if any(c.get("profile") and c["side"] == "impetus" for c in results["cells"]):
        parts.append("\n" + render_profile(results))
    extras = render_extras(results)
    if extras:
        parts.append("\n" + extras)
    return "\n".join(parts)


def model_rows(results: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """One model's cells, by side and streams, with the ratio to the bare loop's."""
    cells = [c for c in results["cells"] if c["model"] == model and c["side"] in SIDES]
    cells.sort(key=lambda c: (SIDES.index(c["side"]), c["streams"]))
    rows = []
    for c in cells:
        bare = find(results, model, "bare", c["streams"])
        rows.append(
            {
                "side": c["side"],
                "streams": c["streams"],
                "tps": c["tps"],
                "vs_bare": c["tps"] / bare["tps"] if bare and bare.get("tps") else None,
                "paired": _paired(c),
                "stream": c["stream_tps_p50"],
                "ttft": f"{c['ttft_p50_ms']:.0f} / {c['ttft_p95_ms']:.0f}",
                "itl": f"{c['itl_p50_ms']:.2f} / {c['itl_p95_ms']:.2f}",
                "failed": _failed(c),
                "bw": f"{100 * c['bw_fraction']:.1f} %",
            }
        )
    return rows


def _paired(cell: dict[str, Any]) -> str:
    """`--interleave`'s median of the rounds' ratios, and the ratios themselves."""
    if cell.get("paired_ratio_median") is None:
        return ""
    each = ", ".join(f"{r:.2f}" for r in cell.get("paired_ratios", []))
    return f"{cell['paired_ratio_median']:.2f} ({each})"


def _median(xs: list[float]) -> float:
    import statistics

    return float(statistics.median(xs))


SPEC_COLUMNS = [
    ("kind", "greedy, 6 prompts each", "s"), ("off", "off tok/s", ".1f"),
    ("auto", "auto tok/s", ".1f"), ("ratio", "auto / off (pooled; median of pairs)", "s"),
    ("acceptance", "acceptance", ".2f"), ("per_step", "tokens per step", ".2f"),
    ("differ", "outputs differ", ".0f"),
]  # fmt: skip
AGENT_COLUMNS = [
    ("model", "model", "s"), ("turns", "turns (history kept)", "s"),
    ("cold", "turn 1 cold TTFT, ms", ".0f"), ("warm", "turns 2–N TTFT p50 / max, ms", "s"),
    ("warm_ratio", "p50 ÷ cold (≤ 0.2×)", ".2f"), ("restart", "after restart, ms", ".0f"),
    ("restart_ratio", "÷ cold (≤ 0.3×)", ".2f"),
    ("ondemand", "after restart, read by the turn: ms (÷ cold)", "s"),
    ("memory", "memory tier max / cap, MiB", "s"),
    ("disk", "disk tier max / folder / cap, MiB", "s"),
]  # fmt: skip


def render_extras(results: dict[str, Any]) -> str:
    """Speculative decoding, the agent loop and the shape probe, where the run has them."""
    parts = []
    for c in results["cells"]:
        if c["side"] != "speculative":
            continue
        rows = [
            {
                "kind": f"{label}, {c['model']}",
                "off": c[f"{k}_tps_off"],
                "auto": c[f"{k}_tps_auto"],
                "ratio": f"{c[f'{k}_speedup']:.2f}× ({c[f'{k}_speedup_median']:.2f}×)",
                "acceptance": c[f"{k}_acceptance"],
                "per_step": c[f"{k}_tokens_per_step"],
                "differ": c[f"{k}_greedy_mismatches"],
            }
            for k, label in (("chat", "chat, single stream"), ("rag", "RAG, single stream"))
        ]
        rows.append({
            "kind": "16 streams, aggregate", "off": c["streams_tps_off"],
            "auto": c["streams_tps_auto"], "ratio": f"{c['streams_ratio']:.2f}×",
        })  # fmt: skip
        parts += [
            "Speculative decoding (prompt lookup), in process\n",
            markdown(rows, SPEC_COLUMNS),
        ]
    mib = 1 / 2**20
    agents = [
        {
            "model": c["model"],
            "turns": f"{c['side'].removeprefix('agent-')} ({c.get('history', '')})",
            "cold": c["cold_ttft_ms"],
            "warm": f"{c['warm_ttft_p50_ms']:.0f} / {c['warm_ttft_max_ms']:.0f}",
            "warm_ratio": c["warm_ratio"],
            "restart": c["restart_ttft_ms"],
            "restart_ratio": c["restart_ratio"],
            "ondemand": (
                f"{c['ondemand_ttft_ms']:.0f} ({c['ondemand_ratio']:.2f}×)"
                if "ondemand_ttft_ms" in c
                else "–"
            ),
            "memory": f"{c['memory_bytes_max'] * mib:.0f} / {c['memory_cap_bytes'] * mib:.0f}",
            "disk": f"{c['disk_bytes_max'] * mib:.0f} / {c['folder_bytes_max'] * mib:.0f} / "
            f"{c['disk_cap_bytes'] * mib:.0f}",
        }
        for c in results["cells"]
        if c["side"].startswith("agent-")
    ]
    if agents:
        parts += ["\nAgent loop (streamed Chat Completions, prefix cache in memory and on disk)\n"]
        parts.append(markdown(agents, AGENT_COLUMNS))
    for c in results["cells"]:
        if c["side"] == "shape-probe":
            parts.append(
                f"\nPrefill of {c['new_tokens']} tokens on a {c['context']}-token KV cache, "
                f"{c['model']} (medians, ms, new cache length / one seen):"
            )
            parts += [
                f"- {kind}: {_median(ms['fresh_shape_ms']):.1f} / {_median(ms['seen_shape_ms']):.1f}"
                for kind, ms in _probe_kinds(c).items()
            ]
    return "\n".join(parts)


def _probe_kinds(cell: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """A shape probe's timings by cache kind (`plain`, `batch`, ...); a probe of before
    2026-12-05 timed the plain cache only, at its top level."""
    if "fresh_shape_ms" in cell:
        return {"plain": cell}
    return {k: v for k, v in cell.items() if isinstance(v, dict) and "fresh_shape_ms" in v}


def _failed(cell: dict[str, Any]) -> str:
    """`0`, or `61 of 192 (ReadError 61)` when the runner recorded the kinds."""
    n = int(cell["failed"])
    if not n:
        return "0"
    kinds = ", ".join(f"{k} {v}" for k, v in (cell.get("error_kinds") or {}).items())
    return f"{n} of {cell['requests']}" + (f" ({kinds})" if kinds else "")


def _fmt_goal(k: str, v: float | None) -> str:
    if v is None:
        return "not measured"
    return f"{100 * v:.0f} %" if k.endswith("outside_forward") else f"{v:.2f}×"


def render_profile(results: dict[str, Any]) -> str:
    """One engine step at 1/16/64 streams, ms (medians of the steps at full batch)."""
    rows = []
    for model in results["models"]:
        for c in results["cells"]:
            if c["model"] != model or c["side"] not in PROFILED or not c.get("profile"):
                continue
            fwd = find(results, model, "forward", c["streams"]) or {}
            bare = find(results, model, "bare", c["streams"]) or {}
            m = cell_metrics(c)
            step = m.get("prof_step_ms")
            rows.append(
                {
                    "model": model if c["side"] == "impetus" else f"{model} ({c['side']})",
                    "streams": c["streams"],
                    "forward": fwd.get("forward_ms"),
                    "sampling": fwd.get("sampling_ms"),
                    "bare_step": bare.get("gen_step_ms"),
                    "step": step,
                    "gen_step": m.get("prof_gen_step_ms"),
                    "per_token": m.get("prof_per_token_ms"),
                    "deliver": m.get("prof_deliver_ms"),
                    "lag": m.get("prof_loop_lag_ms"),
                    "loop_cpu": m.get("prof_loop_cpu_ms_per_step"),
                    "outside": (
                        f"{100 * (1 - fwd['forward_ms'] / step):.0f} %"
                        if step and fwd.get("forward_ms")
                        else None
                    ),
                }
            )
    head = "One decode step, ms (Impetus's engine thread; forward and sampling timed alone)\n\n"
    return head + markdown(rows, PROFILE_COLUMNS) + render_timelines(results)


def span(tl: dict[str, float], first: str, last: str) -> str:
    """`first–last` of a timeline, or – where it has no such instants (an older run)."""
    return f"{tl[first]:.0f}–{tl[last]:.0f}" if first in tl and last in tl else "–"


def render_timelines(results: dict[str, Any]) -> str:
    """Where each profiled round's wall time went (runner.round_timeline), ms from the client's
    start; empty when no round had batch steps."""
    rows = []
    for c in results["cells"]:
        tl = (c.get("profile") or {}).get("timeline")
        if not tl:
            continue
        rows.append({
            "cell": f"{c['model']} {c['side']} {c['streams']}",
            "sent": span(tl, "client_first_send", "client_last_send"),
            "received": span(tl, "first_request", "last_request"),
            "reach": f"{tl['first_generate']:.0f}–{tl['last_generate']:.0f}",
            "first_step": tl["first_step"],
            "steps": f"{tl['steps_busy_ms']:.0f} / {tl['steps_span_ms']:.0f}",
            "fill": f"{tl['fill_busy_ms']:.0f}" if "fill_busy_ms" in tl else "–",
            "first_tokens": (
                f"{tl['client_first_token']:.0f}–{tl['client_all_started']:.0f}"
                if "client_all_started" in tl else "–"
            ),
            "last_step": tl["last_step_end"],
            "last_token": tl["client_last_token"],
            "end": tl["client_end"],
        })  # fmt: skip
    if not rows:
        return ""
    head = "\n\nThe profiled round, ms from the client's start (one clock for both processes)\n\n"
    return head + markdown(rows, TIMELINE_COLUMNS)


def to_result(results: dict[str, Any], source: str) -> BenchResult:
    """The MLflow run's params, metrics (goals, and every cell's under its key) and configs."""
    metrics = goals(results)
    configs = []
    for c in results["cells"]:
        m = cell_metrics(c)
        configs.append(Config(key(c), {"model": c["model"], "side": c["side"]}, m))
        metrics.update({f"{key(c)}_{name}": v for name, v in m.items()})
    params: dict[str, Any] = {f"machine_{k}": v for k, v in results["machine"].items()}
    params.update({f"config_{k}": v for k, v in results["config"].items()})
    params["results_files"] = source
    for model, info in results["models"].items():
        params[f"{model}_weight_bytes"] = info["weight_bytes"]
        params[f"{model}_real_weights"] = info.get("real_weights", False)
    notes = [f"skipped: {', '.join(results['skipped'])}"] if results.get("skipped") else []
    notes += [f"error: {e}" for e in results.get("errors", [])]
    return BenchResult(
        "serving-gpu", EXPERIMENT, "gpu", render_table(results), params, metrics, configs,
        notes=notes,
    )  # fmt: skip


class ResultsError(ImpetusError):
    """A results file cannot be read or merged; the message says which and why."""


@task(cache_policy=NO_CACHE)
def read_results(paths: list[Path]) -> dict[str, Any]:
    """The runner's results.json files as one: each model's cells from one file (commands split
    by model, as the device's 10-minute limit makes them), machine and config from the first."""
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ResultsError(f"{path}: not a results.json of the GPU runner ({exc})") from None
        if not merged:
            merged = {**data, "cells": [], "models": {}, "skipped": [], "errors": []}
        again = set(data["models"]) & set(merged["models"])
        if again:
            raise ResultsError(f"{path}: {', '.join(sorted(again))} measured in two files")
        for k in ("cells", "skipped", "errors"):
            merged[k] += data.get(k, [])
        merged["models"].update(data["models"])
    return merged


@flow(name="bench-serving-gpu", log_prints=False)
def bench_serving_gpu(paths: list[Path]) -> BenchResult:
    """Log the GPU machine's results.json files as one MLflow run; return it with its table."""
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    result = to_result(read_results(paths), ", ".join(map(str, paths)))
    result.files = str(paths[0].parent)  # the results and the servers' logs
    return log_bench(get_settings(), result)
