"""The Anthropic SDK against a real server on 127.0.0.1, in every server mode (conftest.SERVER_MODES).

What Claude Code sends (/work/shared/CLIENTS.md: system blocks with cache_control, a `system`
entry inside messages, metadata, adaptive thinking, context_management, output_config,
max_tokens 32000, `?beta=true`) must be served (max_tokens past the window clamped: the
small-window tests of test_windows.py); outputs are compared with other outputs of the
same server, never with fixed text. Auth and `ping` events run on a small app of fake engines
(tests/serving/fakes.py), in process.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from pipelines.keys import KeyStore
from pipelines.settings import load_settings
from serving.engine.base import Engine
from serving.engine.manager import ModelManager
from serving.http.app import create_app
from tests.serving.fakes import FakeEmbedder, FakeEngine, StoreWithFakes
from tests.serving.servers import RunningServer, uvicorn_server

ZERO = {"temperature": 0}  # this SDK version has no temperature argument
HELLO = [{"role": "user", "content": "Say hello."}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=server.base_url, api_key="unused", max_retries=0, timeout=300
    )


def test_create(client: anthropic.Anthropic, server: RunningServer) -> None:
    m = client.messages.create(model=server.llm, messages=HELLO, max_tokens=8, extra_body=ZERO)
    assert m.type == "message" and m.role == "assistant" and m.id.startswith("msg_")
    assert m.model == server.llm
    (block,) = m.content
    assert block.type == "text" and block.text
    assert m.stop_reason in ("end_turn", "max_tokens")
    assert m.usage.input_tokens > 0 and 0 < m.usage.output_tokens <= 8
    again = client.messages.create(model=server.llm, messages=HELLO, max_tokens=8, extra_body=ZERO)
    assert again.content == m.content  # temperature 0 is deterministic


def test_what_claude_code_sends(server: RunningServer) -> None:
    body = {
        "model": server.llm,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {
                "type": "text",
                "text": "You are a terse assistant.",
                "cache_control": {"type": "ephemeral"},
            },
        ],
        "messages": [
            {"role": "system", "content": "Answer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Say hi.", "cache_control": {"type": "ephemeral"}}
                ],
            },
        ],
        "metadata": {"user_id": '{"device_id": "x", "session_id": "y"}'},
        "max_tokens": 32000,
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "stop_sequences": ["\n"],  # one line: CPU decode is slow
        "stream": True,
    }
    headers = {
        "x-api-key": "unused",
        "anthropic-version": "2023-06-01",
        "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
    }
    url = f"{server.base_url}/v1/messages?beta=true"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=300) as r:
        assert r.status_code == 200, r.read()
        lines = [line for line in r.iter_lines() if line.startswith("event: ")]
    names = [line.removeprefix("event: ") for line in lines if line != "event: ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_start" in names and "content_block_stop" in names


def test_stream_deltas_equal_the_final_text(
    client: anthropic.Anthropic, server: RunningServer
) -> None:
    kinds: list[str] = []
    text = ""
    with client.messages.stream(
        model=server.llm, messages=HELLO, max_tokens=10, extra_body=ZERO
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                text += event.delta.text
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds
    assert text and text == final.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens > 0
    whole = client.messages.create(model=server.llm, messages=HELLO, max_tokens=10, extra_body=ZERO)
    assert whole.content[0].text == text  # type: ignore[union-attr]


def test_tool_use_round_trip(client: anthropic.Anthropic, server: RunningServer) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    m = client.messages.create(
        model=server.llm,
        messages=ask,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=80,
        extra_body=ZERO,
    )
    assert m.stop_reason == "tool_use"
    (call,) = [b for b in m.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)
    assert isinstance(call.input.get("city"), str)
    # the streamed call: input_json_delta fragments that add up to the same input
    with client.messages.stream(
        model=server.llm,
        messages=ask,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        max_tokens=80,
        extra_body=ZERO,
    ) as stream:
        fragments = [
            e.delta.partial_json
            for e in stream
            if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
        ]
        streamed = stream.get_final_message()
    assert fragments and streamed.stop_reason == "tool_use"
    (scall,) = [b for b in streamed.content if b.type == "tool_use"]
    assert scall.input == call.input
    # the result goes back as a tool_result block; the model answers in text
    follow = client.messages.create(
        model=server.llm,
        messages=[
            *ask,
            {"role": "assistant", "content": [c.model_dump() for c in m.content]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}
                ],
            },
        ],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "none"},
        max_tokens=8,
        extra_body=ZERO,
    )
    assert follow.content[0].type == "text" and follow.stop_reason in ("end_turn", "max_tokens")


def test_count_tokens(client: anthropic.Anthropic, server: RunningServer) -> None:
    def count(system: str) -> int:
        return client.messages.count_tokens(
            model=server.llm,
            messages=HELLO,  # type: ignore[arg-type]
            system=[{"type": "text", "text": system}],
        ).input_tokens

    short, longer = count("Be brief."), count("Be brief. " * 20)
    assert 0 < short < longer
    bare = client.messages.count_tokens(model=server.llm, messages=HELLO)  # type: ignore[arg-type]
    m = client.messages.create(model=server.llm, messages=HELLO, max_tokens=1)  # type: ignore[arg-type]
    u = m.usage
    assert u.input_tokens + (u.cache_read_input_tokens or 0) == bare.input_tokens


def _window(server: RunningServer) -> int:
    cards = httpx.get(f"{server.base_url}/v1/models", timeout=30).json()["data"]
    (card,) = [c for c in cards if c["id"] == server.llm]
    return int(card["max_input_tokens"])


def test_error_shapes(client: anthropic.Anthropic, server: RunningServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as nf:
        client.messages.create(model="no-such-model", messages=HELLO, max_tokens=4)  # type: ignore[arg-type]
    assert nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    assert nf.value.body["type"] == "error"  # type: ignore[index]
    r = httpx.post(
        f"{server.base_url}/v1/messages",
        json={"model": server.llm, "messages": HELLO},  # no max_tokens
        timeout=30,
    )
    assert r.status_code == 400
    assert r.json() == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "Missing required parameter 'max_tokens'.",
        },
    }
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model=server.llm,
            messages=[{"role": "user", "content": [{"type": "image", "source": {}}]}],  # type: ignore[list-item]
            max_tokens=4,
        )
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "image" in bad.value.message
    window = _window(server)
    with pytest.raises(anthropic.BadRequestError) as long:
        client.messages.create(
            model=server.llm,
            messages=[{"role": "user", "content": "hello " * (window + 100)}],
            max_tokens=4,
        )
    error = long.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert str(window) in error["message"] and "context window" in error["message"]
    assert "Traceback" not in error["message"]


# -- auth and pings: a small app of fake engines, in process ------------------------------------


@pytest.fixture(scope="module")
def fake_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("messages-fake")
    settings = load_settings(data_dir=tmp / "state", serve={"keepalive_s": 0.3})

    def factory(name: str, path: Path) -> Engine:
        return FakeEngine(name, first_token_delay=1.2 if name == "fake-prefill" else 0.0)

    manager = ModelManager(
        StoreWithFakes(tmp, llms=["fake-llm", "fake-prefill"], builtins=False),
        factory,
        default_model="fake-llm",
    )
    app = create_app(settings, manager=manager, embedder_factory=FakeEmbedder)
    with uvicorn_server(app) as url:
        yield url, tmp / "state"


def test_ping_events_during_a_long_prefill(fake_app: tuple[str, Path]) -> None:
    url, _ = fake_app
    body = {"model": "fake-prefill", "messages": HELLO, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{url}/v1/messages", json=body, timeout=30) as r:
        events = [line for line in r.iter_lines() if line.startswith("event: ")]
    assert events[0] == "event: message_start" and events[1] == "event: ping"
    # A keep-alive ping (every 0.3 s here) may land between message_stop and the stream's close;
    # pings are allowed anywhere in Anthropic's stream and clients skip them.
    assert [e for e in events if e != "event: ping"][-1] == "event: message_stop"


def test_auth_errors_have_anthropics_shape(fake_app: tuple[str, Path]) -> None:
    url, state = fake_app
    keys = KeyStore.open(state)
    _, reader = keys.create("reader", "readonly")
    _, user = keys.create("user", "user", rate_limit="2/minute")  # auth is on from here
    try:
        body = {"model": "fake-llm", "messages": HELLO, "max_tokens": 2}
        missing = httpx.post(f"{url}/v1/messages?beta=true", json=body, timeout=30)
        assert missing.status_code == 401
        assert missing.json()["type"] == "error"
        assert missing.json()["error"]["type"] == "authentication_error"
        assert "x-api-key" in missing.json()["error"]["message"]
        with pytest.raises(anthropic.AuthenticationError) as wrong:
            anthropic.Anthropic(base_url=url, api_key="sk-wrong", max_retries=0).messages.create(
                model="fake-llm",
                messages=HELLO,  # type: ignore[arg-type]
                max_tokens=2,
            )
        assert wrong.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        with pytest.raises(anthropic.PermissionDeniedError) as denied:
            anthropic.Anthropic(base_url=url, api_key=reader, max_retries=0).messages.create(
                model="fake-llm",
                messages=HELLO,
                max_tokens=2,  # type: ignore[arg-type]
            )
        assert denied.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
        ok = anthropic.Anthropic(base_url=url, api_key=user, max_retries=0)
        assert ok.messages.create(model="fake-llm", messages=HELLO, max_tokens=2).content  # type: ignore[arg-type]
        ok.messages.create(model="fake-llm", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        with pytest.raises(anthropic.RateLimitError) as limited:
            ok.messages.create(model="fake-llm", messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(limited.value.response.headers["retry-after"]) >= 1
    finally:
        keys.close()
