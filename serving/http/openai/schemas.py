"""OpenAI request and response models for the serving endpoint (validated at the boundary).

Requests are pydantic models whose bounds follow OpenAI's (a value out of range is a 400
invalid_request, never a 422). Unknown fields are kept, not rejected, so that clients sending
newer OpenAI fields (or the RAG fields `rag_*`) reach the route. Responses are pydantic models
too, except streamed chunks, which the routes build as plain dicts (hot path).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from pipelines.models.store import SamplingDefaults
from serving.engine.base import SamplingParams

# -- requests ------------------------------------------------------------------------------------


def _encodable(value: str) -> str:
    """JSON can carry a lone surrogate ("\\ud800"); no tokenizer can encode one."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"text is not valid Unicode: a lone surrogate at character {exc.start}"
        ) from None
    return value


# Text that reaches a tokenizer.
Text = Annotated[str, AfterValidator(_encodable)]


class _Request(BaseModel):
    # strict: a JSON string is not a number or a boolean ("stream": "yes" and "max_tokens": "10"
    # are 400s, as OpenAI's own API answers), an integer is still a valid float.
    model_config = ConfigDict(extra="allow", strict=True)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Text | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(
        cls, value: str | list[dict[str, Any]] | None
    ) -> str | list[dict[str, Any]] | None:
        if isinstance(value, list):
            for part in value:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError(
                        "only text content parts ({'type': 'text', 'text': ...}) are supported"
                    )
                _encodable(part["text"])
        return value

    def for_engine(self) -> dict[str, Any]:
        """A plain dict with string content, which chat templates expect."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        out: dict[str, Any] = {**(self.model_extra or {}), "role": self.role}
        out["content"] = content or ""
        if self.name is not None:
            out["name"] = self.name
        return out


class _SamplingFields(_Request):
    """What chat and completions share."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off
    min_p: float | None = Field(None, ge=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=64)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Impetus's extension: "off" decodes this request without speculation (docs/api.md).
    speculative: Literal["auto", "off"] = "auto"

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.strip().isdigit():
                raise ValueError(f"keys must be token ids (non-negative integers), got {key!r}")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 16:
            raise ValueError("at most 16 stop sequences")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> _SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _sampling(
        self,
        max_tokens: int | None,
        logprobs: bool,
        top_logprobs: int,
        defaults: SamplingDefaults | None,
    ) -> SamplingParams:
        # The model's defaults (its registry entry) fill what the request omits, then the request.
        params = replace(SamplingParams(), **(defaults.fields() if defaults else {}))
        if max_tokens is not None:
            params.max_tokens = max_tokens
        if self.temperature is not None:
            params.temperature = self.temperature
        if self.top_p is not None:
            params.top_p = self.top_p
        if self.top_k is not None:
            params.top_k = max(self.top_k, 0)
        if self.min_p is not None:
            params.min_p = self.min_p
        if self.presence_penalty is not None:
            params.presence_penalty = self.presence_penalty
        if self.frequency_penalty is not None:
            params.frequency_penalty = self.frequency_penalty
        if self.repetition_penalty is not None:
            params.repetition_penalty = self.repetition_penalty
        params.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        params.seed = self.seed
        params.stop = self.stop_list()
        params.logprobs = logprobs
        params.top_logprobs = top_logprobs
        params.speculative = self.speculative
        return params


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def sampling(self, defaults: SamplingDefaults | None = None) -> SamplingParams:
        """The engine's sampling: this body's fields over the model's `defaults`."""
        # max_completion_tokens is OpenAI's newer name; it wins when both are sent.
        max_tokens = self.max_completion_tokens or self.max_tokens
        return self._sampling(max_tokens, self.logprobs, self.top_logprobs or 0, defaults)


class CompletionRequest(_SamplingFields):
    prompt: Text | list[Text]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("prompt must not be an empty list")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (fill-in-the-middle) is not supported")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling(self, defaults: SamplingDefaults | None = None) -> SamplingParams:
        """The engine's sampling: this body's fields over the model's `defaults`."""
        # OpenAI's legacy completions default to 16 tokens.
        max_tokens = self.max_tokens if self.max_tokens is not None else 16
        return self._sampling(max_tokens, self.logprobs is not None, self.logprobs or 0, defaults)


# A token id as JSON carries it: non-negative and within 32 bits (the model's own vocabulary is
# checked where the tokenizer is known).
TokenId = Annotated[int, Field(ge=0, lt=2**31)]


class EmbeddingRequest(_Request):
    model: str = Field(min_length=1)
    input: Text | list[Text] | list[TokenId] | list[list[TokenId]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(
        cls, value: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(value, str):
            if not value:
                raise ValueError("input must not be an empty string")
        elif not value:
            raise ValueError("input must not be an empty list")
        elif any(isinstance(v, str) and not v for v in value):
            raise ValueError("input must not contain empty strings")
        elif any(isinstance(v, list) and not v for v in value):
            raise ValueError("input must not contain empty token lists")
        return value


class ModelRequest(BaseModel):
    """Body of POST /api/models/load and /api/models/unload."""

    model: str = Field(min_length=1)


# -- responses -----------------------------------------------------------------------------------


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = ""
    tool_calls: list[dict[str, Any]] | None = None  # OpenAI's shape (serving/services/tools.py)
    # a thinking model's reasoning (serving/http/reasoning.py): vLLM's name, and OpenRouter's
    reasoning_content: str | None = None
    reasoning: str | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "impetus"
    # Impetus extras (OpenAI clients ignore them)
    kind: str
    status: str
    loaded: bool
    # the sampling a request that omits these fields gets (the model's generation defaults)
    sampling_defaults: dict[str, float | int] = Field(default_factory=dict)
    # tokens of prompt and completion together (serving/engine/window.py); None: not known
    # until the model is imported. `max_model_len` is vLLM's name for it; `max_input_tokens`,
    # `type`, `display_name` and `created_at` are what Anthropic's models list reads.
    context_window: int | None = None
    max_model_len: int | None = None
    max_input_tokens: int | None = None
    type: Literal["model"] = "model"
    display_name: str = ""
    created_at: str = "1970-01-01T00:00:00Z"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
    # Anthropic's page fields (its SDK's models.list() reads them)
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
