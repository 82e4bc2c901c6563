"""`impetus launch codex|claude`: the Codex profile and Claude Code's environment it writes, and the
command as a user runs it (a subprocess) against a real server, with stand-ins for the two CLIs
on PATH that record what they were started with (the real CLIs run in
tests/serving/test_agent_clis.py, slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import agent_clients as ac
from pipelines.keys import KeyStore
from pipelines.settings import PROJECT_ROOT, load_settings
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.flows.conftest import link_models
from tests.serving.fakes import FakeEngine
from tests.serving.servers import uvicorn_server

MODEL = "smollm2-135m-instruct"  # the default LLM; its window is 8,192 tokens


# -- the profile and the environment -----------------------------------------------------------


def test_codex_profile_is_a_responses_provider_with_the_window(tmp_path: Path) -> None:
    profile = ac.codex_profile("http://127.0.0.1:8000/", MODEL, 8192, with_key=True)
    path = ac.write_codex_profile(tmp_path / "codex", profile)
    assert path == tmp_path / "codex" / "impetus.config.toml"
    written = tomllib.loads(path.read_text())
    assert written == {
        "model": MODEL,
        "model_provider": "impetus",
        "model_context_window": 8192,
        "model_auto_compact_token_limit": 8192 - 2048,
        "model_providers": {
            "impetus": {
                "name": "Impetus",
                "base_url": "http://127.0.0.1:8000/v1",
                "wire_api": "responses",
                "env_key": "IMPETUS_API_KEY",
            }
        },
    }


def test_rewriting_the_profile_keeps_the_users_keys_and_drops_stale_ones(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    user = (
        'approval_policy = "never"\nmodel_context_window = 1000000\n'
        '[model_providers.impetus]\nenv_key = "OLD"\nquery_params = { a = "b" }\n'
        '[model_providers.other]\nbase_url = "http://x/v1"\n'
        '[mcp_servers."my docs"]\ncommand = "npx"\nargs = ["-y", "docs \\"server\\""]\n'
    )
    (home / "impetus.config.toml").write_text(user)
    (home / "config.toml").write_text('model = "gpt-5"\n')
    ac.write_codex_profile(home, ac.codex_profile("http://h:1", "m2", None, with_key=False))
    written = tomllib.loads((home / "impetus.config.toml").read_text())
    assert written["approval_policy"] == "never"
    assert written["model"] == "m2"
    assert "model_context_window" not in written  # the old model's window, not m2's
    assert written["model_providers"]["impetus"] == {
        "name": "Impetus",
        "base_url": "http://h:1/v1",
        "wire_api": "responses",
    }  # no key now: no env_key, which would make codex demand one
    assert written["model_providers"]["other"] == {"base_url": "http://x/v1"}
    assert written["mcp_servers"]["my docs"]["args"] == ["-y", 'docs "server"']
    assert (home / "config.toml").read_text() == 'model = "gpt-5"\n'  # the user's file untouched


def test_a_broken_profile_or_a_legacy_table_is_reported(tmp_path: Path) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "impetus.config.toml").write_text("model = \n")
    with pytest.raises(ac.ProfileError, match="not valid TOML"):
        ac.write_codex_profile(home, ac.codex_profile("http://h:1", "m", 8192, with_key=False))
    assert ac.legacy_profile(home) is None
    (home / "config.toml").write_text('[profiles.impetus]\nmodel = "m"\n')
    assert "remove them" in (ac.legacy_profile(home) or "")


def test_toml_writer_round_trips() -> None:
    doc = {
        "s": 'quote " backslash \\ newline \n é',
        "i": -3,
        "f": 0.25,
        "b": False,
        "arr": [1, "two", {"x": 1}],
        "a": {"b": {"c": 1, "d": {}}, "e.f": "dotted"},
    }
    assert tomllib.loads(ac.dumps_toml(doc)) == doc


def test_claude_env_points_every_model_slot_at_the_server() -> None:
    user = {"PATH": "/bin", "ANTHROPIC_AUTH_TOKEN": "sk-ant-real", "ANTHROPIC_MODEL": "opus"}
    env = ac.claude_env("http://127.0.0.1:8000/", MODEL, 8192, None, user)
    assert env["PATH"] == "/bin"
    assert "ANTHROPIC_AUTH_TOKEN" not in env  # a real Anthropic token never goes to the server
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:8000"
    assert env["ANTHROPIC_API_KEY"] == ac.NO_KEY  # Claude Code will not start without one
    assert {env[v] for v in ac.CLAUDE_MODEL_VARS} == {MODEL}
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "8192"
    assert env["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] == "2048"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    keyed = ac.claude_env("http://h:1", "m", None, "imp_x", {})
    assert keyed["ANTHROPIC_API_KEY"] == "imp_x"
    assert "CLAUDE_CODE_MAX_CONTEXT_TOKENS" not in keyed


# -- the command --------------------------------------------------------------------------------

STUB = """#!{python}
import json, os, sys
keep = [k for k in os.environ if k.startswith(("ANTHROPIC_", "CLAUDE_", "IMPETUS_API", "DISABLE_"))]
out = {{"argv": sys.argv[1:], "env": {{k: os.environ[k] for k in keep}},
       "ld_preload": os.environ.get("LD_PRELOAD", "")}}
open(os.environ["STUB_OUT"], "w").write(json.dumps(out))
"""


@pytest.fixture
def stubs(tmp_path: Path) -> Path:
    """A folder with `codex` and `claude` stand-ins that record their argv and environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("codex", "claude"):
        exe = bin_dir / name
        exe.write_text(STUB.format(python=sys.executable))
        exe.chmod(0o755)
    return bin_dir


@pytest.fixture
def servers(tmp_path: Path, ready_models_dir: Path) -> Iterator[Any]:
    """Real servers on the registry's models, answered by FakeEngine: `start(auth)` starts one
    with auth.mode `auth` (and, when on, one key)."""
    from contextlib import ExitStack

    with ExitStack() as stack:

        def start(auth: str) -> dict[str, Any]:
            data_dir = tmp_path / f"state-{auth}"
            link_models(data_dir, ready_models_dir)
            settings = load_settings(data_dir=data_dir, auth={"mode": auth})
            keys = KeyStore.open(data_dir)
            _, token = keys.create("agent", "user")
            keys.close()
            manager = ModelManager.from_settings(settings, lambda name, path: FakeEngine(name))
            app = create_app(settings, manager=manager, preload_default=True)
            url = stack.enter_context(uvicorn_server(app))
            return {"url": url, "token": token, "data_dir": data_dir}

        yield start


@pytest.fixture
def server(servers: Any) -> dict[str, Any]:
    return dict(servers("on"))


def impetus(
    args: list[str], data_dir: Path, path: Path | None, out: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "IMPETUS_DATA_DIR": str(data_dir), "STUB_OUT": str(out), **env}
    for var in ("IMPETUS_API_KEY", "LD_PRELOAD", "_IMPETUS_REEXEC"):  # as a user's shell starts
        full.pop(var, None)
    full.update(env)
    full["PATH"] = f"{path}:/usr/bin:/bin" if path else "/usr/bin/nonexistent"
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "launch", *args],
        cwd=PROJECT_ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_launch_codex_writes_the_profile_and_execs_codex(
    servers: Any, stubs: Path, tmp_path: Path
) -> None:
    out, home = tmp_path / "out.json", tmp_path / "codex-home"
    open_server = servers("off")
    args = ["codex", "--base-url", open_server["url"], "--", "exec", "-c", "x=1", "Say hi"]
    r = impetus(args, open_server["data_dir"], stubs, out, CODEX_HOME=str(home))
    assert r.returncode == 0, r.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["--profile", "impetus", "exec", "-c", "x=1", "Say hi"]
    profile = tomllib.loads((home / "impetus.config.toml").read_text())
    assert profile["model"] == MODEL and profile["model_context_window"] == 8192
    assert profile["model_providers"]["impetus"]["base_url"] == open_server["url"] + "/v1"
    assert "env_key" not in profile["model_providers"]["impetus"]
    assert "openblas" not in seen["ld_preload"]  # impetus's own preload stays with impetus
    assert "8,192-token window" in r.stderr

    # with auth on, the key from IMPETUS_API_KEY goes to codex through the provider's env_key
    server = servers("on")
    env = {"CODEX_HOME": str(home), "IMPETUS_API_KEY": server["token"]}
    r = impetus(["codex", "--base-url", server["url"]], server["data_dir"], stubs, out, **env)
    assert r.returncode == 0, r.stderr
    seen = json.loads(out.read_text())
    assert seen["env"]["IMPETUS_API_KEY"] == server["token"]
    profile = tomllib.loads((home / "impetus.config.toml").read_text())
    assert profile["model_providers"]["impetus"]["env_key"] == "IMPETUS_API_KEY"
    assert server["token"] not in (home / "impetus.config.toml").read_text()


def test_launch_claude_sets_its_environment(servers: Any, stubs: Path, tmp_path: Path) -> None:
    out, server = tmp_path / "out.json", servers("on")
    port = server["url"].rsplit(":", 1)[1]
    args = ["claude", "--host", "127.0.0.1", "--port", port, "--api-key", server["token"]]
    r = impetus([*args, "--", "-p", "hi", "--tools", ""], server["data_dir"], stubs, out)
    assert r.returncode == 0, r.stderr
    seen = json.loads(out.read_text())
    assert seen["argv"] == ["-p", "hi", "--tools", ""]
    env = seen["env"]
    assert env["ANTHROPIC_BASE_URL"] == server["url"]
    assert env["ANTHROPIC_API_KEY"] == server["token"]
    assert env["ANTHROPIC_MODEL"] == env["ANTHROPIC_SMALL_FAST_MODEL"] == MODEL
    assert env["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] == "8192"
    assert server["token"] not in r.stderr
    # auth off: a placeholder key (Claude Code does not start without one)
    open_server = servers("off")
    r = impetus(["claude", "--base-url", open_server["url"]], open_server["data_dir"], stubs, out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["env"]["ANTHROPIC_API_KEY"] == ac.NO_KEY


def test_launch_says_what_to_do_when_something_is_missing(
    server: dict[str, Any], stubs: Path, tmp_path: Path
) -> None:
    out, data_dir, url = tmp_path / "out.json", server["data_dir"], server["url"]
    r = impetus(["codex", "--base-url", url], data_dir, None, out)
    assert r.returncode == 2 and "npm install -g @openai/codex" in r.stderr
    r = impetus(["claude", "--base-url", url], data_dir, None, out)
    assert r.returncode == 2 and "npm install -g @anthropic-ai/claude-code" in r.stderr
    r = impetus(["claude", "--base-url", "http://127.0.0.1:9"], data_dir, stubs, out)
    assert r.returncode == 1 and "impetus serve" in r.stderr
    r = impetus(["claude", "--base-url", url], data_dir, stubs, out)  # auth is on, no key
    assert r.returncode == 1 and "IMPETUS_API_KEY" in r.stderr
    r = impetus(["claude", "--base-url", url, "--api-key", "imp_bad"], data_dir, stubs, out)
    assert r.returncode == 1 and "refused the API key" in r.stderr
    args = ["claude", "--base-url", url, "--model", "nope", "--api-key", server["token"]]
    r = impetus(args, data_dir, stubs, out)
    assert r.returncode == 1 and "no model 'nope'" in r.stderr
    assert not out.exists() and "Traceback" not in r.stderr
