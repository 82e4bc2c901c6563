"""OpenAI Responses API: the request body, and its input items → chat-template messages.

The body is validated at the boundary (bounds as OpenAI's; a bad value is a 400, never a 422);
unknown fields (`include`, `reasoning`, `prompt_cache_key`, `client_metadata`, `service_tier`, ...)
are accepted and ignored. Input items become the chat messages the engine renders:

- `message` items (or role/content dicts without a type) with `input_text`/`output_text` parts;
  `developer` becomes `system`, which every chat template knows;
- `function_call` items become an assistant message's `tool_calls` (merged into the assistant
  message before them), `function_call_output` items `tool` messages: the shapes that
  serving/services/tools.py renders for the model;
- items with no meaning here (`reasoning`, hosted tools' calls such as `web_search_call`) are
  skipped, so that clients that resend their whole history (Codex with `store: false`) work.

Tools, `tool_choice` and `text.format` are rewritten into chat's shapes (`chat_extra`) so that the
chat translation (serving/http/openai/translate.py) validates them and builds the constraint.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.models.store import SamplingDefaults
from serving.engine.base import InvalidRequestError, SamplingParams

# Item types that are skipped in input: they carry nothing the model here can read again.
SKIPPED_ITEMS = {
    "reasoning",  # think-tag output of another turn (reasoning items come with issue 14 item 6)
    "file_search_call",
    "web_search_call",
    "computer_call",
    "computer_call_output",
    "code_interpreter_call",
    "image_generation_call",
    "local_shell_call",
    "local_shell_call_output",
    "mcp_list_tools",
    "mcp_call",
    "item_reference",
}
TEXT_PARTS = {"input_text", "output_text", "text", "summary_text", "refusal"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ResponseRequest(BaseModel):
    """POST /v1/responses (and /v1/responses/input_tokens, which reads the same fields)."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = ""
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_logprobs: int | None = Field(None, ge=0, le=20)
    seed: int | None = None
    metadata: dict[str, str] | None = None
    truncation: Literal["auto", "disabled"] | None = "disabled"
    store: bool | None = True
    stream: bool | None = False
    background: bool | None = False
    include: list[str] | None = None
    user: str | None = None
    speculative: Literal["auto", "off"] = "auto"  # Impetus's extension (docs/api.md)

    def sampling(self, defaults: SamplingDefaults | None) -> SamplingParams:
        """The engine's sampling: this body's fields over the model's registry defaults."""
        params = replace(SamplingParams(), **(defaults.fields() if defaults else {}))
        if self.max_output_tokens is not None:
            params.max_tokens = self.max_output_tokens
        if self.temperature is not None:
            params.temperature = self.temperature
        if self.top_p is not None:
            params.top_p = self.top_p
        params.seed = self.seed
        params.speculative = self.speculative
        if self.top_logprobs:
            params.logprobs, params.top_logprobs = True, self.top_logprobs
        return params

    def text_format(self) -> dict[str, Any]:
        fmt = (self.text or {}).get("format")
        return fmt if isinstance(fmt, dict) else {"type": "text"}

    def file_search(self) -> dict[str, Any] | None:
        """The request's file_search tool, if any."""
        for tool in self.tools or []:
            if tool.get("type") == "file_search":
                return tool
        return None

    def chat_extra(self) -> dict[str, Any]:
        """tools, tool_choice, parallel_tool_calls and response_format in chat's shapes.

        Hosted tools that do not run here (`web_search`, which Codex always sends, and the
        like) are dropped; `file_search` runs before generation (the route), not as a call."""
        functions = [_chat_tool(i, t) for i, t in enumerate(self.tools or [])]
        functions = [f for f in functions if f is not None]
        extra: dict[str, Any] = {}
        if functions:
            extra["tools"] = functions
            extra["parallel_tool_calls"] = self.parallel_tool_calls
            choice = self.tool_choice
            if isinstance(choice, dict):
                if choice.get("type") == "function":
                    choice = {"type": "function", "function": {"name": choice.get("name")}}
                else:  # a hosted tool or an allowed_tools list: the model chooses
                    choice = "auto"
            if choice is not None:
                extra["tool_choice"] = choice
        elif self.tool_choice == "required" or (
            isinstance(self.tool_choice, dict) and self.tool_choice.get("type") == "function"
        ):
            raise InvalidRequestError(
                "tool_choice asks for a function call but tools has no function tools.",
                param="tool_choice",
            )
        fmt = self.text_format()
        kind = fmt.get("type")
        if kind == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": fmt.get("name", "response"),
                    "schema": fmt.get("schema", {}),
                    "strict": fmt.get("strict", False),
                },
            }
        elif kind == "json_object":
            extra["response_format"] = {"type": "json_object"}
        elif kind != "text":
            raise InvalidRequestError(
                'text.format.type must be "text", "json_object" or "json_schema".',
                param="text.format",
            )
        # `reasoning.effort` reaches thinking templates as chat's `reasoning_effort` does
        effort = (self.model_extra or {}).get("reasoning") or {}
        if isinstance(effort, dict) and isinstance(effort.get("effort"), str):
            extra["reasoning_effort"] = effort["effort"]
        return extra


def _chat_tool(i: int, tool: dict[str, Any]) -> dict[str, Any] | None:
    kind = tool.get("type")
    if kind != "function":
        return None
    if "function" in tool:  # chat's shape, sent by a client that mixes the APIs
        return tool
    fn = {k: tool[k] for k in ("name", "description", "parameters") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


# -- input items ----------------------------------------------------------------------------------


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request's input as Responses items, each with an id (what input_items lists)."""
    if isinstance(value, str):
        raw: list[dict[str, Any]] = [{"role": "user", "content": value}] if value else []
    else:
        raw = value
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise InvalidRequestError(f"input[{i}] must be an object.", param="input")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequestError(
                    f"input[{i}].role must be user, assistant, system or developer.",
                    param="input",
                )
            content = item.get("content")
            parts = (
                [
                    {
                        "type": "output_text" if role == "assistant" else "input_text",
                        "text": content,
                    }
                ]
                if isinstance(content, str)
                else content
            )
            if not isinstance(parts, list):
                raise InvalidRequestError(
                    f"input[{i}].content must be a string or a list of parts.", param="input"
                )
            for part in parts:
                if not isinstance(part, dict) or part.get("type") not in TEXT_PARTS:
                    raise InvalidRequestError(
                        f"input[{i}].content: only text parts (input_text, output_text) are "
                        "supported; this server has no image or file inputs.",
                        param="input",
                    )
            out.append(
                {
                    "type": "message",
                    "id": item.get("id") or new_id("msg"),
                    "role": role,
                    "content": parts,
                    **({"status": item["status"]} if "status" in item else {}),
                }
            )
        elif kind == "function_call":
            for key in ("call_id", "name"):
                if not isinstance(item.get(key), str):
                    raise InvalidRequestError(
                        f"input[{i}] (function_call) needs {key}.", param="input"
                    )
            out.append({**item, "id": item.get("id") or new_id("fc")})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise InvalidRequestError(
                    f"input[{i}] (function_call_output) needs call_id.", param="input"
                )
            out.append({**item, "id": item.get("id") or new_id("fco")})
        elif kind in SKIPPED_ITEMS:
            out.append(item)
        else:
            raise InvalidRequestError(
                f"input[{i}] has type {kind!r}; this server reads message, function_call and "
                "function_call_output items.",
                param="input",
            )
    return out


def _text(parts: Any) -> str:
    if isinstance(parts, str):
        return parts
    return "".join(str(p.get("text", "")) for p in parts or [] if isinstance(p, dict))


def to_messages(items: list[dict[str, Any]], instructions: str | None) -> list[dict[str, Any]]:
    """Items (and `instructions`, first) → chat-template messages."""
    out: list[dict[str, Any]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _text(item.get("content"))})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {"role": "tool", "tool_call_id": item["call_id"], "content": _text(item["output"])}
            )
    return out


def history(items: list[dict[str, Any]], output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A stored response's conversation: its input items, then its output items as input."""
    return [*items, *(o for o in output if o.get("type") in ("message", "function_call"))]
