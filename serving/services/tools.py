"""Tool calling: which tools a request offers, how they reach the prompt, how calls come back.

Impetus speaks one tool-call syntax, the Hermes/Qwen one, which the model writes as text:

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

- `plan(extra)` reads `tools`, `tool_choice` and `parallel_tool_calls` of a chat request (the
  OpenAI translation, serving/http/openai/translate.py, calls it once per request; it raises
  `InvalidRequestError` for what cannot be served).
- A chat template that renders `tools` itself gets them (`native_tools`, the engine request's
  `tools`). A template without tool support (SmolLM2's) gets Impetus's fallback prompt (`fallback_messages`):
  a system message listing the functions as JSON and asking for the syntax above; earlier
  assistant tool calls and tool results in the conversation are rendered in the same syntax.
- With `tool_choice` "required" or a named function the call is constrained to that syntax and
  the functions' JSON schemas (serving/services/structured.py builds the grammar); with "auto" the model
  may answer in text or call, and whatever it writes in the syntax is parsed.
- `ToolCallStream` turns generated text into OpenAI chat deltas as it arrives: content, then per
  call a first delta with id, type and name and empty arguments, then argument fragments.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from serving.engine.base import InvalidRequestError

OPEN = "<tool_call>"
CLOSE = "</tool_call>"

FALLBACK_PROMPT = (
    "You can call functions. To call one, reply with a JSON object inside <tool_call></tool_call>"
    ' tags, exactly like this:\n<tool_call>\n{"name": "<function name>", "arguments": '
    "{<arguments as JSON>}}\n</tool_call>\n{multi}The functions, as JSON schemas:\n<tools>\n"
    "{tools}\n</tools>"
)


@dataclass(frozen=True)
class ToolPlan:
    """What a chat request asks of tools. `functions` are the OpenAI function definitions the
    model is shown; `forced` narrows the constrained call to one of them (a named tool_choice)."""

    functions: list[dict[str, Any]]
    mode: Literal["auto", "required"]
    parallel: bool = True
    forced: str | None = None

    def callable_functions(self) -> list[dict[str, Any]]:
        if self.forced is None:
            return self.functions
        return [f for f in self.functions if f["name"] == self.forced]


def plan(extra: dict[str, Any]) -> ToolPlan | None:
    """The request's tool plan; None when it offers no tools or `tool_choice` is "none"."""
    tools = extra.get("tools")
    choice = extra.get("tool_choice")
    if tools is None:
        if choice not in (None, "none"):
            raise InvalidRequestError("tool_choice needs tools; add tools.", param="tool_choice")
        return None
    if not isinstance(tools, list) or not tools:
        raise InvalidRequestError("tools must be a non-empty list.", param="tools")
    functions = [_function(i, t) for i, t in enumerate(tools)]
    names = [f["name"] for f in functions]
    if len(set(names)) != len(names):
        raise InvalidRequestError("Tool function names must be unique.", param="tools")
    parallel = extra.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool):
        raise InvalidRequestError(
            "parallel_tool_calls must be a boolean.", param="parallel_tool_calls"
        )
    if choice is None or choice == "auto":
        return ToolPlan(functions, "auto", parallel)
    if choice == "none":
        return None
    if choice == "required":
        return ToolPlan(functions, "required", parallel)
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if name not in names:
            raise InvalidRequestError(
                f"tool_choice names function {name!r}, which is not among tools ({names}).",
                param="tool_choice",
            )
        # A named function is one call of that function (OpenAI's behaviour).
        return ToolPlan(functions, "required", False, forced=name)
    raise InvalidRequestError(
        'tool_choice must be "none", "auto", "required" or '
        '{"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def _function(i: int, tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequestError(
            f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}; only function "
            "tools are supported.",
            param="tools",
        )
    fn = tool.get("function")
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequestError(f"tools[{i}].function needs a name.", param="tools")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", fn["name"]):
        raise InvalidRequestError(
            f"tools[{i}].function.name must be 1-64 letters, digits, _ or -; got {fn['name']!r}.",
            param="tools",
        )
    params = fn.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(params, dict):
        raise InvalidRequestError(
            f"tools[{i}].function.parameters must be a JSON schema object.", param="tools"
        )
    problem = schema_problem(params)
    if problem:
        # checked whatever tool_choice says: "required" compiles the schemas into a grammar and
        # would refuse it, so "auto" must too
        raise InvalidRequestError(
            f"tools[{i}].function.parameters is not a valid JSON schema: {problem}", param="tools"
        )
    out = {"name": fn["name"], "parameters": params}
    if fn.get("description"):
        out["description"] = str(fn["description"])
    return out


def schema_problem(schema: dict[str, Any]) -> str | None:
    """What makes `schema` an invalid JSON schema under its own `$schema` (default 2020-12), or
    None. jsonschema is imported on first use. Agents send the same tools every turn, and
    checking a schema against its meta-schema takes ~0.5 ms: answers are kept by the schema's
    canonical JSON."""
    try:
        key = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):  # not JSON (a caller inside the server): no caching
        return _schema_problem(schema)
    return _cached_schema_problem(key)


def warm() -> None:
    """Import jsonschema and build its meta-schema's validator (22 ms at a server's first
    request with tools, 0.1 ms after): a server calls it while it starts."""
    schema_problem({"type": "object", "properties": {"path": {"type": "string"}}})


@functools.lru_cache(maxsize=512)
def _cached_schema_problem(key: str) -> str | None:
    return _schema_problem(json.loads(key))


def _schema_problem(schema: dict[str, Any]) -> str | None:
    from jsonschema import exceptions, validators

    cls = validators.validator_for(schema, default=validators.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except exceptions.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"{exc.message}" + (f" (at {where})" if where else "")
    return None


def native_tools(tool_plan: ToolPlan) -> list[dict[str, Any]]:
    """The tools as a chat template's `tools=` argument (OpenAI's shape)."""
    return [{"type": "function", "function": f} for f in tool_plan.functions]


def fallback_messages(
    messages: list[dict[str, Any]], tool_plan: ToolPlan | None
) -> list[dict[str, Any]]:
    """Messages for a template without tool support: the tools in a system message (merged
    into the first system message if there is one), past calls and results as text."""
    out: list[dict[str, Any]] = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if m.get("role") == "assistant" and calls:
            text = [m.get("content") or ""]
            for call in calls:
                fn = call.get("function", {})
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    with contextlib.suppress(json.JSONDecodeError):
                        args = json.loads(args)
                body = json.dumps({"name": fn.get("name"), "arguments": args})
                text.append(f"{OPEN}\n{body}\n{CLOSE}")
            m["content"] = "\n".join(t for t in text if t)
        elif m.get("role") == "tool":
            m.pop("tool_call_id", None)
            m["content"] = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
        out.append(m)
    if tool_plan is None:
        return out
    multi = "You may make several calls, one block each.\n" if tool_plan.parallel else ""
    listed = "\n".join(json.dumps(f) for f in tool_plan.callable_functions())
    prompt = FALLBACK_PROMPT.replace("{multi}", multi).replace("{tools}", listed)
    if out and out[0].get("role") in ("system", "developer"):
        out[0] = {**out[0], "role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
    else:
        out.insert(0, {"role": "system", "content": prompt})
    return out


# -- parsing generated text -----------------------------------------------------------------------

_HEAD = re.compile(
    r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ToolCallStream:
    """Generated text in, OpenAI chat `delta` dicts out; `calls` holds the finished calls.

    Text that could begin a `<tool_call>` tag is held back until the next text settles it. A
    call whose JSON starts `{"name": ..., "arguments":` (what the grammar produces) streams its
    arguments as they are generated; any other valid call is emitted whole at its closing tag.
    With `max_calls` reached (parallel_tool_calls false) later calls are dropped.
    """

    max_calls: int | None = None
    calls: list[ToolCall] = field(default_factory=list)
    _buf: str = ""
    _in_call: bool = False
    _call_text: str = ""  # the current call's text after OPEN
    _args_from: int = -1  # where the arguments start in _call_text (streaming), else -1
    _args_sent: int = 0  # characters of the arguments already emitted
    _args_done: bool = False
    _dropping: bool = False

    def feed(self, text: str) -> list[dict[str, Any]]:
        self._buf += text
        out: list[dict[str, Any]] = []
        while self._buf:
            if not self._in_call:
                at = self._buf.find(OPEN)
                if at < 0:
                    keep = _partial_suffix(self._buf, OPEN)
                    emit, self._buf = (
                        self._buf[: len(self._buf) - keep],
                        self._buf[len(self._buf) - keep :],
                    )
                    self._content(out, emit)
                    break
                self._content(out, self._buf[:at])
                self._buf = self._buf[at + len(OPEN) :]
                self._start_call()
                continue
            self._call_text += self._buf
            self._buf = ""
            end = self._call_text.find(CLOSE)
            if end < 0:
                self._stream_args(out, final=False)
                # keep a possible partial CLOSE out of the call text's scanned region
                break
            rest = self._call_text[end + len(CLOSE) :]
            self._call_text = self._call_text[:end]
            self._end_call(out)
            self._buf = rest.lstrip("\n") if self.calls else rest
        return out

    def finish(self) -> list[dict[str, Any]]:
        """Flush at the end of the sequence: a call left open is closed if its JSON is whole."""
        out: list[dict[str, Any]] = []
        if self._in_call:
            self._end_call(out)
        elif self._buf:
            self._content(out, self._buf)
        self._buf = ""
        return out

    def _content(self, out: list[dict[str, Any]], text: str) -> None:
        if text and not (self.calls and not text.strip()):  # no blank lines between calls
            out.append({"content": text})

    def _start_call(self) -> None:
        self._in_call = True
        self._call_text = ""
        self._args_from = -1
        self._args_sent = 0
        self._args_done = False
        self._dropping = self.max_calls is not None and len(self.calls) >= self.max_calls

    def _stream_args(self, out: list[dict[str, Any]], final: bool) -> None:
        if self._dropping or self._args_done:
            return
        text = self._call_text
        if self._args_from < 0:
            m = _HEAD.match(text)
            if m is None or m.end() >= len(text) or text[m.end()] != "{":
                return
            try:
                name = json.loads(f'"{m.group(1)}"')
            except json.JSONDecodeError:
                return
            self._args_from = m.end()
            call = ToolCall(new_call_id(), name)
            self.calls.append(call)
            out.append(
                {
                    "tool_calls": [
                        {
                            "index": len(self.calls) - 1,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            )
        # Emit the arguments object up to what is scanned, and stop at its closing brace.
        start = self._args_from + self._args_sent
        end = _json_value_end(text, self._args_from)
        upto = end if end is not None else len(text)
        if not final and end is None:
            # hold back a trailing partial closing tag (it can only follow the object)
            upto -= _partial_suffix(text[start:upto], CLOSE)
        frag = text[start:upto]
        if frag:
            self.calls[-1].arguments += frag
            self._args_sent += len(frag)
            out.append(
                {"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": frag}}]}
            )
        if end is not None:
            self._args_done = True

    def _end_call(self, out: list[dict[str, Any]]) -> None:
        self._in_call = False
        if self._dropping:
            return
        self._stream_args(out, final=True)
        if self._args_from >= 0:
            return
        # Not in the streamable shape: emit it whole if it is a valid call, else as text.
        try:
            obj = json.loads(self._call_text)
            name = obj["name"]
            args = obj.get("arguments", obj.get("parameters", {}))
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            self._content(out, f"{OPEN}{self._call_text}")
            return
        call = ToolCall(new_call_id(), name, json.dumps(args))
        self.calls.append(call)
        out.append({"tool_calls": [{"index": len(self.calls) - 1, **call.to_openai()}]})


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of buf that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:n]):
            return n
    return 0


def _json_value_end(text: str, start: int) -> int | None:
    """Index just past the JSON object or array starting at text[start], or None if the text
    ends first. Strings and escapes are respected."""
    depth = 0
    in_str = esc = False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def parse_message(text: str, max_calls: int | None = None) -> tuple[str | None, list[ToolCall]]:
    """A finished assistant text → (content, tool calls)."""
    stream = ToolCallStream(max_calls=max_calls)
    deltas = stream.feed(text) + stream.finish()
    content = "".join(d.get("content", "") for d in deltas)
    if stream.calls:
        return (content.strip() or None), stream.calls
    return content, []


def finish_message(
    text: str, finish_reason: str | None, tool_plan: ToolPlan | None
) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """(content, tool_calls, finish_reason) of a finished chat choice. A sequence cut off by
    max_tokens keeps the call it was writing, with the arguments written so far (as a stream
    delivers them, and as OpenAI answers): `finish_reason` stays "length", which tells the
    client that the last call's arguments may be incomplete JSON."""
    if tool_plan is None:
        return text, None, finish_reason
    content, calls = parse_message(text, max_calls=None if tool_plan.parallel else 1)
    if not calls:
        return (content or ""), None, finish_reason
    reason = "tool_calls" if finish_reason == "stop" else finish_reason
    return content, [c.to_openai() for c in calls], reason


def stream_for(tool_plan: ToolPlan | None) -> ToolCallStream | None:
    """A choice's tool-call stream (None: its text streams as content)."""
    if tool_plan is None:
        return None
    return ToolCallStream(max_calls=None if tool_plan.parallel else 1)
