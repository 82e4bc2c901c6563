"""serving/services/tools.py: tool plans, the fallback tool prompt, and parsing (streamed and whole)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from serving.engine.base import EngineError, InvalidRequestError
from serving.services import tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


def test_plan_modes() -> None:
    assert tools.plan({}) is None
    assert tools.plan({"tools": [WEATHER], "tool_choice": "none"}) is None
    auto = tools.plan({"tools": [WEATHER, ADD]})
    assert auto is not None and auto.mode == "auto" and auto.parallel
    req = tools.plan(
        {"tools": [WEATHER, ADD], "tool_choice": "required", "parallel_tool_calls": False}
    )
    assert req is not None and req.mode == "required" and not req.parallel
    named = tools.plan(
        {"tools": [WEATHER, ADD], "tool_choice": {"type": "function", "function": {"name": "add"}}}
    )
    assert named is not None and named.forced == "add" and not named.parallel
    assert [f["name"] for f in named.callable_functions()] == ["add"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": []}, "tools"),
        ({"tools": [{"type": "retrieval"}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_plan_rejects_what_it_cannot_serve(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        tools.plan(extra)
    assert info.value.param == param
    assert not isinstance(info.value, EngineError)  # a 400 of the request, not an engine failure


def test_fallback_messages_render_tools_calls_and_results() -> None:
    plan = tools.plan({"tools": [WEATHER]})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Rome?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
    ]
    out = tools.fallback_messages(messages, plan)
    assert len(out) == 4 and out[0]["role"] == "system"
    assert out[0]["content"].startswith("Be brief.") and '"get_weather"' in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    assert "tool_calls" not in out[2]
    assert out[3]["content"] == '<tool_response>\n{"temp": 21}\n</tool_response>'
    # no system message: one is added in front
    assert tools.fallback_messages(messages[1:2], plan)[0]["role"] == "system"


CALLS = (
    'Let me check. <tool_call>\n{"name":"get_weather","arguments":{"city":"Rome \\"}\\" x"}}\n'
    '</tool_call>\n<tool_call>\n{"name":"add","arguments":{"a":1,"b":[2,3]}}\n</tool_call>'
)


@pytest.mark.parametrize("piece", [1, 3, 7, len(CALLS)])
def test_stream_emits_openai_deltas_whatever_the_chunking(piece: int) -> None:
    stream = tools.ToolCallStream()
    deltas: list[dict[str, Any]] = []
    for i in range(0, len(CALLS), piece):
        deltas += stream.feed(CALLS[i : i + piece])
    deltas += stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    assert content == "Let me check. "
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert [h["function"]["name"] for h in heads] == ["get_weather", "add"]
    assert all(h["function"]["arguments"] == "" and h["type"] == "function" for h in heads)
    for index, name in enumerate(["get_weather", "add"]):
        args = "".join(c["function"]["arguments"] for c in calls if c["index"] == index)
        assert json.loads(args) == json.loads(stream.calls[index].arguments)
        assert stream.calls[index].name == name
    assert json.loads(stream.calls[0].arguments) == {"city": 'Rome "}" x'}


def test_a_call_in_another_key_order_is_emitted_whole() -> None:
    content, calls = tools.parse_message(
        '<tool_call>{"arguments": {"x": 1}, "name": "f"}</tool_call>'
    )
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"x": 1})]


def test_text_that_only_looks_like_a_call_stays_content() -> None:
    assert tools.parse_message("a <tool") == ("a <tool", [])
    assert tools.parse_message("<tool_call>not json</tool_call>") == (
        "<tool_call>not json",
        [],
    )


def test_finish_message_honours_parallel_and_length() -> None:
    single = tools.plan({"tools": [WEATHER, ADD], "parallel_tool_calls": False})
    content, calls, reason = tools.finish_message(CALLS, "stop", single)
    assert reason == "tool_calls" and calls is not None and len(calls) == 1
    assert content == "Let me check."
    cut = CALLS[: CALLS.rindex('"b"')]
    _, calls, reason = tools.finish_message(cut, "length", tools.plan({"tools": [WEATHER, ADD]}))
    # the whole first call, and the second as far as it was written (as the stream sent it)
    assert reason == "length" and calls is not None and len(calls) == 2
    assert json.loads(calls[0]["function"]["arguments"])
    assert cut.endswith(calls[1]["function"]["arguments"])
    assert tools.finish_message("hi", "stop", None) == ("hi", None, "stop")


@pytest.mark.parametrize("choice", ["auto", "required", "none"])
def test_a_broken_tool_schema_is_refused_whatever_the_tool_choice(choice: str) -> None:
    broken = {"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}
    with pytest.raises(InvalidRequestError, match=r"not a valid JSON schema: .*objekt"):
        tools.plan({"tools": [broken], "tool_choice": choice})


def test_a_schema_is_checked_once_however_often_it_is_sent() -> None:
    """Agents resend their tools every turn: the meta-schema check of each is kept."""
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "x-turns": 17}
    same = {"x-turns": 17, "properties": {"city": {"type": "string"}}, "type": "object"}
    before = tools._cached_schema_problem.cache_info()
    assert tools.schema_problem(schema) is None and tools.schema_problem(same) is None
    after = tools._cached_schema_problem.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    broken = {"type": "objekt"}
    assert tools.schema_problem(broken) == tools.schema_problem(dict(broken)) is not None
