"""Anthropic Messages bodies → the chat route's plan and engine messages; engine output → blocks.

The engine never sees Anthropic's wire, and this module adds no second tool or constrained-
decoding path: it rewrites the body into what the chat completions translation reads (OpenAI
function tools, `tool_choice`, chat-template messages with `tool_calls` and `tool` results) and
hands it to serving/http/openai/translate.py. On the way out, `content_blocks` and `BlockStream`
turn the reasoning splitter's pieces (serving/http/reasoning.py) and the tool-call stream's
deltas (serving/services/tools.py) into `thinking`, `text` and `tool_use` blocks.

    user   [tool_result…, text…]      → {"role": "tool", …}…, {"role": "user", "content": text}
    assistant [thinking, text, tool_use…] → {"role": "assistant", "content", "tool_calls": […]}
    system (top level, and `system` entries inside messages) → one leading system message
"""

from __future__ import annotations

import json
from typing import Any

from serving.engine.base import InvalidRequestError
from serving.http import reasoning
from serving.http.anthropic.schemas import MessagesFields
from serving.http.openai import translate
from serving.http.openai.translate import ChatPlan
from serving.services import tools
from serving.services.tools import ToolPlan

# Block kinds that carry nothing the model can read here: accepted, skipped.
_SKIPPED = ("thinking", "redacted_thinking")


def _text(content: Any, where: str) -> str:
    """The text of a string or a list of text blocks (tool_result content, system)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequestError(f"{where} must be a string or a list of blocks.", param=where)
    parts = []
    for j, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        elif kind not in _SKIPPED:
            raise InvalidRequestError(
                f"{where}[{j}] is a {kind!r} block; only text blocks are supported here.",
                param=where,
            )
    return "\n".join(parts)


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_turn(i: int, content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    texts: list[str] = []
    for j, block in enumerate(_blocks(content)):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text([block], where))
        elif kind == "tool_result":
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequestError(f"{where}.tool_use_id is missing.", param=where)
            text = _text(block.get("content"), f"{where}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind not in _SKIPPED:
            raise InvalidRequestError(
                f"{where} is a {kind!r} block; this server reads text, tool_use and tool_result "
                "blocks (no images or documents).",
                param=where,
            )
    out = results
    if texts or not results:
        out.append({"role": "user", "content": "\n".join(texts)})
    return out


def _assistant_turn(i: int, content: str | list[dict[str, Any]]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(_blocks(content)):
        where = f"messages[{i}].content[{j}]"
        kind = block.get("type")
        if kind == "text":
            texts.append(_text([block], where))
        elif kind == "tool_use":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("id"), str):
                raise InvalidRequestError(f"{where} needs an id and a name.", param=where)
            arguments = json.dumps(block.get("input") or {})
            calls.append(
                {
                    "id": block["id"],
                    "type": "function",
                    "function": {"name": block["name"], "arguments": arguments},
                }
            )
        elif kind not in _SKIPPED:
            raise InvalidRequestError(
                f"{where} is a {kind!r} block; assistant turns hold text, thinking and tool_use.",
                param=where,
            )
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        out["tool_calls"] = calls
    return out


def engine_messages(body: MessagesFields) -> list[dict[str, Any]]:
    """The conversation as chat-template messages."""
    system = [_text(body.system, "system")] if body.system else []
    turns: list[dict[str, Any]] = []
    for i, m in enumerate(body.messages):
        if m.role == "system":  # Claude Code's: folded into the one system message templates take
            system.append(_text(m.content, f"messages[{i}].content"))
        elif m.role == "user":
            turns += _user_turn(i, m.content)
        else:
            turns.append(_assistant_turn(i, m.content))
    if not turns:
        raise InvalidRequestError(
            "messages must hold at least one user or assistant message.", param="messages"
        )
    text = "\n\n".join(s for s in system if s)
    return ([{"role": "system", "content": text}] if text else []) + turns


def openai_tool_fields(body: MessagesFields) -> dict[str, Any]:
    """`tools`, `tool_choice` and `parallel_tool_calls` in the chat completions' shape."""
    out: dict[str, Any] = {}
    if body.tools:
        functions = []
        for i, tool in enumerate(body.tools):
            if tool.type not in (None, "custom") or tool.input_schema is None:
                raise InvalidRequestError(
                    f"tools[{i}] ({tool.name!r}) is not a custom tool with an input_schema; "
                    "Anthropic's server tools are not served here.",
                    param="tools",
                )
            fn: dict[str, Any] = {"name": tool.name, "parameters": tool.input_schema}
            if tool.description:
                fn["description"] = tool.description
            functions.append({"type": "function", "function": fn})
        out["tools"] = functions
    choice = body.tool_choice
    if choice is None:
        return out
    if choice.type == "tool" and not choice.name:
        raise InvalidRequestError('tool_choice {"type": "tool"} needs a name.', param="tool_choice")
    if choice.type == "none":
        out["tool_choice"] = "none"
    elif body.tools:  # without tools, any other choice asks for nothing
        out["tool_choice"] = {
            "auto": "auto",
            "any": "required",
            "tool": {"type": "function", "function": {"name": choice.name}},
        }[choice.type]
        out["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return out


def plan(body: MessagesFields) -> ChatPlan:
    """The chat plan (tools, constraint, template variables) of a Messages body."""
    chat = translate.chat_plan(openai_tool_fields(body))
    effort = body.output_config.effort if body.output_config else None
    enabled = body.thinking.type != "disabled" if body.thinking else None
    kwargs = reasoning.template_kwargs(effort, enabled)
    return ChatPlan(chat.tool_plan, chat.constraint, kwargs)


def stop_reason(finish_reason: str | None, stop_sequence: str | None, tool_use: bool) -> str:
    """The engine's finish reason in Anthropic's words."""
    if tool_use and finish_reason in ("stop", "tool_calls"):
        return "tool_use"
    if finish_reason == "length":
        return "max_tokens"
    if stop_sequence is not None:
        return "stop_sequence"
    return "end_turn"


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        value = json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def content_blocks(
    thought: str | None, content: str | None, calls: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """A finished answer's blocks: thinking, text, tool_use (an empty text block if none)."""
    blocks: list[dict[str, Any]] = []
    if thought:
        blocks.append({"type": "thinking", "thinking": thought, "signature": ""})
    if content or not (calls or blocks):
        blocks.append({"type": "text", "text": content or ""})
    for call in calls or []:
        fn = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": fn["name"],
                "input": _tool_input(fn["arguments"]),
            }
        )
    return blocks


class BlockStream:
    """One answer's text, streamed as Anthropic content-block events.

    Feed it the engine's text; it splits out reasoning (`thinking` blocks, `thinking_delta`),
    then tool calls (`tool_use` blocks, `input_json_delta`) from the rest (`text` blocks,
    `text_delta`), opening and closing blocks as the kind changes.
    """

    def __init__(self, think: reasoning.ReasoningFormat | None, tool_plan: ToolPlan | None):
        self._splitter = reasoning.ReasoningSplitter(think) if think else None
        self._calls = tools.stream_for(tool_plan)
        self._index = -1
        self._open: str | None = None  # the kind of the open block

    @property
    def tool_use(self) -> bool:
        return bool(self._calls and self._calls.calls)

    def feed(self, text: str, final: bool = False) -> list[dict[str, Any]]:
        pieces: list[reasoning.Piece] = []
        if self._splitter is None:
            pieces = [("content", text)]
        else:
            pieces = self._splitter.feed(text) + (self._splitter.finish() if final else [])
        out: list[dict[str, Any]] = []
        for kind, piece in pieces:
            if kind == "reasoning":
                self._block(out, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(self._delta({"type": "thinking_delta", "thinking": piece}))
            else:
                self._content(out, piece)
        if final:
            if self._calls is not None:
                for part in self._calls.finish():
                    self._part(out, part)
            if self._index < 0:  # an empty answer is one empty text block
                self._block(out, "text", {"type": "text", "text": ""})
            self._close(out)
        return out

    def _content(self, out: list[dict[str, Any]], text: str) -> None:
        if self._calls is None:
            if text:
                self._block(out, "text", {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            return
        for part in self._calls.feed(text):
            self._part(out, part)

    def _part(self, out: list[dict[str, Any]], part: dict[str, Any]) -> None:
        """One chat delta of the tool-call stream (serving/services/tools.py)."""
        if part.get("content"):
            self._block(out, "text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": part["content"]}))
        for call in part.get("tool_calls", ()):
            fn = call.get("function", {})
            if "id" in call:  # a new call: its own block
                self._close(out)
                block = {"type": "tool_use", "id": call["id"], "name": fn["name"], "input": {}}
                self._block(out, "tool_use", block)
            if fn.get("arguments"):
                out.append(
                    self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
                )

    def _block(self, out: list[dict[str, Any]], kind: str, block: dict[str, Any]) -> None:
        if self._open == kind and kind != "tool_use":
            return
        self._close(out)
        self._index += 1
        self._open = kind
        out.append({"type": "content_block_start", "index": self._index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self._index, "delta": delta}

    def _close(self, out: list[dict[str, Any]]) -> None:
        if self._open is not None:
            out.append({"type": "content_block_stop", "index": self._index})
            self._open = None
