"""Responses input items and tools → chat messages and chat's tool fields
(serving/http/openai/responses_schemas.py), and the store (serving/services/response_store.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.engine.base import InvalidRequestError
from serving.http.openai.responses_schemas import (
    ResponseRequest,
    history,
    input_items,
    to_messages,
)
from serving.services.response_store import ResponseStore, StoredResponse


def test_codex_history_becomes_chat_messages() -> None:
    items = input_items(
        [
            {
                "type": "message",
                "role": "developer",
                "content": [{"type": "input_text", "text": "Be terse."}],
            },
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},
            {"type": "message", "role": "assistant", "content": "Let me check."},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
        ]
    )
    assert all(i.get("id") for i in items if i["type"] != "reasoning")
    assert to_messages(items, "System rules.") == [
        {"role": "system", "content": "System rules."},
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "Sunny"},
    ]


def test_a_follow_up_continues_with_the_previous_output() -> None:
    prev = input_items("Name a colour.")
    output: list[dict[str, Any]] = [
        {"type": "file_search_call", "id": "fs_1", "queries": ["q"]},
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "content": [{"type": "output_text", "text": " Blue.", "annotations": []}],
        },
    ]
    messages = to_messages(history(prev, output) + input_items("Another."), None)
    # the exact generated text (leading space included): the prompt stays a token prefix
    assert messages == [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": " Blue."},
        {"role": "user", "content": "Another."},
    ]


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]},
        {"type": "function_call", "name": "f"},
        {"type": "telepathy"},
        {"role": "robot", "content": "hi"},
    ],
)
def test_unreadable_items_are_a_400(item: dict[str, object]) -> None:
    with pytest.raises(InvalidRequestError):
        input_items([item])


def test_tools_and_text_format_in_chats_shapes() -> None:
    body = ResponseRequest(
        model="m",
        tools=[
            {"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": True},
            {"type": "web_search"},
            {"type": "file_search", "vector_store_ids": ["default"]},
        ],
        tool_choice={"type": "function", "name": "f"},
        text={"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}}},
        prompt_cache_key="ignored",
    )
    assert body.chat_extra() == {
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "parallel_tool_calls": True,
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": False},
        },
    }
    assert body.file_search() == {"type": "file_search", "vector_store_ids": ["default"]}
    only_hosted = ResponseRequest(model="m", tools=[{"type": "web_search"}], tool_choice="auto")
    assert only_hosted.chat_extra() == {}


def test_the_store_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "responses.sqlite3"
    store = ResponseStore(path)
    store.put(StoredResponse("resp_1", "key-a", 1, {"id": "resp_1", "status": "completed"}, []))
    store.close()
    again = ResponseStore(path)
    got = again.get("resp_1")
    assert got is not None and got.owner == "key-a" and got.response["status"] == "completed"
    assert again.delete("resp_1") and again.get("resp_1") is None and not again.delete("resp_1")
