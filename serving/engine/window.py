"""A model's context window, and the one rule every generating route applies to it.

The window holds the prompt and the completion together. `fit_window` is the rule: a prompt that
fills the window is refused with `ContextLengthError` (a 400 that names both numbers: OpenAI's
routes answer `context_length_exceeded`, Anthropic's `invalid_request_error`), and a `max_tokens`
larger than what is left is clamped, never refused (Claude Code always asks for 32,000), so the
answer ends with `length` / `max_tokens` when it runs into the window. The engine applies it
(it alone knows the prompt's tokens); `context_window_of` reads a model folder's window for
`GET /v1/models` without loading the model.

Before any tokenizing, `check_chars` applies a bound that costs one pass over the lengths: no
token covers more characters than the longest entry of the vocabulary, so a text longer than
`window × that` cannot fit whatever it says, and is refused at once. Tokenizing a multi-megabyte
prompt takes seconds; the bound makes refusing it take microseconds (docs/decisions/prompt-size-bound.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from serving.engine.base import InvalidRequestError

DEFAULT_CONTEXT_WINDOW = 4096  # a config.json without max_position_embeddings


class ContextLengthError(InvalidRequestError):
    """The prompt leaves no room for a completion in the model's context window (400)."""

    def __init__(self, prompt_tokens: int, context_window: int, model: str, param: str) -> None:
        super().__init__(
            f"The prompt is {prompt_tokens} tokens but {model!r} has a context window of "
            f"{context_window} tokens (prompt and completion together); shorten the {param}.",
            param=param,
        )
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        self.model = model

    def __reduce__(self) -> tuple[type[ContextLengthError], tuple[int, int, str, str]]:
        # It crosses Ray (serving/ray/proxies.py) pickled: rebuild it from its own arguments.
        return type(self), (self.prompt_tokens, self.context_window, self.model, self.param or "")


class PromptTooLargeError(InvalidRequestError):
    """A prompt longer in characters than the model's window could hold in any tokens (400)."""


def max_prompt_chars(context_window: int, max_token_chars: int) -> int:
    """The most characters a prompt that fits `context_window` tokens can have."""
    return context_window * max(1, max_token_chars)


def text_chars(value: object) -> int:
    """Characters in the strings of a prompt or of chat messages (content, parts, tool calls),
    counted without copying them."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(text_chars(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(text_chars(v) for v in value)
    return 0


def check_chars(
    chars: int, context_window: int, max_token_chars: int, *, model: str, param: str
) -> None:
    """Refuse a prompt of `chars` characters that cannot fit the window, before tokenizing it."""
    limit = max_prompt_chars(context_window, max_token_chars)
    if chars > limit:
        raise PromptTooLargeError(
            f"The {param} ({chars} characters) cannot fit {model!r}'s context window of "
            f"{context_window} tokens, which holds at most {limit} characters (no token of its "
            f"vocabulary is longer than {max_token_chars}); shorten the {param}.",
            param=param,
        )


def fit_window(
    prompt_tokens: int, max_tokens: int, context_window: int, *, model: str, param: str
) -> int:
    """The completion tokens a request may generate: `max_tokens`, clamped to what the prompt
    leaves of the window; raises `ContextLengthError` when it leaves nothing."""
    if prompt_tokens >= context_window:
        raise ContextLengthError(prompt_tokens, context_window, model, param)
    return min(max_tokens, context_window - prompt_tokens)


def context_window_of(model_dir: str | Path) -> int | None:
    """The window a model folder declares (config.json's max_position_embeddings); None when the
    folder has no readable config.json (a model not imported yet, a fake)."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = cfg.get("max_position_embeddings") or cfg.get("text_config", {}).get(
        "max_position_embeddings"
    )
    return int(value) if value else DEFAULT_CONTEXT_WINDOW
