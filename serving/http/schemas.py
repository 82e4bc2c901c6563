"""Wire models of Impetus's own routes (/api/health/*, /api/hardware/info, /api/models/*,
/v1/rag/*) and of the error body every route shares, so the OpenAPI document describes what
each route answers (clients generate code from it; tests/serving/http/test_fuzz.py holds every
response to it). OpenAI's wire models live in serving/http/openai/schemas.py.

Objects that grow new keys as the engine or hardware report more (engine stats, an index run's
summary) are typed as open mappings, so adding a statistic does not break clients.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorResponse(BaseModel):
    """`{"error": {...}}`, as OpenAI's; `code` is what clients branch on (docs/api.md#errors)."""

    error: ErrorDetail


def list_page(data: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI's list object with cursors (files, vector stores): every item on one page."""
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": False,
    }


class AnthropicErrorDetail(BaseModel):
    type: str  # invalid_request_error, authentication_error, not_found_error, ...
    message: str


class AnthropicErrorResponse(BaseModel):
    """`{"type": "error", "error": {...}}`: the error shape under /v1/messages."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


# -- /api/health/*, /api/hardware/info -------------------------------------------------------------


class Live(BaseModel):
    status: Literal["live"] = "live"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    model: str | None


class ResidentModel(BaseModel):
    model: str
    default: bool
    memory_bytes: int
    active_requests: int
    idle_s: float
    engine: dict[str, Any]  # serving.engine.base.EngineStats


class LoadingModel(BaseModel):
    name: str
    state: str  # importing | loading | failed
    error: str | None = None
    started_at: float


class QueueStatus(BaseModel):
    depth: int
    limit: int
    running: int


class MemoryStatus(BaseModel):
    in_use_bytes: int  # what the budget counts (ModelManager.memory_in_use)
    budget_bytes: int
    # "process": the larger of the engines' estimates and the process's footprint; "engines":
    # the estimates alone (a Ray ingress, whose models live in other processes).
    budget_counts: Literal["process", "engines"] = "engines"
    engines_bytes: int = 0  # what the resident engines report (weights, KV, prefix cache)
    process_rss_bytes: int = 0  # this process's resident set (psutil)
    mlx_active_bytes: int = 0  # MLX's live buffers in this process
    mlx_cache_bytes: int = 0  # MLX's freed buffers kept for reuse
    process_footprint_bytes: int = 0  # max(resident set, MLX active + cache)
    idle_ttl_s: float = 0.0  # models.idle_ttl_s: an idle model (not the default) unloads after it


class ServerStatus(BaseModel):
    status: Literal["ready", "starting"]
    default_model: str | None
    uptime_s: float
    models: list[ResidentModel]
    loading: list[LoadingModel]
    embedders: list[str]
    queue: QueueStatus
    memory: MemoryStatus


class EmbeddingBackend(BaseModel):
    model: str
    backend: str
    configured_backend: str
    reason: str | None = None
    fallback: str | bool | None = None
    loaded: bool


class HardwareInfo(BaseModel):
    """`pipelines.hardware.Hardware` (OS, chip, memory, MLX, Metal, CUDA, Neural Engine, BLAS)
    plus the embedding backend in use."""

    model_config = ConfigDict(extra="allow")

    os: str
    machine: str
    cpu_count: int
    memory_bytes: int
    embedding: EmbeddingBackend


# -- /api/models/* ---------------------------------------------------------------------------------


class ModelLoaded(BaseModel):
    model: str
    kind: Literal["llm", "embedding"]
    status: Literal["loaded"] = "loaded"
    seconds: float
    memory_in_use_bytes: int
    memory_budget_bytes: int


class ModelUnloaded(BaseModel):
    model: str
    kind: Literal["llm", "embedding"]
    status: Literal["unloaded", "not_loaded"]
    memory_in_use_bytes: int


# -- /v1/rag/* -------------------------------------------------------------------------------------


class SearchHit(BaseModel):
    chunk_id: str
    source: str
    title: str | None = None
    section: str | None = None
    score: float
    text: str
    doc_id: str | None = None


class SearchResults(BaseModel):
    object: Literal["list"] = "list"
    collection: str
    mode: Literal["hybrid", "dense", "sparse"]
    data: list[SearchHit]


class IndexRun(BaseModel):
    """A run this server started (all fields), or one read from lineage (`run_id`, `collection`,
    `status`, `pipeline_version`, times as text, `summary`)."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["rag.index_run"] = "rag.index_run"
    flow_run_id: str | None = None
    collection: str
    status: str  # pending | running | completed | failed
    paths: list[str] | None = None
    prune: bool | None = None
    progress: dict[str, dict[str, int]] | None = None
    summary: dict[str, Any] | None = None
    error: str | None = None
    created_at: float | None = None
    started_at: float | str | None = None
    finished_at: float | str | None = None


class StoreStatus(BaseModel):
    kind: str
    url: str | None = None
    # which store, without the server's path (a sha256 of it): `impetus ingest` compares it
    fingerprint: str | None = None
    owned: bool
    error: str | None = None


class RagDefaults(BaseModel):
    collection: str
    search_mode: Literal["hybrid", "dense", "sparse"]
    top_k: int


class CollectionStatus(BaseModel):
    name: str
    physical: str
    points: int
    dim: int
    distance: str
    pipeline_version: str | None = None
    versions: list[str]


class RagStatus(BaseModel):
    object: Literal["rag.status"] = "rag.status"
    store: StoreStatus
    defaults: RagDefaults
    collections: list[CollectionStatus]
    runs: list[IndexRun]


def index_run(raw: dict[str, Any]) -> IndexRun:
    """An `IndexRun` from a server run's dict or a lineage row (which names its id `run_id`)."""
    data = dict(raw)
    data.setdefault("id", data.get("run_id") or data.get("flow_run_id") or "")
    data.setdefault("object", "rag.index_run")
    return IndexRun.model_validate(data)
