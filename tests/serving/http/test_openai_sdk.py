"""The OpenAI SDK against a real server on 127.0.0.1, in every server mode (conftest.SERVER_MODES).

The assertions hold for any engine: outputs are compared with other outputs of the same server
(temperature 0 or a seed), never with fixed text. Tests that need the fake models (queue
overflow) skip on servers that do not serve them.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.serving.servers import RunningServer

PROMPT: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "List the days of the week, one per line."}
]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def _chat(client: openai.OpenAI, server: RunningServer, **kw: Any) -> Any:
    args: dict[str, Any] = {"model": server.llm, "messages": PROMPT, "max_tokens": 8}
    return client.chat.completions.create(**{**args, **kw})


def test_models_lists_the_registry(client: openai.OpenAI, server: RunningServer) -> None:
    models = {m.id: m for m in client.models.list()}
    assert {server.llm, server.embedding_model} <= set(models)
    # the defaults a request without temperature gets (Impetus's extra field)
    defaults = (models[server.llm].model_extra or {})["sampling_defaults"]
    assert defaults == {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}


def test_chat_non_stream(client: openai.OpenAI, server: RunningServer) -> None:
    r = _chat(client, server, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == server.llm
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert r.usage is not None and r.usage.prompt_tokens > 0
    assert 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_stream_with_usage_matches_non_stream(client: openai.OpenAI, server: RunningServer) -> None:
    full = _chat(client, server, temperature=0)
    chunks = list(
        _chat(client, server, temperature=0, stream=True, stream_options={"include_usage": True})
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    reasons = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert reasons == [full.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_stop_sequence_is_not_emitted(client: openai.OpenAI, server: RunningServer) -> None:
    text = _chat(client, server, temperature=0, max_tokens=16).choices[0].message.content
    words = text.split()
    if len(words) < 2:
        pytest.skip(f"the model said too little to pick a stop word: {text!r}")
    stop = words[1]
    r = _chat(client, server, temperature=0, max_tokens=16, stop=[stop])
    assert r.choices[0].message.content == text[: text.index(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_max_tokens_and_max_completion_tokens_give_length(
    client: openai.OpenAI, server: RunningServer
) -> None:
    for kw in ({"max_tokens": 3}, {"max_tokens": None, "max_completion_tokens": 3}):
        r = _chat(client, server, temperature=0, **kw)
        assert r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens == 3


def test_seed_is_reproducible_while_other_requests_run(
    client: openai.OpenAI, server: RunningServer
) -> None:
    def seeded() -> str:
        r = _chat(client, server, temperature=1.0, seed=1234, max_tokens=12)
        return r.choices[0].message.content

    def noise() -> None:
        for _ in _chat(client, server, temperature=1.0, max_tokens=24, stream=True):
            pass

    alone = seeded()
    with ThreadPoolExecutor(4) as pool:
        busy = [pool.submit(noise) for _ in range(3)]
        during = pool.submit(seeded)
        assert during.result() == alone
        for f in busy:
            f.result()


def test_n_choices(client: openai.OpenAI, server: RunningServer) -> None:
    r = _chat(client, server, n=2, temperature=1.0, seed=7)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(c.finish_reason in ("stop", "length") for c in r.choices)

    finished: dict[int, str] = {}
    for chunk in _chat(client, server, n=2, temperature=1.0, seed=7, stream=True):
        for c in chunk.choices:
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert sorted(finished) == [0, 1]


def test_logprobs(client: openai.OpenAI, server: RunningServer) -> None:
    r = _chat(client, server, temperature=0, logprobs=True, top_logprobs=2, max_tokens=4)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 2
        assert t.bytes is not None

    streamed = []
    for chunk in _chat(
        client, server, temperature=0, logprobs=True, top_logprobs=1, max_tokens=4, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed.extend(chunk.choices[0].logprobs.content)
    assert [t.token for t in streamed] == [t.token for t in content]


def test_completions(client: openai.OpenAI, server: RunningServer) -> None:
    r = client.completions.create(
        model=server.llm, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2
    )
    assert r.object == "text_completion"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].logprobs is not None
    assert "".join(r.choices[0].logprobs.tokens or []) == r.choices[0].text
    stream = client.completions.create(
        model=server.llm, prompt="Once upon a time", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == r.choices[0].text


def test_embeddings_float_base64_and_dimensions(
    client: openai.OpenAI, server: RunningServer
) -> None:
    texts = ["The cat sat on the mat.", "Impetus serves local models."]
    full = client.embeddings.create(
        model=server.embedding_model, input=texts, encoding_format="float"
    )
    assert [d.index for d in full.data] == [0, 1]
    assert full.usage.prompt_tokens > 0
    vecs = np.array([d.embedding for d in full.data], dtype=np.float32)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-3)

    b64 = client.embeddings.create(
        model=server.embedding_model, input=texts, encoding_format="base64"
    )
    decoded = np.stack([np.frombuffer(base64.b64decode(str(d.embedding)), "<f4") for d in b64.data])
    assert np.allclose(decoded, vecs, atol=1e-5)

    small = client.embeddings.create(
        model=server.embedding_model, input=texts[0], dimensions=64, encoding_format="float"
    )
    v = np.array(small.data[0].embedding)
    assert v.shape == (64,) and np.isclose(np.linalg.norm(v), 1.0, atol=1e-4)
    prefix = vecs[0, :64] / np.linalg.norm(vecs[0, :64])
    assert np.allclose(v, prefix, atol=1e-4)


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=PROMPT, max_tokens=2)
    assert exc.value.status_code == 404 and exc.value.code == "model_not_found"


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -1},
        {"messages": []},
        {"top_logprobs": 3},  # without logprobs
        {"logit_bias": {"not-a-token": 1}},
        {"n": 0},
    ],
)
def test_bad_parameters_are_400(
    client: openai.OpenAI, server: RunningServer, bad: dict[str, Any]
) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        _chat(client, server, **bad)
    assert exc.value.status_code == 400 and exc.value.code == "invalid_request"


def test_missing_messages_is_400(server: RunningServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": server.llm}, timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_request"
    assert r.json()["error"]["param"] == "messages"


def _wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def test_client_disconnect_mid_stream_then_server_still_serves(
    client: openai.OpenAI, server: RunningServer
) -> None:
    models = [server.llm] + (["fake-slow"] if server.fake_models else [])
    for model in models:
        stream = client.chat.completions.create(
            model=model, messages=PROMPT, max_tokens=200, temperature=1.0, stream=True
        )
        for i, _ in enumerate(stream):
            if i >= 2:
                break
        stream.close()
    if server.engines is not None and "fake-slow" in server.engines:
        engine = server.engines["fake-slow"]
        assert _wait_until(lambda: engine.active == 0), "the cancelled sequence was not freed"
        assert engine.cancelled >= 1
    r = _chat(client, server, temperature=0, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


def test_queue_overflow_is_503_with_retry_after(
    client: openai.OpenAI, server: RunningServer
) -> None:
    if not server.fake_models:
        pytest.skip("this server mode does not serve the fake models")
    # fake-slow admits two sequences at a time; hold two streams open, then ask for a third.
    streams = [
        client.chat.completions.create(
            model="fake-slow", messages=PROMPT, max_tokens=200, stream=True
        )
        for _ in range(2)
    ]
    try:
        for s in streams:
            next(iter(s))
        with pytest.raises(openai.InternalServerError) as exc:
            client.chat.completions.create(model="fake-slow", messages=PROMPT, max_tokens=2)
        assert exc.value.status_code == 503
        assert exc.value.code == "queue_full"
        assert int(exc.value.response.headers["retry-after"]) >= 1
    finally:
        for s in streams:
            s.close()
    assert _wait_until(lambda: _free(server)), "the closed streams were not freed"
    assert _wait_until(lambda: _admitted(client)), "still queue_full 10 s after the streams closed"


def _admitted(client: openai.OpenAI) -> bool:
    """A short request gets in (in Ray mode, where the engine lives in a replica, the closed
    streams' cancellation reaches it a moment later: until then the queue is still full)."""
    try:
        r = client.chat.completions.create(model="fake-slow", messages=PROMPT, max_tokens=2)
    except openai.InternalServerError as e:
        if e.code == "queue_full":
            return False
        raise
    return r.choices[0].finish_reason == "length"


def _free(server: RunningServer) -> bool:
    return server.engines is None or server.engines["fake-slow"].active == 0
