"""Bad input is a 4xx in OpenAI's shape, never a 5xx or a silent wrong answer, on a real in-process
server (the bundled LLM and embedding model, fake LLMs beside them):

- JSON strings are not numbers or booleans (`"stream": "yes"`, `"max_tokens": "10"`), as OpenAI's
  own API answers;
- a lone surrogate (valid JSON, not encodable text) in a prompt, a message or an embedding input;
- token ids outside the embedding model's vocabulary (negative, huge, or just past its end: the
  tokenizer would overflow or silently drop them);
- a request that asks for more sequences (prompts × n) than the server ever takes at once: a 400
  naming the limit, not a 503 that invites a retry that can never succeed.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.serving.servers import RunningServer

pytestmark = pytest.mark.parametrize("server", ["inprocess"], indirect=True)


def _post(server: RunningServer, path: str, body: dict[str, Any]) -> httpx.Response:
    # a raw body, so that a lone surrogate reaches the server as the JSON escape it is
    import json

    data = json.dumps(body, ensure_ascii=True)
    return httpx.post(
        server.base_url + path,
        content=data.encode(),
        headers={"Content-Type": "application/json"},
        timeout=60,
    )


def _invalid(r: httpx.Response, param_part: str) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert param_part in (error.get("param") or "") + error["message"], error
    assert "Traceback" not in r.text
    return error


@pytest.mark.parametrize(
    ("field", "value"),
    [("stream", "yes"), ("max_tokens", "10"), ("temperature", "0.5"), ("n", 1.5), ("seed", "1")],
)
def test_strings_are_not_numbers_or_booleans(server: RunningServer, field: str, value: Any) -> None:
    body = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], field: value}
    _invalid(_post(server, "/v1/chat/completions", body), field)


def test_an_integer_is_still_a_number(server: RunningServer) -> None:
    body = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}]}
    r = _post(server, "/v1/chat/completions", {**body, "temperature": 0, "max_tokens": 2})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a\ud800b"}]}),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        ),
        ("/v1/completions", {"prompt": "x\ud800"}),
        ("/v1/completions", {"prompt": ["fine", "\ud800"]}),
    ],
)
def test_a_lone_surrogate_in_text_is_refused(
    server: RunningServer, path: str, body: dict[str, Any]
) -> None:
    error = _invalid(_post(server, path, {"model": server.llm, "max_tokens": 2, **body}), "")
    assert "surrogate" in error["message"]


@pytest.mark.parametrize(
    "value", ["\ud800", ["ok", "x\udc00"], [-1], [2**40], [[1, 2], [-5]], [30522], [10**9]]
)
def test_embedding_inputs_outside_the_model(server: RunningServer, value: Any) -> None:
    r = _post(server, "/v1/embeddings", {"model": server.embedding_model, "input": value})
    _invalid(r, "input")


def test_embedding_token_ids_inside_the_vocabulary_embed(server: RunningServer) -> None:
    r = _post(server, "/v1/embeddings", {"model": server.embedding_model, "input": [7592, 2088]})
    assert r.status_code == 200, r.text
    assert len(r.json()["data"][0]["embedding"]) == 384


def test_more_sequences_than_the_queue_takes_is_a_400(server: RunningServer) -> None:
    # the in-process test server's serve.queue_limit is 8
    body = {"model": "fake-llm", "prompt": ["a", "b", "c"], "n": 3, "max_tokens": 1}
    error = _invalid(_post(server, "/v1/completions", body), "n")
    assert "9 sequences" in error["message"] and "8" in error["message"]
    chat = {"model": "fake-llm", "messages": [{"role": "user", "content": "hi"}], "n": 9}
    _invalid(_post(server, "/v1/chat/completions", chat), "n")
    ok = {"model": "fake-llm", "prompt": ["a", "b"], "n": 4, "max_tokens": 1}
    assert _post(server, "/v1/completions", ok).status_code == 200


@pytest.mark.parametrize("name", ["../etc", "a/b", "-x", "x" * 200])
def test_an_invalid_collection_name_is_a_400(server: RunningServer, name: str) -> None:
    r = _post(server, "/v1/rag/search", {"query": "ingest", "collection": name})
    _invalid(r, "collection")
    chat = {
        "model": "fake-llm",
        "messages": [{"role": "user", "content": "what does the ingest flow do?"}],
        "max_tokens": 2,
        "rag_mode": True,
        "rag_collection": name,
    }
    _invalid(_post(server, "/v1/chat/completions", chat), "collection")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/completions", {"prompt": "hi"}),
        ("/v1/responses", {"input": "hi"}),
        ("/v1/messages", {"messages": [{"role": "user", "content": "hi"}]}),
    ],
)
def test_speculative_takes_auto_or_off(
    server: RunningServer, path: str, body: dict[str, Any]
) -> None:
    base = {"model": server.llm, "max_tokens": 2, **body}
    if path == "/v1/responses":
        base["max_output_tokens"] = base.pop("max_tokens")
    for value in ("sometimes", True, None):
        r = _post(server, path, {**base, "speculative": value})
        assert r.status_code == 400, r.text
        assert "speculative" in r.text and "Traceback" not in r.text
    assert _post(server, path, {**base, "speculative": "off"}).status_code == 200
