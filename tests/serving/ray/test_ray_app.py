"""Ray Serve mode (serving/ray/deployments.py, serving/ray/proxies.py).

Fast: configs/serve.yaml builds the application it documents; chunks are coalesced without
delaying a sequence's first delta; the engine proxy re-raises domain errors as they were and
cancels the remote stream when its reader goes away. Slow: fake engines inside real Serve (the
session's `impetus serve --ray`, tests/serving/ray_server.py) fail mid-stream, free a cancelled
sequence, unload and load again; and `serve run` runs configs/serve.yaml itself.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from pipelines.hardware import blas_preload
from pipelines.settings import PROJECT_ROOT, load_settings
from serving.engine.base import (
    Constraint,
    Delta,
    EngineCapabilities,
    EngineError,
    GenerationRequest,
    QueueFullError,
    SamplingParams,
)
from serving.ray.deployments import RayAppArgs, app_builder, llm_deployment_name
from serving.ray.proxies import RayEngineProxy, RemoteError, coalesce
from tests.serving.ray_server import (
    SERVE_ENV,
    free_port,
    server_process,
    state_dir,
    write_serve_config,
)
from tests.serving.servers import RunningServer

SERVE_YAML = PROJECT_ROOT / "configs" / "serve.yaml"


# -- configs/serve.yaml --------------------------------------------------------------------------


def _app_args() -> dict[str, Any]:
    config = yaml.safe_load(SERVE_YAML.read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "serving.ray.deployments:app_builder"
    return dict(app["args"])


def test_serve_yaml_builds_ingress_llm_and_embedding_deployments() -> None:
    args = _app_args()
    RayAppArgs.model_validate(args)  # unknown keys are errors
    ingress = app_builder(args)._bound_deployment
    assert ingress.name == "Ingress"
    assert ingress.ray_actor_options.get("num_cpus") == 0
    _, llms, embedding, default_model, _, index_runner = ingress.init_args
    assert default_model == "smollm2-135m-instruct"
    # the ingress runs POST /v1/rag/index through the runner the config names (serving imports
    # no flows: it gets an import path)
    assert index_runner == "flows.ingest.runner:PrefectIndexRunner"
    llm = llms[default_model]._bound_deployment
    assert llm.name == llm_deployment_name(default_model)
    # above queue_limit + max_batch_size: the engine's bounded queue decides, not Ray
    assert llm.max_ongoing_requests >= 1000
    assert "resources" not in llm.ray_actor_options  # default: no custom resources
    # coalescing: the short window, and the busy replica's several steps per message
    assert llm.init_args[4:] == (5, 4, 4, 400)
    assert embedding._bound_deployment.name == "EmbeddingServer"


def test_llm_resources_pin_decode_and_unlisted_default_model_gets_a_deployment() -> None:
    args = _app_args()
    args["models"] = [{"model": "other-llm", "ray_actor_options": {"resources": {"mac": 1}}}]
    args["llm_defaults"] = {"ray_actor_options": {"num_cpus": 0}}
    args["embedding"] = None
    _, llms, embedding, default_model, _, _ = app_builder(args)._bound_deployment.init_args
    assert embedding is None
    assert llms["other-llm"]._bound_deployment.ray_actor_options["resources"] == {"mac": 1}
    assert llms[default_model]._bound_deployment.ray_actor_options == {"num_cpus": 0}


def test_unknown_key_in_args_is_an_error() -> None:
    with pytest.raises(ValueError, match="coalesce_msec"):
        RayAppArgs.model_validate({**_app_args(), "coalesce_msec": 5})


# -- coalescing ------------------------------------------------------------------------------------


async def _source(
    gaps: list[float], fail: bool = False, log: list[str] | None = None
) -> AsyncIterator[int]:
    try:
        for i, gap in enumerate(gaps):
            await asyncio.sleep(gap)
            yield i
        if fail:
            raise QueueFullError("full", retry_after=3.0)
    finally:
        if log is not None:
            log.append("closed")


async def _timed(stream: AsyncIterator[list[int]]) -> list[tuple[float, list[int]]]:
    start = time.monotonic()
    return [(time.monotonic() - start, batch) async for batch in stream]


def test_coalesce_sends_first_item_at_once_then_batches_bursts() -> None:
    # item 0 at once, 1..19 in a burst 30 ms later
    gaps = [0.0, 0.03] + [0.0] * 18
    out = asyncio.run(_timed(coalesce(_source(gaps), window_s=0.05)))
    assert out[0][1] == [0] and out[0][0] < 0.02
    assert [i for _, batch in out for i in batch] == list(range(20))
    assert len(out) <= 3  # the burst crossed in one or two messages, not 19


def test_coalesce_adds_no_latency_to_a_slow_stream() -> None:
    out = asyncio.run(_timed(coalesce(_source([0.04] * 4), window_s=0.005)))
    assert [batch for _, batch in out] == [[0], [1], [2], [3]]


def test_coalesce_while_busy_sends_several_steps_per_message_never_the_first_held() -> None:
    # a slow stream (one item per 40 ms, a big batch's decode step) while the replica is busy:
    # the first item at once, then messages of up to 3 items, none held past 100 ms
    out = asyncio.run(
        _timed(
            coalesce(
                _source([0.0] + [0.04] * 9),
                window_s=0.005,
                busy=lambda: True,
                busy_items=3,
                busy_hold_s=0.1,
            )
        )
    )
    assert out[0][1] == [0] and out[0][0] < 0.02
    assert [i for _, batch in out for i in batch] == list(range(10))
    assert [len(batch) for _, batch in out[1:]] == [3, 3, 3]
    # a message leaves when its third item arrives: item 3 at 120 ms, 6 at 240 ms, 9 at 360 ms
    assert all(abs(t - 0.04 * batch[-1]) < 0.03 for t, batch in out[1:])


def test_coalesce_while_busy_holds_no_item_past_the_hold() -> None:
    out = asyncio.run(
        _timed(
            coalesce(
                _source([0.0, 0.01, 0.2, 0.2]),
                window_s=0.005,
                busy=lambda: True,
                busy_items=4,
                busy_hold_s=0.05,
            )
        )
    )
    assert [batch for _, batch in out] == [[0], [1], [2], [3]]
    # item 1 arrives at 10 ms and leaves at the hold's end, not with item 2 at 210 ms
    assert 0.05 <= out[1][0] < 0.12


def test_coalesce_not_busy_keeps_the_short_window() -> None:
    out = asyncio.run(
        _timed(
            coalesce(
                _source([0.04] * 4),
                window_s=0.005,
                busy=lambda: False,
                busy_items=4,
                busy_hold_s=1.0,
            )
        )
    )
    assert [batch for _, batch in out] == [[0], [1], [2], [3]]


def test_coalesce_while_busy_ends_without_waiting_out_the_hold() -> None:
    async def run() -> float:
        start = time.monotonic()
        got = [
            batch
            async for batch in coalesce(
                _source([0.0, 0.01]), window_s=0.005, busy=lambda: True, busy_items=8, busy_hold_s=5
            )
        ]
        assert got == [[0], [1]]
        return time.monotonic() - start

    assert asyncio.run(run()) < 1.0


def test_coalesce_delivers_items_then_raises_the_source_error() -> None:
    async def run() -> list[int]:
        got: list[int] = []
        with pytest.raises(QueueFullError) as exc:
            async for batch in coalesce(_source([0.0, 0.0], fail=True), window_s=0.01):
                got.extend(batch)
        assert exc.value.retry_after == 3.0
        return got

    assert asyncio.run(run()) == [0, 1]


def test_closing_the_coalesced_stream_closes_the_source() -> None:
    log: list[str] = []

    async def run() -> None:
        stream = coalesce(_source([0.0] + [0.05] * 100, log=log), window_s=0.005)
        assert await stream.__anext__() == [0]
        await stream.aclose()

    asyncio.run(run())
    assert log == ["closed"]


# -- the engine proxy, over a stand-in for a Serve handle -------------------------------------------


class _Response:
    def __init__(self, messages: list[Any]) -> None:
        self.messages = messages
        self.cancelled = False

    def __aiter__(self) -> _Response:
        return self

    async def __anext__(self) -> Any:
        if not self.messages:
            raise StopAsyncIteration
        msg = self.messages.pop(0)
        if isinstance(msg, BaseException):
            raise msg
        return msg

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    """What RayEngineProxy uses of a DeploymentHandle: `.options(stream=True).generate.remote`."""

    def __init__(self, messages: list[Any]) -> None:
        self.response = _Response(messages)

    def options(self, **_: Any) -> _Handle:
        return self

    @property
    def generate(self) -> Any:
        handle = self

        class _Method:
            def remote(self, request: GenerationRequest) -> _Response:
                return handle.response

        return _Method()


def _collect(proxy: RayEngineProxy, limit: int | None = None) -> list[Delta]:
    async def run() -> list[Delta]:
        out: list[Delta] = []
        stream = proxy.generate(GenerationRequest("r1", prompt="hi"))
        async for d in stream:
            out.append(d)
            if limit is not None and len(out) >= limit:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        return out

    return asyncio.run(run())


def test_proxy_flattens_batches_and_reraises_domain_errors_as_they_were() -> None:
    deltas = [[Delta("a"), Delta("b")], [Delta("c", finish_reason="stop")]]
    handle = _Handle(list(deltas))
    assert [d.text for d in _collect(RayEngineProxy("m", handle))] == ["a", "b", "c"]
    assert not handle.response.cancelled

    handle = _Handle([RemoteError(QueueFullError("full", retry_after=2.5))])
    with pytest.raises(QueueFullError) as exc:
        _collect(RayEngineProxy("m", handle))
    assert exc.value.retry_after == 2.5


def test_a_typed_request_crosses_processes_whole_and_the_proxy_reports_capabilities() -> None:
    import pickle

    request = GenerationRequest(
        "r1",
        messages=[{"role": "user", "content": "hi"}],
        params=SamplingParams(seed=3, stop=["\n"]),
        tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}],
        constraint=Constraint('{"grammars": []}', "tool_calls", "tools"),
    )
    assert pickle.loads(pickle.dumps(request)) == request  # what Ray does to it
    native = EngineCapabilities(native_tools=True, tool_prompt_fallback=False)
    assert RayEngineProxy("m", _Handle([]), capabilities=native).capabilities() == native
    assert RayEngineProxy("m", _Handle([])).capabilities() == EngineCapabilities()


def test_proxy_maps_ray_failures_to_engine_errors_without_traceback() -> None:
    from ray.serve.exceptions import RayServeException

    handle = _Handle([[Delta("a")], RayServeException("Traceback (most recent call last): ...")])
    with pytest.raises(EngineError) as exc:
        _collect(RayEngineProxy("m", handle))
    assert "Traceback" not in str(exc.value)
    assert handle.response.cancelled


def test_proxy_cancels_the_remote_stream_when_the_reader_goes_away() -> None:
    handle = _Handle([[Delta("a")], [Delta("b")], [Delta("c", finish_reason="stop")]])
    assert [d.text for d in _collect(RayEngineProxy("m", handle), limit=1)] == ["a"]
    assert handle.response.cancelled


# -- fake engines inside real Serve ----------------------------------------------------------------


def _status(url: str) -> dict[str, Any]:
    r = httpx.get(f"{url}/api/health/status", timeout=10)
    assert r.status_code == 200
    return {m["model"]: m for m in r.json()["models"]}


def _wait_until(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return cond()


@pytest.mark.slow
def test_failure_mid_stream_crosses_ray_as_an_sse_error_event(ray_server: RunningServer) -> None:
    payload = {
        "model": "fake-broken",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 20,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{ray_server.base_url}/v1/chat/completions", json=payload, timeout=60
    ) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "inference_error" and "Traceback" not in error["message"]


@pytest.mark.slow
def test_disconnect_frees_the_sequence_in_the_replica(ray_server: RunningServer) -> None:
    url = ray_server.base_url
    payload = {
        "model": "fake-slow",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 500,
        "stream": True,
    }
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=payload, timeout=60) as r:
        lines = r.iter_lines()
        while not next(lines).startswith("data: "):
            pass
        assert _wait_until(lambda: _status(url)["fake-slow"]["engine"]["batch_size"] == 1)
    # the client is gone: the replica's engine must see the sequence end (stats lag ≤ 1 s)
    assert _wait_until(lambda: _status(url)["fake-slow"]["engine"]["batch_size"] == 0)


@pytest.mark.slow
def test_unload_then_load_on_demand_through_the_deployment(ray_server: RunningServer) -> None:
    url = ray_server.base_url
    chat = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).status_code == 200
    r = httpx.post(f"{url}/api/models/unload", json={"model": "fake-llm"}, timeout=60)
    assert r.status_code == 200
    assert "fake-llm" not in _status(url)
    r = httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert "fake-llm" in _status(url)


@pytest.mark.slow
def test_metrics_report_the_replicas_engine_stats(ray_server: RunningServer) -> None:
    url = ray_server.base_url
    chat = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert httpx.post(f"{url}/v1/chat/completions", json=chat, timeout=60).status_code == 200

    def counted() -> bool:
        text = httpx.get(f"{url}/api/metrics", timeout=10).text
        return any(
            line.startswith('impetus_engine_requests_total{model="fake-llm"}')
            and float(line.split()[-1]) >= 1
            for line in text.splitlines()
        )

    assert _wait_until(counted)


# -- `serve run configs/serve.yaml` ---------------------------------------------------------------


@pytest.mark.slow
def test_serve_run_runs_configs_serve_yaml(tmp_path: Path, ready_models_dir: Path) -> None:
    """Ray Serve's own CLI on configs/serve.yaml (only the port changed), as its comments say."""
    # Not on the session's Ray server: under xdist this test then runs after that server's block
    # (tests/conftest.py), when it has stopped, so its cluster is the only one on the machine.
    port = free_port()
    # the MLX engine when serving/engine/mlx_engine.py exists, else a FakeEngine (ray_support.py)
    config = write_serve_config(
        tmp_path / "serve.yaml",
        port,
        fakes=False,
        engine_factory="tests.serving.ray_support:engine_factory",
    )
    env = {**SERVE_ENV, "IMPETUS_DATA_DIR": str(state_dir(tmp_path, ready_models_dir))}
    preload = blas_preload({})
    if preload:
        env["LD_PRELOAD"] = preload
    serve_cli = str(Path(sys.executable).parent / "serve")
    url = f"http://127.0.0.1:{port}"
    with server_process([serve_cli, "run", str(config)], env, port, tmp_path / "serve.log"):
        r = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": load_settings().models.llm,
                "messages": [{"role": "user", "content": "Say hi."}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] <= 4
