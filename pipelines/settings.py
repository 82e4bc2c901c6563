"""Typed settings: `configs/impetus.yaml`, overridden by `IMPETUS_*` environment variables.

Build them once at the edge (`get_settings()`) and pass them down; nothing below the CLI, the app
factory or a flow reads the environment. Nested keys use a double underscore in the environment:
`IMPETUS_EMBEDDING__BATCH_SIZE=64` sets `embedding.batch_size`.
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from pipelines.errors import ImpetusError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = PROJECT_ROOT / "configs" / "impetus.yaml"


class _Section(BaseModel):
    # A misspelt key in the YAML is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ModelsSettings(_Section):
    """Which registry models the product uses by default."""

    llm: str = "smollm2-135m-instruct"
    embedding: str = "all-minilm-l6-v2"


class EmbeddingSettings(_Section):
    """How the embedding encoder runs."""

    backend: Literal["auto", "mlx", "coreml"] = "auto"
    batch_size: int = Field(32, ge=1, le=1024)


class ChunkingSettings(_Section):
    """How parsed documents are split into chunks (pipelines/chunk.py)."""

    # A chunk's size in the embedding model's own tokens, special tokens included; capped at
    # the model's max_seq_length, so nothing is ever truncated by the encoder.
    max_tokens: int = Field(default=256, ge=16, le=8192)
    # Tokens repeated from the end of one chunk at the start of the next within a long section.
    overlap_tokens: int = Field(default=32, ge=0)
    # Keep only each document's first N chunks (0: all). For quick, partial indexes such as
    # `impetus bench ingest --max-chunks`; a capped index is its own pipeline version.
    max_chunks: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _overlap_below_half(self) -> ChunkingSettings:
        if self.overlap_tokens * 2 > self.max_tokens:
            raise ValueError(
                f"chunking.overlap_tokens ({self.overlap_tokens}) must be at most half of "
                f"chunking.max_tokens ({self.max_tokens})"
            )
        return self


class IngestSettings(_Section):
    """How the ingest flow walks the documents it indexes (flows/ingest/flow.py)."""

    # Documents that go through each step together: one Prefect task run per step per batch
    # (not per document) and one embedding call for all of a batch's chunks. Larger batches cost
    # less orchestration; smaller ones report progress more often and hold fewer parsed documents
    # in memory. What gets indexed is the same for any size (not part of the pipeline version).
    batch_documents: int = Field(default=16, ge=1, le=4096)
    # Free bytes the disk holding data_dir must keep: a batch that would start below it fails the
    # run with a clear "disk full" error instead. The embedded store writes through memory maps,
    # and a write into a full filesystem there kills the process (SIGBUS), so the check comes
    # first (pipelines/diskspace.py). 0: no check.
    min_free_bytes: int = Field(default=256 << 20, ge=0)


class VectorStoreSettings(_Section):
    """Where ingestion writes vectors and search reads them (pipelines/vectorstore/)."""

    # edge: Qdrant Edge embedded in this process (the default); qdrant: qdrant-client, talking to
    # a Qdrant server at `url`, or without a url to its local mode on disk at `path`.
    kind: Literal["edge", "qdrant"] = "edge"
    url: str | None = None
    # The embedded store's directory; default data_dir/vectors (edge) or data_dir/qdrant.
    path: Path | None = None
    # Physical collections of older pipeline versions kept after `impetus reindex` switches the
    # alias (for rolling back); older ones are dropped.
    keep_versions: int = Field(1, ge=0)


class ServeSettings(_Section):
    """Where `impetus serve` listens, and how the serving endpoint bounds its work."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # engine (per loaded LLM)
    queue_limit: int = Field(default=64, ge=1)
    max_batch_size: int = Field(default=16, ge=1)
    prefix_cache_bytes: int = Field(default=1 << 30, ge=0)
    # The decode batch's KV cache, per LLM: a sequence waits for room before it joins; 0: no bound.
    kv_cache_bytes: int = Field(default=1 << 30, ge=0)
    # The prefix cache's disk tier under data_dir/prefix-cache, per LLM: bytes; 0: off.
    prefix_cache_disk_bytes: int = Field(default=0, ge=0)
    # At start, the disk tier's most recently used entries are read into memory up to this many
    # bytes (the last conversation before a restart resumes from memory); 0: none.
    prefix_cache_preload_bytes: int = Field(default=256 << 20, ge=0)
    retry_after_s: float = Field(default=1.0, gt=0)
    # Prompt-lookup speculative decoding of a sequence that runs alone (serving/engine/
    # speculative.py); a request's `speculative: "off"` turns it off for that request.
    speculative: Literal["auto", "off"] = "auto"
    # Under load a stream's tokens go out in groups (serving/engine/mlx_engine.py, `coalesce_*`):
    # while this many sequences decode together and steps are short; 0: one event per token.
    coalesce_streams: int = Field(default=8, ge=0)
    coalesce_tokens: int = Field(default=4, ge=1)
    coalesce_hold_ms: float = Field(default=50.0, ge=0)
    # Each LLM's engine in a process of its own (serving/engine/process.py), so that the HTTP
    # side's Python never holds up its decode steps; "auto": where MLX runs on a GPU.
    engine_process: Literal["auto", "on", "off"] = "auto"
    # model residency
    memory_budget_bytes: int = Field(default=0, ge=0)  # 0: 70% of physical memory
    idle_ttl_s: float = Field(default=1800.0, ge=0)  # 0: never unload idle models
    load_on_demand: bool = True
    # HTTP
    max_body_bytes: int = Field(default=8 << 20, ge=1024)
    keepalive_s: float = Field(default=5.0, gt=0)
    embedding_batch_tokens: int = Field(default=8192, ge=1)
    # /v1/embeddings refuses an input longer than this (characters) before tokenizing it; the
    # model reads only its first max_seq_length tokens of any input anyway.
    embedding_max_input_chars: int = Field(default=1 << 18, ge=1)
    # Host names the server answers besides loopback names and `host` (serving/http/security.py):
    # "impetus.lan", "*.example.com", or "*" (no check; behind a proxy that checks it).
    allowed_hosts: list[str] = []
    # Browser origins allowed to call the API (CORS), e.g. "http://localhost:5173"; the server's
    # own origin is always allowed. "*" allows every origin.
    cors_origins: list[str] = []
    # The dashboard (serving/http/static.py, serving/http/live.py): the built app's folder (None:
    # serving/dashboard/dist in the checkout), the WebSocket's snapshot interval and the messages
    # a client may leave unread before it is dropped, and the UIs the dashboard links to (None:
    # the Prefect UI `impetus ui prefect` runs on this data_dir, if any; no MLflow link).
    dashboard_dir: Path | None = None
    ws_interval_s: float = Field(default=1.0, gt=0, le=60)
    ws_queue_size: int = Field(default=64, ge=1)
    prefect_ui_url: str | None = None
    mlflow_ui_url: str | None = None

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        import ipaddress

        for name in value:
            bare = name.removeprefix("*.").strip("[]")
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(bare)  # an IPv6 address has colons
                continue
            if name != "*" and (not bare or any(c in bare for c in "/:*@ ")):
                raise ValueError(
                    f"{name!r} is not a host name: use a name or address without scheme or "
                    "port (impetus.lan, 192.168.1.5), a wildcard (*.example.com) or *"
                )
        return [name.lower().rstrip(".").strip("[]") for name in value]

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            scheme, sep, rest = origin.partition("://")
            if origin != "*" and (
                not sep or not scheme or not rest.rstrip("/") or "/" in rest.rstrip("/")
            ):
                raise ValueError(
                    f"{origin!r} is not an origin: use scheme://host[:port] without a path "
                    "(http://localhost:5173), or *"
                )
        return [origin.rstrip("/").lower() for origin in value]


class ReasoningTags(_Section):
    """How one model family writes its reasoning: between `open` and `close` tags."""

    match: str = Field(min_length=1)  # a glob on the registry model name, e.g. "qwen3*"
    open: str = Field(default="<think>", min_length=1)
    close: str = Field(default="</think>", min_length=1)
    # The chat template opens the tag in the generation prompt (DeepSeek-R1's): the output
    # starts inside the reasoning.
    starts_open: bool = False


class ReasoningSettings(_Section):
    """Models that think in tags; their reasoning is split out of the answer (serving/http/reasoning.py)."""

    tags: list[ReasoningTags] = Field(
        default_factory=lambda: [
            ReasoningTags(match="*qwen3*"),
            ReasoningTags(match="*qwq*"),
            ReasoningTags(match="*deepseek-r1*"),
            ReasoningTags(match="*smollm3*"),
            ReasoningTags(match="*glm-4*"),
            ReasoningTags(match="*magistral*", open="[THINK]", close="[/THINK]"),
        ]
    )


class RagSettings(_Section):
    """Retrieval and grounded chat (pipelines/retrieve/, pipelines/prompt.py, /v1/rag/*)."""

    # Collection searched when a request or command names none.
    collection: str = "default"
    # hybrid: dense + BM25 fused by reciprocal rank; dense: vectors only; sparse: BM25 only.
    search_mode: Literal["hybrid", "dense", "sparse"] = "hybrid"
    # Chunks retrieved per question (a request's rag_top_k wins).
    top_k: int = Field(default=5, ge=1, le=100)
    # Candidates each retriever contributes to the fusion (at least top_k).
    candidates: int = Field(default=50, ge=1, le=1000)
    # Reciprocal rank fusion: score = sum over retrievers of weight / (rrf_k + rank).
    rrf_k: int = Field(default=60, ge=1)
    dense_weight: float = Field(default=1.0, ge=0)
    sparse_weight: float = Field(default=1.0, ge=0)
    # BM25 parameters (term-frequency saturation, length normalisation).
    bm25_k1: float = Field(default=1.2, ge=0)
    bm25_b: float = Field(default=0.75, ge=0, le=1)
    # Tokens of the serving LLM that retrieved context may take in a grounded chat prompt.
    context_tokens: int = Field(default=1024, ge=64)
    # Characters of a chunk shown as a citation's snippet.
    snippet_chars: int = Field(default=240, ge=0)
    # rag_mode "auto" retrieves only when the best chunk scores at least this (dense cosine).
    auto_min_score: float = Field(default=0.3, ge=-1, le=1)
    # Folders the server may index (POST /v1/rag/index, scheduled runs); relative ones are taken
    # from the checkout's root. data_dir/uploads is always allowed besides (pipelines/roots.py).
    index_roots: list[Path] = Field(default_factory=lambda: [Path("data/samples")])
    # Largest file POST /v1/files accepts (bytes); past it 413 and nothing is kept.
    upload_max_bytes: int = Field(default=16 << 20, ge=1024)


class BenchSettings(_Section):
    """Regression thresholds of `impetus bench embeddings|llm --compare-to RUN`: a configuration
    whose metric moved past one of these (the wrong way) makes the command exit non-zero."""

    # Absolute drop of a 0-1 quality metric (hit@k, MRR, nDCG, greedy/token agreement).
    max_quality_drop: float = Field(default=0.02, ge=0)
    # Relative rise of perplexity (0.05: 5 % higher fails).
    max_perplexity_rise: float = Field(default=0.05, ge=0)
    # Relative drop of a throughput (tokens/s, chunks/s); shared machines are noisy.
    max_speed_drop: float = Field(default=0.30, ge=0)
    # Relative rise of a latency, memory peak or index size.
    max_cost_rise: float = Field(default=0.30, ge=0)


class AuthSettings(_Section):
    """Who may call the HTTP API (serving/http/auth.py; keys from `impetus keys`, pipelines/keys.py)."""

    # auto: keys are required once any key exists, or when the server listens off loopback;
    # on: always required; off: never (and then a non-loopback address needs `--insecure`).
    mode: Literal["auto", "on", "off"] = "auto"
    # Serve off loopback without keys (what `impetus serve --insecure` sets); warned at each start.
    insecure: bool = False
    # Days the request log (feeding `impetus keys usage`) keeps its lines.
    request_log_days: float = Field(default=30.0, gt=0)


class RateLimitSettings(_Section):
    """Requests per key (per client address without a key), `limits` notation: "60/minute"."""

    # Inference, embeddings, RAG search and admin routes.
    inference: str = "60/minute"
    # Model list, health, hardware, metrics.
    read: str = "120/minute"
    # Failed authentications per client address.
    failed_auth: str = "10/minute"
    # Where counters live: memory:// (one process), or e.g. redis://host:6379 shared by replicas.
    storage_uri: str = "memory://"
    # Off: no limits and no X-RateLimit-* headers.
    enabled: bool = True

    @field_validator("inference", "read", "failed_auth")
    @classmethod
    def _parses(cls, value: str) -> str:
        from pipelines.keys import KeyStoreError, check_rate_limit

        try:
            return check_rate_limit(value)
        except KeyStoreError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("storage_uri")
    @classmethod
    def _known_storage(cls, value: str) -> str:
        from limits.storage import SCHEMES

        scheme = value.partition("://")[0]
        if scheme not in SCHEMES or scheme.startswith("async+"):
            raise ValueError(
                f"unknown rate limit storage {value!r}: use memory:// or e.g. redis://host:6379"
            )
        return value


class LogSettings(_Section):
    """Structured logging: one line per event on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "console"


class TelemetrySettings(_Section):
    """OpenTelemetry traces (pipelines/tracing.py, serving/tracing.py): off unless an endpoint is
    set, so nothing leaves the machine unless configured."""

    # An OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans go to its /v1/traces); None: off.
    otlp_endpoint: str | None = None
    # `service.name` of the spans.
    service_name: str = Field(default="impetus", min_length=1)
    # Share of traces kept (a client's sampled `traceparent` is followed either way).
    sample_ratio: float = Field(default=1.0, ge=0, le=1)

    @field_validator("otlp_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"otlp_endpoint {value!r} must be an http:// or https:// URL")
        return value.strip()


class Settings(BaseSettings):
    """Every setting of Impetus; see configs/impetus.yaml for what each one means."""

    model_config = SettingsConfigDict(
        env_prefix="IMPETUS_",
        env_nested_delimiter="__",
        extra="forbid",
        yaml_file=None,
    )

    data_dir: Path = Path("data/state")
    models: ModelsSettings = ModelsSettings()
    embedding: EmbeddingSettings = EmbeddingSettings()
    chunking: ChunkingSettings = ChunkingSettings()
    ingest: IngestSettings = IngestSettings()
    vector_store: VectorStoreSettings = VectorStoreSettings()
    serve: ServeSettings = ServeSettings()
    rag: RagSettings = RagSettings()
    reasoning: ReasoningSettings = ReasoningSettings()
    bench: BenchSettings = BenchSettings()
    log: LogSettings = LogSettings()
    auth: AuthSettings = AuthSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @field_validator("data_dir")
    @classmethod
    def _anchor_data_dir(cls, value: Path) -> Path:
        # A relative data_dir means "inside the checkout", wherever the command is run from.
        value = value.expanduser()
        return value if value.is_absolute() else (PROJECT_ROOT / value)

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = _config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path.is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def _config_path() -> Path:
    # IMPETUS_CONFIG names another YAML file (tests, or a second deployment).
    return Path(os.environ.get("IMPETUS_CONFIG", DEFAULT_CONFIG))


class SettingsError(ImpetusError):
    """A setting has a value it cannot take; the message names the key, the value and what is
    allowed, in one line."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this process, built once; a bad setting is a `SettingsError`."""
    return load_settings()


def load_settings(**overrides: Any) -> Settings:
    """Fresh settings with explicit overrides (tests, or a CLI flag that wins over everything)."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None


def describe(exc: ValidationError) -> str:
    """One line for every bad setting: where it comes from, its value, what is allowed."""
    return "; ".join(_describe_one(err) for err in exc.errors())


def _describe_one(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    env = "IMPETUS_" + "__".join(p.upper() for p in loc)
    where = f"{env}={os.environ[env]}" if env in os.environ else f"{key} in {_config_path()}"
    if err["type"] == "extra_forbidden":
        known = ", ".join(_fields(loc[:-1])) or "none"
        return f"unknown setting {where} (allowed keys here: {known})"
    if err["type"] == "value_error":  # a rule across keys (a validator's own message)
        return f"bad setting {key}: {err['msg'].removeprefix('Value error, ')}"
    value = err.get("input")
    return f"bad setting {where}: {value!r} is not allowed; {_allowed(loc) or err['msg']}"


def _fields(loc: list[str]) -> list[str]:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        model = field.annotation
    return list(getattr(model, "model_fields", {}))


def _allowed(loc: list[str]) -> str | None:
    """What the field at `loc` takes: its choices, or its type and bounds."""
    model: Any = Settings
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = field.annotation
    field = getattr(model, "model_fields", {}).get(loc[-1])
    if field is None:
        return None
    ann = field.annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return None
    if get_origin(ann) is Literal:
        return "allowed: " + ", ".join(repr(a) for a in get_args(ann))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    what = names.get(ann, getattr(ann, "__name__", str(ann)))
    bounds = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sign} {getattr(m, attr)}")
    return f"allowed: {what}" + (f" {' and '.join(bounds)}" if bounds else "")
