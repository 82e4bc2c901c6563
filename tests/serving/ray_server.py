"""The Ray Serve server of the Ray-mode tests: `impetus serve --ray` in a subprocess on 127.0.0.1.

One server per test session (Ray starts slowly: about a minute on a loaded 2-core machine). It
deploys configs/serve.yaml with the test collaborators of ray_support.py (the fake models of
servers.FAKE_LLMS get their own LLM deployments, so fake engines run inside real Serve), on a
free port, with the same serve settings as the in-process server. flows/bench/server.py starts
and stops the process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.bench.server import READY, Server, ServerStartError, free_port, launch
from pipelines.settings import PROJECT_ROOT, load_settings
from tests.serving.servers import FAKE_LLMS, RunningServer

READY_TIMEOUT_S = float(os.environ.get("IMPETUS_TEST_RAY_TIMEOUT", "600"))
SERVE_ENV = {
    # the in-process server's serve settings (servers.start_inprocess)
    "IMPETUS_SERVE__QUEUE_LIMIT": "8",
    "IMPETUS_SERVE__MAX_BATCH_SIZE": "8",
    "IMPETUS_SERVE__KEEPALIVE_S": "0.5",
    "IMPETUS_SERVE__IDLE_TTL_S": "0",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
}


def write_serve_config(path: Path, port: int, *, fakes: bool = True, **args: Any) -> Path:
    """configs/serve.yaml on `port`, no CPUs reserved, with `args` merged into the app's args;
    with `fakes`, plus LLM deployments and the test collaborators for servers.FAKE_LLMS."""
    config = yaml.safe_load((PROJECT_ROOT / "configs" / "serve.yaml").read_text())
    config["http_options"]["port"] = port
    app_args = config["applications"][0]["args"]
    # Reserve no CPUs: the machines that run tests may have two.
    for m in app_args["models"]:
        m["ray_actor_options"] = {"num_cpus": 0}
    app_args["llm_defaults"] = {"ray_actor_options": {"num_cpus": 0}}
    if fakes:
        app_args["models"] += [
            {"model": name, "ray_actor_options": {"num_cpus": 0}} for name in FAKE_LLMS
        ]
        app_args["engine_factory"] = "tests.serving.ray_support:engine_factory"
        app_args["store_factory"] = "tests.serving.ray_support:store"
    app_args.update(args)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def state_dir(tmp: Path, models_dir: Path) -> Path:
    """A fresh data_dir whose models/ is the session's ready models dir."""
    state = tmp / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "models").symlink_to(models_dir, target_is_directory=True)
    return state


@contextmanager
def server_process(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[Server]:
    """Run `argv` until its /api/health/ready answers 200 on `port`; stop it at exit."""
    for attempt in (1, 2):
        stack = ExitStack()
        try:
            server = stack.enter_context(
                launch(
                    log.stem,
                    argv,
                    {**os.environ, **env},
                    port=port,
                    log_dir=log.parent,
                    live_path=READY,
                    ready_path=None,
                    timeout_s=READY_TIMEOUT_S,
                    grace_s=90,
                    cwd=PROJECT_ROOT,
                )
            )
        except ServerStartError:
            # Ray gives its raylet a fixed 30 s to register: retry once on a busy machine.
            if attempt == 1 and "timed out during startup" in log.read_text(errors="replace"):
                continue
            raise
        with stack:
            yield server
        return


# The session's Ray server while it runs (an ExitStack that stops it): the last test of a worker's
# Ray block stops it early (tests/conftest.py), so its cluster does not idle on the machine's two
# cores for the rest of the session.
RUNNING: list[ExitStack] = []


def stop_ray_server() -> None:
    """Stop the session's Ray server now, if this process started one (idempotent)."""
    while RUNNING:
        RUNNING.pop().close()


@pytest.fixture(scope="session")
def ray_server(
    tmp_path_factory: pytest.TempPathFactory, ready_models_dir: Path
) -> Iterator[RunningServer]:
    """`impetus serve --ray` with the fake models, for the whole session."""
    tmp = tmp_path_factory.mktemp("ray")
    port = free_port()
    config = write_serve_config(tmp / "serve.yaml", port)
    data_dir = state_dir(tmp, ready_models_dir)
    env = {
        **SERVE_ENV,
        "IMPETUS_DATA_DIR": str(data_dir),
        # the tests' corpora live in pytest's temporary folders
        "IMPETUS_RAG__INDEX_ROOTS": json.dumps(["data/samples", str(tmp.parent)]),
    }
    argv = [sys.executable, "-m", "flows.cli", "serve", "--ray"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--serve-config", str(config)]
    url = f"http://127.0.0.1:{port}"
    settings = load_settings()
    with ExitStack() as stack:
        stack.enter_context(server_process(argv, env, port, tmp / "server.log"))
        RUNNING.append(stack)  # stop_ray_server() may end it before the session does
        yield RunningServer(
            mode="ray",
            base_url=url,
            llm=settings.models.llm,
            embedding_model=settings.models.embedding,
            engines=None,  # they live in the replicas
            fake_models=True,
            extra={"log": tmp / "server.log", "data_dir": data_dir},
        )


@contextmanager
def start_ray(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The "ray" server mode of conftest.SERVER_STARTERS: the session's Ray server."""
    server = request.getfixturevalue("ray_server")
    if not RUNNING:
        pytest.fail(
            "the session's Ray server was stopped after this worker's block of Ray tests "
            "(tests/conftest.py); a Ray-mode test outside that block needs an id with 'ray'"
        )
    yield server
