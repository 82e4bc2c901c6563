"""Scale-out under faults (issue 19, item 3): Impetus on a two-node Ray cluster of this machine.

A head node and a worker node that has the `mac` resource (`ray start --resources '{"mac": 1}'`,
as configs/serve.yaml documents for Macs) run as subprocesses with their own temp dir, ports and
auth token; `impetus serve --ray` joins them through RAY_ADDRESS with the LLM deployment pinned to
`{"mac": 1}`. The test checks with Ray's state API that the decode replica runs on the mac node,
then SIGKILLs that replica's worker process while a client streams a chat: the client must get an
OpenAI-shaped error event and `[DONE]` (not a hang), Serve must start a new replica on the mac
node, the next chat must succeed, and /api/health/live must answer 200 throughout.

Everything the test starts runs in its own sessions and is stopped by session id at the end
(never `ray stop`, which would stop every Ray on the machine). The state API needs Ray's dashboard
on the head (bound to 127.0.0.1); the tests' other Ray cluster (tests/serving/ray_server.py) uses
Ray's default ports, this one ports in 20000-20999 and worker ports in 22000-22999.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from ray.exceptions import ActorDiedError

from flows.bench.server import READY, launch, tail
from pipelines.hardware import blas_preload
from pipelines.settings import PROJECT_ROOT, load_settings
from serving.engine.base import Delta, EngineClosedError, GenerationRequest
from serving.http.errors import to_api_error
from serving.ray.proxies import RayEngineProxy
from tests.serving.ray_server import SERVE_ENV, state_dir, write_serve_config
from tests.serving.servers import real_engine_available

# tests/conftest.py puts every test of tests/serving/ray/ in the xdist group "ray"

RAY = str(Path(sys.executable).parent / "ray")
START_TIMEOUT_S = 240.0  # one node, or the server, on a loaded two-core machine
STREAM_TIMEOUT_S = 90.0  # the killed stream must end within this
RECOVER_TIMEOUT_S = 180.0  # Serve restarts the replica and the model loads again
MAC = {"mac": 1}


# -- processes and ports ---------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    # Ray binds most of its ports on every interface.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def free_block(lo: int, hi: int, n: int) -> int:
    """The first port p of a random walk through [lo, hi) with p .. p+n-1 all free."""
    starts = list(range(lo, hi - n + 1, n))
    offset = secrets.randbelow(len(starts))
    for start in starts[offset:] + starts[:offset]:
        if all(_port_free(p) for p in range(start, start + n)):
            return start
    raise RuntimeError(f"no {n} free consecutive ports in {lo}-{hi}")


def session_pids(sid: int) -> list[int]:
    """The processes of session `sid` (Ray's workers leave the node's process group, not its
    session)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                pids.append(int(stat.parent.name))
    return pids


NODE_STARTED = "Ray runtime started."
NODE_ATTEMPTS = 3  # Ray gives a raylet a fixed 30 s to register: a loaded machine can miss it


@contextmanager
def ray_node(name: str, args: list[str], env: dict[str, str], root: Path) -> Iterator[int]:
    """`ray start --block ARGS` in a new session, with its own temp dir under `root`, until it
    says it started (retried when its raylet missed Ray's startup deadline); yields its pid (=
    its session id). At exit: SIGTERM (Ray drains and stops its processes), then SIGKILL to
    whatever of the session is left."""
    for attempt in range(1, NODE_ATTEMPTS + 1):
        log = root / f"{name}-{attempt}.log"
        temp_dir = ["--temp-dir", str(root / f"{name}-{attempt}")]
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [RAY, "start", "--block", *args, *temp_dir],
                env=env,
                cwd=PROJECT_ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while proc.poll() is None and NODE_STARTED not in tail(log):
            if time.monotonic() > deadline:
                stop_node(proc)
                pytest.fail(f"{name} did not start in {START_TIMEOUT_S:.0f} s:\n{tail(log)}")
            time.sleep(0.5)
        if proc.poll() is None:
            print(f"{name} started in {time.monotonic() - deadline + START_TIMEOUT_S:.0f} s")
            break
        stop_node(proc)
        if attempt == NODE_ATTEMPTS or "timed out during startup" not in tail(log):
            pytest.fail(f"{name} exited ({proc.returncode}):\n{tail(log)}")
    try:
        yield proc.pid
    finally:
        stop_node(proc)


def stop_node(proc: subprocess.Popen[bytes]) -> None:
    """Stop a `ray start --block` and every process of its session."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    for pid in session_pids(proc.pid):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """Call `probe` until it returns something truthy; its exceptions count as "not yet"."""
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as exc:
            error = exc
        time.sleep(interval)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {error!r})")


# -- the cluster -----------------------------------------------------------------------------------


@dataclass
class Cluster:
    address: str  # the head's GCS, for `ray start --address` and RAY_ADDRESS
    dashboard: str  # the state API's server
    env: dict[str, str]  # what every process of the cluster runs with (its auth token)
    http_port: int  # a free port of the block the cluster's ports came from, for Serve
    worker_sid: int = 0  # the mac node's session: the replica must be one of its processes

    def _list(self, resource: str) -> list[Any]:
        """Ray's state API (ray.util.state), live entries only, with this cluster's token."""
        from ray.util.state import StateApiClient
        from ray.util.state.common import ListApiOptions, StateResource

        client = StateApiClient(
            address=self.dashboard,
            headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"},
        )
        options = ListApiOptions(filters=[("state", "=", "ALIVE")], limit=1000)
        return client.list(StateResource(resource), options, raise_on_missing_output=False)

    def nodes(self) -> list[Any]:
        return self._list("nodes")

    def both_nodes(self) -> list[Any] | None:
        nodes = self.nodes()
        return nodes if len(nodes) == 2 else None

    def llm_replicas(self) -> list[Any]:
        """The live replicas of LLM deployments (`LLM:<model>`, serving/ray/deployments.py)."""
        return [
            a
            for a in self._list("actors")
            if a.class_name.startswith("ServeReplica:") and ":LLM:" in a.class_name
        ]


@contextmanager
def two_node_cluster(root: Path) -> Iterator[Cluster]:
    """A head node (dashboard on 127.0.0.1, for the state API) and a worker with `mac: 1`."""
    head_port = free_block(20000, 21000, 16)
    worker_ports = free_block(22000, 23000, 100)
    p = iter(range(head_port, head_port + 16))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_ENABLE_UV_RUN_RUNTIME_ENV="0",
        # the replicas import serving/ and tests/ from the checkout, with OpenBLAS under MLX
        PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
    )
    preload = blas_preload(env)
    if preload:
        env["LD_PRELOAD"] = preload
    common = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats", "--num-cpus", "1"]
    common += ["--object-store-memory", str(80 << 20)]

    def agent_ports() -> list[str]:
        return [
            *("--node-manager-port", str(next(p)), "--object-manager-port", str(next(p))),
            *("--dashboard-agent-listen-port", str(next(p))),
            *("--dashboard-agent-grpc-port", str(next(p))),
            *("--runtime-env-agent-port", str(next(p)), "--metrics-export-port", str(next(p))),
        ]

    gcs, dashboard = next(p), next(p)
    head = ["--head", "--port", str(gcs), "--ray-client-server-port", str(next(p))]
    head += ["--include-dashboard=true", "--dashboard-host", "127.0.0.1"]
    head += ["--dashboard-port", str(dashboard)]
    head += ["--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + 49)]
    address = f"127.0.0.1:{gcs}"
    worker = ["--address", address, "--resources", json.dumps(MAC)]
    worker += ["--min-worker-port", str(worker_ports + 50)]
    worker += ["--max-worker-port", str(worker_ports + 99)]
    head += agent_ports()
    worker += agent_ports()

    cluster = Cluster(address, f"http://127.0.0.1:{dashboard}", env, http_port=next(p))
    with ExitStack() as stack:
        stack.enter_context(ray_node("ray-head", common + head, env, root))
        # The mac node joins, and the server starts, while the head's dashboard (the state API)
        # is still starting: on a loaded machine that takes minutes.
        cluster.worker_sid = stack.enter_context(ray_node("ray-mac", common + worker, env, root))
        yield cluster


# -- the test --------------------------------------------------------------------------------------


@dataclass
class HealthPoller:
    """GETs /api/health/live every `interval` s on a thread; records each answer."""

    url: str
    interval: float = 0.25
    answers: list[int | str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    self.answers.append(client.get(f"{self.url}/api/health/live").status_code)
                except httpx.HTTPError as exc:
                    self.answers.append(type(exc).__name__)
                self._stop.wait(self.interval)

    @contextmanager
    def running(self) -> Iterator[HealthPoller]:
        thread = threading.Thread(target=self.run, name="health-poller", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=15)


def kill_replica_mid_stream(
    url: str, payload: dict[str, Any], kill: Callable[[], None]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Stream `payload`, call `kill` once the first content arrived, read to the end; returns the
    JSON events and every `data:` line. Fails if the stream outlives STREAM_TIMEOUT_S."""
    events: list[dict[str, Any]] = []
    lines: list[str] = []
    deadline = time.monotonic() + STREAM_TIMEOUT_S
    killed = False
    timeout = httpx.Timeout(30, read=30)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            # keep-alive comments keep a hung stream's socket busy: bound the whole stream
            assert time.monotonic() < deadline, f"the stream hung after the kill: {lines[-3:]}"
            if not line.startswith("data: "):
                continue
            lines.append(line[6:])
            if line[6:] == "[DONE]":
                break
            events.append(json.loads(line[6:]))
            content = events[-1].get("choices", [{}])[0].get("delta", {}).get("content")
            if content and not killed:
                kill()
                killed = True
    assert killed, "the stream ended before any content arrived"
    return events, lines


def test_a_replica_that_dies_mid_stream_is_a_retryable_error_without_traceback() -> None:
    """What RayEngineProxy makes of the ActorDiedError a Serve stream raises when its replica
    dies: EngineClosedError (an error event mid-stream, else 503 model_not_loaded) that says to
    retry, and the remote stream cancelled."""

    class Stream:
        cancelled = False

        def __init__(self) -> None:
            self.messages: list[Any] = [[Delta("a")], ActorDiedError()]

        def __aiter__(self) -> Stream:
            return self

        async def __anext__(self) -> Any:
            msg = self.messages.pop(0)
            if isinstance(msg, BaseException):
                raise msg
            return msg

        def cancel(self) -> None:
            self.cancelled = True

    stream = Stream()
    # what the proxy uses of a DeploymentHandle: `.options(stream=True).generate.remote(...)`
    streaming = SimpleNamespace(generate=SimpleNamespace(remote=lambda _: stream))
    handle = SimpleNamespace(options=lambda **_: streaming)

    async def read() -> list[str]:
        got = []
        async for delta in RayEngineProxy("m", handle).generate(GenerationRequest("r", "hi")):
            got.append(delta.text)
        return got

    with pytest.raises(EngineClosedError) as exc:
        asyncio.run(read())
    assert "retry" in str(exc.value) and "Traceback" not in str(exc.value)
    assert stream.cancelled
    err = to_api_error(exc.value)
    assert (err.status, err.code) == (503, "model_not_loaded")


@pytest.mark.slow
@pytest.mark.skipif(
    not real_engine_available(), reason="streams the bundled model through the MLX engine"
)
def test_decode_pinned_to_mac_node_survives_replica_kill_mid_stream(
    ready_models_dir: Path,
) -> None:
    settings = load_settings()
    model = settings.models.llm
    root = Path(tempfile.mkdtemp(prefix="impetus-2n-", dir="/tmp"))  # short: Ray's socket paths
    t0 = time.monotonic()
    times: dict[str, float] = {}  # seconds since t0, printed for CI logs
    try:
        with two_node_cluster(root) as cluster:
            times["cluster_up"] = time.monotonic() - t0
            port = cluster.http_port
            pinned = {"num_cpus": 0, "resources": MAC}
            config = write_serve_config(
                root / "serve.yaml",
                port,
                fakes=False,
                models=[{"model": model, "ray_actor_options": pinned}],
                llm_defaults={"ray_actor_options": pinned},
                embedding=None,  # lean: this test needs no embeddings
                index_runner=None,
            )
            env = {
                **cluster.env,
                **SERVE_ENV,
                "IMPETUS_DATA_DIR": str(state_dir(root, ready_models_dir)),
                "RAY_ADDRESS": cluster.address,
                "_IMPETUS_REEXEC": "1",  # LD_PRELOAD is already set
            }
            argv = [sys.executable, "-m", "flows.cli", "serve", "--ray", "--host", "127.0.0.1"]
            argv += ["--port", str(port), "--serve-config", str(config)]
            with launch(
                "impetus",
                argv,
                env,
                port=port,
                log_dir=root,
                live_path=READY,
                ready_path=None,
                timeout_s=START_TIMEOUT_S,
                grace_s=60,
                cwd=PROJECT_ROOT,
            ) as server:
                times["server_ready"] = time.monotonic() - t0
                nodes = wait_for("both nodes in the state API", cluster.both_nodes, START_TIMEOUT_S)
                mac_nodes = {n.node_id for n in nodes if n.resources_total.get("mac")}
                assert len(mac_nodes) == 1, nodes
                _check_scale_out_under_faults(cluster, server.url, model, mac_nodes)
                times["checked"] = time.monotonic() - t0
        times["torn_down"] = time.monotonic() - t0
        print("two-node test phases (s since start):", {k: round(v) for k, v in times.items()})
    except BaseException:
        for log in sorted(root.glob("*.log")):  # the temp dir goes away: show what happened
            print(f"--- {log.name} (tail)\n{tail(log)}")
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check_scale_out_under_faults(
    cluster: Cluster, url: str, model: str, mac_nodes: set[str]
) -> None:
    # decode runs on the mac node only
    (replica,) = wait_for("the LLM replica", cluster.llm_replicas, 60)
    assert replica.node_id in mac_nodes, (replica, mac_nodes)
    # the pid Ray reports is a process of the mac node's session: ours to kill
    assert replica.pid in session_pids(cluster.worker_sid)

    # The EOS tokens of the bundled model (SmolLM2: 0 and 2) are banned, so the stream runs
    # to max_tokens and is still running when its replica dies.
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": "Count from 1 to 300."}],
        "max_tokens": 300,
        "stream": True,
        "logit_bias": {"0": -100, "2": -100},
    }
    with HealthPoller(url).running() as health:
        started = time.monotonic()
        events, lines = kill_replica_mid_stream(
            url, payload, lambda: os.kill(replica.pid, signal.SIGKILL)
        )
        stream_end_s = time.monotonic() - started

        # the in-flight client: content, then one error event in OpenAI's shape, then [DONE]
        assert lines[-1] == "[DONE]", lines[-3:]
        error = events[-1].get("error")
        assert error is not None, events[-1]
        assert set(error) >= {"message", "type", "code"}
        # the replica is gone, not the model: retryable, and said so (serving/ray/proxies.py)
        assert error["code"] == "model_not_loaded" and "retry" in error["message"]
        assert "Traceback" not in error["message"] and "/" not in error["message"]
        assert any("choices" in e for e in events[:-1])

        # Serve starts a new replica, again on the mac node, and chats succeed
        chat = {**payload, "stream": False, "max_tokens": 4}
        chat.pop("logit_bias")

        answers: list[int] = []  # what chats got while the replica restarted

        def chat_ok() -> bool:
            r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
            answers.append(r.status_code)
            return r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1

        wait_for("a chat after the kill", chat_ok, RECOVER_TIMEOUT_S, interval=2)
        recovered_s = time.monotonic() - started
        new = wait_for(
            "the new LLM replica",
            lambda: [a for a in cluster.llm_replicas() if a.actor_id != replica.actor_id],
            60,
        )
        assert len(new) == 1 and new[0].node_id in mac_nodes, new
        streamed = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
        assert streamed.status_code == 200
        time.sleep(1)  # a few more health answers after recovery

    # the ingress answered health throughout
    assert len(health.answers) >= 10
    assert set(health.answers) == {200}, [a for a in health.answers if a != 200][:5]
    print(
        f"stream ended {stream_end_s:.1f} s after it started with {error}; chats again after "
        f"{recovered_s:.1f} s (answers {answers}); {len(health.answers)} health answers, all 200"
    )
