"""Reasoning split out of a thinking model's text (serving/http/reasoning.py): the splitter on
its own, then through chat completions (`reasoning_content`) and Messages (`thinking` blocks),
streamed and whole, with a fake engine that thinks in tags (SmolLM2 does not), in process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from pipelines.settings import ReasoningSettings, ReasoningTags, load_settings
from serving.engine.base import Delta, Engine, GenerationRequest
from serving.engine.manager import ModelManager
from serving.http import reasoning
from serving.http.app import create_app
from serving.http.reasoning import ReasoningFormat, ReasoningSplitter
from tests.serving.fakes import FakeEmbedder, FakeEngine, StoreWithFakes
from tests.serving.servers import uvicorn_server

THOUGHT = "The user greets me; alpha then bravo."
ANSWER = "Hello there, friend."
TEXT = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"


def _pieces(chunks: list[str], fmt: ReasoningFormat) -> list[tuple[str, str]]:
    splitter = ReasoningSplitter(fmt)
    out = [p for c in chunks for p in splitter.feed(c)] + splitter.finish()
    merged: list[tuple[str, str]] = []
    for kind, text in out:
        if merged and merged[-1][0] == kind:
            merged[-1] = (kind, merged[-1][1] + text)
        else:
            merged.append((kind, text))
    return merged


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 100])
def test_tags_that_straddle_deltas(size: int) -> None:
    chunks = [TEXT[i : i + size] for i in range(0, len(TEXT), size)]
    assert _pieces(chunks, ReasoningFormat()) == [
        ("reasoning", THOUGHT + "\n"),
        ("content", ANSWER),
    ]


def test_split_formats_and_effort() -> None:
    assert reasoning.split(TEXT, None) == (None, TEXT)
    assert reasoning.split(TEXT, ReasoningFormat()) == (THOUGHT + "\n", ANSWER)
    assert reasoning.split("no tags <thi", ReasoningFormat()) == (None, "no tags <thi")
    # a template that opens the tag in the prompt (DeepSeek-R1's): the output starts inside
    opened = ReasoningFormat(starts_open=True)
    assert reasoning.split(f"{THOUGHT}</think>{ANSWER}", opened) == (THOUGHT, ANSWER)
    # cut off by max_tokens inside the reasoning: all reasoning, no answer
    assert reasoning.split("<think>still going", ReasoningFormat()) == ("still going", "")
    mistral = ReasoningFormat("[THINK]", "[/THINK]")
    assert reasoning.split(f"[THINK]{THOUGHT}[/THINK]{ANSWER}", mistral) == (THOUGHT, ANSWER)
    settings = ReasoningSettings(tags=[ReasoningTags(match="qwen3*")])
    assert reasoning.format_for(settings, "Qwen3-0.6B") == ReasoningFormat()
    assert reasoning.format_for(settings, "smollm2-135m-instruct") is None
    assert reasoning.template_kwargs("high") == {
        "reasoning_effort": "high",
        "enable_thinking": True,
    }
    assert reasoning.template_kwargs("none")["enable_thinking"] is False
    assert reasoning.template_kwargs(None, False) == {"enable_thinking": False}
    assert reasoning.template_kwargs() == {}


@dataclass
class Thinker(FakeEngine):
    """A fake engine that writes TEXT three characters a delta, and records its requests."""

    seen: list[GenerationRequest] = field(default_factory=list)

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.seen.append(request)
        return self._think(request)

    async def _think(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        pieces = [TEXT[i : i + 3] for i in range(0, len(TEXT), 3)]
        for n, piece in enumerate(pieces, 1):
            last = n == len(pieces)
            yield Delta(
                text=piece,
                token_ids=[n],
                completion_tokens=n,
                finish_reason="stop" if last else None,
                prompt_tokens=self.count_tokens(request) if last else 0,
            )


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Thinker]]:
    tmp = tmp_path_factory.mktemp("reasoning")
    # the tags are settings: this fake model's family thinks in <think> tags
    settings = load_settings(
        data_dir=tmp / "state",
        serve={"keepalive_s": 0.5},
        reasoning={"tags": [{"match": "fake-thinker*"}]},
    )
    engine = Thinker("fake-thinker")

    def factory(name: str, path: Path) -> Engine:
        return engine

    manager = ModelManager(
        StoreWithFakes(tmp, llms=["fake-thinker"], builtins=False),
        factory,
        default_model="fake-thinker",
    )
    app = create_app(settings, manager=manager, embedder_factory=FakeEmbedder)
    with uvicorn_server(app) as url:
        yield url, engine


def _openai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_chat_reasoning_content(thinker: tuple[str, Thinker]) -> None:
    url, engine = thinker
    hello: Any = [{"role": "user", "content": "hi"}]
    r = _openai(url).chat.completions.create(
        model="fake-thinker", messages=hello, reasoning_effort="low"
    )
    message = r.choices[0].message
    assert message.content == ANSWER
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == extra["reasoning"] == THOUGHT + "\n"
    assert engine.seen[-1].template_kwargs == {"reasoning_effort": "low", "enable_thinking": True}
    stream = _openai(url).chat.completions.create(model="fake-thinker", messages=hello, stream=True)
    thought, content = "", ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        thought += (delta.model_extra or {}).get("reasoning_content") or ""
        content += delta.content or ""
    assert (thought, content) == (THOUGHT + "\n", ANSWER)


def test_messages_thinking_blocks(thinker: tuple[str, Thinker]) -> None:
    url, engine = thinker
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0)
    hello: Any = [{"role": "user", "content": "hi"}]
    m = client.messages.create(
        model="fake-thinker",
        messages=hello,
        max_tokens=100,
        thinking={"type": "adaptive"},  # type: ignore[typeddict-item]
        extra_body={"output_config": {"effort": "high"}},
    )
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert m.content[0].thinking == THOUGHT + "\n"  # type: ignore[union-attr]
    assert m.content[1].text == ANSWER  # type: ignore[union-attr]
    assert engine.seen[-1].template_kwargs == {"reasoning_effort": "high", "enable_thinking": True}
    with client.messages.stream(model="fake-thinker", messages=hello, max_tokens=100) as stream:
        deltas = [e.delta for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    thought = "".join(d.thinking for d in deltas if d.type == "thinking_delta")
    text = "".join(d.text for d in deltas if d.type == "text_delta")
    assert (thought, text) == (THOUGHT + "\n", ANSWER)
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.stop_reason == "end_turn"
