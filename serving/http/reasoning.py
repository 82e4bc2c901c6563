"""Reasoning split out of a thinking model's text, whole or as it streams.

Models such as Qwen3 or DeepSeek-R1 write their reasoning between tags (`<think>…</think>`; the
tags of each model family are settings: `reasoning.tags`). Every route that generates splits it
the same way, with this module:

    fmt = reasoning.format_for(settings.reasoning, model)   # None: the model does not think
    splitter = ReasoningSplitter(fmt)
    for kind, text in splitter.feed(delta.text): ...         # "reasoning" or "content" pieces
    for kind, text in splitter.finish(): ...
    reasoning_text, content = reasoning.split(whole_text, fmt)

Chat completions put it in `reasoning_content` (and `reasoning`), Messages in `thinking`
blocks, Responses in `reasoning` items. A tag split across deltas is held back until the next
delta settles it. `template_kwargs` turns a request's effort into the chat-template variables
that thinking templates read (`reasoning_effort`, `enable_thinking`); others ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from pipelines.settings import ReasoningSettings

PieceKind = Literal["reasoning", "content"]
Piece = tuple[PieceKind, str]

# Efforts that mean "do not think" (OpenAI's "none"/"minimal"); the rest turn thinking on.
_NO_THINKING = ("none", "minimal")


@dataclass(frozen=True)
class ReasoningFormat:
    """The tags a model family wraps its reasoning in."""

    open: str = "<think>"
    close: str = "</think>"
    starts_open: bool = False  # the output starts inside the reasoning (the prompt opened it)


def format_for(settings: ReasoningSettings, model: str) -> ReasoningFormat | None:
    """The reasoning format of `model` (the first `reasoning.tags` entry whose glob matches its
    name, case-insensitively); None for a model that does not think in tags."""
    name = model.lower()
    for tags in settings.tags:
        if fnmatchcase(name, tags.match.lower()):
            return ReasoningFormat(tags.open, tags.close, tags.starts_open)
    return None


def _partial_suffix(buf: str, tag: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(buf)), 0, -1):
        if buf.endswith(tag[:n]):
            return n
    return 0


class ReasoningSplitter:
    """One sequence's text in, ("reasoning" | "content", text) pieces out, in order.

    Whitespace right after a tag is dropped (models write `<think>\\n` and `</think>\\n\\n`), so
    neither the reasoning nor the answer starts with blank lines.
    """

    def __init__(self, fmt: ReasoningFormat) -> None:
        self.fmt = fmt
        self._inside = fmt.starts_open
        self._buf = ""
        self._strip = fmt.starts_open  # drop leading whitespace of the next piece

    def feed(self, text: str) -> list[Piece]:
        self._buf += text
        out: list[Piece] = []
        while self._buf:
            tag = self.fmt.close if self._inside else self.fmt.open
            at = self._buf.find(tag)
            if at < 0:
                keep = _partial_suffix(self._buf, tag)
                self._emit(out, self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                break
            self._emit(out, self._buf[:at])
            self._buf = self._buf[at + len(tag) :]
            self._inside = not self._inside
            self._strip = True
        return out

    def finish(self) -> list[Piece]:
        """What is held back, at the end of the sequence (an unclosed tag's text stays where it
        is: reasoning cut off by max_tokens is still reasoning)."""
        out: list[Piece] = []
        self._emit(out, self._buf)
        self._buf = ""
        return out

    @property
    def in_reasoning(self) -> bool:
        return self._inside

    def _emit(self, out: list[Piece], text: str) -> None:
        if self._strip:
            text = text.lstrip()
            if not text:
                return
            self._strip = False
        if not text:
            return
        kind: PieceKind = "reasoning" if self._inside else "content"
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))


def split(text: str, fmt: ReasoningFormat | None) -> tuple[str | None, str]:
    """A finished text → (reasoning or None, the answer without it)."""
    if fmt is None:
        return None, text
    splitter = ReasoningSplitter(fmt)
    pieces = splitter.feed(text) + splitter.finish()
    reasoning = "".join(t for k, t in pieces if k == "reasoning")
    content = "".join(t for k, t in pieces if k == "content")
    return (reasoning or None), content


def template_kwargs(effort: str | None = None, enabled: bool | None = None) -> dict[str, Any]:
    """The chat-template variables for a request's reasoning effort (OpenAI's `reasoning_effort`,
    Anthropic's `output_config.effort`) and whether it asks for thinking at all; empty when it
    asks for nothing, so that the template's own default holds."""
    out: dict[str, Any] = {}
    if effort is not None:
        out["reasoning_effort"] = effort
        out["enable_thinking"] = effort not in _NO_THINKING
    if enabled is not None:
        out["enable_thinking"] = enabled
    return out
