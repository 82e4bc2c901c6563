"""The Responses API (serving/http/routes/responses.py) with the real `openai` SDK, in every
server mode: create, stream, function calls, structured output, stored responses and their
routes, background cancel, token counting, file_search with citations that resolve in lineage,
and a restart of a server that keeps its stored responses.

Answers are short (CPU decode is slow); `fake-slow` (tests/serving/servers.py) is the one model
whose answer reliably lasts long enough to be cancelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from pipelines.lineage import Lineage, LineageError
from pipelines.settings import load_settings
from serving.engine.manager import ModelManager, mlx_engine_factory
from serving.http.app import create_app
from tests.serving.fakes import StoreWithFakes
from tests.serving.http.test_auth import server_factory  # noqa: F401 (fixture)
from tests.serving.http.test_rag_sdk import COLLECTION, CORPUS, indexed  # noqa: F401 (fixture)
from tests.serving.servers import (
    FAKE_LLMS,
    RunningServer,
    _wait_ready,
    recording_factory,
    uvicorn_server,
)

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def test_create_accepts_what_clients_send(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.responses.create(
        model=server.llm,
        instructions="Answer in a few words.",
        input=QUESTION,
        max_output_tokens=8,
        temperature=0,
        metadata={"case": "create"},
        # fields with no meaning here are accepted and ignored, never a 400
        extra_body={
            "include": ["reasoning.encrypted_content"],
            "reasoning": {"summary": "auto"},
            "prompt_cache_key": "k",
            "client_metadata": {"x": "y"},
            "service_tier": "auto",
        },
    )
    assert r.object == "response" and r.id.startswith("resp_")
    assert r.status in ("completed", "incomplete")
    assert r.output[0].type == "message" and r.output_text
    assert r.usage is not None and r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 8
    assert r.metadata == {"case": "create"}
    if r.status == "incomplete":
        assert r.incomplete_details is not None
        assert r.incomplete_details.reason == "max_output_tokens"


def test_stream_events_in_order_and_deltas_equal_the_text(
    client: openai.OpenAI, server: RunningServer
) -> None:
    with client.responses.stream(
        model=server.llm, input=QUESTION, max_output_tokens=8, temperature=0
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{final.status}",
    ]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas and "".join(deltas) == final.output_text
    assert final.usage is not None and final.usage.output_tokens > 0


def test_codex_shaped_request_streams(server: RunningServer) -> None:
    """What Codex CLI sends (/work/shared/CLIENTS.md): developer items, web_search, store false."""
    body = {
        "model": server.llm,
        "stream": True,
        "store": False,
        "input": [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "You are a terse assistant."}],
            },
            {
                "type": "message",
                "id": "msg_client_1",
                "role": "user",
                "content": [{"type": "input_text", "text": "Say hello."}],
            },
        ],
        "tools": [
            {
                "type": "function",
                "name": "view_image",
                "description": "Show an image.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
                "strict": False,
            },
            {"type": "web_search"},
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "session-1",
        "client_metadata": {"originator": "codex_exec"},
        "max_output_tokens": 8,
        "temperature": 0,
    }
    kinds: list[str] = []
    last: dict[str, Any] = {}
    with httpx.stream(
        "POST",
        f"{server.base_url}/v1/responses",
        json=body,
        headers={"Accept": "text/event-stream"},
        timeout=300,
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                last = json.loads(line[6:])
                kinds.append(last["type"])
    assert kinds[0] == "response.created" and kinds[-1] in (
        "response.completed",
        "response.incomplete",
    )
    assert "response.output_item.added" in kinds and "response.output_item.done" in kinds
    assert last["response"]["usage"]["total_tokens"] > 0
    # store: false → nothing to read back
    rid = last["response"]["id"]
    assert httpx.get(f"{server.base_url}/v1/responses/{rid}", timeout=30).status_code == 404


def test_function_call_round_trip(client: openai.OpenAI, server: RunningServer) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
            "strict": True,
        }
    ]
    first = client.responses.create(
        model=server.llm,
        input="What is the weather in Paris?",
        tools=tools,
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=48,
        temperature=0,
    )
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1, first.output
    call = calls[0]
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    second = client.responses.create(
        model=server.llm,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}],
        tools=tools,
        max_output_tokens=8,
        temperature=0,
    )
    assert second.status in ("completed", "incomplete")
    assert second.output and second.output[-1].type in ("message", "function_call")
    items = client.responses.input_items.list(second.id, order="asc")
    kinds = [i.type for i in items.data]
    assert kinds == ["message", "function_call", "function_call_output"]


def test_text_format_json_schema_strict(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.responses.create(
        model=server.llm,
        input="Name the capital of France as JSON.",
        text={
            "format": {
                "type": "json_schema",
                "name": "capital",
                "schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 16}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
                "strict": True,
            }
        },
        max_output_tokens=40,
        temperature=0,
    )
    assert r.status == "completed", r
    assert set(json.loads(r.output_text)) == {"city"}


def test_follow_up_reuses_the_previous_turn(client: openai.OpenAI, server: RunningServer) -> None:
    """previous_response_id: the follow-up's prompt starts with the previous prompt and answer
    token for token, so the prefix cache serves them (cached_tokens)."""
    first = client.responses.create(
        model=server.llm, input="Name a color.", max_output_tokens=6, temperature=0
    )
    second = client.responses.create(
        model=server.llm,
        previous_response_id=first.id,
        input="Name another one.",
        max_output_tokens=6,
        temperature=0,
    )
    assert first.usage is not None and second.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    cached = second.usage.input_tokens_details.cached_tokens
    assert cached >= first.usage.input_tokens + first.usage.output_tokens - 1


def test_retrieve_input_items_delete(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.responses.create(
        model=server.llm, input=QUESTION, max_output_tokens=4, temperature=0
    )
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.status == r.status
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"]
    first: Any = items.data[0]
    assert first.content[0].text == QUESTION
    deleted = httpx.delete(f"{server.base_url}/v1/responses/{r.id}", timeout=30)
    assert deleted.json() == {"id": r.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(
            model=server.llm, previous_response_id=r.id, input="and?", max_output_tokens=2
        )


def test_cancel_a_background_response(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.responses.create(
        model="fake-slow", input="Write a long story.", background=True, max_output_tokens=400
    )
    assert r.background and r.status in ("queued", "in_progress")
    cancelled = client.responses.cancel(r.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(r.id).status == "cancelled"
    done = client.responses.create(model="fake-llm", input="hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(done.id)


def test_cancel_a_streaming_response(client: openai.OpenAI, server: RunningServer) -> None:
    kinds: list[str] = []
    response_id = ""
    with client.responses.create(
        model="fake-slow", input="Write a long story.", stream=True, max_output_tokens=400
    ) as stream:
        for event in stream:
            kinds.append(event.type)
            if event.type == "response.created":
                response_id = event.response.id
            elif event.type == "response.output_text.delta" and kinds.count(event.type) == 2:
                assert client.responses.cancel(response_id).status == "cancelled"
    assert kinds.count("response.output_text.delta") < 40  # the stream ended early
    assert "response.completed" not in kinds
    assert client.responses.retrieve(response_id).status == "cancelled"


def test_input_tokens_counts_the_prompt(client: openai.OpenAI, server: RunningServer) -> None:
    counted = client.responses.input_tokens.count(model=server.llm, input=QUESTION)
    r = client.responses.create(model=server.llm, input=QUESTION, max_output_tokens=1)
    assert r.usage is not None and counted.input_tokens == r.usage.input_tokens


def test_context_window_and_truncation(client: openai.OpenAI, server: RunningServer) -> None:
    long = "word " * 9000
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=server.llm, input=long, max_output_tokens=2)
    body: Any = info.value.body
    assert info.value.code == "context_length_exceeded", body
    assert "8192" in info.value.message
    # truncation auto drops the oldest items until the rest fits
    r = client.responses.create(
        model=server.llm,
        input=[
            {"role": "user", "content": long},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": QUESTION},
        ],
        truncation="auto",
        max_output_tokens=2,
    )
    assert r.usage is not None and r.usage.input_tokens < 100


def _lineage_trace(basetemp: Path, chunk_id: str) -> list[dict[str, Any]]:
    """The chunk's lineage in whichever server's data_dir indexed it (each server under test
    has its own state folder under the session's basetemp)."""
    for db in sorted(basetemp.glob("*/state/lineage.duckdb")):
        with Lineage(db, read_only=True) as lin:
            try:
                chains = lin.trace(chunk_id)
            except LineageError:  # another server's data_dir: not its chunk
                continue
        if chains:
            return chains
    return []


def test_file_search_cites_chunks_that_resolve_in_lineage(
    client: openai.OpenAI,
    server: RunningServer,
    indexed: dict[str, Any],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    r = client.responses.create(
        model=server.llm,
        input="Who logged the ships at the Bell Rock lighthouse?",
        tools=[{"type": "file_search", "vector_store_ids": [COLLECTION], "max_num_results": 2}],
        include=["file_search_call.results"],
        max_output_tokens=16,
        temperature=0,
    )
    call = r.output[0]
    assert call.type == "file_search_call" and call.status == "completed"
    assert call.queries == ["Who logged the ships at the Bell Rock lighthouse?"]
    assert call.results and call.results[0].filename == "lighthouse.md"
    message = r.output[-1]
    assert message.type == "message"
    notes: list[Any] = message.content[0].annotations  # type: ignore[union-attr]
    assert notes and all(n.type == "file_citation" for n in notes)
    files = {res.file_id: res.filename for res in call.results}
    for note in notes:
        assert files[note.file_id] == note.filename and note.filename in CORPUS
        chunk_id = note.model_extra["chunk_id"]
        chains = _lineage_trace(tmp_path_factory.getbasetemp(), chunk_id)
        assert chains and chains[0]["chunk"]["chunk_id"] == chunk_id
        assert chains[0]["document_version"]["source"].endswith(note.filename)


# -- a server that restarts on the same data_dir ----------------------------------------------------


@contextmanager
def _serve(models_dir: Path, data_dir: Path) -> Iterator[str]:
    settings = load_settings(data_dir=data_dir, serve={"keepalive_s": 0.5})
    manager = ModelManager(
        StoreWithFakes(models_dir, llms=list(FAKE_LLMS)),
        recording_factory({}, mlx_engine_factory(settings)),
        default_model=settings.models.llm,
        idle_ttl_s=0,
    )
    app = create_app(settings, manager=manager, preload_default=True)
    with uvicorn_server(app) as url:
        _wait_ready(url)
        yield url


def test_previous_response_id_after_a_restart(ready_models_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "state"
    llm = load_settings().models.llm
    with _serve(ready_models_dir, data_dir) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        first = c.responses.create(
            model=llm, input="My name is Ada.", max_output_tokens=4, temperature=0
        )
    assert (data_dir / "responses.sqlite3").is_file()
    with _serve(ready_models_dir, data_dir) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)
        assert c.responses.retrieve(first.id).output_text == first.output_text
        second = c.responses.create(
            model=llm,
            previous_response_id=first.id,
            input="What is my name?",
            max_output_tokens=4,
            temperature=0,
        )
        items = c.responses.input_items.list(second.id, order="asc")
    assert second.previous_response_id == first.id
    data: list[Any] = items.data
    texts = [i.content[0].text for i in data]
    assert texts == ["My name is Ada.", first.output_text, "What is my name?"]


def test_a_stored_response_is_visible_to_its_key_only(server_factory: Any) -> None:  # noqa: F811
    """Keys on (tests/serving/http/test_auth.py's server): another user key gets a 404, an
    admin key reads it."""
    srv = server_factory()
    _, alice = srv.keys.create("alice", "user")
    _, bob = srv.keys.create("bob", "user")
    _, admin = srv.keys.create("root", "admin")
    r = srv.sdk(alice).responses.create(model="fake-llm", input="hi", max_output_tokens=3)
    assert srv.sdk(alice).responses.retrieve(r.id).id == r.id
    assert srv.sdk(admin).responses.retrieve(r.id).id == r.id
    with pytest.raises(openai.NotFoundError):
        srv.sdk(bob).responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        srv.sdk(bob).responses.input_items.list(r.id)
    with pytest.raises(openai.NotFoundError):
        srv.sdk(bob).responses.create(
            model="fake-llm", previous_response_id=r.id, input="and?", max_output_tokens=2
        )
    with pytest.raises(openai.NotFoundError):
        srv.sdk(bob).responses.delete(r.id)
    srv.sdk(alice).responses.delete(r.id)
