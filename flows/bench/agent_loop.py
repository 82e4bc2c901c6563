"""The agent-loop benchmark: what the prefix cache does for a coding agent's turns, in memory and
from disk after a restart.

    impetus bench agent-loop               # 20 turns, a ~7 KB system prompt with tools
    impetus bench agent-loop --turns 200   # also: memory and disk stay within their caps
    impetus bench agent-loop --quick       # CI-sized

One `impetus serve` (the registry's `models.llm`, OpenBLAS preloaded as in the other benches) on
a data_dir of the bench's own (the models linked in), so that the first turn is cold and the
disk tier starts empty, with the memory and disk caps of the config. A conversation as coding
agents send it through Chat Completions: the same system prompt and tools every turn, the
history growing with the assistant's answers (tool calls answered by a tool result), a new user
message per turn; past `history` exchanges the oldest are dropped, as agents compact. Greedy,
streamed; TTFT is the time to the first content or tool-call delta. After each turn the server's
/api/metrics gives the prefix cache's memory and disk bytes, and the bench sums the files of its
folder itself. Then the server is stopped (SIGINT: the disk tier writes what it has queued) and
started again on the same data_dir, and the next turn of the conversation is timed: its prefix
comes from disk, read at start-up (`serve.prefix_cache_preload_bytes`, the default). Then once
more with that off, and the turn after reads its file itself (reported beside it).

Goals (issue 17): p50 TTFT of turns 2..N ≤ 0.2× the cold first turn; the first turn after a
restart ≤ 0.3× cold; memory and disk bytes never past their caps. One MLflow run (experiment
`agent-loop-bench`).
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.bench.agent_turns import (
    AgentLoopConfig,
    Conversation,
    Turn,
    agent_metrics,
    agent_notes,
    play_turns,
    render_table,
)
from flows.bench.results import BenchResult, Config

if TYPE_CHECKING:
    from flows.bench.server import Server
    from pipelines.settings import Settings

EXPERIMENT = "agent-loop-bench"


@task(cache_policy=NO_CACHE)
def run_turns(
    server: Server, conv: Conversation, n: int, folder: Path
) -> list[tuple[Turn, dict[str, float]]]:
    """`play_turns` as a Prefect task (flows/bench/agent_turns.py)."""
    return play_turns(server, conv, n, folder)


def bench_state(settings: Settings, log_dir: Path) -> Path:
    """A data_dir of the bench's own, with the models of `settings` linked in."""
    state = log_dir / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "models").symlink_to(settings.models_dir.resolve(), target_is_directory=True)
    return state


@flow(name="bench-agent-loop", log_prints=False)
def bench_agent_loop(cfg: AgentLoopConfig | None = None) -> BenchResult:
    """Measure, log one MLflow run, return the metrics and the table."""
    from flows.bench.results import machine
    from flows.bench.server import impetus_serve
    from flows.bench.tracking import log_bench
    from pipelines.settings import get_settings

    cfg = cfg or AgentLoopConfig()
    settings = get_settings()
    log_dir = settings.data_dir / "bench" / time.strftime("agent-loop-%Y%m%d-%H%M%S")
    state = bench_state(settings, log_dir)
    server_settings = settings.model_copy(update={"data_dir": state})
    folder = state / "prefix-cache"

    def serve(name: str, preload: bool = True) -> AbstractContextManager[Server]:
        return impetus_serve(
            server_settings, log_dir, name=name,
            IMPETUS_SERVE__PREFIX_CACHE_BYTES=str(cfg.memory_bytes),
            IMPETUS_SERVE__PREFIX_CACHE_DISK_BYTES=str(cfg.disk_bytes),
            IMPETUS_SERVE__PREFIX_CACHE_PRELOAD_BYTES=str(
                server_settings.serve.prefix_cache_preload_bytes if preload else 0
            ),
        )  # fmt: skip

    load_start = os.getloadavg()[0]
    conv = Conversation(cfg)
    with serve("impetus") as server:
        turns = run_turns(server, conv, cfg.turns, folder)
    with serve("impetus-restarted") as server:
        (restarted,) = run_turns(server, conv, 1, folder)
    # again, with no files read at load: the next turn reads its own
    with serve("impetus-restarted-ondemand", preload=False) as server:
        (ondemand,) = run_turns(server, conv, 1, folder)
    shutil.rmtree(folder, ignore_errors=True)  # up to disk_bytes of KV files: not worth keeping
    metrics = agent_metrics(turns, restarted, cfg, ondemand)
    metrics.update({"loadavg1_start": load_start, "loadavg1_end": os.getloadavg()[0]})
    params = {**{k: str(v) for k, v in asdict(cfg).items()}, "model": settings.models.llm,
              **machine()}  # fmt: skip
    configs = [
        Config(f"turn{i + 1:03d}", {"turn": i + 1},
               {"ttft_ms": t.ttft_ms, "prompt_tokens": t.prompt_tokens,
                "cached_tokens": t.cached_tokens, **s})
        for i, (t, s) in enumerate([*turns, restarted, ondemand])
    ]  # fmt: skip
    result = BenchResult(
        "agent-loop", EXPERIMENT, "quick" if cfg.quick else f"{cfg.turns} turns",
        render_table(metrics, cfg), params, metrics, configs, files=str(log_dir),
    )  # fmt: skip
    result.notes += agent_notes(metrics, cfg)
    return log_bench(settings, result)
