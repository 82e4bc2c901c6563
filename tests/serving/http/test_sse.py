"""The SSE framing's fast paths give the same bytes as the plain ones."""

from __future__ import annotations

import json

import pytest
from sse_starlette import EventSourceResponse

from serving.http import sse

TEXTS = [
    "",
    "Hello",
    ' "quoted" \\ back',
    "line\nbreak\ttab\r",
    "é ü 中文 🙂",
    "\x00\x1f\x7f",
    "</script>",
]


def _chunk(i: int, content: str) -> dict[str, object]:
    return {
        "id": "chatcmpl-abc",
        "object": "chat.completion.chunk",
        "created": 1764806400,
        "model": 'a "model"/name',
        "choices": [
            {"index": i, "delta": {"content": content}, "logprobs": None, "finish_reason": None}
        ],
    }


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("index", [0, 3])
def test_text_event_is_the_event_of_the_whole_chunk(text: str, index: int) -> None:
    template = sse.TextEvent(_chunk(index, sse.TextEvent.placeholder))
    got = template(text)
    assert got == sse.event(_chunk(index, text))
    assert json.loads(got.removeprefix(b"data: ").strip())["choices"][0]["delta"]["content"] == text


def test_text_event_needs_its_placeholder() -> None:
    with pytest.raises(ValueError, match="placeholder"):
        sse.TextEvent(_chunk(0, "no placeholder here"))


def test_the_overridden_send_still_exists_in_sse_starlette() -> None:
    # sse._EventStream skips sse-starlette's per-event cancel scope by overriding this private
    # method; if an upgrade renames it, the override would silently stop applying.
    assert callable(getattr(EventSourceResponse, "_send_with_timeout", None))
    assert sse._EventStream._send_with_timeout is not EventSourceResponse._send_with_timeout
