"""serving/http/openai/translate.py: OpenAI bodies → typed engine requests, on the real SmolLM2
engine (whose chat template has no tools, so it gets the fallback tool prompt)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serving.engine.base import (
    EngineCapabilities,
    EngineError,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
)
from serving.http.openai import translate
from serving.services import tools

pytest.importorskip("mlx_lm")

from serving.engine.mlx_engine import MLXEngine, MLXEngineConfig

MODEL = "smollm2-135m-instruct"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
NO_FALLBACK = (
    "Model 'm' has a chat template without tool support; use a model whose template renders "
    "tools, or drop tools and tool_choice."
)


@pytest.fixture(scope="module")
def engine(ready_models_dir: Path) -> Iterator[MLXEngine]:
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    eng = MLXEngine.load(path, MODEL, prefix_cache_bytes=0)
    yield eng
    asyncio.run(eng.close())


def _sampling(max_tokens: int = 4) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0)


def _chat(
    extra: dict[str, Any], caps: EngineCapabilities, *, n: int = 1, seed: int | None = None
) -> list[GenerationRequest]:
    plan = translate.chat_plan(extra)
    return translate.chat_requests(
        "rid", MESSAGES, plan, _sampling, n=n, seed=seed, capabilities=caps, model="m"
    )


def test_tools_and_response_format_become_a_fallback_prompt_and_one_grammar(
    engine: MLXEngine,
) -> None:
    extra = {"tools": [WEATHER], "response_format": {"type": "json_object"}}
    plan = translate.chat_plan(extra)
    assert plan.tool_plan is not None and plan.tool_plan.mode == "auto"
    reqs = translate.chat_requests(
        "rid",
        MESSAGES,
        plan,
        _sampling,
        n=2,
        seed=5,
        capabilities=engine.capabilities(),
        model=engine.model_name,
    )
    assert [r.request_id for r in reqs] == ["rid-0", "rid-1"]
    assert [r.params.seed for r in reqs] == [5, 6]
    assert reqs[0].params is not reqs[1].params
    first, second = reqs
    # rendered once for every choice: the tool prompt in a system message, no template tools
    assert first.messages is second.messages and first.constraint is second.constraint
    assert first.messages is not None and first.prompt is None and first.tools is None
    system, user = first.messages
    assert system["role"] == "system" and "<tool_call>" in system["content"]
    assert '"name": "get_weather"' in system["content"]
    assert user == MESSAGES[0]
    assert first.constraint is not None
    assert first.constraint.kind == "tool_calls_or_json"
    assert first.constraint.param == "response_format"
    # the engine takes it as it is: the prompt carries the tools, the grammar compiles
    plain = GenerationRequest("p", messages=MESSAGES)
    assert engine.count_tokens(first) > engine.count_tokens(plain) + 20

    async def generate() -> str:
        return "".join([d.text async for d in engine.generate(first)])

    out = asyncio.run(generate())
    assert out.startswith(("{", "<"))  # a JSON object or a tool call


def test_a_template_with_tools_gets_them_as_its_argument() -> None:
    native = EngineCapabilities(native_tools=True)
    extra = {
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    (r,) = _chat(extra, native)
    assert r.messages is MESSAGES
    assert r.tools == [{"type": "function", "function": WEATHER["function"]}]
    assert r.constraint is not None
    assert (r.constraint.kind, r.constraint.param) == ("tool_calls", "tools")
    (free,) = _chat({}, native)
    assert free.messages is MESSAGES and free.tools is None and free.constraint is None


def test_without_native_tools_and_fallback_it_is_the_engines_400(ready_models_dir: Path) -> None:
    from pipelines.models.store import ModelStore

    path = ModelStore(ready_models_dir).resolve(MODEL)
    # The capability comes from the engine's configuration (nothing needs loading to read it).
    caps = MLXEngine(path, "m", MLXEngineConfig(tool_prompt_fallback=False)).capabilities()
    assert caps == EngineCapabilities(native_tools=False, tool_prompt_fallback=False)
    with pytest.raises(InvalidRequestError) as info:
        _chat({"tools": [WEATHER]}, caps)
    assert str(info.value) == NO_FALLBACK and info.value.param == "tools"
    # earlier tool turns need the template (or the prompt) too, even without tools
    history = [*MESSAGES, {"role": "tool", "content": "sunny", "tool_call_id": "c1"}]
    plan = translate.chat_plan({})
    with pytest.raises(InvalidRequestError, match="without tool support"):
        translate.chat_requests(
            "rid", history, plan, _sampling, n=1, seed=None, capabilities=caps, model="m"
        )
    (r,) = translate.chat_requests(
        "rid",
        history,
        plan,
        _sampling,
        n=1,
        seed=None,
        capabilities=EngineCapabilities(),
        model="m",
    )
    assert r.messages is not None and "<tool_response>" in r.messages[-1]["content"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_fields_are_400s_before_the_engine(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate.chat_plan(extra)
    assert info.value.param == param
    assert not isinstance(info.value, EngineError)


def test_completions() -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate.completion_constraint({"tools": [WEATHER]})
    assert (
        str(info.value) == ("tools are for /v1/chat/completions (they need the chat template).")
        and info.value.param == "tools"
    )
    assert translate.completion_constraint({"tool_choice": "auto"}) is None
    constraint = translate.completion_constraint({"response_format": {"type": "json_object"}})
    assert constraint is not None and constraint.kind == "json_object"
    reqs = translate.completion_requests("c", ["a", "b"], constraint, _sampling, n=2, seed=10)
    assert [(r.request_id, r.prompt, r.params.seed) for r in reqs] == [
        ("c-0", "a", 10),
        ("c-1", "a", 11),
        ("c-2", "b", 12),
        ("c-3", "b", 13),
    ]
    assert all(r.constraint is constraint and r.messages is None for r in reqs)
    unseeded = translate.completion_requests("c", ["a"], None, _sampling, n=1, seed=None)
    assert unseeded[0].params.seed is None


def test_the_plan_the_route_parses_with_is_the_one_translated() -> None:
    plan = translate.chat_plan({"tools": [WEATHER], "parallel_tool_calls": False})
    assert plan.tool_plan is not None and not plan.tool_plan.parallel
    stream = tools.stream_for(plan.tool_plan)
    assert stream is not None and stream.max_calls == 1


def test_omitted_sampling_fields_get_the_models_registry_defaults(ready_models_dir: Path) -> None:
    from pipelines.models.store import ModelStore
    from serving.http.openai.schemas import ChatCompletionRequest, CompletionRequest

    defaults = ModelStore(ready_models_dir).get(MODEL).defaults  # the real entry
    assert defaults.fields() == {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    msgs = [{"role": "user", "content": "hi"}]
    bare = ChatCompletionRequest(model=MODEL, messages=msgs)
    plan = translate.chat_plan({})
    caps = EngineCapabilities()
    (r,) = translate.chat_requests(
        "rid", MESSAGES, plan, lambda: bare.sampling(defaults), n=1, seed=None,
        capabilities=caps, model=MODEL,
    )  # fmt: skip
    assert (r.params.temperature, r.params.top_p, r.params.top_k) == (0.2, 0.9, 0)
    assert r.params.repetition_penalty == 1.1
    # what the request sends wins, field by field; a model without defaults keeps OpenAI's
    sent = ChatCompletionRequest(model=MODEL, messages=msgs, temperature=0, top_k=5)
    assert (sent.sampling(defaults).temperature, sent.sampling(defaults).top_p) == (0.0, 0.9)
    assert sent.sampling(defaults).top_k == 5
    assert (bare.sampling().temperature, bare.sampling().top_p) == (1.0, 1.0)
    (c,) = translate.completion_requests(
        "c", ["Once"], None, lambda: CompletionRequest(model=MODEL, prompt="x").sampling(defaults),
        n=1, seed=None,
    )  # fmt: skip
    assert (c.params.temperature, c.params.top_p, c.params.max_tokens) == (0.2, 0.9, 16)
