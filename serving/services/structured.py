"""Structured outputs: a request's `response_format` and forced tool calls → one llguidance grammar.

The engine compiles and enforces the grammar while decoding (serving/engine/grammar.py); this
module only decides what the grammar is, as the engine's `Constraint`, once per request (the
OpenAI translation, serving/http/openai/translate.py, calls it). The engine compiles it at request
time, so that a schema llguidance cannot enforce is a 400 naming the unsupported feature before
anything is queued.

- `{"type": "json_object"}`: any JSON object.
- `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: that schema, enforced
  whether or not `strict` is set (a schema we were given is a schema we hold to).
- `tool_choice` "required" or a named function: one (or, with parallel_tool_calls, one or more)
  `<tool_call>` blocks whose JSON is `{"name": <a function>, "arguments": <its parameters>}`
  with the name first, so that the arguments can stream (serving/services/tools.py).
- `tool_choice` "auto" with a `response_format`: either tool calls or the formatted answer.

JSON is generated without optional whitespace: a small model given the freedom of
`[ \\t\\n]*` tends to spend its token budget on it.

Why llguidance: a per-token mask and a schema compile fast enough to need no compile cache
(outlines-core builds an index per schema); arbitrary JSON (`json_object`) and a Lark grammar
with inline `%json` schemas (the tool-call syntax around the arguments) in one format, which
outlines-core's regexes cannot express; GIL released while computing masks; no torch (xgrammar's
package requires it). The structured-output bench (flows/bench/structured.py) measures its cost.
"""

from __future__ import annotations

import json
from typing import Any

from serving.engine.base import Constraint, ConstraintKind, InvalidRequestError
from serving.services.tools import CLOSE, OPEN, ToolPlan

# No optional whitespace; the separators are JSON's compact ones plus a space OpenAI-like.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


def from_request(
    extra: dict[str, Any], tool_plan: ToolPlan | None, *, chat: bool
) -> Constraint | None:
    """The request's constraint, or None when its output is free text."""
    schema = _response_schema(extra.get("response_format"))
    forced_tools = tool_plan is not None and tool_plan.mode == "required"
    if forced_tools:
        assert tool_plan is not None
        return Constraint(_lark_grammar(_tool_calls_rule(tool_plan), None), "tool_calls", "tools")
    if schema is None:
        return None
    kind: ConstraintKind = "json_object" if schema == {"type": "object"} else "json_schema"
    if tool_plan is not None and chat:
        lark = _lark_grammar(f"start: answer | {_tool_calls_rule(tool_plan)}", schema)
        return Constraint(lark, "tool_calls_or_json", "response_format")
    import llguidance

    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        schema,
        defaults=dict(_JSON_OPTIONS),  # type: ignore[arg-type]
    )
    return Constraint(grammar, kind, "response_format")


def _response_schema(fmt: Any) -> dict[str, Any] | None:
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or "type" not in fmt:
        raise InvalidRequestError(
            'response_format must be {"type": "text"}, {"type": "json_object"} or '
            '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.',
            param="response_format",
        )
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise InvalidRequestError(
                'response_format.json_schema must be {"name": ..., "schema": {...}, "strict": ...}.',
                param="response_format",
            )
        schema = spec.get("schema") or {"type": "object"}
        return dict(schema)
    raise InvalidRequestError(
        f"response_format type {kind!r} is not supported; use text, json_object or json_schema.",
        param="response_format",
    )


def _call_schema(function: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"const": function["name"]},
            "arguments": function["parameters"] or {"type": "object"},
        },
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _tool_calls_rule(tool_plan: ToolPlan) -> str:
    """Lark rules for the `<tool_call>` blocks (the rule named `calls`), appended after start."""
    functions = tool_plan.callable_functions()
    alts = " | ".join(f"fn{i}" for i in range(len(functions)))
    repeat = '("\\n" call)*' if tool_plan.parallel else ""
    rules = [
        f"calls: call {repeat}",
        f"call: {json.dumps(OPEN + chr(10))} ({alts}) {json.dumps(chr(10) + CLOSE)}",
    ]
    for i, fn in enumerate(functions):
        schema = {**_call_schema(fn), "x-guidance": _JSON_OPTIONS}
        rules.append(f"fn{i}: %json {json.dumps(schema)}")
    return "calls\n" + "\n".join(rules)


def _lark_grammar(rules: str, answer_schema: dict[str, Any] | None) -> str:
    import llguidance

    lark = rules if rules.startswith("start:") else f"start: {rules}"
    if answer_schema is not None:
        lark += f"\nanswer: %json {json.dumps({**answer_schema, 'x-guidance': _JSON_OPTIONS})}"
    return llguidance.LLMatcher.grammar_from_lark(lark)
