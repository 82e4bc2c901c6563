"""The agent loop's conversation and its measurement through HTTP, without Prefect: the pieces of
`impetus bench agent-loop` (flows/bench/agent_loop.py) that the GPU runner (flows/bench/gpu/runner.py)
also runs, where Prefect is not installed."""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from flows.bench.server import Server

REQUEST_TIMEOUT_S = 900.0
TOOLS = [
    ("read_file", "Read a file of the repository.", {"path": "string"}),
    ("write_file", "Replace a file's content.", {"path": "string", "content": "string"}),
    ("grep", "Search the repository for a regular expression.", {"pattern": "string"}),
    ("run_tests", "Run the tests under a path; returns the failures.", {"path": "string"}),
    ("list_dir", "List a folder.", {"path": "string"}),
    ("git_diff", "Show the uncommitted changes.", {}),
]
RULES = (
    "Read a file before you change it, and change as little as the task needs.",
    "Run the tests of the package you changed before you say that you are done.",
    "Never touch files outside the repository; never run commands that need the network.",
    "Prefer the project's own helpers to new ones; search for them before you write one.",
    "Keep functions short and name them after what they return or do.",
    "When a test fails, read its output and the code it tests before changing either.",
    "Write commit messages that say what changed and why, in the imperative mood.",
    "Say what you did in one or two sentences when the task is done; do not repeat the code.",
)
FILES = ("serving/app.py", "serving/engine.py", "pipelines/chunk.py", "flows/cli.py", "README.md")


@dataclass
class AgentLoopConfig:
    """What one run measures; `quick_config()` is the CI-sized variant."""

    turns: int = 20
    system_bytes: int = 7000  # the system prompt's size, tools aside
    max_tokens: int = 24
    history: int = 50  # exchanges kept; older ones are dropped (an agent's compaction)
    memory_bytes: int = 256 << 20  # serve.prefix_cache_bytes of the server
    disk_bytes: int = 1 << 30  # serve.prefix_cache_disk_bytes
    quick: bool = False

    @classmethod
    def quick_config(cls) -> AgentLoopConfig:
        return cls(turns=3, system_bytes=1500, max_tokens=6, disk_bytes=256 << 20, quick=True)

    @classmethod
    def long_config(cls, turns: int) -> AgentLoopConfig:
        """Many turns: the history window keeps prompts inside the model's context."""
        return cls(turns=turns, history=8)


def system_prompt(size: int) -> str:
    """An agent's instructions, about `size` bytes: the rules, then a repository map."""
    parts = ["You are a coding agent working in a Python repository.", *RULES]
    i = 0
    while sum(len(p) + 1 for p in parts) < size:
        parts.append(f"- src/module_{i:03d}.py: {RULES[i % len(RULES)].lower()}")
        i += 1
    return "\n".join(parts)[:size]


def tools() -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": doc,
                "parameters": {
                    "type": "object",
                    "properties": {k: {"type": t} for k, t in args.items()},
                    "required": list(args),
                },
            },
        }
        for name, doc, args in TOOLS
    ]


def user_turn(i: int) -> str:
    """Turn i's user message: a new task each time, as an agent's user sends them."""
    path = FILES[i % len(FILES)]
    return f"Step {i + 1}: open {path}, find what makes test_{i:03d} fail, and fix it."


# -- one turn -----------------------------------------------------------------------------------


@dataclass
class Turn:
    ttft_ms: float
    prompt_tokens: int
    cached_tokens: int
    message: dict[str, Any]  # the assistant's message, as the client sends it back
    calls: list[str]  # tool call ids, each answered by a tool result next turn


def chat_turn(
    client: httpx.Client, server: Server, messages: list[dict[str, Any]], cfg: AgentLoopConfig
) -> Turn:
    """One streamed turn: TTFT to the first content or tool-call delta, the usage, and the
    assistant's message rebuilt from the deltas."""
    payload = {
        "model": server.model, "messages": messages, "tools": tools(), "stream": True,
        "max_tokens": cfg.max_tokens, "temperature": 0.0,
        "stream_options": {"include_usage": True},
    }  # fmt: skip
    started = time.perf_counter()
    ttft, content = float("nan"), ""
    usage: dict[str, Any] = {}
    calls: dict[int, dict[str, Any]] = {}
    with client.stream("POST", server.url + "/v1/chat/completions", json=payload) as r:
        if r.status_code != 200:
            raise RuntimeError(f"chat answered {r.status_code}: {r.read()[:500]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("error"):
                raise RuntimeError(f"chat failed mid-stream: {chunk['error']}")
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if (delta.get("content") or delta.get("tool_calls")) and ttft != ttft:
                    ttft = (time.perf_counter() - started) * 1000
                content += delta.get("content") or ""
                for tc in delta.get("tool_calls") or []:
                    call = calls.setdefault(tc["index"], {"arguments": ""})
                    call.update({k: tc[k] for k in ("id", "type") if tc.get(k)})
                    fn = tc.get("function") or {}
                    call["name"] = fn.get("name") or call.get("name", "")
                    call["arguments"] += fn.get("arguments") or ""
    message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else "")}
    if calls:
        message["tool_calls"] = [
            {"id": c["id"], "type": "function",
             "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()
        ]  # fmt: skip
    details = usage.get("prompt_tokens_details") or {}
    return Turn(
        ttft, int(usage.get("prompt_tokens", 0)), int(details.get("cached_tokens") or 0),
        message, [c["id"] for c in calls.values()],
    )  # fmt: skip


class Conversation:
    """The agent's side: system prompt, a history window, a new user message per turn."""

    def __init__(self, cfg: AgentLoopConfig) -> None:
        self.cfg = cfg
        self.system = {"role": "system", "content": system_prompt(cfg.system_bytes)}
        self.exchanges: list[list[dict[str, Any]]] = []
        self.turns = 0

    def messages(self) -> list[dict[str, Any]]:
        kept = self.exchanges[-self.cfg.history :] if self.cfg.history else []
        user = {"role": "user", "content": user_turn(self.turns)}
        return [self.system, *(m for ex in kept for m in ex), user]

    def record(self, messages: list[dict[str, Any]], turn: Turn) -> None:
        exchange = [messages[-1], turn.message]
        for call_id in turn.calls:
            result = {"ok": True, "output": f"(output of the call for step {self.turns + 1})"}
            exchange.append(
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)}
            )
        self.exchanges.append(exchange)
        self.turns += 1


def sample_caches(server: Server, folder: Path) -> dict[str, float]:
    """The prefix cache's bytes by tier as the server reports them, and its folder's size."""
    from flows.bench.soak_load import parse_metrics

    text = httpx.get(server.url + "/api/metrics", timeout=30).text
    m = parse_metrics(text, {
        "impetus_prefix_cache_bytes": "memory_bytes",
        "impetus_prefix_cache_disk_bytes": "disk_bytes",
        "impetus_prefix_cache_memory_hits": "memory_hits",
        "impetus_prefix_cache_disk_hits": "disk_hits",
        "impetus_prefix_cache_preloaded_bytes": "preloaded_bytes",
    })  # fmt: skip
    files = [f for f in folder.rglob("*") if f.is_file()] if folder.exists() else []
    m["folder_bytes"] = float(sum(_size(f) for f in files))
    return m


def _size(path: Path) -> int:
    """A file's size, 0 if it is gone: the disk tier writes `.tmp` files and renames them while
    the folder is being summed (a quick agent-loop bench failed on one, 2026-12-05)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# -- the measurements ---------------------------------------------------------------------------


def play_turns(
    server: Server, conv: Conversation, n: int, folder: Path
) -> list[tuple[Turn, dict[str, float]]]:
    """`n` turns of the conversation, each with the cache sizes sampled after it and the hits
    by tier that it made. A short unrelated request first takes the process's first-forward
    costs out of the timed turns."""
    out = []
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client:
        warm = [{"role": "user", "content": "Say hi."}]
        chat_turn(client, server, warm, AgentLoopConfig(max_tokens=2))
        before = sample_caches(server, folder)
        for _ in range(n):
            messages = conv.messages()
            turn = chat_turn(client, server, messages, conv.cfg)
            conv.record(messages, turn)
            after = sample_caches(server, folder)
            hits = {k: after[k] - before[k] for k in ("memory_hits", "disk_hits")}
            out.append((turn, {**after, **hits}))
            before = after
    return out


def agent_metrics(
    turns: list[tuple[Turn, dict[str, float]]],
    restarted: tuple[Turn, dict[str, float]],
    cfg: AgentLoopConfig,
    ondemand: tuple[Turn, dict[str, float]] | None = None,
) -> dict[str, float]:
    """`restarted`: the turn after a restart that read the newest cache files at load (the
    default); `ondemand`: the next turn after another restart without that, reading its file
    when the turn needs it."""
    cold = turns[0][0]
    warm = [t.ttft_ms for t, _ in turns[1:]]
    warm_p50 = statistics.median(warm) if warm else float("nan")
    after, after_caches = restarted
    samples = [s for _, s in turns] + [after_caches] + ([ondemand[1]] if ondemand else [])
    out = {
        "cold_ttft_ms": cold.ttft_ms,
        "cold_prompt_tokens": cold.prompt_tokens,
        "warm_ttft_p50_ms": warm_p50,
        "warm_ttft_max_ms": max(warm, default=float("nan")),
        "warm_ratio": warm_p50 / cold.ttft_ms,
        "warm_cached_fraction_p50": statistics.median(
            [t.cached_tokens / max(t.prompt_tokens, 1) for t, _ in turns[1:]] or [float("nan")]
        ),
        "last_prompt_tokens": turns[-1][0].prompt_tokens,
        "restart_ttft_ms": after.ttft_ms,
        "restart_ratio": after.ttft_ms / cold.ttft_ms,
        "restart_prompt_tokens": after.prompt_tokens,
        "restart_cached_tokens": after.cached_tokens,
        "restart_disk_hits": after_caches["disk_hits"],
        "restart_preloaded_bytes": after_caches.get("preloaded_bytes", 0.0),
        "memory_bytes_max": max(s["memory_bytes"] for s in samples),
        "disk_bytes_max": max(s["disk_bytes"] for s in samples),
        "folder_bytes_max": max(s["folder_bytes"] for s in samples),
        "memory_cap_bytes": cfg.memory_bytes,
        "disk_cap_bytes": cfg.disk_bytes,
    }
    if ondemand is not None:
        turn, caches = ondemand
        out["ondemand_ttft_ms"] = turn.ttft_ms
        out["ondemand_ratio"] = turn.ttft_ms / cold.ttft_ms
        out["ondemand_cached_tokens"] = turn.cached_tokens
        out["ondemand_disk_hits"] = caches["disk_hits"]
    return out


def render_table(m: dict[str, float], cfg: AgentLoopConfig) -> str:
    """The results table (Markdown), as docs/benchmarks.md shows it."""
    mib = 1 / 2**20
    rows = [
        "| measure | value | goal |",
        "|---|---|---|",
        f"| turn 1 (cold), {m['cold_prompt_tokens']:.0f} prompt tokens: TTFT, ms | "
        f"{m['cold_ttft_ms']:.0f} | |",
        f"| turns 2–{cfg.turns}: TTFT p50 / max, ms (ratio of p50 to cold) | "
        f"{m['warm_ttft_p50_ms']:.0f} / {m['warm_ttft_max_ms']:.0f} ({m['warm_ratio']:.2f}×) "
        "| ≤ 0.2× |",
        f"| turns 2–{cfg.turns}: cached share of the prompt, p50 | "
        f"{m['warm_cached_fraction_p50']:.1%} | |",
        f"| after a restart, turn {cfg.turns + 1} ({m['restart_prompt_tokens']:.0f} tokens, "
        f"{m['restart_cached_tokens']:.0f} cached, {m['restart_disk_hits']:.0f} disk hit): "
        f"TTFT, ms (ratio to cold) | {m['restart_ttft_ms']:.0f} ({m['restart_ratio']:.2f}×) | ≤ 0.3× |",
        f"| of it read from disk at start-up (`serve.prefix_cache_preload_bytes`), MiB | "
        f"{m.get('restart_preloaded_bytes', 0) * mib:.0f} | |",
        f"| memory tier: max bytes seen / cap, MiB | {m['memory_bytes_max'] * mib:.0f} / "
        f"{m['memory_cap_bytes'] * mib:.0f} | ≤ cap |",
        f"| disk tier: max bytes reported / files on disk / cap, MiB | "
        f"{m['disk_bytes_max'] * mib:.0f} / {m['folder_bytes_max'] * mib:.0f} / "
        f"{m['disk_cap_bytes'] * mib:.0f} | ≤ cap |",
        f"| load average (1 min), start → end | {m['loadavg1_start']:.1f} → "
        f"{m['loadavg1_end']:.1f} | |",
    ]
    if "ondemand_ttft_ms" in m:
        rows.insert(7, (
            f"| after another restart without it, turn {cfg.turns + 2} "
            f"({m['ondemand_cached_tokens']:.0f} cached, {m['ondemand_disk_hits']:.0f} disk hit, "
            f"read by the turn): TTFT, ms (ratio to cold) | {m['ondemand_ttft_ms']:.0f} "
            f"({m['ondemand_ratio']:.2f}×) | |"
        ))  # fmt: skip
    return "\n".join(rows)


def agent_notes(m: dict[str, float], cfg: AgentLoopConfig) -> list[str]:
    """Goals missed, and what a reader should know before trusting the ratios."""
    notes = []
    if m["warm_ratio"] > 0.2:
        notes.append(f"turns 2–{cfg.turns}: p50 TTFT is {m['warm_ratio']:.2f}× cold (goal 0.2×)")
    if m["restart_ratio"] > 0.3:
        notes.append(f"after the restart: TTFT is {m['restart_ratio']:.2f}× cold (goal 0.3×)")
    if not m["restart_disk_hits"]:
        notes.append("the turn after the restart found nothing on disk")
    for tier in ("memory", "disk"):
        if m[f"{tier}_bytes_max"] > m[f"{tier}_cap_bytes"]:
            notes.append(f"the {tier} tier went past its cap")
    if m["folder_bytes_max"] > m["disk_cap_bytes"]:
        notes.append("the prefix cache's folder went past the disk cap")
    return notes
