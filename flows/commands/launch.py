"""`impetus launch codex|claude`: run a coding agent against a running Impetus server.

    impetus launch codex                         # codex's interactive UI on the default model
    impetus launch codex -- exec "Explain ..."   # one non-interactive turn
    impetus launch claude -- -p "Explain ..."    # Claude Code, one turn
    impetus launch claude --model M --base-url http://gpu-box:8000 --api-key imp_...

It finds the server (--base-url, else serve.host:serve.port), asks it for the model (the server's
default unless --model) and its context window, points the CLI at it (flows/agent_clients.py:
a profile file under Codex's home, or Claude Code's environment) and replaces itself with the CLI;
everything after `--` goes to the CLI unchanged. The key comes from --api-key or IMPETUS_API_KEY.
"""

from __future__ import annotations

import os
import shutil
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.console import fail, settings

if TYPE_CHECKING:
    import httpx

    from pipelines.settings import Settings

WINDOW_FIELDS = ("context_window", "context_length", "max_model_len", "max_context_length")


class Agent(StrEnum):
    codex = "codex"
    claude = "claude"


def launch(
    agent: Annotated[Agent, typer.Argument(help="codex (Codex CLI) or claude (Claude Code).")],
    args: Annotated[
        list[str] | None, typer.Argument(help="Arguments for the CLI, after `--`.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="The model the agent uses (default: the server's).")
    ] = None,
    host: Annotated[str | None, typer.Option(help="The server's address (serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="The server's port (serve.port).")] = None,
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="The server's URL, e.g. http://127.0.0.1:8000."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", envvar="IMPETUS_API_KEY", show_envvar=True, help="An Impetus API key."
        ),
    ] = None,
) -> None:
    """Run Codex CLI or Claude Code against this server, with its model and context window."""
    from flows import agent_clients as ac

    env = _cli_env()
    exe = shutil.which(agent.value, path=env.get("PATH"))
    if exe is None:
        raise fail(
            f"{agent.value} is not installed (or not on PATH). Install it with "
            f"`{ac.INSTALL[agent.value]}` (Node.js 18+), then run this again.",
            code=2,
        )
    s = settings()
    url = (base_url or _local_url(s, host, port)).rstrip("/").removesuffix("/v1")
    model, window = _model_and_window(s, url, model, api_key)
    where = f"{url} (model {model}" + (f", {window:,}-token window)" if window else ")")
    if agent is Agent.codex:
        home = ac.codex_home(env)
        try:
            if problem := ac.legacy_profile(home):
                raise fail(problem)
            path = ac.write_codex_profile(
                home, ac.codex_profile(url, model, window, with_key=api_key is not None)
            )
        except ac.ProfileError as e:
            raise fail(str(e)) from None
        if api_key is not None:
            env[ac.KEY_ENV] = api_key
        argv = [exe, "--profile", ac.PROFILE, *(args or [])]
        typer.secho(f"codex → {where}; profile {path}", err=True, dim=True)
    else:
        env = ac.claude_env(url, model, window, api_key, env)
        argv = [exe, *(args or [])]
        typer.secho(f"claude → {where}", err=True, dim=True)
    os.execve(exe, argv, env)


def _cli_env() -> dict[str, str]:
    """This process's environment less what `impetus` itself added for MLX (flows/process.py:
    OpenBLAS preloaded): the CLI gets the user's environment."""
    env = dict(os.environ)
    if env.pop("_IMPETUS_REEXEC", None):
        from pipelines.hardware import openblas_path

        lib = str(openblas_path())
        rest = [p for p in env.get("LD_PRELOAD", "").split() if p != lib]
        if rest:
            env["LD_PRELOAD"] = " ".join(rest)
        else:
            env.pop("LD_PRELOAD", None)
    return env


def _local_url(s: Settings, host: str | None, port: int | None) -> str:
    """The URL of the server this machine's settings serve on (0.0.0.0 is reached on loopback)."""
    host = host or s.serve.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port or s.serve.port}"


def _model_and_window(
    s: Settings, url: str, model: str | None, key: str | None
) -> tuple[str, int | None]:
    """The model to use and its context window, as the server at `url` says them."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        live = httpx.get(f"{url}/api/health/live", timeout=3)
    except httpx.HTTPError:
        live = None
    if live is None or live.status_code != 200:
        raise fail(
            f"no Impetus server answers on {url}. Start one with `impetus serve` (or `make up`) "
            "in another terminal, or point --base-url (or --host/--port) at yours."
        )
    if model is None:
        ready = httpx.get(f"{url}/api/health/ready", timeout=10)
        model = ready.json().get("model") if ready.status_code == 200 else None
        if not model:
            model = s.models.llm
            typer.secho(
                f"the server is not ready yet; using {model} (the first request waits for it)",
                err=True,
                fg=typer.colors.YELLOW,
            )
    card = httpx.get(f"{url}/v1/models/{model}", headers=headers, timeout=10)
    _check(card, url, model, key)
    body: dict[str, Any] = card.json()
    if body.get("kind", "llm") != "llm":
        raise fail(f"{model} is an {body['kind']} model; --model takes an LLM")
    window = next((int(body[f]) for f in WINDOW_FIELDS if body.get(f)), None)
    return model, window or _local_window(s, model)


def _check(r: httpx.Response, url: str, model: str, key: str | None) -> None:
    """Refuse, saying what to do, when the server will not serve `model` with this key."""
    if r.status_code == 200:
        return
    if r.status_code == 401 and key is None:
        raise fail(
            f"the server at {url} needs an API key: pass --api-key KEY or set IMPETUS_API_KEY "
            "(an admin creates one with `impetus keys create --name agent --role user`)"
        )
    if r.status_code in (401, 403):
        raise fail(f"the server at {url} refused the API key ({r.status_code}): {_message(r)}")
    if r.status_code == 404:
        raise fail(f"the server at {url} has no model {model!r}; see `impetus models list`")
    raise fail(f"the server at {url} answered {r.status_code}: {_message(r)}")


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return r.text[:300]


def _local_window(s: Settings, model: str) -> int | None:
    """The window from the model's config in this machine's registry, for a server that does not
    say it (an older one); None when the model is not here."""
    import json

    from pipelines.errors import ImpetusError
    from pipelines.models.store import ModelStore

    try:
        entry = ModelStore(s.models_dir).get(model)
        cfg = json.loads((Path(entry.path) / "config.json").read_text())
    except (ImpetusError, OSError, ValueError):
        return None
    return int(cfg["max_position_embeddings"]) if "max_position_embeddings" in cfg else None
