"""`impetus serve --ray`: a local Ray (or the cluster RAY_ADDRESS names), the applications of
configs/serve.yaml deployed on host:port, and a clean shutdown on SIGINT/SIGTERM."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
import yaml
from ray import serve

from pipelines.errors import ImpetusError
from pipelines.settings import PROJECT_ROOT, Settings
from serving.ray import deployments

log = structlog.get_logger(__name__)

DEFAULT_SERVE_CONFIG = PROJECT_ROOT / "configs" / "serve.yaml"


def read_serve_config(path: Path) -> dict[str, Any]:
    """configs/serve.yaml (or another file of the same shape) as a dict."""
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict) or not data.get("applications"):
        raise ImpetusError(f"{path} has no `applications:`; see configs/serve.yaml for the shape.")
    return data


def run(
    settings: Settings,
    *,
    host: str | None = None,
    port: int | None = None,
    model: str | None = None,
    serve_config: Path | None = None,
    num_cpus: int | None = None,
    stop: threading.Event | None = None,
    on_ready: Callable[[dict[str, float]], None] | None = None,
    index_runner: str | None = None,
) -> None:
    """Start a local Ray (dashboard and usage stats off, 127.0.0.1 only), or join the running
    cluster that RAY_ADDRESS names (`ray start --head`, see configs/serve.yaml), deploy the
    applications of `serve_config` on `host:port`, block until SIGINT/SIGTERM (or `stop`), then
    shut Serve down (and the local Ray; a joined cluster keeps running).

    `settings` go to every replica (so `--model` and IMPETUS_* overrides hold there too); the
    `args:` of each application may still override them. `index_runner` (an import path, see
    `RayAppArgs`) is the ingress's runner of index flows where the config names none.
    """
    from pipelines import telemetry

    telemetry.disable()
    # Under `uv run`, Ray would package the checkout and start workers through uv (slow, and a
    # copy of the checkout has no data/state); the venv is already what the workers need.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    config = read_serve_config(serve_config or DEFAULT_SERVE_CONFIG)
    host = host or settings.serve.host
    port = port or settings.serve.port

    import ray

    address = os.environ.get("RAY_ADDRESS")
    if address:
        # A cluster started with `ray start` (a head, and workers with --resources '{"mac": 1}'):
        # join it as a driver. Its nodes' cores, ports and environment are theirs to set.
        ray.init(address=address, namespace="serve", configure_logging=False, log_to_driver=True)
        log.info("ray.cluster.joined", address=address)
    else:
        _start_local_ray(num_cpus)
    timings["ray_init_s"] = time.perf_counter() - t0
    try:
        serve.start(
            http_options={**config.get("http_options", {}), "host": host, "port": port},
            proxy_location=config.get("proxy_location", "HeadOnly"),
            logging_config={"log_level": "WARNING", "enable_access_log": False},
        )
        timings["serve_start_s"] = time.perf_counter() - t0
        for app in config["applications"]:
            args = dict(app.get("args") or {})
            args["settings"] = {**settings.model_dump(mode="json"), **args.get("settings", {})}
            if model:
                args["default_model"] = model
            if index_runner and app["import_path"] == f"{deployments.__name__}:app_builder":
                args.setdefault("index_runner", index_runner)
            builder = deployments.import_path(app["import_path"])
            serve.run(
                builder(args),
                name=app.get("name", "default"),
                route_prefix=app.get("route_prefix", "/"),
                logging_config={"log_level": "WARNING", "enable_access_log": False},
            )
        timings["ready_s"] = time.perf_counter() - t0
        log.info(
            "ray.serve.ready",
            url=f"http://{host}:{port}",
            **{k: round(v, 1) for k, v in timings.items()},
        )
        if on_ready is not None:
            on_ready(timings)
        _wait(stop or threading.Event())
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _start_local_ray(num_cpus: int | None) -> None:
    """A Ray of this machine alone, owned by this process (dashboard off, 127.0.0.1)."""
    import ray

    for attempt in (1, 2):
        try:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                namespace="serve",
                _node_ip_address="127.0.0.1",
                object_store_memory=128 << 20,
                configure_logging=False,
                log_to_driver=True,
            )
            return
        except Exception as exc:
            # Ray gives its raylet a fixed 30 s to register; an overloaded machine can miss it.
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
            log.warning("ray.init.retry", error=str(exc))
            ray.shutdown()


def _wait(stop: threading.Event) -> None:
    """Block until `stop` is set or SIGINT/SIGTERM arrives."""

    def handler(signum: int, frame: Any) -> None:
        stop.set()

    previous = {
        sig: signal.signal(sig, handler)
        for sig in (signal.SIGINT, signal.SIGTERM)
        if threading.current_thread() is threading.main_thread()
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
