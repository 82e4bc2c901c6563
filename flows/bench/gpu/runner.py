"""The serving bench on the GPU machine: writes OUT/results.json, after every cell.

    python3 -m flows.bench.gpu.runner OUT --smollm2 DIR [--models M,..|none] [--levels 1,4,16,64]
        [--extra-levels 128] [--max-tokens 128] [--deadline-s S] [--tiny|--micro]
        [--speculative] [--agent-turns N] [--agent-long-turns N] [--agent-model M] [--shape-probe]

For each model (models.py: SmolLM2-135M, a 1B-shaped Llama in bf16 and 4-bit), on the same folder:
1. a bare `BatchGenerator` loop in this process (mlx-lm's own continuous batching, no server);
2. the forward alone and the forward plus the generator's sampling, at 1/16/64 rows
   (`--forward-levels`), with a KV cache as long as a request's mid-point (as
   ../shared/gpu/batch_scaling.py measured it);
3. Impetus through HTTP on 127.0.0.1 (profile.py: the real app and engine, with step timers);
4. `mlx_lm.server` through HTTP, its decode concurrency set to the top level.
Every level is one burst of that many streams (flows/bench/load.py, the chat prompts of the CPU
serving bench, greedy, `--max-tokens` each), run `--rounds` times after one unmeasured warm-up
round and pooled. `--extra-levels` run only for the bare loop and Impetus (mlx_lm.server at 128
is past what it is set up for). A cell that would start after `--deadline-s` is skipped and named
in the JSON, so a command cut short by its time limit still brings back the cells it finished.

Per cell: aggregate tok/s (all tokens over the burst's wall time), per-stream decode tok/s (first
to last token of each stream), TTFT and inter-token p50/p95 (gaps between streamed pieces; one
piece is one token except where a detokenizer holds bytes back), failed requests, and the share
of the memory-bandwidth limit: steps per second × bytes read per step (weights + every stream's
KV cache at the mid-point of its answer, models.StepBytes) ÷ `--bandwidth` (4.8 TB/s, the H200's).

After the models: `--speculative` runs `impetus bench speculative`'s measurement in this process on
SmolLM2's real weights (when stage.sh brought them); `--agent-turns N` (growing history) and
`--agent-long-turns N` (the last 8 exchanges) play `impetus bench agent-loop`'s conversation against
the profiled server on `--agent-model`, restart it and play one more turn; `--shape-probe` times a
40-token forward on a 2,400-token cache, on lengths new and seen. More `--sides` are
experiments: `impetus_nospec` (speculation off, at 1-4 streams), `impetus_nohold` (one SSE event
per token, at 16+), `impetus_si` (a 0.5 ms GIL switch interval, at 16+), `impetus_pf8` (8
prompts prefilled at a time, the default before `prefill_batch_tokens`, at 16+), `impetus_nocache`
(no prefix cache: each round's prompts prefilled again, at 16+), and the bare loop's
`bare_lean` (the engine's lean decode batch) and `bare_thread` (the loop in a thread of its own).

`--interleave` measures only the bare loop and Impetus, with Impetus's server up throughout and
their rounds alternating at each level (`paired_level`): the lent machines' speed drifts by more
than the difference measured (one side's rounds varied by up to 45 % within a minute, and the
same code's ratio by 1.12× to 1.56× on one machine within minutes), so the ratio to read is the
paired rounds' (`paired_ratio_median` in the Impetus cell).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from flows.bench.gpu.models import ModelSpec, StepBytes, make_folder, specs, step_bytes
from flows.bench.gpu.profile import full_batch, timed_generation_steps
from flows.bench.load import burst, stream_request
from flows.bench.prompts import prompts
from flows.bench.results import percentile
from flows.bench.server import HOST, Server, free_port, launch

START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 180.0


class Run:
    """The run's settings, its clock, and the JSON it keeps writing."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        # Of the model being measured: what one step reads, a stream's mean KV length.
        self.step_bytes: StepBytes | None = None
        self.context = 0.0
        self.results: dict[str, Any] = {
            "config": {k: v for k, v in vars(args).items() if k != "out"},
            "machine": machine(),
            "models": {},
            "cells": [],
            "skipped": [],
            "errors": [],
        }
        self.save()

    def time_left(self) -> bool:
        return time.monotonic() - self.started < self.args.deadline_s

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.monotonic() - self.started, 1)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        os.replace(tmp, self.out / "results.json")

    def cell(
        self, model: str, side: str, streams: int, measure: Callable[[], dict[str, Any]]
    ) -> None:
        """Measure one cell unless past the deadline; record it (or its error) and save."""
        key = f"{model}/{side}/{streams}"
        if not self.time_left():
            self.results["skipped"].append(key)
            self.save()
            return
        print(f"[{time.monotonic() - self.started:6.1f} s] {key}", flush=True)
        try:
            cell = measure()
        except Exception as exc:  # one cell failing is a result; the others still run
            self.results["errors"].append(f"{key}: {type(exc).__name__}: {exc}"[:2000])
            self.save()
        else:
            self.record(model, side, streams, cell)

    def record(self, model: str, side: str, streams: int, cell: dict[str, Any]) -> None:
        """Keep a measured cell (with its bandwidth share), print it and save."""
        if "tps" in cell and self.step_bytes is not None:
            cell = with_bandwidth(cell, self.step_bytes, streams, self.context, self.args.bandwidth)
        self.results["cells"].append({"model": model, "side": side, "streams": streams, **cell})
        print("   ", json.dumps({k: v for k, v in cell.items() if k != "profile"}), flush=True)
        self.save()


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    import mlx.core as mx

    gpu = ""
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    with suppress(OSError, subprocess.TimeoutExpired):
        gpu = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip()
    return {
        "mlx": version("mlx"),
        "mlx_lm": version("mlx-lm"),
        "mlx_device": str(mx.default_device()),
        "gpu": gpu,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        # The host's CPU: lent machines of one GPU kind differ in it, and the server's Python
        # per step (per-token work, the event loop) ran up to twice as long on some (2026-12-06).
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "cudnn_attention": os.environ.get("MLX_CUDA_USE_CUDNN_SDPA", "1") != "0",
    }


def cpu_model() -> str:
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# -- a cell's figures ----------------------------------------------------------------------------


def summarize(
    streams: int,
    wall_s: float,
    tokens: list[int],
    stamps: list[list[float]],
    ttft_ms: list[float],
    failed: int,
) -> dict[str, Any]:
    """A burst's figures from each stream's tokens and piece arrival times (pooled rounds:
    `wall_s` summed, the lists concatenated)."""
    gaps = [(b - a) * 1000 for s in stamps for a, b in itertools.pairwise(s)]
    per_stream = [
        (n - 1) / (s[-1] - s[0])
        for n, s in zip(tokens, stamps, strict=True)
        if n > 1 and len(s) > 1 and s[-1] > s[0]
    ]
    return {
        "tokens": sum(tokens),
        "wall_s": wall_s,
        "tps": sum(tokens) / wall_s if wall_s > 0 else 0.0,
        "stream_tps_p50": percentile(per_stream, 50),
        "stream_tps_min": min(per_stream, default=float("nan")),
        "ttft_p50_ms": percentile(ttft_ms, 50),
        "ttft_p95_ms": percentile(ttft_ms, 95),
        "itl_p50_ms": percentile(gaps, 50),
        "itl_p95_ms": percentile(gaps, 95),
        "failed": failed,
        "requests": len(ttft_ms) + failed,
    }


def with_bandwidth(
    cell: dict[str, Any], sb: StepBytes, streams: int, context: float, bw: float
) -> dict[str, Any]:
    """Add the bytes read per step and the share of `bw` that steps at this rate would read."""
    per_step = sb.per_step(streams, context)
    steps_per_s = cell["tps"] / streams
    return {**cell, "bytes_per_step": per_step, "bw_fraction": steps_per_s * per_step / bw}


def pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one level → one cell (their raw lists concatenated)."""
    raw = {k: [x for r in rounds for x in r[k]] for k in ("tokens", "stamps", "ttft_ms")}
    streams = rounds[0]["streams"]
    cell = summarize(
        streams, sum(r["wall_s"] for r in rounds), raw["tokens"], raw["stamps"], raw["ttft_ms"],
        sum(r["failed"] for r in rounds),
    )  # fmt: skip
    kinds: dict[str, int] = {}
    for r in rounds:
        for kind, n in r.get("error_kinds", {}).items():
            kinds[kind] = kinds.get(kind, 0) + n
    if kinds:
        cell["error_kinds"] = kinds
    cell["rounds"] = len(rounds)
    cell["round_tps"] = [sum(r["tokens"]) / r["wall_s"] for r in rounds if r["wall_s"] > 0]
    return cell


# -- the bare loop and the forward ---------------------------------------------------------------


def bare_round(
    model: Any, prompt_ids: list[list[int]], streams: int, n: int, variant: str = "bare"
) -> dict[str, Any]:
    """One burst through a fresh `BatchGenerator`, all prompts inserted at once, no stop tokens
    (every stream makes `n` tokens), greedy. Variants: `bare_lean` decodes into the engine's
    lean batch (serving/engine/lean_batch.py), `bare_thread` runs the loop in a thread of its
    own (as the engine does) while this one waits."""
    if variant == "bare_thread":
        box: list[dict[str, Any]] = []
        worker = threading.Thread(
            target=lambda: box.append(bare_round(model, prompt_ids, streams, n)), daemon=True
        )
        worker.start()
        worker.join()
        return box[0]
    from mlx_lm.generate import BatchGenerator

    gen = BatchGenerator(model, max_tokens=n, completion_batch_size=max(streams, 8))
    if variant == "bare_lean":
        from serving.engine.lean_batch import install

        install(gen)
    started = time.perf_counter()
    uids = gen.insert([list(prompt_ids[i % len(prompt_ids)]) for i in range(streams)])
    stamps: dict[int, list[float]] = {u: [] for u in uids}
    done = 0
    while done < streams:
        for r in gen.next_generated():
            stamps[r.uid].append(time.perf_counter())
            done += r.finish_reason is not None
    wall = time.perf_counter() - started
    gen.close()
    ordered = [stamps[u] for u in uids]
    return {
        "streams": streams,
        "wall_s": wall,
        "tokens": [len(s) for s in ordered],
        "stamps": ordered,
        "ttft_ms": [(s[0] - started) * 1000 for s in ordered if s],
        "failed": 0,
    }


def bare_level(
    model: Any,
    prompt_ids: list[list[int]],
    streams: int,
    args: argparse.Namespace,
    variant: str = "bare",
) -> dict[str, Any]:
    n = args.max_tokens
    bare_round(model, prompt_ids, streams, n, variant)  # warm-up
    with timed_generation_steps() as seen:
        rounds = [bare_round(model, prompt_ids, streams, n, variant) for _ in range(args.rounds)]
    cell = pooled(rounds)
    cell["gen_step_ms"] = percentile([dt * 1000 for dt in full_batch(seen)], 50)
    return cell


def forward_ms(model: Any, rows: int, context: int, reps: int = 20) -> dict[str, float]:
    """One decode step's forward alone, then with the generator's sampling (normalize the
    logits, argmax), at `rows` sequences whose KV cache holds `context` tokens."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    x = mx.array([[100 + i % 1000 for i in range(context)]] * rows)
    mx.eval(model(x, cache=cache))
    y = mx.array([[1]] * rows)
    mx.eval(model(y, cache=cache))

    def timed(fn: Callable[[], Any]) -> float:
        mx.eval(fn())
        t = time.perf_counter()
        for _ in range(reps):
            mx.eval(fn())
        return (time.perf_counter() - t) / reps * 1000

    def sampled() -> Any:
        logits = model(y, cache=cache)[:, -1, :]
        return mx.argmax(logits - mx.logsumexp(logits, axis=-1, keepdims=True), axis=-1)

    forward = timed(lambda: model(y, cache=cache))
    return {"forward_ms": forward, "sampling_ms": timed(sampled) - forward}


# -- servers -------------------------------------------------------------------------------------


async def http_round(
    server: Server,
    streams: int,
    n: int,
    bodies: list[dict[str, Any]] | None = None,
    start_at: float | None = None,
) -> dict[str, Any]:
    """One burst of `streams` streamed chat requests (flows/bench/load.py), piece times kept;
    `bodies` and `start_at`: this process's part of a burst sent from several (`client_part`)."""
    if bodies is None:
        bodies = chat_bodies(streams, n)
    stamps: dict[int, list[float]] = {id(b): [] for b in bodies}
    tokens: dict[int, int] = {}
    sent: list[float] = []  # each request's start in the client (before httpx connects)

    async def send(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, int]:
        sent.append(time.perf_counter())
        ttft, got = await stream_request(
            client, server, "/v1/chat/completions", body, stamps[id(body)]
        )
        tokens[id(body)] = got
        return ttft, got

    result = await burst(
        server, [[b] for b in bodies], timeout_s=REQUEST_TIMEOUT_S, send=send, start_at=start_at
    )
    ended = time.perf_counter()
    ok = [id(b) for b in bodies if id(b) in tokens]
    return {
        "streams": streams,
        "wall_s": result.wall_s,
        "tokens": [tokens[k] for k in ok],
        "stamps": [stamps[k] for k in ok],
        "ttft_ms": result.ttft_ms,
        "failed": result.errors,
        "error_kinds": result.error_kinds,
        "client": client_instants(result.started, ended, [stamps[k] for k in ok], sent),
    }


def chat_bodies(streams: int, n: int) -> list[dict[str, Any]]:
    """The burst's request bodies: the bench's chat prompts, greedy, `n` new tokens each."""
    return [{"messages": chat, "max_tokens": n, "temperature": 0.0} for chat in prompts(streams)]


# Streams per client process: one Python process reading 128 streams' events (httpx, JSON) was
# still starting them 200 ms after the first on the H200 machine, while the server had them all.
CLIENT_STREAMS = 16


def client_procs(streams: int) -> int:
    """Client processes for a burst of `streams`: one per CLIENT_STREAMS, at most half the cores
    (the server keeps the rest): 1 on a small machine."""
    return max(1, min(-(-streams // CLIENT_STREAMS), (os.cpu_count() or 2) // 2))


def client_part(
    target: tuple[str, str, str, dict[str, str]],
    streams: int,
    n: int,
    bodies: list[dict[str, Any]],
    start_at: float,
) -> dict[str, Any]:
    """A client process's part of a burst (`http_burst`): its bodies, started at `start_at`."""
    name, url, model, headers = target
    no_process: Any = None  # the server is the parent's: this process only talks to it
    server = Server(name, url, model, proc=no_process, log=Path(), headers=headers)
    return asyncio.run(http_round(server, streams, n, bodies, start_at))


def http_burst(
    server: Server, streams: int, n: int, pool: Any | None, procs: int = 1
) -> dict[str, Any]:
    """One round: from this process, or (`pool` of `procs` client processes) its streams dealt
    out among them, all started at one instant; their results merged as one round's."""
    if pool is None:
        return asyncio.run(http_round(server, streams, n))
    bodies = chat_bodies(streams, n)
    target = (server.name, server.url, server.model, dict(server.headers))
    start_at = time.perf_counter() + 0.3  # every process has made its client by then
    parts = [
        pool.submit(client_part, target, streams, n, bodies[i::procs], start_at)
        for i in range(procs)
    ]
    got = [p.result() for p in parts]
    # the first process to start (asyncio's sleep may wake one a fraction of a ms early)
    started = min(g["client"][0] for g in got)
    ended = max(g["client"][1] for g in got)
    stamps = [s for g in got for s in g["stamps"]]
    sent = [t for g in got for t in g["client"][5:]]
    kinds: dict[str, int] = {}
    for g in got:
        for kind, count in g["error_kinds"].items():
            kinds[kind] = kinds.get(kind, 0) + count
    return {
        "streams": streams,
        "wall_s": ended - started,
        "tokens": [t for g in got for t in g["tokens"]],
        "stamps": stamps,
        "ttft_ms": [t for g in got for t in g["ttft_ms"]],
        "failed": sum(g["failed"] for g in got),
        "error_kinds": kinds,
        "client": client_instants(started, ended, stamps, sent),
    }


def client_instants(
    started: float, ended: float, stamps: list[list[float]], sent: list[float]
) -> tuple[float, ...]:
    """(start, end, last token, first stream's first token, last stream's first token, first
    request sent, last request sent)."""
    firsts = [s[0] for s in stamps if s] or [ended]
    last = max((s[-1] for s in stamps if s), default=ended)
    return (
        started,
        ended,
        last,
        min(firsts),
        max(firsts),
        min(sent or [ended]),
        max(sent or [ended]),
    )


@contextmanager
def client_pool(streams: int) -> Iterator[tuple[Any, int]]:
    """(pool, processes) for bursts of `streams`: None where one process sends them all."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    procs = client_procs(streams)
    pool = None
    if procs > 1:  # spawned: this process may hold a CUDA context, which a fork must not copy
        pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield pool, procs
    finally:
        if pool is not None:
            pool.shutdown()


def profiled_burst(
    server: Server, streams: int, n: int, pool: Any, procs: int, profile: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One round, and with `profile` what the server's profile saw during it alone."""
    if profile:
        httpx.post(server.url + "/bench/profile", timeout=30).raise_for_status()
    got = http_burst(server, streams, n, pool, procs)
    if not profile:
        return got, None
    return got, httpx.post(server.url + "/bench/profile", timeout=30).json()


def with_profile(
    cell: dict[str, Any], procs: int, last: dict[str, Any], report: dict[str, Any] | None
) -> dict[str, Any]:
    cell["client_procs"] = procs
    if report is not None:
        report["timeline"] = round_timeline(last["client"], report.get("timeline"))
        cell["profile"] = report
    return cell


def http_level(
    server: Server, streams: int, args: argparse.Namespace, profile: bool
) -> dict[str, Any]:
    n = args.max_tokens
    with client_pool(streams) as (pool, procs):
        http_burst(server, streams, n, pool, procs)  # warm-up, processes up
        rounds, report = [], None
        for i in range(args.rounds):
            got, seen = profiled_burst(
                server, streams, n, pool, procs, profile and i == args.rounds - 1
            )
            rounds.append(got)
            report = seen or report
    return with_profile(pooled(rounds), procs, rounds[-1], report)


def paired_level(
    model: Any,
    prompt_ids: list[list[int]],
    servers: dict[str, Server],
    streams: int,
    args: argparse.Namespace,
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The bare loop's cell and each server's at `streams`, their rounds alternating (bare then
    the servers, then the servers then bare, ...), so that a machine slowing down for a while
    (the lent hosts' CPUs: a side's rounds varied by up to 45 % within a minute) weighs on all
    alike. Each server's cell also gets each round's ratio to the bare loop's."""
    n = args.max_tokens
    bare: list[dict[str, Any]] = []
    served: dict[str, list[dict[str, Any]]] = {side: [] for side in servers}
    reports: dict[str, dict[str, Any] | None] = dict.fromkeys(servers)
    order = ["bare", *servers]
    with client_pool(streams) as (pool, procs):
        bare_round(model, prompt_ids, streams, n)  # warm-ups, client processes up
        for server in servers.values():
            http_burst(server, streams, n, pool, procs)
        with timed_generation_steps() as seen:  # this process's steps: the bare loop's
            for i in range(args.rounds):
                last = i == args.rounds - 1
                for side in order if i % 2 == 0 else order[::-1]:
                    if side == "bare":
                        bare.append(bare_round(model, prompt_ids, streams, n))
                        continue
                    got, report = profiled_burst(servers[side], streams, n, pool, procs, last)
                    served[side].append(got)
                    reports[side] = report or reports[side]
    bare_cell = pooled(bare)
    bare_cell["gen_step_ms"] = percentile([dt * 1000 for dt in full_batch(seen)], 50)
    cells = {}
    for side, rounds in served.items():
        cell = cells[side] = with_profile(pooled(rounds), procs, rounds[-1], reports[side])
        ratios = [i / b for i, b in zip(cell["round_tps"], bare_cell["round_tps"], strict=False)]
        cell["paired_ratios"] = ratios
        cell["paired_ratio_median"] = statistics.median(ratios) if ratios else None
    return bare_cell, cells


def round_timeline(
    client: tuple[float, ...], server: dict[str, float] | None
) -> dict[str, float] | None:
    """Where the profiled round's wall time went, ms from the client's start (one clock:
    perf_counter is CLOCK_MONOTONIC in every process): the client sending its requests (first
    and last), the server receiving them (`first_request`, `last_request`: before its
    middleware), requests reaching the engine, the engine's steps (busy and span) and
    admissions, its last delivery, the client's first tokens (the first stream's and the last
    one's), its last token and its end."""
    if server is None:
        return None
    started, ended, last_token, *firsts = client
    out = {k: round((v - started) * 1000, 1) for k, v in server.items() if not k.endswith("_s")}
    for k in ("steps_busy", "steps_span", "fill_busy"):
        if f"{k}_s" in server:
            out[f"{k}_ms"] = round(server[f"{k}_s"] * 1000, 1)
    if len(firsts) >= 4:
        out["client_first_send"] = round((firsts[2] - started) * 1000, 1)
        out["client_last_send"] = round((firsts[3] - started) * 1000, 1)
    if firsts:
        out["client_first_token"] = round((firsts[0] - started) * 1000, 1)
        out["client_all_started"] = round((firsts[1] - started) * 1000, 1)
    out["client_last_token"] = round((last_token - started) * 1000, 1)
    out["client_end"] = round((ended - started) * 1000, 1)
    return out


def impetus_server(
    run: Run, name: str, top: int, tag: str = "", **extra: str
) -> AbstractContextManager[Server]:
    """The real app and engine (profile.py) on this model, batching up to `top` streams; `extra`
    environment on top (a data_dir, the prefix cache's caps)."""
    from flows.bench.server import bench_env
    from pipelines.settings import get_settings

    port = free_port()
    env = bench_env(
        get_settings(),
        IMPETUS_MODELS__LLM=name,
        IMPETUS_SERVE__MAX_BATCH_SIZE=str(top),
        IMPETUS_SERVE__QUEUE_LIMIT=str(2 * top),
        # No KV budget: the bare BatchGenerator loop it is compared with has none (at 128 streams
        # the 1B model's batch takes ~2 GB, past the 1 GiB default).
        IMPETUS_SERVE__KV_CACHE_BYTES="0",
        **extra,
    )
    argv = [sys.executable, "-m", "flows.bench.gpu.profile", "--port", str(port)]
    return launch(
        f"impetus-{name}{tag}", argv, env, port=port, model=name, log_dir=run.out,
        timeout_s=START_TIMEOUT_S, grace_s=20,
    )  # fmt: skip


def mlx_lm_server(run: Run, name: str, folder: Path, top: int) -> AbstractContextManager[Server]:
    from flows.bench.server import bench_env
    from pipelines.settings import get_settings

    port = free_port()
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(folder), "--host", HOST]
    argv += ["--port", str(port), "--log-level", "WARNING", "--decode-concurrency", str(top)]
    return launch(
        f"mlx-lm-{name}", argv, bench_env(get_settings()), port=port, model="default_model",
        log_dir=run.out, live_path="/health", ready_path="/health", timeout_s=START_TIMEOUT_S,
        grace_s=20,
    )  # fmt: skip


def register(name: str, folder: Path) -> None:
    """Put `folder` in the model registry of this run's data_dir (what `impetus serve` loads)."""
    from pipelines.models.store import ModelStore
    from pipelines.settings import get_settings

    store = ModelStore(get_settings().models_dir)
    store._register(name, kind="llm", fmt="mlx", source=f"bench:{folder}", path=folder)


# -- one model -----------------------------------------------------------------------------------


def chat_ids(tokenizer: Any, chat: list[dict[str, str]]) -> list[int]:
    ids: Any = tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    if not isinstance(ids, list):  # a BatchEncoding in some transformers versions
        ids = ids["input_ids"]
    return [int(t) for t in ids]


def bench_model(run: Run, spec: ModelSpec) -> None:
    """Every side and level on one model's folder."""
    import mlx.core as mx

    args = run.args
    folder = make_folder(spec, Path(args.smollm2), Path(args.work) / "models")
    levels = args.levels + args.extra_levels
    if args.interleave:
        interleaved(run, spec.name, folder, levels)
        return
    if any(side.startswith("bare") for side in args.sides):
        in_process(run, spec.name, folder, levels)
    else:  # the model's figures still come from loading it once
        in_process(run, spec.name, folder, [])
    mx.clear_cache()  # the model is freed: the servers have the GPU to themselves
    register(spec.name, folder)
    sides = {
        "impetus": (lambda: impetus_server(run, spec.name, max(levels)), levels),
        "mlx_lm": (lambda: mlx_lm_server(run, spec.name, folder, max(args.levels)), args.levels),
        # Impetus with prompt-lookup speculation off, at few streams (where it may go solo):
        # random weights never repeat the prompt, so "auto" can only cost there.
        "impetus_nospec": (
            lambda: impetus_server(
                run, spec.name, max(levels), "-nospec", IMPETUS_SERVE__SPECULATIVE="off"
            ),
            [b for b in levels if b <= 4],
        ),
        # Impetus sending one event per token (no coalescing under load), at many streams.
        "impetus_nohold": (
            lambda: impetus_server(
                run, spec.name, max(levels), "-nohold", IMPETUS_SERVE__COALESCE_STREAMS="0"
            ),
            [b for b in levels if b >= 16],
        ),
        # Impetus prefilling 8 prompts at a time (as before prefill_batch_tokens), at many streams.
        "impetus_pf8": (
            lambda: impetus_server(
                run,
                spec.name,
                max(levels),
                "-pf8",
                IMPETUS_BENCH_ENGINE_CONFIG='{"prefill_batch_tokens": 0}',
            ),
            [b for b in levels if b >= 16],
        ),
        # Impetus without a prefix cache (every round's prompts prefilled, not merged from the
        # previous round's cached copies), at many streams.
        "impetus_nocache": (
            lambda: impetus_server(
                run, spec.name, max(levels), "-nocache", IMPETUS_SERVE__PREFIX_CACHE_BYTES="0"
            ),
            [b for b in levels if b >= 16],
        ),
        # Impetus with a 0.5 ms GIL switch interval (profile.py), at many streams.
        "impetus_si": (
            lambda: impetus_server(
                run, spec.name, max(levels), "-si", IMPETUS_BENCH_SWITCH_INTERVAL_MS="0.5"
            ),
            [b for b in levels if b >= 16],
        ),
    }
    for side, (start, side_levels) in sides.items():
        if side in args.sides and run.time_left():
            over_http(run, spec.name, side, start, side_levels)


def in_process(run: Run, name: str, folder: Path, levels: list[int]) -> tuple[Any, list[list[int]]]:
    """Load the model here: its step's bytes, then the bare loop and the forward's cells.
    Returns the model and the bare loop's prompts."""
    from pipelines.models.loading import load_llm

    args = run.args
    model, tokenizer = load_llm(folder)
    prompt_ids = [chat_ids(tokenizer, c) for c in prompts(16)]
    config = json.loads((folder / "config.json").read_text())
    sb = step_bytes(model, config)
    mean_prompt = sum(map(len, prompt_ids)) / len(prompt_ids)
    run.context = mean_prompt + args.max_tokens / 2  # a stream's KV length mid-answer
    run.step_bytes = sb
    run.results["models"][name] = {
        "folder": str(folder),
        "real_weights": folder == Path(args.smollm2),
        "weight_bytes": sb.weight_bytes,
        "kv_bytes_per_token": sb.kv_bytes_per_token,
        "prompt_tokens_mean": mean_prompt,
        "context_mid": run.context,
        "config": {k: v for k, v in config.items() if not isinstance(v, dict)},
    }
    run.save()
    variants = [v for v in ("bare", "bare_lean", "bare_thread") if v in args.sides]
    for b in levels:  # the variants side by side at each level
        for v in variants:
            run.cell(name, v, b, partial(bare_level, model, prompt_ids, b, args, v))
    if levels or args.interleave:
        for b in args.forward_levels:
            run.cell(name, "forward", b, partial(forward_ms, model, b, int(run.context)))
    return model, prompt_ids


def interleaved(run: Run, name: str, folder: Path, levels: list[int]) -> None:
    """`--interleave`: the bare loop (here) and Impetus (its server up throughout; with
    `--thread-engine`, a second one whose engine runs in its server's process) at each level,
    round for round (`paired_level`); the model loaded in every process."""
    model, prompt_ids = in_process(run, name, folder, [])
    register(name, folder)
    try:
        with ExitStack() as stack:
            servers = {"impetus": stack.enter_context(impetus_server(run, name, max(levels)))}
            if run.args.thread_engine:
                servers["impetus_thread"] = stack.enter_context(
                    impetus_server(
                        run, name, max(levels), "-thread", IMPETUS_SERVE__ENGINE_PROCESS="off"
                    )
                )
            for side, server in servers.items():
                run.results["models"][name][f"{side}_ready_s"] = server.ready_s
            for b in levels:
                served: list[dict[str, dict[str, Any]]] = []  # the servers' cells, once measured

                def measure(b: int = b, served: list[Any] = served) -> dict[str, Any]:
                    bare, cells = paired_level(model, prompt_ids, servers, b, run.args)
                    served.append(cells)
                    return bare

                run.cell(name, "bare", b, measure)
                for cells in served:
                    for side, cell in cells.items():
                        run.record(name, side, b, cell)
    except Exception as exc:
        run.results["errors"].append(f"{name}/interleaved: {type(exc).__name__}: {exc}"[:3000])
        run.save()


def over_http(
    run: Run,
    name: str,
    side: str,
    start: Callable[[], AbstractContextManager[Server]],
    levels: list[int],
) -> None:
    """One server on the model, every level through HTTP; a server that fails is a result."""
    try:
        with start() as server:
            run.results["models"][name][f"{side}_ready_s"] = server.ready_s
            for b in levels:
                measure = partial(http_level, server, b, run.args, side.startswith("impetus"))
                run.cell(name, side, b, measure)
    except Exception as exc:
        run.results["errors"].append(f"{name}/{side}: {type(exc).__name__}: {exc}"[:3000])
        run.save()


# -- speculative decoding and the agent loop (real weights) ---------------------------------------


def speculative(folder: Path, name: str) -> dict[str, Any]:
    """`impetus bench speculative`'s measurement (flows/bench/speculative_probe.py) in this
    process: one engine, chat and RAG prompts single-stream with speculation off then on, and
    16 streams off vs on."""
    from dataclasses import asdict

    from flows.bench.speculative_probe import SpecBenchConfig, probe

    args = {"model": name, "path": str(folder), "cfg": asdict(SpecBenchConfig())}
    # Once unmeasured: MLX's CUDA backend compiles kernels for every new shape, and a verify
    # forward of k draft tokens is a new shape for each k (the first pass took ~100 s).
    probe(args)
    return probe(args)


def agent_loop(run: Run, name: str, turns: int, history: int) -> dict[str, Any]:
    """`impetus bench agent-loop`'s conversation (flows/bench/agent_turns.py) against Impetus on a
    data_dir of its own: `turns` turns, a restart, one more turn; TTFT of each, cache bytes."""
    import shutil

    from flows.bench.agent_turns import AgentLoopConfig, Conversation, agent_metrics, play_turns
    from pipelines.settings import get_settings

    args = run.args
    cfg = AgentLoopConfig(
        turns=turns, history=history, memory_bytes=args.agent_memory_mb << 20,
        disk_bytes=args.agent_disk_mb << 20,
    )  # fmt: skip
    state = Path(args.work) / f"agent-{turns}-{time.strftime('%H%M%S')}"
    state.mkdir(parents=True)
    (state / "models").symlink_to(get_settings().models_dir.resolve(), target_is_directory=True)
    folder = state / "prefix-cache"
    env = {
        "IMPETUS_DATA_DIR": str(state),
        "IMPETUS_SERVE__PREFIX_CACHE_BYTES": str(cfg.memory_bytes),
        "IMPETUS_SERVE__PREFIX_CACHE_DISK_BYTES": str(cfg.disk_bytes),
    }
    conv = Conversation(cfg)
    profiles = []
    with impetus_server(run, name, 8, f"-agent{turns}", **env) as server:
        played = play_turns(server, conv, cfg.turns, folder)
        profiles.append(httpx.post(server.url + "/bench/profile", timeout=30).json())
    with impetus_server(run, name, 8, f"-agent{turns}-restarted", **env) as server:
        (restarted,) = play_turns(server, conv, 1, folder)
        profiles.append(httpx.post(server.url + "/bench/profile", timeout=30).json())
    env["IMPETUS_SERVE__PREFIX_CACHE_PRELOAD_BYTES"] = "0"  # the next turn reads its own file
    with impetus_server(run, name, 8, f"-agent{turns}-ondemand", **env) as server:
        (ondemand,) = play_turns(server, conv, 1, folder)
        profiles.append(httpx.post(server.url + "/bench/profile", timeout=30).json())
    shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {
        **agent_metrics(played, restarted, cfg, ondemand), "history": history,
    }  # fmt: skip
    # the engine's side of each turn's TTFT (profile.py): admit, queued → admitted → first token
    keys = ("admit_ms", "queued_to_admitted_ms", "admitted_to_first_token_ms", "first_token_trace")
    out["engine"] = [{k: p.get(k) for k in keys} for p in profiles]
    out["turns"] = [
        {"ttft_ms": t.ttft_ms, "prompt_tokens": t.prompt_tokens, "cached_tokens": t.cached_tokens,
         **caches}
        for t, caches in [*played, restarted, ondemand]
    ]  # fmt: skip
    return out


def shape_probe(folder: Path, context: int = 2400, new: int = 40, turns: int = 8) -> dict[str, Any]:
    """A turn of the agent loop, its prefill only: `new` tokens on a KV cache of `context`
    tokens, on a cache one turn longer every time (a shape not seen before, as each agent turn
    is) and again on the same length (a shape seen); ms per prefill, evaluated. Three ways:
    `plain`, the model on mlx-lm's `KVCache` (as `stream_generate` runs it); `batch`, on a
    copy of it merged into a `BatchKVCache` (what BatchGenerator makes of a cached prefix: an
    explicit mask, a new buffer); `batch_cleared`, the same after `mx.clear_cache()` (which
    BatchGenerator calls after every prompt chunk)."""
    import copy

    import mlx.core as mx
    from mlx_lm.generate import _merge_caches
    from mlx_lm.models.cache import make_prompt_cache, trim_prompt_cache

    from pipelines.models.loading import load_llm

    model, _ = load_llm(folder)
    ids = mx.array([[100 + i % 1000 for i in range(context)]])
    cold = []  # the whole context in one forward, on a fresh cache: a new shape, then seen ones
    for _ in range(3):
        cache = make_prompt_cache(model)
        t = time.perf_counter()
        mx.eval(model(ids, cache=cache))
        cold.append((time.perf_counter() - t) * 1000)
    chunk = mx.array([[7 + i for i in range(new)]])

    def timed(kind: str) -> float:
        run_on = cache
        if kind != "plain":
            run_on = _merge_caches([copy.deepcopy(cache)])
            mx.eval([c.state[:2] for c in run_on])
            if kind == "batch_cleared":
                mx.clear_cache()
        t = time.perf_counter()
        mx.eval(model(chunk, cache=run_on))
        return (time.perf_counter() - t) * 1000

    out: dict[str, Any] = {"context": context, "new_tokens": new, "context_prefill_ms": cold}
    for kind in ("plain", "batch", "batch_cleared"):
        fresh, seen = [], []
        for _ in range(turns):
            if kind != "plain":  # one turn longer: the plain cache grows, the copies follow
                mx.eval(model(chunk, cache=cache))
            fresh.append(timed(kind))  # a cache `new` tokens longer than ever before
            for _ in range(2):  # the same lengths again
                if kind == "plain":
                    trim_prompt_cache(cache, new)
                seen.append(timed(kind))
        out[kind] = {"fresh_shape_ms": fresh, "seen_shape_ms": seen}
    return out


def extra_cells(run: Run, known: dict[str, ModelSpec]) -> None:
    """Speculative decoding on SmolLM2's real weights, when they came along (random weights
    never repeat the prompt, so drafts from it would measure nothing), and the agent loop on
    `--agent-model` (SmolLM2's real weights, or a random-weights model: TTFT does not depend on
    the values)."""
    args = run.args
    smollm2 = Path(args.smollm2)
    real = (smollm2 / "model.safetensors").is_file()
    if args.speculative and not real:
        run.results["errors"].append("speculative: SmolLM2's weights are not there")
    elif args.speculative:
        register("smollm2", smollm2)
        run.cell("smollm2", "speculative", 1, partial(speculative, smollm2, "smollm2"))
    name = args.agent_model
    for turns, history in ((args.agent_turns, 50), (args.agent_long_turns, 8)):
        if turns:
            register(name, make_folder(known[name], smollm2, Path(args.work) / "models"))
            run.cell(name, f"agent-{turns}", 1, partial(agent_loop, run, name, turns, history))


def parse(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(prog="python -m flows.bench.gpu.runner")
    p.add_argument("out", help="folder for results.json and the servers' logs")
    p.add_argument("--smollm2", required=True, help="SmolLM2's folder (its tokenizer at least)")
    p.add_argument("--work", default="/tmp/impetus-gpu-bench", help="models made, data_dir")
    p.add_argument("--models", default="", help="comma-separated (default: all three)")
    p.add_argument("--sides", default="bare,impetus,mlx_lm")
    p.add_argument("--levels", type=ints, default=[1, 4, 16, 64])
    p.add_argument("--extra-levels", type=ints, default=[])
    p.add_argument("--forward-levels", type=ints, default=[1, 16, 64], help="forward timed alone")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--interleave", action="store_true",
        help="the bare loop and Impetus only, their rounds alternating at each level",
    )  # fmt: skip
    p.add_argument(
        "--thread-engine", action="store_true",
        help="with --interleave, also Impetus with its engine in the server's process",
    )  # fmt: skip
    p.add_argument("--deadline-s", type=float, default=480.0)
    p.add_argument("--bandwidth", type=float, default=4.8e12, help="bytes/s")
    p.add_argument("--tiny", action="store_true", help="a few-MB Llama instead of the 1B one")
    p.add_argument("--micro", action="store_true", help="a Llama with a few-ms step on a CPU")
    p.add_argument("--speculative", action="store_true", help="speculative decoding, SmolLM2")
    p.add_argument("--agent-turns", type=int, default=0, help="agent loop, growing history")
    p.add_argument("--agent-long-turns", type=int, default=0, help="agent loop, last 8 exchanges")
    p.add_argument("--agent-model", default="smollm2", help="the agent loop's model")
    p.add_argument("--agent-memory-mb", type=int, default=256)
    p.add_argument("--agent-disk-mb", type=int, default=1024)
    p.add_argument("--shape-probe", action="store_true", help="forward time, new vs seen shapes")
    p.add_argument("--shape-model", default="smollm2", help="the shape probe's model")
    args = p.parse_args(argv)
    args.sides = args.sides.split(",")
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    # The servers' data_dir: the registry of the bench's models, their state.
    os.environ.setdefault("IMPETUS_DATA_DIR", str(Path(args.work) / "data"))
    # Every side on the same attention kernels: the engine turns cuDNN's off on CUDA (its graph
    # build per new shape, docs/decisions/cuda-attention.md), so the bare loop here and
    # mlx_lm.server (which inherit this environment) do too. Export it as 1 to compare.
    os.environ.setdefault("MLX_CUDA_USE_CUDNN_SDPA", "0")
    run = Run(args)
    known = specs(args.tiny, args.micro)
    names = args.models.split(",") if args.models else list(known)
    if args.models == "none":
        names = []
    for name in names:
        if not run.time_left():
            run.results["skipped"].append(name)
            continue
        try:
            bench_model(run, known[name])
        except Exception as exc:
            run.results["errors"].append(f"{name}: {type(exc).__name__}: {exc}"[:3000])
        run.save()
    if args.shape_probe:
        folder = make_folder(
            known[args.shape_model], Path(args.smollm2), Path(args.work) / "models"
        )
        run.cell(args.shape_model, "shape-probe", 1, partial(shape_probe, folder))
        run.save()
    if args.speculative or args.agent_turns or args.agent_long_turns:
        extra_cells(run, known)
        run.save()
    print(json.dumps({k: run.results[k] for k in ("skipped", "errors", "elapsed_s")}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
