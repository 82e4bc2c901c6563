"""Anthropic Messages request models (validated at the boundary; serving/http/anthropic/translate.py
turns them into engine requests).

Bounds follow Anthropic's (a value out of range is a 400 `invalid_request_error`). Fields that
Claude Code and the SDK send but that have no meaning here (`metadata`, `context_management`,
`cache_control` on blocks, `service_tier`, ...) are accepted and ignored. Content blocks stay
dicts here: translate.py reads them, and refuses the kinds this server cannot serve (images,
documents) with a message that names the block.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.models.store import SamplingDefaults
from serving.engine.base import SamplingParams


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class InputMessage(_Open):
    # "system" is not Anthropic's, but Claude Code sends such entries inside `messages`.
    role: Literal["user", "assistant", "system"]
    content: str | list[dict[str, Any]]


class Tool(_Open):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None  # "custom" or absent; Anthropic's server tools are not served here


class ToolChoice(_Open):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(_Open):
    type: Literal["enabled", "disabled", "adaptive"] = "enabled"
    budget_tokens: int | None = None


class OutputConfig(_Open):
    effort: str | None = None


class MessagesFields(_Open):
    """What /v1/messages and /v1/messages/count_tokens share."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None

    @field_validator("system")
    @classmethod
    def _text_blocks(cls, value: str | list[dict[str, Any]] | None) -> Any:
        for block in value if isinstance(value, list) else ():
            if block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise ValueError("system blocks must be {'type': 'text', 'text': ...}")
        return value


class CountTokensRequest(MessagesFields):
    """Body of POST /v1/messages/count_tokens."""


class MessagesRequest(MessagesFields):
    """Body of POST /v1/messages."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(None, max_length=16)
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    stream: bool = False
    metadata: dict[str, Any] | None = None
    speculative: Literal["auto", "off"] = "auto"  # Impetus's extension (docs/api.md)

    def sampling(self, defaults: SamplingDefaults | None = None) -> SamplingParams:
        """The engine's sampling: this body's fields over the model's `defaults`. max_tokens
        goes as asked; the engine clamps it to what the prompt leaves of the window."""
        params = replace(SamplingParams(), **(defaults.fields() if defaults else {}))
        params.max_tokens = self.max_tokens
        if self.temperature is not None:
            params.temperature = self.temperature
        if self.top_p is not None:
            params.top_p = self.top_p
        if self.top_k is not None:
            params.top_k = self.top_k
        params.stop = [s for s in self.stop_sequences or [] if s]
        params.speculative = self.speculative
        return params
