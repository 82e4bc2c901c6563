"""Codex CLI and Claude Code, installed from npm and run unchanged through `impetus launch`, for one
turn each against a real `impetus serve` with the default model (smollm2-135m-instruct, 8k window).

- Codex with a short `model_instructions_file` (its prompt is then ~5.5k tokens with its tools);
- Claude Code with `--bare`, a short `--system-prompt` and no tools;
- Claude Code with its full default prompt (~20k tokens with its tools): the server's clear context
  error, and the server keeps serving.

Each in both serve modes (`impetus serve` and `impetus serve --ray`).

A recording proxy sits between each CLI and the server, so that what the CLI prints is checked
against what the server answered. The CLIs are installed once into data_dir/cache/agent-clis (the
default data_dir, reused by later runs); CI starts clean and installs them here (~10 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipelines.settings import PROJECT_ROOT, load_settings

pytestmark = pytest.mark.slow

# The versions this test was written against; bump them deliberately (CLIENTS.md).
PACKAGES = {"codex": "@openai/codex@0.171.0", "claude": "@anthropic-ai/claude-code@2.1.197"}
MODEL = "smollm2-135m-instruct"
QUESTION = "What is the capital of France? Answer in one word."
TURN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def agent_bin() -> Path:
    """The folder holding `codex` and `claude`, installed from npm once into a cache."""
    if shutil.which("npm") is None:
        pytest.fail("npm is missing: install Node.js 18+ (Debian: apt-get install nodejs npm)")
    root = load_settings().data_dir / "cache" / "agent-clis"
    bin_dir = root / "node_modules" / ".bin"
    stamp = root / "installed.json"
    wanted = sorted(PACKAGES.values())
    if not (stamp.exists() and json.loads(stamp.read_text()) == wanted):
        root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        out = subprocess.run(
            ["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", *wanted],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        stamp.write_text(json.dumps(wanted))
        print(f"npm installed {', '.join(wanted)} in {time.monotonic() - started:.1f} s")
    for name in PACKAGES:
        v = subprocess.run([str(bin_dir / name), "--version"], capture_output=True, text=True)
        assert v.returncode == 0, v.stderr
    return bin_dir


@dataclass
class Exchange:
    method: str
    path: str
    request: bytes
    status: int
    response: bytes


@dataclass
class Proxy:
    """A recording reverse proxy in front of the server: every request and its whole answer."""

    url: str
    exchanges: list[Exchange] = field(default_factory=list)

    def posts(self, prefix: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST" and e.path.startswith(prefix)]


@pytest.fixture(scope="module", params=["inprocess", "ray"])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    ready_models_dir: Path,
) -> Iterator[str]:
    """`impetus serve` in a subprocess on a fresh data_dir with the default model ready, and the
    session's `impetus serve --ray` (tests/serving/ray_server.py: the same default model; one Ray
    cluster per test session is enough for this two-core machine)."""
    from flows.bench.server import impetus_serve
    from tests.flows.conftest import link_models

    if request.param == "ray":
        yield request.getfixturevalue("ray_server").base_url
        return

    data_dir = tmp_path_factory.mktemp("agents") / "state"
    link_models(data_dir, ready_models_dir)
    settings = load_settings(data_dir=data_dir)
    with impetus_serve(settings, data_dir.parent) as running:
        yield running.url


@pytest.fixture
def proxy(server: str) -> Iterator[Proxy]:
    recorder = Proxy("")
    upstream = httpx.Client(base_url=server, timeout=TURN_TIMEOUT_S)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            skip = {"host", "content-length", "accept-encoding", "connection"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            r = upstream.request(self.command, self.path, content=body, headers=headers)
            recorder.exchanges.append(
                Exchange(self.command, self.path, body, r.status_code, r.content)
            )
            self.send_response(r.status_code)
            for k, v in r.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("content-length", str(len(r.content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(r.content)

        do_GET = do_POST = do_HEAD = do_DELETE = _forward

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    recorder.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield recorder
    httpd.shutdown()
    upstream.close()


def launch(
    agent: str, args: list[str], base_url: str, bin_dir: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """`impetus launch AGENT --base-url URL -- ARGS` as a user runs it, in an empty folder, with a
    HOME and CODEX_HOME of its own (the CLIs write settings and sessions there)."""
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_"))}
    env.pop("LD_PRELOAD", None)
    env.pop("_IMPETUS_REEXEC", None)
    env.pop("IMPETUS_API_KEY", None)
    env |= {
        "HOME": str(home),
        "CODEX_HOME": str(home / ".codex"),
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHONPATH": str(PROJECT_ROOT),
        "NO_COLOR": "1",
    }
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "launch", agent, "--base-url", base_url, "--", *args],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TURN_TIMEOUT_S,
    )
    print(
        f"{agent} {' '.join(args[:3])}...: exit {out.returncode} in {time.monotonic() - started:.1f} s"
    )
    return out


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [
        json.loads(line[6:])
        for line in body.decode().splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def test_codex_exec_answers_one_turn(agent_bin: Path, proxy: Proxy, tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.md"
    instructions.write_text("You are a helpful assistant. Answer briefly.\n")
    args = ["exec", "--skip-git-repo-check", "--ephemeral"]
    args += ["-c", f"model_instructions_file={json.dumps(str(instructions))}", QUESTION]
    out = launch("codex", args, proxy.url, agent_bin, tmp_path)
    assert out.returncode == 0, out.stderr[-4000:]
    [turn] = proxy.posts("/v1/responses")
    assert turn.status == 200, turn.response[:2000]
    request = json.loads(turn.request)
    assert request["model"] == MODEL and request["stream"] is True
    assert request["input"][0]["content"][0]["text"].startswith("You are a helpful assistant.")
    events = sse_events(turn.response)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    completed = events[-1]["response"]
    answer = "".join(
        part["text"]
        for item in completed["output"]
        if item["type"] == "message"
        for part in item["content"]
        if part["type"] == "output_text"
    )
    assert answer.strip(), completed
    print(f"codex's answer ({completed['usage']}): {answer[:300]!r}")
    assert out.stdout.strip() == answer.strip()  # codex prints the model's final message
    assert "tokens used" in out.stderr


def test_claude_bare_answers_one_turn(agent_bin: Path, proxy: Proxy, tmp_path: Path) -> None:
    args = ["--bare", "--system-prompt", "You are a helpful assistant. Answer briefly."]
    args += ["--tools", "", "-p", QUESTION]
    out = launch("claude", args, proxy.url, agent_bin, tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    [turn] = proxy.posts("/v1/messages")
    assert turn.status == 200, turn.response[:2000]
    request = json.loads(turn.request)
    assert request["model"] == MODEL and not request.get("tools")
    events = sse_events(turn.response)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    answer = "".join(
        e["delta"]["text"]
        for e in events
        if e["type"] == "content_block_delta" and e["delta"]["type"] == "text_delta"
    )
    assert answer.strip()
    assert out.stdout.strip() == answer.strip()


def test_claude_default_prompt_gets_the_context_error_and_the_server_keeps_serving(
    agent_bin: Path, proxy: Proxy, tmp_path: Path, server: str
) -> None:
    out = launch("claude", ["-p", QUESTION], proxy.url, agent_bin, tmp_path)
    assert out.returncode != 0, out.stdout
    refused = [e for e in proxy.posts("/v1/messages") if e.status == 400]
    assert refused, [(e.path, e.status) for e in proxy.exchanges]
    error = json.loads(refused[0].response)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    message = error["error"]["message"]
    assert "8192" in message.replace(",", "") or "8,192" in message, message
    assert not [e for e in proxy.exchanges if e.status >= 500]
    printed = out.stdout + out.stderr
    assert "400" in printed or message[:40] in printed, printed[-2000:]
    # the server keeps serving
    r = httpx.post(
        f"{server}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8},
        timeout=TURN_TIMEOUT_S,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
