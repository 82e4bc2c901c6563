"""POST /tokenize and /detokenize (vLLM's shapes) against a real server, in every server mode."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.serving.servers import RunningServer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def http(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, timeout=120)


def test_prompt_round_trip(http: httpx.Client, server: RunningServer) -> None:
    r = http.post("/tokenize", json={"model": server.llm, "prompt": "Hello world"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) > 0
    assert body["max_model_len"] == 8192
    back = http.post("/detokenize", json={"model": server.llm, "tokens": body["tokens"]})
    assert back.status_code == 200 and back.json()["prompt"].endswith("Hello world")
    plain = http.post(
        "/tokenize",
        json={"prompt": "Hello world", "add_special_tokens": False, "return_token_strs": True},
    ).json()  # no model: the default LLM
    assert "".join(plain["token_strs"]) == "Hello world"
    assert plain["count"] <= body["count"]


def test_messages_count_as_chat_does(http: httpx.Client, server: RunningServer) -> None:
    r = http.post("/tokenize", json={"model": server.llm, "messages": MESSAGES})
    assert r.status_code == 200, r.text
    chat = openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0
    ).chat.completions.create(model=server.llm, messages=MESSAGES, max_tokens=1)  # type: ignore[arg-type]
    assert chat.usage is not None and r.json()["count"] == chat.usage.prompt_tokens
    text = http.post("/detokenize", json={"tokens": r.json()["tokens"]}).json()["prompt"]
    assert "capital of France" in text  # the chat template's rendering


def test_errors(http: httpx.Client, server: RunningServer) -> None:
    r = http.post("/tokenize", json={"model": "no-such-model", "prompt": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = http.post("/tokenize", json={"model": server.llm})
    assert r.status_code == 400 and "exactly one of prompt and messages" in r.text
    r = http.post("/detokenize", json={"model": server.llm, "tokens": [10**9]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
    r = http.post("/tokenize", json={"model": server.embedding_model, "prompt": "x"})
    assert r.status_code == 400
