"""`impetus serve`: the OpenAI-compatible endpoint.

One process by default: uvicorn runs `serving.http.app.create_app` with a `ModelManager` over the MLX
engine. It answers /api/health/live at once (MLX is imported when the default model loads, in
the background) and /api/health/ready once the default model is resident. `--ray` runs the same
app and engine as Ray Serve deployments (serving/ray/deployments.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flows.console import domain_errors, fail, settings

if TYPE_CHECKING:
    from pipelines.settings import Settings

# The runner of POST /v1/rag/index that the Ray ingress imports (it cannot import flows itself).
INDEX_RUNNER = "flows.ingest.runner:PrefectIndexRunner"


def _with_listen(s: Settings, host: str, port: int, insecure: bool) -> Settings:
    """The settings the server runs with: where it listens decides auth.mode auto (and the Ray
    ingress gets them too); refuse an address off loopback that no key protects."""
    from pipelines.keys import KeyStore
    from serving.http.auth import is_loopback, startup_problem

    s = s.model_copy(
        update={
            "serve": s.serve.model_copy(update={"host": host, "port": port}),
            "auth": s.auth.model_copy(update={"insecure": insecure or s.auth.insecure}),
        }
    )
    with domain_errors():
        store = KeyStore.open(s.data_dir)
        try:
            keys_exist = store.any()
        finally:
            store.close()
    problem = startup_problem(s, host, keys_exist)
    if problem is not None:
        raise fail(problem)
    if s.auth.mode == "on" and not keys_exist:
        typer.secho(
            "warning: auth.mode is on and no API key exists: every route but the health probes "
            "will answer 401. Create one: impetus keys create --name N --role admin",
            err=True,
            fg=typer.colors.YELLOW,
        )
    if s.auth.insecure and not is_loopback(host):
        typer.secho(
            f"warning: serving on {host} without API keys (--insecure): anyone who reaches "
            f"port {port} can use every route. Create a key: impetus keys create --name N "
            "--role admin",
            err=True,
            fg=typer.colors.YELLOW,
        )
    return s


def dashboard_line(s: Settings, host: str, port: int) -> str:
    """Where the dashboard is (serving/http/static.py), or how to build it when it is not."""
    from serving.http.app import dashboard_dir
    from serving.http.static import default_dist

    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/"
    dist = dashboard_dir(s) or default_dist()
    if (dist / "index.html").is_file():
        return f"Dashboard: {url}"
    return f"Dashboard: {url} (not built yet: run `make setup` to build it)"


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (serve.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (serve.port).")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="Registry LLM to load at start and serve by default (models.llm)."),
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="Run as Ray Serve deployments (configs/serve.yaml).")
    ] = False,
    serve_config: Annotated[
        Path | None,
        typer.Option(help="With --ray: the Ray Serve config to deploy (configs/serve.yaml)."),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve off loopback without API keys (anyone reaching the port may use it).",
        ),
    ] = False,
) -> None:
    """Serve the OpenAI-compatible API (chat, completions, embeddings, models, health, metrics).

    Off loopback (--host 0.0.0.0) it needs an API key first (`impetus keys create`)."""
    s = settings()
    host = host or s.serve.host
    port = port or s.serve.port
    s = _with_listen(s, host, port, insecure)
    if model is not None:
        from pipelines.models.store import ModelStore

        with domain_errors():
            entry = ModelStore(s.models_dir).get(model)
        if entry.kind != "llm":
            raise fail(f"{model!r} is an {entry.kind} model; --model takes an LLM.")
    typer.secho(dashboard_line(s, host, port), err=True, bold=True)
    if ray:
        from serving.ray import launcher

        with domain_errors():
            launcher.run(
                s,
                host=host,
                port=port,
                model=model,
                serve_config=serve_config,
                index_runner=INDEX_RUNNER,
            )
        return

    import uvicorn

    from flows.ingest.runner import PrefectIndexRunner
    from serving.engine.manager import ModelManager, mlx_engine_factory
    from serving.http.app import create_app
    from serving.http.graceful import GracefulServer

    manager = ModelManager.from_settings(s, mlx_engine_factory(s), default_model=model)
    runner = PrefectIndexRunner(s)
    app = create_app(s, manager=manager, index_runner=runner, preload_default=True)
    # A second Ctrl-C exits at once: the Prefect server the runner started goes first.
    app.state.shutdown.on_force(lambda: runner.stop_prefect_server(at_once=True))
    typer.secho(
        f"Impetus serving on http://{host}:{port}/v1 (default model {manager.default_model}; "
        f"ready when GET /api/health/ready answers 200)",
        err=True,
    )
    # log_config=None: uvicorn's loggers go through the structured handler `settings()` set up.
    # SIGINT/SIGTERM drain first (new requests 503, index runs cancelled), a second one exits.
    config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=5)
    server = GracefulServer(config, shutdown=app.state.shutdown)
    server.run()
    if server.started:
        exit_now()


def exit_now() -> None:
    """End the process once the app's shutdown has closed everything it owns (engines joined,
    index runs stopped, the Prefect server stopped, stores closed, spans flushed), without
    finalizing the interpreter: that destroys MLX's native state while threads that libraries
    started may still be ending, and once in CI the server then aborted after a clean shutdown
    ("terminate called without an active exception", exit -6; the same race as
    docs/decisions/weight-loader-thread.md)."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
