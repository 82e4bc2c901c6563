"""Structured outputs and tool calls through the real `openai` SDK, in every server mode.

On the bundled model (SmolLM2-135M-Instruct, whose template has no tool support: Impetus's tool
prompt is used) every constrained output must parse and validate; the model's answers are
otherwise not judged. The 50-prompt validity run shares the continuous batch (concurrent
requests) and is marked slow; in Ray mode it runs 20 of the prompts (every kind four times), since
the grammar work is the same engine code and `make test` must stay under 20 minutes here.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Annotated, Any

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.serving.servers import RunningServer


class Color(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Address(BaseModel):
    city: str = Field(max_length=40)
    country: str = Field(max_length=40)


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int
    favourite_color: Color
    address: Address
    hobbies: list[Annotated[str, Field(max_length=30)]] = Field(max_length=3)


# A hand-written schema: enums, a nested object, an array of objects, required fields.
ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 30},
                "tier": {"enum": ["free", "pro", "enterprise"]},
            },
            "required": ["name", "tier"],
            "additionalProperties": False,
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 12},
                    "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
                },
                "required": ["sku", "quantity"],
                "additionalProperties": False,
            },
        },
        "status": {"enum": ["pending", "shipped", "delivered"]},
        "express": {"type": "boolean"},
    },
    "required": ["customer", "items", "status", "express"],
    "additionalProperties": False,
}

# Above the longest output the schemas allow (bounded strings and arrays), so every constrained
# request finishes; the model usually needs a third of it.
MAX_TOKENS = 300

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 40}},
            "required": ["timezone"],
            "additionalProperties": False,
        },
    },
}

SUBJECTS = [
    "a pizza order",
    "a bookshop purchase",
    "a laptop delivery",
    "three coffees",
    "a gardening kit",
    "running shoes",
    "a birthday cake",
    "office chairs",
    "a bicycle",
    "concert tickets",
    "a camera lens",
    "a box of tea",
    "paint supplies",
    "a winter coat",
    "vinyl records",
    "a board game",
    "kitchen knives",
    "a yoga mat",
    "phone chargers",
    "a desk lamp",
    "dog food",
    "a tent",
    "a guitar",
    "printer ink",
    "a sofa",
]


def _create(client: openai.OpenAI, **kw: Any) -> Any:
    """`chat.completions.create` with loosely typed arguments (plain dicts, as users send)."""
    return client.chat.completions.create(**kw)


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def test_parse_with_a_pydantic_model(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.chat.completions.parse(
        model=server.llm,
        messages=[{"role": "user", "content": "Invent a person and describe them."}],
        response_format=Person,
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    (choice,) = r.choices
    assert choice.finish_reason == "stop"
    person = choice.message.parsed
    assert isinstance(person, Person)
    assert Person.model_validate_json(choice.message.content or "") == person


def test_json_schema_with_enums_nested_objects_and_arrays(
    client: openai.OpenAI, server: RunningServer
) -> None:
    r = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "Record an order for two coffees as JSON."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "order", "schema": ORDER_SCHEMA, "strict": True},
        },
        max_tokens=MAX_TOKENS,
        seed=7,
    )
    (choice,) = r.choices
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.message.content or ""), ORDER_SCHEMA)


def test_json_object_mode(client: openai.OpenAI, server: RunningServer) -> None:
    r = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "Give a JSON object with a key 'ok'."}],
        response_format={"type": "json_object"},
        max_tokens=60,
        temperature=0,
    )
    (choice,) = r.choices
    if choice.finish_reason == "stop":  # a cut-off object cannot parse; a finished one must
        assert isinstance(json.loads(choice.message.content or ""), dict)
    else:
        assert (choice.message.content or "").startswith("{")


def test_streamed_structured_output_parses(client: openai.OpenAI, server: RunningServer) -> None:
    stream = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "Record an order for a bicycle."}],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "order", "schema": ORDER_SCHEMA},
        },
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    text, reasons = "", []
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            reasons.append(c.finish_reason)
    assert reasons[-1] == "stop"
    jsonschema.validate(json.loads(text), ORDER_SCHEMA)


def test_completions_accept_response_format(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.completions.create(
        model=server.llm,
        prompt="An order for three books, as JSON:\n",
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "order", "schema": ORDER_SCHEMA},
            }
        },
    )
    (choice,) = r.choices
    assert choice.finish_reason == "stop"
    jsonschema.validate(json.loads(choice.text), ORDER_SCHEMA)


def test_unsupported_schema_is_a_400_naming_the_feature(
    client: openai.OpenAI, server: RunningServer
) -> None:
    schema = {"type": "object", "dependentSchemas": {"a": {"required": ["b"]}}}
    with pytest.raises(openai.BadRequestError) as info:
        _create(
            client,
            model=server.llm,
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
            max_tokens=8,
        )
    err = info.value.body
    assert isinstance(err, dict)
    assert err["code"] == "invalid_request" and err["param"] == "response_format"
    assert "dependentSchemas" in err["message"]


def test_bad_tool_choice_is_a_400(client: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(
            client,
            model=server.llm,
            messages=[{"role": "user", "content": "hi"}],
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
            max_tokens=8,
        )
    assert "nope" in str(info.value)


def _valid_call(call: Any, tools: list[dict[str, Any]]) -> dict[str, Any]:
    assert call.type == "function" and call.id.startswith("call_")
    (tool,) = [t for t in tools if t["function"]["name"] == call.function.name]
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, tool["function"]["parameters"])
    return args


def test_forced_tool_call(client: openai.OpenAI, server: RunningServer) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    r = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "What is the weather like in Paris?"}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    _valid_call(call, tools)


def test_required_tool_call_without_parallel_calls(
    client: openai.OpenAI, server: RunningServer
) -> None:
    tools = [WEATHER_TOOL, TIME_TOOL]
    r = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "What time is it in Tokyo?"}],
        tools=tools,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=MAX_TOKENS,
        seed=3,
    )
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    _valid_call(call, tools)


def test_streamed_tool_call(client: openai.OpenAI, server: RunningServer) -> None:
    tools = [WEATHER_TOOL]
    stream = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "Weather in Oslo, please."}],
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=MAX_TOKENS,
        temperature=0,
        stream=True,
    )
    deltas: list[Any] = []
    reasons: list[str | None] = []
    for chunk in stream:
        for c in chunk.choices:
            deltas.extend(c.delta.tool_calls or [])
            reasons.append(c.finish_reason)
    assert reasons[-1] == "tool_calls"
    first, rest = deltas[0], deltas[1:]
    # OpenAI's shape: id, type and name first with empty arguments, then argument fragments
    assert first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert first.function.arguments == ""
    assert len(rest) > 1 and all(d.id is None and d.index == 0 for d in rest)
    arguments = "".join(d.function.arguments or "" for d in rest if d.function)
    jsonschema.validate(json.loads(arguments), WEATHER_TOOL["function"]["parameters"])


def test_tool_choice_none_answers_in_text(client: openai.OpenAI, server: RunningServer) -> None:
    r = _create(
        client,
        model=server.llm,
        messages=[{"role": "user", "content": "Say hello."}],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        max_tokens=8,
        temperature=0,
    )
    (choice,) = r.choices
    assert choice.message.tool_calls is None and choice.finish_reason in ("stop", "length")


def test_tool_results_round_trip(client: openai.OpenAI, server: RunningServer) -> None:
    """A conversation holding an assistant tool call and its result renders and answers."""
    r = _create(
        client,
        model=server.llm,
        messages=[
            {"role": "user", "content": "Weather in Rome?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Rome", "unit": "celsius"}',
                        },
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ],
        tools=[WEATHER_TOOL],
        max_tokens=16,
        temperature=0,
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.slow
def test_every_output_validates_over_50_prompts(
    client: openai.OpenAI, server: RunningServer
) -> None:
    """50 varied requests at once (they share the batch): schemas, a Pydantic model, forced and
    required tool calls, sampled and greedy. Every one must finish and validate. (20 in Ray mode:
    the routes and engine are the same code; the mode adds the hops, which 20 cover.)"""
    n = 50 if server.mode == "inprocess" else 20
    tools = [WEATHER_TOOL, TIME_TOOL]
    kinds = ["schema", "parse", "forced_tool", "required_tool", "schema_stream"]

    def one(i: int) -> tuple[str, bool, str]:
        kind = kinds[i % len(kinds)]
        subject = SUBJECTS[i % len(SUBJECTS)]
        sampling: dict[str, Any] = (
            {"temperature": 0} if i % 3 == 0 else {"temperature": 0.8, "seed": i}
        )
        common: dict[str, Any] = {"model": server.llm, "max_tokens": MAX_TOKENS, **sampling}
        try:
            if kind == "parse":
                parsed = client.chat.completions.parse(
                    messages=[
                        {"role": "user", "content": f"Describe a person who likes {subject}."}
                    ],
                    response_format=Person,
                    **common,
                )
                return kind, isinstance(parsed.choices[0].message.parsed, Person), ""
            if kind in ("schema", "schema_stream"):
                fmt = {"type": "json_schema", "json_schema": {"name": "o", "schema": ORDER_SCHEMA}}
                messages = [{"role": "user", "content": f"Record {subject} as an order."}]
                if kind == "schema":
                    r = _create(
                        client,
                        messages=messages,
                        response_format=fmt,
                        **common,
                    )
                    text = r.choices[0].message.content or ""
                    ok = r.choices[0].finish_reason == "stop"
                else:
                    text, ok = "", False
                    for chunk in _create(
                        client,
                        messages=messages,
                        response_format=fmt,
                        stream=True,
                        **common,
                    ):
                        for c in chunk.choices:
                            text += c.delta.content or ""
                            ok = c.finish_reason == "stop"
                jsonschema.validate(json.loads(text), ORDER_SCHEMA)
                return kind, ok, text
            city = subject.split()[-1]
            choice: Any = (
                {"type": "function", "function": {"name": "get_weather"}}
                if kind == "forced_tool"
                else "required"
            )
            r = _create(
                client,
                messages=[{"role": "user", "content": f"I need info about {city} for {subject}."}],
                tools=tools,
                tool_choice=choice,
                parallel_tool_calls=False,
                **common,
            )
            c = r.choices[0]
            calls = c.message.tool_calls or []
            for call in calls:
                _valid_call(call, tools)
            return kind, c.finish_reason == "tool_calls" and len(calls) == 1, ""
        except Exception as exc:  # counted as invalid, reported below
            return kind, False, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=8) as pool:  # the server's batch size
        results = list(pool.map(one, range(n)))
    bad = [r for r in results if not r[1]]
    print(f"\nvalid: {n - len(bad)}/{n}")
    assert not bad, bad
