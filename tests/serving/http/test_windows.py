"""Context windows, the same on every route (serving/engine/window.py), with the OpenAI SDK in
every server mode: /v1/models says each model's window, a prompt longer than it is a 400
`context_length_exceeded` naming both numbers, a max_tokens past it is clamped (finish
`length`), never refused.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from serving.engine.window import ContextLengthError, fit_window
from tests.serving.servers import RunningServer


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300
    )


def test_the_rule() -> None:
    assert fit_window(100, 32000, 8192, model="m", param="messages") == 8092
    assert fit_window(100, 16, 8192, model="m", param="messages") == 16
    with pytest.raises(ContextLengthError) as exc:
        fit_window(8192, 1, 8192, model="m", param="prompt")
    assert "8192" in str(exc.value) and exc.value.param == "prompt"


def _window(client: openai.OpenAI, server: RunningServer) -> int:
    card = client.models.retrieve(server.llm).model_extra or {}
    assert card["context_window"] == card["max_model_len"] == card["max_input_tokens"]
    return int(card["context_window"])


def test_models_say_the_window(client: openai.OpenAI, server: RunningServer) -> None:
    assert _window(client, server) == 8192  # SmolLM2-135M's max_position_embeddings
    embedder = client.models.retrieve(server.embedding_model).model_extra or {}
    assert embedder["context_window"] is None


def test_too_long_a_prompt_is_context_length_exceeded(
    client: openai.OpenAI, server: RunningServer
) -> None:
    window = _window(client, server)
    long = "hello " * (window + 50)
    for call in (
        lambda: client.chat.completions.create(
            model=server.llm, messages=[{"role": "user", "content": long}], max_tokens=4
        ),
        lambda: client.completions.create(model=server.llm, prompt=long, max_tokens=4),
    ):
        with pytest.raises(openai.BadRequestError) as exc:
            call()
        assert exc.value.code == "context_length_exceeded"
        message = exc.value.message
        assert str(window) in message and "context window" in message
        prompt_tokens = int(message.split("The prompt is ")[1].split()[0])
        assert prompt_tokens > window


def test_max_tokens_past_the_window_is_clamped_on_chat(
    client: openai.OpenAI, server: RunningServer
) -> None:
    window = _window(client, server)

    # size the prompt with /tokenize so that 5 tokens are left
    def tokens(text: str) -> int:
        r = httpx.post(
            f"{server.base_url}/tokenize",
            json={"model": server.llm, "messages": [{"role": "user", "content": text}]},
            timeout=60,
        )
        return int(r.json()["count"])

    base = tokens("hello")
    text = "hello" + " hello" * (window - 5 - base)
    text = "hello" + " hello" * (window - 5 - base - (tokens(text) - (window - 5)))
    r = client.chat.completions.create(
        model=server.llm, messages=[{"role": "user", "content": text}], max_tokens=32000
    )
    assert r.usage is not None and r.usage.prompt_tokens == window - 5
    assert 0 < r.usage.completion_tokens <= 5
    assert r.choices[0].finish_reason in ("length", "stop")
    if r.choices[0].finish_reason == "length":
        assert r.usage.total_tokens == window
