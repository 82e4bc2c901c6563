"""The serving benchmark: our engine and server against mlx-lm's, on one machine, in one run.

    impetus bench serving                 # the full run
    impetus bench serving --quick         # CI-sized: levels 1 and 4, 16 tokens, 600-token prefix, once
    impetus bench serving --ray           # also `impetus serve --ray` (slow to start)

Same model (the registry's `models.llm`), same prompts, same BLAS (OpenBLAS preloaded for every
process where Debian has it), greedy decoding, all measured side by side. On MLX's CPU backend the
engine computes in float32 (float16 is far slower there), so `mlx_lm.server` gets the
same weights as a float32 folder made by `mlx_lm convert -d --dtype float32` (cached under
data_dir/bench/models); on Metal both use the registry folder as it is.

- single-stream decode tok/s of our engine vs raw `mlx_lm.stream_generate` (goal ≥ 0.95×), in one
  subprocess, runs interleaved, medians; both on the weights as the engine prepares them
  (`serving.engine.mlx_engine.load_model`);
- aggregate tok/s and TTFT p50/p95 at 1, 4, 8 and 16 concurrent streams of `impetus serve` vs
  `python -m mlx_lm.server` (goal ≥ 1.0× at every level): each level in rounds, every round one
  burst on each server back to back, so the ratio is reported pooled and as the spread of the
  rounds' paired ratios;
- TTFT of a request sharing a 1,500-token prefix with the one before it, prefix cache on vs off
  (goal ≤ 0.3×);
- seconds from launching `impetus serve` to /api/health/live (goal < 10 s) and to ready;
- with `--ray`, `impetus serve --ray` (on a data_dir of its own) in the same rounds as the other
  two, so that its ratio to in-process is paired too (goal ≥ 0.9× at 8 and 16 streams).

Servers are started and stopped by flows/bench/server.py, loaded by flows/bench/load.py. One MLflow
run per benchmark (experiment `serving-bench`, flows/bench/tracking.py) holds the metrics, the
machine's load average and the table, with a nested run per concurrency level.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.load import Burst, burst, stream_request
from flows.bench.prompts import TOPICS, prompts
from flows.bench.results import BenchResult, percentile, split_by_prefix
from flows.bench.server import Server, bench_env, impetus_serve, mlx_lm_server, run_probe

if TYPE_CHECKING:
    from pipelines.settings import Settings

EXPERIMENT = "serving-bench"
REQUEST_TIMEOUT_S = 300.0

QUESTIONS = (
    "What is the main topic of the text above?",
    "Which word appears most often in the text above?",
    "Summarise the text above in one sentence.",
    "Is the text above a story or a list?",
)


@dataclass
class BenchConfig:
    """What one run measures; `quick()` is the CI-sized variant."""

    levels: tuple[int, ...] = (1, 4, 8, 16)
    max_tokens: int = 64
    # Requests per server, level and sweep, at least: a level runs ceil(min_requests / streams)
    # rounds, each round one burst of `streams` requests on every server back to back (the order
    # alternating), so low levels get as many samples as high ones and every round is a pair.
    min_requests: int = 8
    # Sweeps over all levels; a level's figures pool every sweep (one burst per level is noisy on
    # a shared machine).
    sweeps: int = 3
    decode_runs: int = 6  # single-stream decode runs of each side
    prefix_tokens: int = 1500
    prefix_reps: int = 3
    ray: bool = False
    quick: bool = False

    @classmethod
    def quick_config(cls, ray: bool = False) -> BenchConfig:
        return cls(
            levels=(1, 4),
            max_tokens=16,
            min_requests=1,
            sweeps=1,
            decode_runs=1,
            prefix_tokens=600,
            prefix_reps=1,
            ray=ray,
            quick=True,
        )


@dataclass
class LevelResult(Burst):
    """A level's bursts pooled, with every round's aggregate tok/s kept for pairing."""

    round_tps: list[float] = field(default_factory=list)

    def add(self, r: Burst) -> None:
        """Pool one round's result into this one."""
        self.requests += r.requests
        self.completion_tokens += r.completion_tokens
        self.wall_s += r.wall_s
        self.ttft_ms += r.ttft_ms
        for kind, n in r.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n
        self.round_tps.append(r.tps)

    def ttft(self, q: float) -> float:
        return percentile(self.ttft_ms, q)


async def _level(server: Server, concurrency: int, cfg: BenchConfig) -> Burst:
    """One burst: `concurrency` streamed requests at once."""
    bodies = [
        [{"messages": chat, "max_tokens": cfg.max_tokens, "temperature": 0.0}]
        for chat in prompts(concurrency)
    ]
    return await burst(server, bodies, timeout_s=REQUEST_TIMEOUT_S)


def warm_up(server: Server) -> None:
    asyncio.run(_level(server, 2, BenchConfig(max_tokens=8)))


@task(cache_policy=NO_CACHE)
def concurrency_levels(servers: list[Server], cfg: BenchConfig) -> dict[str, list[LevelResult]]:
    """Each level in rounds (`BenchConfig.min_requests`), every round on each server in turn, the
    order alternating from round to round, so that a load spike hits both; `cfg.sweeps` sweeps
    over all levels; each level's results pooled, with every round's tok/s kept for pairing."""
    for server in servers:
        warm_up(server)
    out: dict[str, list[LevelResult]] = {
        s.name: [LevelResult(level, 0, 0, 0.0) for level in cfg.levels] for s in servers
    }
    turn = 0
    for _ in range(cfg.sweeps):
        for i, level in enumerate(cfg.levels):
            for _ in range(max(1, -(-cfg.min_requests // level))):
                for server in servers if turn % 2 == 0 else servers[::-1]:
                    out[server.name][i].add(asyncio.run(_level(server, level, cfg)))
                turn += 1
    return out


def paired_ratios(ours: LevelResult, ref: LevelResult) -> list[float]:
    """Our tok/s over the reference's, round by round (the two ran back to back)."""
    return [a / b for a, b in zip(ours.round_tps, ref.round_tps, strict=True) if b > 0]


# -- prefix cache --------------------------------------------------------------------------------


def shared_prefix(model_path: Path, n_tokens: int, seed: int) -> str:
    """A text of exactly about `n_tokens` tokens of the model's tokenizer."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    rng = random.Random(seed)
    words = [*" ".join(TOPICS).split(), "river", "stone", "window", "letter", "garden", "bell"]
    text = ""
    while len(tok.encode(text, add_special_tokens=False).ids) < n_tokens:
        text += " ".join(rng.choice(words) for _ in range(200)) + ".\n"
    ids = tok.encode(text, add_special_tokens=False).ids[:n_tokens]
    return str(tok.decode(ids))


@task(cache_policy=NO_CACHE)
def prefix_ttft(server: Server, prefixes: list[str]) -> dict[str, float]:
    """Per prefix: request A (prefix + question 1), then B (prefix + question 2); TTFT of B."""

    async def run() -> dict[str, float]:
        cold, warm = [], []
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
            for prefix in prefixes:
                a, b = (
                    {"prompt": f"{prefix}\n\n{q}\n", "max_tokens": 1, "temperature": 0.0}
                    for q in QUESTIONS[:2]
                )
                cold.append((await stream_request(client, server, "/v1/completions", a))[0])
                warm.append((await stream_request(client, server, "/v1/completions", b))[0])
        return {"first_ms": statistics.median(cold), "second_ms": statistics.median(warm)}

    return asyncio.run(run())


# -- single-stream decode ------------------------------------------------------------------------

DECODE_PROMPT = "Once upon a time, in a village at the edge of a great forest,"


@task(cache_policy=NO_CACHE)
def reference_folder(settings: Settings, model_path: Path) -> Path:
    """The folder mlx_lm.server loads: the registry's, or on the CPU backend its float32 copy."""
    import mlx.core as mx

    from serving.engine.mlx_engine import MLXEngineConfig

    if not (MLXEngineConfig().cpu_float32 and mx.default_device().type == mx.DeviceType.cpu):
        return model_path
    out = settings.data_dir / "bench" / "models" / f"{model_path.name}-float32"
    source = max(f.stat().st_mtime for f in model_path.iterdir())
    if (out / "config.json").exists() and (out / "config.json").stat().st_mtime >= source:
        return out
    argv = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", str(model_path)]
    argv += ["--mlx-path", str(out), "--dequantize", "--dtype", "float32"]
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(argv, env=bench_env(settings), check=True, capture_output=True, timeout=900)
    return out


@task(cache_policy=NO_CACHE)
def decode_speed(settings: Settings, model_path: Path, cfg: BenchConfig) -> dict[str, Any]:
    """Our engine vs raw mlx_lm.stream_generate, in one fresh process (see `_decode_probe`)."""
    args = {
        "model": settings.models.llm,
        "path": str(model_path),
        "prompt": DECODE_PROMPT,
        "max_tokens": max(cfg.max_tokens, 64),
        "runs": cfg.decode_runs,
    }
    result: dict[str, Any] = run_probe(settings, "flows.bench.serving", "decode", args, 1800)
    return result


def _decode_probe(args: dict[str, Any]) -> dict[str, Any]:
    """Runs in a subprocess: load both, warm both, then alternate runs; greedy decoding. The raw
    side runs on the weights as the engine prepares them (float32 on the CPU backend)."""
    from mlx_lm import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from pipelines.settings import get_settings
    from serving.engine.base import GenerationRequest, SamplingParams
    from serving.engine.manager import mlx_engine_factory
    from serving.engine.mlx_engine import load_model

    path, max_tokens = Path(args["path"]), int(args["max_tokens"])
    model, tokenizer = load_model(path)
    engine = mlx_engine_factory(get_settings())(args["model"], path)

    def raw() -> tuple[float, int]:
        stamps = [
            time.perf_counter()
            for _ in stream_generate(
                model, tokenizer, args["prompt"], max_tokens=max_tokens, sampler=make_sampler(0.0)
            )
        ]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), len(stamps)

    async def ours_async() -> tuple[float, int]:
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        request = GenerationRequest(f"bench-{time.time_ns()}", prompt=args["prompt"], params=params)
        stamps: list[tuple[float, int]] = []
        async for delta in engine.generate(request):
            if delta.completion_tokens:
                stamps.append((time.perf_counter(), delta.completion_tokens))
        (t0, n0), (t1, n1) = stamps[0], stamps[-1]
        return (n1 - n0) / (t1 - t0), n1

    def ours() -> tuple[float, int]:
        return asyncio.run(ours_async())

    raw(), ours()  # warm-up: first-call compilation and allocation
    raws: list[tuple[float, int]] = []
    oursl: list[tuple[float, int]] = []
    for i in range(int(args["runs"])):  # interleaved, the order alternating
        for side in (raw, ours) if i % 2 == 0 else (ours, raw):
            (raws if side is raw else oursl).append(side())

    asyncio.run(engine.close())
    return {
        "ours_tps": statistics.median(r[0] for r in oursl),
        "mlx_lm_tps": statistics.median(r[0] for r in raws),
        "ours_tokens": oursl[-1][1],
        "mlx_lm_tokens": raws[-1][1],
        "runs": len(raws),
    }


# -- the flow ------------------------------------------------------------------------------------


@flow(name="bench-serving", log_prints=False)
def bench_serving(cfg: BenchConfig | None = None) -> BenchResult:
    """Measure everything, log one MLflow run, return the metrics and the table."""
    from flows.bench.results import machine
    from flows.bench.tracking import log_bench
    from pipelines.models.store import ModelStore
    from pipelines.settings import get_settings

    cfg = cfg or BenchConfig()
    settings = get_settings()
    model_path = ModelStore(settings.models_dir).resolve(settings.models.llm)
    log_dir = settings.data_dir / "bench" / time.strftime("serving-%Y%m%d-%H%M%S")
    log_dir.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()

    decode = decode_speed(settings, model_path, cfg)
    ref_path = reference_folder(settings, model_path)
    ray: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(impetus_serve(settings, log_dir))
        ref = stack.enter_context(mlx_lm_server(settings, ref_path, log_dir))
        servers = [ours, ref]
        if cfg.ray:  # in the same rounds as the others, on a data_dir of its own (stores, caches)
            from flows.bench.agent_loop import bench_state

            ray_settings = settings.model_copy(update={"data_dir": bench_state(settings, log_dir)})
            rs = stack.enter_context(
                impetus_serve(ray_settings, log_dir, ray=True, name="impetus-ray")
            )
            ray = {"live_s": rs.live_s, "ready_s": rs.ready_s}
            servers.append(rs)
        levels = concurrency_levels(servers, cfg)
        if cfg.ray:
            ray["levels"] = levels["impetus-ray"]
        seeds = range(100, 100 + cfg.prefix_reps)
        prefixes = [shared_prefix(model_path, cfg.prefix_tokens, seed) for seed in seeds]
        cache_on = prefix_ttft(ours, prefixes)
        launch = {"live_s": ours.live_s, "ready_s": ours.ready_s}
    with impetus_serve(
        settings, log_dir, name="impetus-nocache", IMPETUS_SERVE__PREFIX_CACHE_BYTES="0"
    ) as nocache:
        cache_off = prefix_ttft(nocache, prefixes)

    metrics = _metrics(decode, levels, cache_on, cache_off, launch, ray)
    load_end = os.getloadavg()
    metrics.update({"loadavg1_start": load_start[0], "loadavg1_end": load_end[0]})
    params = {
        **{k: str(v) for k, v in asdict(cfg).items()},
        "model": settings.models.llm,
        "model_path": str(model_path),
        "mlx_lm_server_model_path": str(ref_path),
        **machine(),
    }
    result = BenchResult(
        "serving", EXPERIMENT, "quick" if cfg.quick else "full", render_table(metrics, cfg),
        params, metrics, split_by_prefix(metrics, [f"c{c}" for c in cfg.levels]),
        files=str(log_dir),
    )  # fmt: skip
    return log_bench(settings, result)


def _metrics(
    decode: dict[str, Any],
    levels: dict[str, list[LevelResult]],
    cache_on: dict[str, float],
    cache_off: dict[str, float],
    launch: dict[str, float],
    ray: dict[str, Any],
) -> dict[str, float]:
    m: dict[str, float] = {
        "decode_tps_ours": decode["ours_tps"],
        "decode_tps_mlx_lm": decode["mlx_lm_tps"],
        "decode_ratio": decode["ours_tps"] / decode["mlx_lm_tps"],
        "decode_tokens_ours": decode["ours_tokens"],
        "decode_tokens_mlx_lm": decode["mlx_lm_tokens"],
        "prefix_ttft_cache_on_ms": cache_on["second_ms"],
        "prefix_ttft_cache_off_ms": cache_off["second_ms"],
        "prefix_ttft_ratio": cache_on["second_ms"] / cache_off["second_ms"],
        "prefix_ttft_cold_ms": cache_off["first_ms"],
        "launch_live_s": launch["live_s"],
        "launch_ready_s": launch["ready_s"],
    }
    sides = [("ours", levels["impetus"]), ("mlx_lm", levels["mlx-lm"])]
    if ray:
        sides.append(("ray", ray["levels"]))
        m["ray_launch_live_s"] = ray["live_s"]
        m["ray_launch_ready_s"] = ray["ready_s"]
    for side, results in sides:
        for r in results:
            c = r.concurrency
            m[f"c{c}_tps_{side}"] = r.tps
            m[f"c{c}_ttft_p50_ms_{side}"] = r.ttft(50)
            m[f"c{c}_ttft_p95_ms_{side}"] = r.ttft(95)
            m[f"c{c}_tokens_{side}"] = r.completion_tokens
            m[f"c{c}_errors_{side}"] = r.errors
            for kind, n in r.error_kinds.items():
                m[f"c{c}_errors_{side}_{kind}"] = n
    for r, rr in zip(levels["impetus"], ray.get("levels", []), strict=False):
        c = r.concurrency  # Ray mode against in-process, round by round (they ran back to back)
        m[f"c{c}_ray_ratio"] = rr.tps / r.tps if r.tps > 0 else float("inf")
        pairs = paired_ratios(rr, r)
        if pairs:
            m[f"c{c}_ray_pair_ratio_p25"] = percentile(pairs, 25)
            m[f"c{c}_ray_pair_ratio_p75"] = percentile(pairs, 75)
    for r, ref in zip(levels["impetus"], levels["mlx-lm"], strict=True):
        c = r.concurrency
        m[f"c{c}_tps_ratio"] = r.tps / ref.tps if ref.tps > 0 else float("inf")
        pairs = paired_ratios(r, ref)
        m[f"c{c}_rounds"] = len(pairs)
        if pairs:
            m[f"c{c}_pair_ratio_p25"] = percentile(pairs, 25)
            m[f"c{c}_pair_ratio_p50"] = percentile(pairs, 50)
            m[f"c{c}_pair_ratio_p75"] = percentile(pairs, 75)
            m[f"c{c}_pair_wins"] = sum(p >= 1.0 for p in pairs)
    return m


def render_table(m: dict[str, float], cfg: BenchConfig) -> str:
    """The results table (Markdown), as docs/benchmarks.md shows it."""
    ray = "ray_launch_live_s" in m
    head = "| measure | impetus | mlx-lm | ratio | goal |"
    if ray:
        head = "| measure | impetus | mlx-lm | ratio | goal | impetus --ray |"
    rows = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]

    def row(name: str, ours: str, ref: str, ratio: str, goal: str, r: str = "") -> None:
        cells = [name, ours, ref, ratio, goal] + ([r] if ray else [])
        rows.append("| " + " | ".join(cells) + " |")

    row(
        "single-stream decode, tok/s (engine vs `mlx_lm.stream_generate`)",
        f"{m['decode_tps_ours']:.1f}",
        f"{m['decode_tps_mlx_lm']:.1f}",
        f"{m['decode_ratio']:.2f}×",
        "≥ 0.95×",
    )

    def tps(c: int, side: str) -> str:
        failed = int(m[f"c{c}_errors_{side}"])
        prefix = f"c{c}_errors_{side}_"
        kinds = ", ".join(
            f"{int(v)} {k[len(prefix) :]}" for k, v in m.items() if k.startswith(prefix)
        )
        return f"{m[f'c{c}_tps_{side}']:.1f}" + (f" ({failed} failed: {kinds})" if failed else "")

    for c in cfg.levels:
        rt = ""
        if ray:  # and its ratio to in-process, with the spread of the back-to-back pairs
            rt = f"{tps(c, 'ray')}: {m[f'c{c}_ray_ratio']:.2f}× of in-process"
            if f"c{c}_ray_pair_ratio_p25" in m:
                rt += f" (pairs {m[f'c{c}_ray_pair_ratio_p25']:.2f}–{m[f'c{c}_ray_pair_ratio_p75']:.2f})"
        ratio = f"{m[f'c{c}_tps_ratio']:.2f}×"
        if m.get(f"c{c}_rounds", 0) > 1:  # the spread of the back-to-back pairs
            ratio += (
                f" (pairs {m[f'c{c}_pair_ratio_p25']:.2f}–{m[f'c{c}_pair_ratio_p75']:.2f},"
                f" {int(m[f'c{c}_pair_wins'])}/{int(m[f'c{c}_rounds'])} ≥ 1)"
            )
        row(
            f"{c} stream{'s' if c > 1 else ''}: aggregate tok/s",
            tps(c, "ours"),
            tps(c, "mlx_lm"),
            ratio,
            "≥ 1.0×",
            rt,
        )
        rt = f"{m[f'c{c}_ttft_p50_ms_ray']:.0f} / {m[f'c{c}_ttft_p95_ms_ray']:.0f}" if ray else ""
        row(
            f"{c} stream{'s' if c > 1 else ''}: TTFT p50 / p95, ms",
            f"{m[f'c{c}_ttft_p50_ms_ours']:.0f} / {m[f'c{c}_ttft_p95_ms_ours']:.0f}",
            f"{m[f'c{c}_ttft_p50_ms_mlx_lm']:.0f} / {m[f'c{c}_ttft_p95_ms_mlx_lm']:.0f}",
            "",
            "",
            rt,
        )
    row(
        f"TTFT after a shared {cfg.prefix_tokens}-token prefix, ms (cache on / off)",
        f"{m['prefix_ttft_cache_on_ms']:.0f} / {m['prefix_ttft_cache_off_ms']:.0f}",
        "",
        f"{m['prefix_ttft_ratio']:.2f}×",
        "≤ 0.3×",
    )
    row(
        "launch → /api/health/live, s (→ ready)",
        f"{m['launch_live_s']:.1f} ({m['launch_ready_s']:.1f})",
        "",
        "",
        "< 10 s",
        f"{m['ray_launch_live_s']:.1f} ({m['ray_launch_ready_s']:.1f})" if ray else "",
    )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    """`python -m flows.bench.serving decode ARGS_JSON`: the decode probe's subprocess."""
    if len(argv) == 2 and argv[0] == "decode":
        print(json.dumps(_decode_probe(json.loads(argv[1]))))
        return
    raise SystemExit("usage: python -m flows.bench.serving decode ARGS_JSON")


if __name__ == "__main__":
    main(sys.argv[1:])
