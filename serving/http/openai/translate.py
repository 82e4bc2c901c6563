"""OpenAI chat and completions bodies → the engine's typed `GenerationRequest`s, once per request.

The engine never sees OpenAI's wire: this module reads `tools`, `tool_choice`,
`parallel_tool_calls` and `response_format` (validating them: `InvalidRequestError`, a 400, before
anything reaches the engine) into a tool plan (serving/services/tools.py), which the route keeps
to parse the output, and a grammar constraint (serving/services/structured.py). Then, with the
engine's `capabilities()`, it renders the tools for the model: as the chat template's `tools`
argument where the template renders them, else as Impetus's tool prompt in the messages (or a
400 where the engine's configuration turns the fallback off). A request with `n` choices is `n`
engine requests that share the rendered messages and the constraint (seeds `seed + i`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.engine.base import (
    Constraint,
    EngineCapabilities,
    GenerationRequest,
    InvalidRequestError,
    SamplingParams,
)
from serving.http import reasoning
from serving.services import structured, tools
from serving.services.tools import ToolPlan


@dataclass(frozen=True)
class ChatPlan:
    """What a chat request asks beyond its messages: its tool plan (None: no tools) and the
    constraint on its output (None: free text)."""

    tool_plan: ToolPlan | None
    constraint: Constraint | None
    # chat-template variables: the reasoning effort's (serving/http/reasoning.py), vLLM's
    # `chat_template_kwargs`
    template_kwargs: dict[str, Any] = field(default_factory=dict)


def chat_plan(extra: dict[str, Any]) -> ChatPlan:
    """Validate and translate a chat body's tool, response_format and reasoning fields (its
    `model_extra`)."""
    tool_plan = tools.plan(extra)
    return ChatPlan(
        tool_plan, structured.from_request(extra, tool_plan, chat=True), chat_template_kwargs(extra)
    )


def chat_template_kwargs(extra: dict[str, Any]) -> dict[str, Any]:
    """`reasoning_effort` (OpenAI's) and `chat_template_kwargs` (vLLM's) as template variables."""
    effort = extra.get("reasoning_effort")
    if effort is not None and not isinstance(effort, str):
        raise InvalidRequestError(
            'reasoning_effort must be a string such as "low", "medium" or "high".',
            param="reasoning_effort",
        )
    given = extra.get("chat_template_kwargs") or {}
    if not isinstance(given, dict):
        raise InvalidRequestError(
            "chat_template_kwargs must be an object.", param="chat_template_kwargs"
        )
    return {**reasoning.template_kwargs(effort), **given}


def completion_constraint(extra: dict[str, Any]) -> Constraint | None:
    """Validate and translate a completions body's response_format; tools need a chat template."""
    if extra.get("tools") is not None:
        raise InvalidRequestError(
            "tools are for /v1/chat/completions (they need the chat template).", param="tools"
        )
    return structured.from_request(extra, None, chat=False)


def render_tools(
    messages: list[dict[str, Any]],
    tool_plan: ToolPlan | None,
    capabilities: EngineCapabilities,
    model: str,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and the chat template's `tools` argument that show the model its tools and
    the conversation's earlier calls and results."""
    has_tool_turns = any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)
    if tool_plan is None and not has_tool_turns:
        return messages, None
    if capabilities.native_tools:
        return messages, (tools.native_tools(tool_plan) if tool_plan else None)
    if not capabilities.tool_prompt_fallback:
        raise InvalidRequestError(
            f"Model {model!r} has a chat template without tool support; use a model "
            "whose template renders tools, or drop tools and tool_choice.",
            param="tools",
        )
    return tools.fallback_messages(messages, tool_plan), None


def chat_requests(
    request_id: str,
    messages: list[dict[str, Any]],
    plan: ChatPlan,
    sampling: Callable[[], SamplingParams],
    *,
    n: int,
    seed: int | None,
    capabilities: EngineCapabilities,
    model: str,
) -> list[GenerationRequest]:
    """The `n` engine requests of a chat body, for a model with these capabilities."""
    rendered, template_tools = render_tools(messages, plan.tool_plan, capabilities, model)
    return [
        GenerationRequest(
            f"{request_id}-{i}",
            messages=rendered,
            params=_seeded(sampling(), seed, i),
            tools=template_tools,
            constraint=plan.constraint,
            template_kwargs=plan.template_kwargs,
        )
        for i in range(n)
    ]


def completion_requests(
    request_id: str,
    prompts: list[str],
    constraint: Constraint | None,
    sampling: Callable[[], SamplingParams],
    *,
    n: int,
    seed: int | None,
) -> list[GenerationRequest]:
    """The engine requests of a completions body: choice `p * n + i` is prompt `p`'s `i`-th, as
    OpenAI numbers them (seeds count over all choices)."""
    return [
        GenerationRequest(
            f"{request_id}-{i}",
            prompt=prompts[i // n],
            params=_seeded(sampling(), seed, i),
            constraint=constraint,
        )
        for i in range(len(prompts) * n)
    ]


def _seeded(params: SamplingParams, seed: int | None, i: int) -> SamplingParams:
    if seed is not None:
        params.seed = seed + i
    return params
