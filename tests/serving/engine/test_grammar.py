"""The grammar processor and matchers (serving/engine/grammar.py) and grammars
(serving/services/structured.py).

A small decode loop stands in for mlx-lm's batch step (every row's processors, then every
row's sampler, as `GenerationBatch._step` calls them) and feeds random logits, so that the masks
alone must keep each constrained row valid, whatever the "model" prefers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

mx = pytest.importorskip("mlx.core")
llguidance = pytest.importorskip("llguidance")

from serving.engine.base import InvalidRequestError, SamplingParams  # noqa: E402
from serving.engine.grammar import GrammarStep, compile_matcher, constrain  # noqa: E402
from serving.engine.sampling import KeyedSampler  # noqa: E402
from serving.services import structured, tools  # noqa: E402

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["age"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "tags", "owner"],
    "additionalProperties": False,
}
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "lookup",
        "parameters": {
            "type": "object",
            "properties": {"q": {"type": "string", "maxLength": 10}},
            "required": ["q"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def hf_tokenizer(ready_models_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ready_models_dir / "smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def ll_tokenizer(hf_tokenizer: Any) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(hf_tokenizer)


def _schema_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    }


def _decode(
    ll_tokenizer: Any,
    extras: list[dict[str, Any] | None],
    *,
    seed: int,
    max_tokens: int = 400,
    model_vocab: int | None = None,
    temperature: float = 0.0,
) -> list[list[int]]:
    """Decode a batch of rows (None: unconstrained) on random logits until each stops."""
    eos = ll_tokenizer.eos_token
    vocab = model_vocab or ll_tokenizer.vocab_size
    step = GrammarStep(vocab, [eos])
    prompt = [1, 2, 3]
    rows: list[dict[str, Any]] = []
    for i, extra in enumerate(extras):
        row: dict[str, Any] = {"out": [], "done": False, "proc": None, "sampler": None}
        if extra is not None:
            plan = tools.plan(extra)
            c = structured.from_request(extra, plan, chat=True)
            assert c is not None
            matcher = compile_matcher(c, ll_tokenizer)
            inner = (
                KeyedSampler(SamplingParams(temperature=temperature), seed + i, vocab)
                if temperature
                else None
            )
            row["proc"], row["sampler"] = constrain(
                matcher, ll_tokenizer.vocab_size, len(prompt), step, inner
            )
        rows.append(row)
    key = mx.random.key(seed)
    for _ in range(max_tokens):
        live = [r for r in rows if not r["done"]]
        if not live:
            break
        key, sub = mx.random.split(key)
        logits = mx.random.normal((len(live), vocab), key=sub) * 5
        processed = []
        for e, r in enumerate(live):  # processors first, as mlx-lm calls them
            row_logits = logits[e : e + 1]
            if r["proc"] is not None:
                row_logits = r["proc"](mx.array(prompt + r["out"]), row_logits)
            processed.append(row_logits)
        logprobs = mx.concatenate(processed) - mx.logsumexp(mx.concatenate(processed), -1, True)
        for e, r in enumerate(live):  # then samplers
            if r["proc"] is not None and r["proc"].matcher.is_stopped():
                r["done"] = True  # the engine ends a sequence whose grammar is complete
                continue
            s = r["sampler"] or (lambda x: mx.argmax(x, axis=-1))
            tok = int(s(logprobs[e : e + 1]).item())
            if tok == eos:
                r["done"] = True
            else:
                r["out"].append(tok)
    return [r["out"] for r in rows]


def test_constrained_rows_validate_next_to_free_rows(ll_tokenizer: Any) -> None:
    extras = [
        _schema_format(SCHEMA),
        None,
        {"response_format": {"type": "json_object"}},
        _schema_format(SCHEMA),
        None,
    ]
    outs = _decode(ll_tokenizer, extras, seed=1, max_tokens=200)
    for extra, out in zip(extras, outs, strict=True):
        if extra is None:
            assert len(out) == 200  # random logits never pick EOS on their own: not constrained
            continue
        text = ll_tokenizer.decode_str(out)
        if "json_schema" in json.dumps(extra):
            jsonschema.validate(json.loads(text), SCHEMA)
        else:
            assert text.startswith("{")  # any object: may be cut off by max_tokens


@pytest.mark.parametrize("seed", range(5))
def test_sampled_rows_validate(ll_tokenizer: Any, seed: int) -> None:
    (out,) = _decode(ll_tokenizer, [_schema_format(SCHEMA)], seed=seed, temperature=1.0)
    jsonschema.validate(json.loads(ll_tokenizer.decode_str(out)), SCHEMA)


def test_forced_tool_call_has_the_syntax_and_the_schema(ll_tokenizer: Any) -> None:
    extra = {"tools": [TOOL], "tool_choice": "required", "parallel_tool_calls": False}
    (out,) = _decode(ll_tokenizer, [extra], seed=3)
    text = ll_tokenizer.decode_str(out)
    content, calls, reason = tools.finish_message(text, "stop", tools.plan(extra))
    assert reason == "tool_calls" and content is None and calls is not None
    (call,) = calls
    assert call["function"]["name"] == "lookup"
    jsonschema.validate(json.loads(call["function"]["arguments"]), TOOL["function"]["parameters"])


def test_model_vocab_wider_than_the_tokenizer(ll_tokenizer: Any) -> None:
    (out,) = _decode(
        ll_tokenizer, [_schema_format(SCHEMA)], seed=4, model_vocab=ll_tokenizer.vocab_size + 64
    )
    assert max(out) < ll_tokenizer.vocab_size
    jsonschema.validate(json.loads(ll_tokenizer.decode_str(out)), SCHEMA)


def test_a_finished_or_broken_matcher_allows_only_eos(ll_tokenizer: Any, hf_tokenizer: Any) -> None:
    eos = ll_tokenizer.eos_token
    step = GrammarStep(ll_tokenizer.vocab_size, [eos])
    c = structured.from_request({"response_format": {"type": "json_object"}}, None, chat=True)
    assert c is not None
    matcher = compile_matcher(c, ll_tokenizer)
    proc, sampler = constrain(matcher, ll_tokenizer.vocab_size, 0, step, None)
    ids = hf_tokenizer.encode("{}")
    logits = mx.zeros((1, ll_tokenizer.vocab_size))
    proc(mx.array(ids), logits)
    assert matcher.is_stopped()
    assert sampler(logits).item() == eos


def test_unsupported_schema_names_the_feature(ll_tokenizer: Any) -> None:
    schema = {"type": "object", "dependentSchemas": {"a": {}}}
    c = structured.from_request(_schema_format(schema), None, chat=True)
    assert c is not None
    with pytest.raises(InvalidRequestError) as info:
        compile_matcher(c, ll_tokenizer)
    assert info.value.param == "response_format" and "dependentSchemas" in str(info.value)


@pytest.mark.parametrize(
    "fmt",
    [{"type": "xml"}, {"type": "json_schema", "json_schema": "nope"}, "json", {"schema": {}}],
)
def test_bad_response_format_is_invalid(fmt: Any) -> None:
    with pytest.raises(InvalidRequestError):
        structured.from_request({"response_format": fmt}, None, chat=True)


def test_constraint_kinds() -> None:
    assert structured.from_request({}, None, chat=True) is None
    assert structured.from_request({"response_format": {"type": "text"}}, None, chat=True) is None
    auto = tools.plan({"tools": [TOOL]})
    assert structured.from_request({"tools": [TOOL]}, auto, chat=True) is None
    both = structured.from_request({"response_format": {"type": "json_object"}}, auto, chat=True)
    assert both is not None and both.kind == "tool_calls_or_json"
    forced = tools.plan({"tools": [TOOL], "tool_choice": "required"})
    c = structured.from_request({}, forced, chat=True)
    assert c is not None and c.kind == "tool_calls" and c.param == "tools"
