"""Error paths and operations routes of the app, on a real uvicorn server with fake engines.

Fakes (tests/serving/fakes.py) make the failures happen on demand: a full queue, a crash before
the first token, a failure mid-stream, a slow prefill. Every error body must have OpenAI's shape
and never a traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from serving.engine.base import Engine
from serving.engine.manager import InsufficientMemoryError, ModelManager
from serving.http.app import create_app
from tests.serving.fakes import FakeEmbedder, FakeEngine, FakeIndexRunner, StoreWithFakes
from tests.serving.servers import serving_settings, uvicorn_server

ENGINES: dict[str, dict[str, Any]] = {
    "fake-llm": {},
    "fake-full": {"capacity": 0, "reject_on_submit": True},
    "fake-full-late": {"capacity": 0},  # raises QueueFullError at the first delta instead
    "fake-crash": {"fail_after": 0, "fail_with": RuntimeError},
    "fake-broken": {"fail_after": 2},
    "fake-prefill": {"first_token_delay": 1.2},
    "fake-slow": {"token_delay": 0.05},
    "fake-huge": {},
}
SIZES = {"fake-huge": 10**15}


class Server:
    def __init__(self, url: str, engines: dict[str, FakeEngine]) -> None:
        self.url = url
        self.engines = engines
        self.http = httpx.Client(base_url=url, timeout=30)

    def chat(self, model: str = "fake-llm", **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], **body}
        return self.http.post("/v1/chat/completions", json=payload)


def _factory(engines: dict[str, FakeEngine]) -> Any:
    def factory(name: str, path: Path) -> Engine:
        engines[name] = FakeEngine(name, **ENGINES[name])
        return engines[name]

    return factory


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("errors")
    settings = serving_settings(tmp, keepalive_s=0.2, max_body_bytes=4096)
    engines: dict[str, FakeEngine] = {}
    manager = ModelManager(
        StoreWithFakes(
            tmp, llms=list(ENGINES), embedders=["fake-embed"], sizes=SIZES, builtins=False
        ),
        _factory(engines),
        default_model="fake-llm",
        memory_budget_bytes=1 << 30,
    )
    app = create_app(
        settings,
        manager=manager,
        embedder_factory=FakeEmbedder,
        index_runner=FakeIndexRunner(),
        preload_default=True,
    )
    with uvicorn_server(app) as url:
        yield Server(url, engines)


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code
    assert "Traceback" not in r.text
    return dict(body["error"])


def _sse(r: httpx.Response) -> list[str]:
    return [line for line in r.text.split("\n") if line]


# -- 400, never 422 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"temperature": 5},
        {"top_p": 0},
        {"messages": "hi"},
        {"messages": [{"role": "robot", "content": "hi"}]},
        {"max_tokens": 0},
        {"stream_options": {"include_usage": True}},  # without stream
        {"logit_bias": {"12": 500}},
        {"stop": [str(i) for i in range(20)]},
    ],
)
def test_schema_violations_are_400(srv: Server, body: dict[str, Any]) -> None:
    _error(srv.chat(**body), 400, "invalid_request")


def test_invalid_json_and_param_names(srv: Server) -> None:
    r = srv.http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    _error(r, 400, "invalid_request")
    err = _error(srv.chat(temperature=3), 400, "invalid_request")
    assert err["param"] == "temperature"
    err = _error(
        srv.http.post("/v1/embeddings", json={"model": "fake-embed"}), 400, "invalid_request"
    )
    assert err["param"] == "input"


def test_body_too_large_is_413(srv: Server) -> None:
    big = "x" * 8000
    _error(srv.chat(messages=[{"role": "user", "content": big}]), 413, "invalid_request")

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming
        yield b'{"model": "fake-llm", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = srv.http.post(
        "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    _error(r, 413, "invalid_request")


def test_unknown_route_and_model(srv: Server) -> None:
    _error(srv.http.get("/v1/nothing"), 404, "invalid_request")
    err = _error(srv.chat(model="nope"), 404, "model_not_found")
    assert err["param"] == "model"
    _error(
        srv.http.post("/v1/embeddings", json={"model": "nope", "input": "x"}),
        404,
        "model_not_found",
    )
    _error(srv.http.post("/api/models/load", json={"model": "nope"}), 404, "model_not_found")


def test_wrong_model_kind_is_400(srv: Server) -> None:
    _error(srv.chat(model="fake-embed"), 400, "invalid_request")
    r = srv.http.post("/v1/embeddings", json={"model": "fake-llm", "input": "x"})
    _error(r, 400, "invalid_request")


# -- engine failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["fake-full", "fake-full-late"])
@pytest.mark.parametrize("stream", [False, True])
def test_queue_full_is_503_with_retry_after(srv: Server, model: str, stream: bool) -> None:
    r = srv.chat(model=model, stream=stream)
    _error(r, 503, "queue_full")
    assert r.headers["retry-after"] == "2"


@pytest.mark.parametrize("stream", [False, True])
def test_unexpected_exception_is_a_generic_500(srv: Server, stream: bool) -> None:
    r = srv.chat(model="fake-crash", stream=stream)
    err = _error(r, 500, "inference_error")
    assert "on purpose" not in err["message"] and "RuntimeError" not in r.text


def test_failure_mid_stream_is_an_error_event_then_done(srv: Server) -> None:
    r = srv.chat(model="fake-broken", stream=True, max_tokens=10)
    assert r.status_code == 200
    lines = _sse(r)
    assert lines[-1] == "data: [DONE]"
    assert lines[-2].startswith('data: {"error"')
    assert '"code":"inference_error"' in lines[-2]
    assert sum('"content"' in line for line in lines) >= 2  # the role chunk and a token
    # non-streamed, the same failure is a plain 500
    _error(srv.chat(model="fake-broken", max_tokens=10), 500, "inference_error")


def test_keepalive_comments_during_a_long_prefill(srv: Server) -> None:
    r = srv.chat(model="fake-prefill", stream=True, max_tokens=2)
    lines = _sse(r)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert ": keep-alive" in lines[:first_data]
    data = [line for line in lines if not line.startswith(":")]  # comments: ignored by clients
    assert data[-1] == "data: [DONE]"  # (a ping may still land between [DONE] and the close)


def test_disconnects_free_the_sequences(srv: Server) -> None:
    payload = {"model": "fake-slow", "messages": [{"role": "user", "content": "hi"}]}
    with srv.http.stream(
        "POST", "/v1/chat/completions", json={**payload, "stream": True, "max_tokens": 500}
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i > 4:
                break
    # non-streamed: the client times out and goes away
    with pytest.raises(httpx.ReadTimeout):
        srv.http.post("/v1/chat/completions", json={**payload, "max_tokens": 500}, timeout=0.5)
    engine = srv.engines["fake-slow"]
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active == 0 and engine.cancelled == 2
    assert srv.chat(model="fake-slow", max_tokens=2).status_code == 200


def test_disconnect_during_a_long_prefill_frees_the_sequence(srv: Server) -> None:
    payload = {"model": "fake-prefill", "messages": [{"role": "user", "content": "hi"}]}
    with srv.http.stream("POST", "/v1/chat/completions", json={**payload, "stream": True}) as r:
        assert next(r.iter_lines()) == ": keep-alive"  # before the first token
    engine = srv.engines["fake-prefill"]
    deadline = time.monotonic() + 10
    while engine.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active == 0 and engine.cancelled >= 1


# -- generation shapes the SDK tests do not cover -----------------------------------------------


def test_completions_with_several_prompts_and_n(srv: Server) -> None:
    r = srv.http.post(
        "/v1/completions",
        json={"model": "fake-llm", "prompt": ["a b", "c"], "n": 2, "max_tokens": 3, "seed": 1},
    )
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    assert body["usage"]["completion_tokens"] == 12
    assert body["usage"]["prompt_tokens"] == 3 + 2  # each prompt counted once
    assert body["choices"][0]["text"] != body["choices"][1]["text"]  # seeds 1 and 2


def test_echo_and_logit_bias_keys(srv: Server) -> None:
    r = srv.http.post(
        "/v1/completions",
        json={
            "model": "fake-llm",
            "prompt": "Hi",
            "echo": True,
            "max_tokens": 2,
            "logit_bias": {"5": 10},
        },
    )
    assert r.status_code == 200 and r.json()["choices"][0]["text"].startswith("Hi")


def test_embeddings_token_ids_and_batching(srv: Server) -> None:
    texts = [" ".join(["w"] * k) for k in range(1, 40)]
    r = srv.http.post("/v1/embeddings", json={"model": "fake-embed", "input": texts})
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(39))
    one = srv.http.post("/v1/embeddings", json={"model": "fake-embed", "input": texts[5]}).json()
    assert body["data"][5]["embedding"] == pytest.approx(one["data"][0]["embedding"], abs=1e-6)
    ids = srv.http.post("/v1/embeddings", json={"model": "fake-embed", "input": [[1, 2], [3]]})
    assert len(ids.json()["data"]) == 2
    too_many = srv.http.post(
        "/v1/embeddings", json={"model": "fake-embed", "input": "x", "dimensions": 999}
    )
    assert _error(too_many, 400, "invalid_request")["param"] == "dimensions"


# -- operations ----------------------------------------------------------------------------------


def test_health_status_and_hardware(srv: Server) -> None:
    assert srv.http.get("/api/health/live").json() == {"status": "live"}
    assert srv.http.get("/api/health/ready").status_code == 200
    status = srv.http.get("/api/health/status").json()
    assert status["default_model"] == "fake-llm"
    assert "fake-llm" in [m["model"] for m in status["models"]]
    assert {"depth", "limit", "running"} <= set(status["queue"])
    info = srv.http.get("/api/hardware/info").json()
    assert info["os"] and info["embedding"]["backend"] in ("mlx", "coreml")


def test_metrics_are_prometheus_text(srv: Server) -> None:
    srv.chat(max_tokens=3)
    r = srv.http.get("/api/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in (
        "impetus_http_requests_total",
        "impetus_http_request_duration_seconds_bucket",
        "impetus_time_to_first_token_seconds_bucket",
        "impetus_generation_tokens_per_second_bucket",
        "impetus_queue_depth",
        "impetus_batch_size",
        "impetus_prefix_cache_hits_total",
        "impetus_prefix_cache_disk_hits_total",
        "impetus_prefix_cache_disk_bytes",
        "impetus_completion_tokens_total",
    ):
        assert name in text, name
    assert 'route="/v1/chat/completions"' in text


def test_load_unload_and_the_memory_budget(srv: Server) -> None:
    listed = {m["id"]: m for m in srv.http.get("/v1/models").json()["data"]}
    assert listed["fake-embed"]["kind"] == "embedding"
    assert listed["fake-embed"]["sampling_defaults"] == {}
    r = srv.http.post("/api/models/load", json={"model": "fake-slow"})
    assert r.json()["status"] == "loaded"
    assert srv.http.get("/v1/models/fake-slow").json()["loaded"] is True
    r = srv.http.post("/api/models/unload", json={"model": "fake-slow"})
    assert r.json()["status"] == "unloaded"
    r = srv.http.post("/api/models/unload", json={"model": "fake-slow"})
    assert r.json()["status"] == "not_loaded"
    _error(
        srv.http.post("/api/models/load", json={"model": "fake-huge"}), 507, "insufficient_memory"
    )
    _error(srv.chat(model="fake-huge"), 507, "insufficient_memory")


def test_ready_is_503_until_the_default_model_loads(tmp_path: Path) -> None:
    class SlowLoad:
        def __call__(self, name: str, path: Path) -> Engine:
            time.sleep(1.0)
            return FakeEngine(name)

    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["fake-llm"], builtins=False),
        SlowLoad(),
        default_model="fake-llm",
    )
    app = create_app(
        serving_settings(tmp_path),
        manager=manager,
        embedder_factory=FakeEmbedder,
        preload_default=True,
    )
    with uvicorn_server(app) as url:
        assert httpx.get(f"{url}/api/health/live").status_code == 200
        r = httpx.get(f"{url}/api/health/ready")
        _error(r, 503, "model_not_loaded")
        assert ": loading it into memory (began " in r.json()["error"]["message"]
        deadline = time.monotonic() + 10
        while r.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
            r = httpx.get(f"{url}/api/health/ready")
        assert r.status_code == 200


@pytest.mark.slow
def test_a_fresh_data_dir_imports_the_builtin_model_and_ready_says_so(tmp_path: Path) -> None:
    from pipelines.models.store import ModelStore

    store = ModelStore(tmp_path / "models")  # nothing imported: the built-in LLM is importable
    assert store.get("smollm2-135m-instruct").status == "importable"
    manager = ModelManager(
        store, lambda name, path: FakeEngine(name), default_model="smollm2-135m-instruct"
    )
    app = create_app(
        serving_settings(tmp_path),
        manager=manager,
        embedder_factory=FakeEmbedder,
        preload_default=True,
    )
    with uvicorn_server(app) as url:
        r = httpx.get(f"{url}/api/health/ready", timeout=5)
        _error(r, 503, "model_not_loaded")
        assert "importing it from its wheel" in r.json()["error"]["message"]
        deadline = time.monotonic() + 180
        while r.status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
            r = httpx.get(f"{url}/api/health/ready", timeout=5)
        assert r.status_code == 200, r.text
    assert store.get("smollm2-135m-instruct").status == "ready"


# -- the model manager on its own ----------------------------------------------------------------


def test_manager_evicts_lru_and_reaps_idle_models(tmp_path: Path) -> None:
    now = [0.0]
    store = StoreWithFakes(
        tmp_path, llms=["a", "b", "c", "d"], sizes=dict.fromkeys("abcd", 40), builtins=False
    )
    manager = ModelManager(
        store,
        lambda name, path: FakeEngine(name),
        default_model="a",
        memory_budget_bytes=100,
        idle_ttl_s=60,
        clock=lambda: now[0],
    )

    async def scenario() -> None:
        await manager.load("a")
        now[0] = 1
        await manager.load("b")
        now[0] = 2
        await manager.load("c")  # 120 > 100: b (idle, not the default) is evicted
        assert sorted(manager.loaded()) == ["a", "c"]
        async with manager.use("c"):
            with pytest.raises(InsufficientMemoryError):
                await manager.load("d")  # a is the default, c is busy
        now[0] = 100
        assert await manager.reap_idle() == ["c"]
        assert manager.loaded() == ["a"]
        manager.load_on_demand = False
        with pytest.raises(Exception, match="not loaded"):
            async with manager.use("b"):
                pass
        await manager.close()

    asyncio.run(scenario())


# -- index runs through the runner the app was given -----------------------------------------------


def test_index_runs_go_to_the_apps_runner(srv: Server, tmp_path: Path) -> None:
    r = srv.http.post("/v1/rag/index", json={"paths": [str(tmp_path)], "collection": "c"})
    assert r.status_code == 202, r.text
    started = r.json()
    assert started["object"] == "rag.index_run" and started["collection"] == "c"
    run = srv.http.get(f"/v1/rag/runs/{started['id']}").json()
    assert run["status"] == "completed" and run["progress"] == {
        "documents": {"done": 0, "total": 0}
    }
    _error(srv.http.get("/v1/rag/runs/no-such-run"), 404, "invalid_request")


def test_an_app_without_a_runner_answers_rag_index_error(tmp_path: Path) -> None:
    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["fake-llm"], builtins=False),
        lambda name, path: FakeEngine(name),
        default_model="fake-llm",
    )
    app = create_app(serving_settings(tmp_path), manager=manager, embedder_factory=FakeEmbedder)
    with uvicorn_server(app) as url:
        r = httpx.post(f"{url}/v1/rag/index", json={"paths": [str(tmp_path)]}, timeout=30)
        assert "index runner" in _error(r, 500, "rag_index_error")["message"]


def test_hardware_info_reports_the_embedding_backend_in_use(tmp_path: Path) -> None:
    """Core ML asked for, MLX loaded (what a fallback leaves): the loaded embedder's backend."""
    from pipelines.settings import load_settings

    settings = load_settings(
        data_dir=tmp_path / "state",
        embedding={"backend": "coreml"},
        models={"embedding": "fake-embed"},
    )
    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["fake-llm"], embedders=["fake-embed"], builtins=False),
        lambda name, path: FakeEngine(name),
        default_model="fake-llm",
    )
    app = create_app(settings, manager=manager, embedder_factory=FakeEmbedder)
    with uvicorn_server(app) as url:
        before = httpx.get(f"{url}/api/hardware/info", timeout=30).json()["embedding"]
        assert before["backend"] == "coreml" and before["loaded"] is False
        r = httpx.post(
            f"{url}/v1/embeddings", json={"model": "fake-embed", "input": "hi"}, timeout=30
        )
        assert r.status_code == 200, r.text
        after = httpx.get(f"{url}/api/hardware/info", timeout=30).json()["embedding"]
    assert after["backend"] == "mlx" and after["loaded"] is True
    assert after["configured_backend"] == "coreml"


def test_docs_work_offline(srv: Server) -> None:
    page = srv.http.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "cdn." not in page.text
    js = srv.http.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 500_000
    assert srv.http.get("/docs/assets/swagger-ui.css").status_code == 200
    assert srv.http.get("/openapi.json").json()["paths"]["/v1/chat/completions"]


def test_the_tool_schema_check_is_built_while_the_server_starts(tmp_path: Path) -> None:
    """jsonschema's import and its meta-schema's validator (22 ms that the first request with
    tools paid after every start) are built in the app's startup, before any request."""
    from starlette.testclient import TestClient

    from serving.services import tools

    tools._cached_schema_problem.cache_clear()
    manager = ModelManager(
        StoreWithFakes(tmp_path, llms=["fake-llm"], embedders=["fake-embed"], builtins=False),
        _factory({}),
        default_model="fake-llm",
        memory_budget_bytes=1 << 30,
    )
    app = create_app(
        serving_settings(tmp_path), manager=manager, embedder_factory=FakeEmbedder,
        index_runner=FakeIndexRunner(), preload_default=False,
    )  # fmt: skip
    assert tools._cached_schema_problem.cache_info().currsize == 0
    with TestClient(app):
        assert tools._cached_schema_problem.cache_info().currsize == 1
