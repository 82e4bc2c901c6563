"""Turn N+1 of an agent's conversation reuses turn N's KV state, through the real SDKs against a
real server (conftest.SERVER_MODES): Chat Completions with tools, Responses with
`previous_response_id`, Anthropic Messages. The cached tokens each API reports must cover the
whole of the previous turn's prompt (and most of the new one), whatever the model answered: the
answer is sent back as the client got it, tool calls included.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anthropic
import openai
import pytest

from tests.serving.servers import RunningServer

AGENT = (
    "You are a coding agent working in a Python repository. Read a file before you change it, "
    "keep changes small, and say what you did in one sentence. "
) * 2
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]
ASKS = ("Open serving/app.py.", "Now open tests/test_app.py.")
MAX_TOKENS = 8


def assert_reused(turns: list[tuple[int, int]]) -> None:
    """turns: (prompt tokens, cached tokens) of each turn."""
    for (before, _), (prompt, cached) in itertools.pairwise(turns):
        assert cached >= before, turns  # all of the previous prompt came from the cache
        assert cached >= 0.75 * prompt, turns


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


@pytest.mark.slow
def test_chat_with_tools_reuses_the_previous_turn(
    oai: openai.OpenAI, server: RunningServer
) -> None:
    messages: list[Any] = [{"role": "system", "content": AGENT}]
    turns = []
    for ask in ASKS:
        messages.append({"role": "user", "content": ask})
        r = oai.chat.completions.create(
            model=server.llm, messages=messages, tools=TOOLS, max_tokens=MAX_TOKENS, temperature=0
        )
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        turns.append((r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens or 0))
        msg = r.choices[0].message
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls or []:
            content = json.dumps({"path": "x.py", "text": "print('hi')"})
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    assert_reused(turns)


@pytest.mark.slow
def test_responses_follow_up_reuses_the_previous_turn(
    oai: openai.OpenAI, server: RunningServer
) -> None:
    turns, previous = [], None
    for ask in ASKS:
        r = oai.responses.create(
            model=server.llm,
            instructions=AGENT,
            input=ask,
            previous_response_id=previous,
            max_output_tokens=MAX_TOKENS,
            temperature=0,
            store=True,
        )
        assert r.usage is not None
        turns.append((r.usage.input_tokens, r.usage.input_tokens_details.cached_tokens))
        previous = r.id
    assert_reused(turns)


@pytest.mark.slow
def test_messages_reuses_the_previous_turn(server: RunningServer) -> None:
    client = anthropic.Anthropic(
        base_url=server.base_url, api_key="unused", max_retries=0, timeout=300
    )
    messages: list[Any] = []
    turns = []
    for ask in ASKS:
        messages.append({"role": "user", "content": ask})
        m = client.messages.create(
            model=server.llm,
            system=AGENT,
            messages=messages,
            max_tokens=MAX_TOKENS,
            extra_body={"temperature": 0},
        )
        cached = m.usage.cache_read_input_tokens or 0
        turns.append((m.usage.input_tokens + cached, cached))
        messages.append({"role": "assistant", "content": [b.model_dump() for b in m.content]})
    assert_reused(turns)
