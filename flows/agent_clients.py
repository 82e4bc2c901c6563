"""What each coding agent needs to talk to an Impetus server: Codex CLI's provider profile and
Claude Code's environment. Pure functions of (server URL, model, window, key), so
`impetus launch` (flows/commands/launch.py) only discovers the server and execs the CLI.

Codex CLI (`@openai/codex`, 0.171+) layers `$CODEX_HOME/<name>.config.toml` on top of the user's
`config.toml` for `codex --profile <name>`; the profile lives in its own file, so the user's
settings are never rewritten. (A legacy `[profiles.<name>]` table in config.toml makes such a codex
refuse to start: `legacy_profile` finds it so that the command can say so first.)

Claude Code (`@anthropic-ai/claude-code` 2.1) reads its endpoint, key and models from the
environment; for a model whose name does not start with `claude-` it takes the context window
from CLAUDE_CODE_MAX_CONTEXT_TOKENS (else it assumes 1M tokens and never compacts in time).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

PROFILE = "impetus"  # the Codex profile and model provider id
KEY_ENV = "IMPETUS_API_KEY"  # where both the user and Codex's provider read the key
NO_KEY = "impetus-auth-off"  # what Claude Code sends when the server needs no key (it needs one)
INSTALL = {
    "codex": "npm install -g @openai/codex",
    "claude": "npm install -g @anthropic-ai/claude-code",
}

# Claude Code's traffic that is not the conversation (telemetry, update checks, error reports)
# stays off: the point of a local endpoint is that nothing leaves the machine.
CLAUDE_OFFLINE = {
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    # the "x-anthropic-billing-header" system block changes with every conversation: without it
    # the system prompt is the same prefix from one session to the next (the prefix cache reuses it)
    "CLAUDE_CODE_ATTRIBUTION_HEADER": "0",
}
# The model variables Claude Code reads: the main model, the small one it uses for titles and
# summaries, what the aliases (/model sonnet, ...) and subagents resolve to.
CLAUDE_MODEL_VARS = (
    "ANTHROPIC_MODEL",
    "ANTHROPIC_SMALL_FAST_MODEL",
    "ANTHROPIC_DEFAULT_HAIKU_MODEL",
    "ANTHROPIC_DEFAULT_SONNET_MODEL",
    "ANTHROPIC_DEFAULT_OPUS_MODEL",
    "CLAUDE_CODE_SUBAGENT_MODEL",
)


class ProfileError(Exception):
    """The Codex home holds something that stops the profile from working; says what to do."""


def max_output_tokens(window: int) -> int:
    """The reply budget a CLI should ask for: a quarter of the window (2,048 of 8k), at most
    32,000 (what Claude Code asks of its own models); the server clamps what is left anyway."""
    return max(256, min(window // 4, 32_000))


def codex_home(env: Mapping[str, str]) -> Path:
    return Path(env.get("CODEX_HOME") or Path.home() / ".codex")


def codex_profile(
    base_url: str, model: str, window: int | None, *, with_key: bool
) -> dict[str, Any]:
    """The `impetus` profile: this server as a Responses provider, the model and its window."""
    provider: dict[str, Any] = {
        "name": "Impetus",
        "base_url": f"{base_url.rstrip('/')}/v1",
        "wire_api": "responses",
    }
    if with_key:
        provider["env_key"] = KEY_ENV
    profile: dict[str, Any] = {"model": model, "model_provider": PROFILE}
    if window:
        profile["model_context_window"] = window
        # Codex compacts the conversation past this; leave room for the reply
        profile["model_auto_compact_token_limit"] = window - max_output_tokens(window)
    profile["model_providers"] = {PROFILE: provider}
    return profile


def write_codex_profile(home: Path, profile: dict[str, Any]) -> Path:
    """Merge `profile` into `$CODEX_HOME/impetus.config.toml` (keys the user added there stay;
    ours replace theirs, a stale `env_key` goes) and return the file."""
    path = home / f"{PROFILE}.config.toml"
    current = _read_toml(path) if path.exists() else {}
    for key in ("model_context_window", "model_auto_compact_token_limit"):
        if key not in profile:
            current.pop(key, None)  # a window from another model would be wrong
    providers = current.setdefault("model_providers", {})
    providers.pop(PROFILE, None)
    merged = _merge(current, profile)
    home.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by `impetus launch codex`: Codex's provider profile for an Impetus server\n"
        "# (`codex --profile impetus`). Rewritten at each launch; keys you add are kept.\n"
        + dumps_toml(merged)
    )
    return path


def legacy_profile(home: Path) -> str | None:
    """Why codex would refuse `--profile impetus` because of config.toml, or None."""
    path = home / "config.toml"
    if not path.exists():
        return None
    try:
        cfg = _read_toml(path)
    except ProfileError:
        return None  # codex reports its own file's errors
    if PROFILE in (cfg.get("profiles") or {}) or cfg.get("profile") == PROFILE:
        return (
            f'{path} has a legacy `[profiles.{PROFILE}]` table or `profile = "{PROFILE}"`, which '
            f"codex refuses next to {home / (PROFILE + '.config.toml')}: remove them from it"
        )
    return None


def claude_env(
    base_url: str, model: str, window: int | None, key: str | None, env: Mapping[str, str]
) -> dict[str, str]:
    """`env` with Claude Code pointed at this server: endpoint, key, every model slot, window."""
    out = dict(env)
    out.pop("ANTHROPIC_AUTH_TOKEN", None)  # a real Anthropic token must not go to this server
    out["ANTHROPIC_BASE_URL"] = base_url.rstrip("/")
    out["ANTHROPIC_API_KEY"] = key or NO_KEY
    for var in CLAUDE_MODEL_VARS:
        out[var] = model
    out.update(CLAUDE_OFFLINE)
    if window:
        out["CLAUDE_CODE_MAX_CONTEXT_TOKENS"] = str(window)
        out["CLAUDE_CODE_MAX_OUTPUT_TOKENS"] = str(max_output_tokens(window))
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path} is not valid TOML ({e}): fix or delete it") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# A TOML writer for what tomllib reads back from a profile: the standard library reads TOML but
# does not write it, and the project does not depend on a writer (tomli-w).
_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON's escapes are TOML basic-string escapes
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps_toml(doc: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """`doc` as TOML: scalars and arrays first, then a [table] per nested dict."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in doc.items():
        if isinstance(v, dict):
            path = (*prefix, k)
            body = dumps_toml(v, path)
            has_scalars = any(not isinstance(x, dict) for x in v.values())
            header = f"\n[{'.'.join(_key(p) for p in path)}]\n" if has_scalars or not v else ""
            out += header + body
    return out
