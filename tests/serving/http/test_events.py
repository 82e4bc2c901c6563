"""The dashboard's WebSocket /api/ws (serving/http/routes/events.py, serving/http/live.py) on a
real uvicorn server, with real `websockets` clients and the `openai` SDK driving requests: the
hello, the snapshot cadence, events (request.finished after an SDK chat, model.unloaded after
POST /api/models/unload, index.finished after POST /v1/rag/index), auth (no key refused with a
close code that says why, a readonly key by header or by `bearer.<key>` subprotocol), a client
that stops reading dropped while the others go on, and 50 clients at once.

The `server` fixture's test runs in both serve modes: in-process with the bundled model, and
(slow marker) through the Ray Serve ingress, where it also checks that / answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from pipelines.keys import KeyStore
from tests.serving.http.fake_server import FakeServer, fake_servers
from tests.serving.servers import RunningServer

INTERVAL = 0.25


def _ws_url(base: str) -> str:
    return base.replace("http://", "ws://", 1) + "/api/ws"


async def _next(ws: ClientConnection, kind: str, timeout: float = 10.0, **match: Any) -> dict:
    """The next message of type (or event name) `kind` whose data matches `match`."""
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        name = msg.get("event") if msg["type"] == "event" else msg["type"]
        data = msg.get("data", {})
        if name == kind and all(data.get(k) == v for k, v in match.items()):
            return dict(msg)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("ws")
    with fake_servers(root) as start:
        open_srv = start("open", auth={"mode": "off"}, serve={"ws_interval_s": INTERVAL})
        keyed = start(
            "keyed",
            auth={"mode": "on"},
            serve={"ws_interval_s": INTERVAL},
            rate_limits={"failed_auth": "1000/minute"},
        )
        # a short queue: a client that stops reading is dropped soon
        fast = start(
            "fast", auth={"mode": "off"}, serve={"ws_interval_s": INTERVAL, "ws_queue_size": 32}
        )
        keys = KeyStore.open(keyed.settings.data_dir)
        tokens = {role: keys.create(role, role)[1] for role in ("readonly", "admin")}
        keys.close()
        yield {"open": open_srv, "keyed": keyed, "fast": fast, "tokens": tokens}


def test_hello_then_snapshots_every_interval(servers: dict[str, Any]) -> None:
    srv: FakeServer = servers["open"]

    async def run() -> tuple[dict, list[dict]]:
        async with connect(_ws_url(srv.url), subprotocols=["impetus.v1"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "impetus.v1"
            hello = json.loads(await ws.recv())
            snaps = [await _next(ws, "snapshot") for _ in range(6)]
            return hello, snaps

    hello, snaps = asyncio.run(run())
    assert hello == {"type": "hello", "role": None, "interval_s": INTERVAL}
    seqs = [s["seq"] for s in snaps]
    assert seqs == list(range(seqs[0], seqs[0] + 6))
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(snaps)]
    # on a fixed grid: a late tick (a busy loop) shortens the next gap, it never bunches up
    assert max(gaps) < INTERVAL * 4, gaps
    assert abs(statistics.median(gaps) - INTERVAL) < INTERVAL * 0.4, gaps
    snap = snaps[-1]
    proc = snap["process"]
    assert proc["rss_bytes"] > 10 << 20 and proc["threads"] >= 1 and proc["open_fds"] > 0
    assert snap["gpu"] is None
    model = next(m for m in snap["models"] if m["model"] == "fake-llm")
    assert set(model) >= {"running", "waiting", "tokens_per_second", "ttft_ms", "itl_ms"}
    assert set(model["ttft_ms"]) == {"p50", "p95"}


def test_request_and_model_events(servers: dict[str, Any]) -> None:
    srv: FakeServer = servers["open"]
    sdk = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="none", max_retries=0)

    async def run() -> tuple[dict, dict, dict, dict]:
        async with connect(_ws_url(srv.url)) as ws:
            await _next(ws, "hello")
            await asyncio.to_thread(
                sdk.chat.completions.create,
                model="fake-llm",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=4,
                stream=False,
            )
            finished = await _next(ws, "request.finished", route="/v1/chat/completions")
            snap = await _next(ws, "snapshot")
            await asyncio.to_thread(
                httpx.post, srv.url + "/api/models/unload", json={"model": "fake-llm"}
            )
            unloaded = await _next(ws, "model.unloaded", model="fake-llm")
            await asyncio.to_thread(
                httpx.post, srv.url + "/api/models/load", json={"model": "fake-llm"}
            )
            loaded = await _next(ws, "model.loaded", model="fake-llm")
            return finished, snap, unloaded, loaded

    finished, snap, unloaded, loaded = asyncio.run(run())
    row = finished["data"]
    assert row["model"] == "fake-llm" and row["status"] == 200 and row["completion_tokens"] == 4
    assert row["ttft_ms"] is not None and row["method"] == "POST"
    model = next(m for m in snap["models"] if m["model"] == "fake-llm")
    assert model["ttft_ms"]["p50"] is not None  # the chat's sequence is in the last minute
    assert unloaded["ts"] <= loaded["ts"] and loaded["data"]["memory_bytes"] >= 0


def test_index_run_events(servers: dict[str, Any], tmp_path: Any) -> None:
    srv: FakeServer = servers["open"]
    upload = httpx.post(
        srv.url + "/v1/files",
        files={"file": ("a.md", b"# A\nhello\n", "text/markdown")},
        data={"purpose": "assistants"},
        timeout=30,
    )
    assert upload.status_code in (200, 201), upload.text

    async def run() -> dict:
        async with connect(_ws_url(srv.url)) as ws:
            await _next(ws, "snapshot")  # the feed has seen the runs that existed before
            started = await asyncio.to_thread(
                httpx.post,
                srv.url + "/v1/rag/index",
                json={"file_ids": [upload.json()["id"]]},
                timeout=30,
            )
            assert started.status_code == 202, started.text
            return await _next(ws, "index.finished", id=started.json()["id"])

    event = asyncio.run(run())
    assert event["data"]["status"] == "completed"


def test_auth_refuses_without_a_key_and_accepts_readonly(
    servers: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    srv: FakeServer = servers["keyed"]
    url, readonly = _ws_url(srv.url), servers["tokens"]["readonly"]

    async def refused(**kw: Any) -> tuple[int, str]:
        async with connect(url, **kw) as ws:
            with pytest.raises(ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None
            return closed.value.rcvd.code, closed.value.rcvd.reason

    async def run() -> None:
        code, reason = await refused()
        assert code == 4401 and reason.startswith("auth_required")
        code, reason = await refused(subprotocols=["impetus.v1", "bearer.imp_000000000000_nope"])
        assert code == 4401 and "Invalid API key" in reason
        # a browser: the key as a subprotocol beside impetus.v1, which the server picks
        protocols = ["impetus.v1", f"bearer.{readonly}"]
        async with connect(url, subprotocols=protocols) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "impetus.v1"
            assert json.loads(await ws.recv()) == {
                "type": "hello",
                "role": "readonly",
                "interval_s": INTERVAL,
            }
            await _next(ws, "snapshot")
        # a program: the Authorization header
        headers = {"Authorization": f"Bearer {servers['tokens']['admin']}"}
        async with connect(url, additional_headers=headers) as ws:
            assert json.loads(await ws.recv())["role"] == "admin"

    asyncio.run(run())
    logged = capsys.readouterr()
    assert "audit.auth_failed" in logged.out + logged.err  # the refusals were logged...
    for token in servers["tokens"].values():  # ...and no key ever was
        assert token not in logged.out + logged.err
        assert token.split("_", 2)[2] not in logged.out + logged.err  # the secret may hold "_"


def test_a_client_that_stops_reading_is_dropped_and_the_others_go_on(
    servers: dict[str, Any],
) -> None:
    """The kernel holds megabytes for a socket before its sender blocks (a snapshot a second
    would take an hour to fill that), so large events are published into the feed, on the
    server's loop, until the client that does not read has filled its queue."""
    srv: FakeServer = servers["fast"]
    feed = srv.app.state.live
    loop = feed._task.get_loop()
    host, port = srv.url.removeprefix("http://").split(":")
    # A raw socket with a small receive buffer that completes the handshake and never reads.
    slow = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect((host, int(port)))
    slow.sendall(
        f"GET /api/ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    dropped_before = feed.dropped_total
    pad = "x" * (16 << 10)
    sent = 0

    def burst() -> None:
        nonlocal sent
        deadline = time.monotonic() + 60
        while feed.dropped_total == dropped_before and time.monotonic() < deadline:
            loop.call_soon_threadsafe(feed.publish, "test.burst", {"n": sent, "pad": pad})
            sent += 1
            time.sleep(0.01)
        loop.call_soon_threadsafe(feed.publish, "test.end", {})

    async def run() -> tuple[list[int], list[int]]:
        async with connect(_ws_url(srv.url), max_size=None) as ws:
            await _next(ws, "hello")
            while feed.subscribers < 2:
                await asyncio.sleep(0.01)
            pusher = asyncio.create_task(asyncio.to_thread(burst))
            got: list[int] = []
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("event") == "test.end":
                    break
                if msg.get("event") == "test.burst":
                    got.append(msg["data"]["n"])
            await pusher
            seqs = [(await _next(ws, "snapshot"))["seq"] for _ in range(4)]
            return got, seqs

    try:
        got, seqs = asyncio.run(run())
    finally:
        slow.close()
    assert feed.dropped_total == dropped_before + 1, "the slow client was not dropped"
    assert got == list(range(sent)), "the reading client missed events"
    assert seqs == list(range(seqs[0], seqs[0] + 4)), "the reading client missed snapshots"
    assert feed.subscribers == 0


def test_fifty_clients_each_receive_every_snapshot(servers: dict[str, Any]) -> None:
    srv: FakeServer = servers["open"]
    feed = srv.app.state.live

    async def client(ready: asyncio.Barrier) -> list[int]:
        async with connect(_ws_url(srv.url)) as ws:
            await _next(ws, "hello")
            await ready.wait()
            first = (await _next(ws, "snapshot"))["seq"]
            # from a seq every client has passed, four snapshots each
            while first < start_seq[0]:
                first = (await _next(ws, "snapshot"))["seq"]
            return [first] + [(await _next(ws, "snapshot"))["seq"] for _ in range(3)]

    start_seq = [0]

    async def run() -> tuple[list[list[int]], int]:
        ready = asyncio.Barrier(51)
        tasks = [asyncio.create_task(client(ready)) for _ in range(50)]
        await ready.wait()
        connected = feed.subscribers
        start_seq[0] = feed.seq + 2
        return await asyncio.gather(*tasks), connected

    results, connected = asyncio.run(run())
    assert connected == 50
    assert all(r == list(range(start_seq[0], start_seq[0] + 4)) for r in results), results[:3]


def test_through_the_server_modes(server: RunningServer) -> None:
    """The bundled model in-process, and (slow) the Ray Serve ingress: /api/ws streams and
    reports the SDK's chat; / answers with a page."""
    sdk = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)

    async def run() -> tuple[dict, dict]:
        async with connect(_ws_url(server.base_url), subprotocols=["impetus.v1"]) as ws:  # type: ignore[list-item]
            hello = await _next(ws, "hello", timeout=30)
            await asyncio.to_thread(
                sdk.chat.completions.create,
                model=server.llm,
                messages=[{"role": "user", "content": "Say hi"}],
                max_tokens=4,
            )
            finished = await _next(ws, "request.finished", timeout=60, model=server.llm)
            await _next(ws, "snapshot", timeout=30)
            return hello, finished

    hello, finished = asyncio.run(run())
    assert hello["type"] == "hello" and finished["data"]["status"] == 200
    assert finished["data"]["completion_tokens"] <= 4
    page = httpx.get(server.base_url + "/", headers={"Accept": "text/html"}, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
