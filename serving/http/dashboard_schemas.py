"""Wire models of the dashboard's routes (serving/http/routes/dashboard.py), as agreed with the
React app in docs/api.md "Dashboard", so that the OpenAPI document types every answer (the
schemathesis fuzz test holds each response to it). Times are epoch seconds unless a lineage row
gives them as text."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.http.schemas import IndexRun

Role = Literal["admin", "user", "readonly"]


class Info(BaseModel):
    version: str
    auth_enabled: bool
    role: Role | None = None
    key_name: str | None = None
    prefect_ui_url: str | None = None
    mlflow_ui_url: str | None = None
    default_model: str | None = None
    default_collection: str


class RegistryModel(BaseModel):
    id: str
    kind: str
    format: str
    size_bytes: int
    status: Literal["loaded", "available", "importable", "missing"]
    default: bool
    memory_bytes: int | None = None


class RegistryModels(BaseModel):
    object: Literal["list"] = "list"
    data: list[RegistryModel]


# -- keys -----------------------------------------------------------------------------------------


class KeyRow(BaseModel):
    id: str
    name: str
    role: Role
    prefix: str  # "imp_<id>": how the key's tokens begin (the id is not secret)
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    status: Literal["active", "expired", "revoked"]


class KeyList(BaseModel):
    object: Literal["list"] = "list"
    data: list[KeyRow]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: Role
    expires_in: str | None = Field(
        None,
        pattern=r"^[0-9]{1,6}[mhdw]$",
        description="A duration such as 30d, 12h, 2w (none: never expires)",
    )
    rate_limit: str | None = Field(None, description='e.g. "60/minute" (none: the defaults)')


class KeyCreated(BaseModel):
    key: KeyRow
    secret: str  # the token, shown this once


# -- requests -------------------------------------------------------------------------------------


class RequestRow(BaseModel):
    id: str | None = None
    ts: float
    method: str
    route: str
    model: str | None = None
    status: int
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    key_name: str | None = None


class RequestList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RequestRow]


# -- knowledge ------------------------------------------------------------------------------------


class ChunkDocument(BaseModel):
    doc_id: str
    path: str  # relative to its index root, never the server's absolute path
    content_hash: str
    version: int | None = None  # 1 for the document's first indexed content, then 2, ...
    status: str | None = None
    current: bool


class ChunkLineage(BaseModel):
    chunk_id: str
    collection: str
    text: str | None = None
    source: str
    index: int | None = None
    token_count: int | None = None
    document: ChunkDocument
    pipeline_version: str | None = None
    flow_run_id: str | None = None
    flow_run_url: str | None = None
    run_status: str | None = None
    indexed_at: str | None = None


class CollectionVersion(BaseModel):
    name: str
    created_at: str | None = None
    active: bool
    points: int | None = None


class CollectionRow(BaseModel):
    name: str
    physical: str
    points: int
    documents: int | None = None
    pipeline_version: str | None = None
    versions: list[CollectionVersion]
    size_bytes: int | None = None


class CollectionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CollectionRow]


class DocumentRow(BaseModel):
    doc_id: str
    source: str
    content_hash: str | None = None
    status: Literal["indexed", "quarantined", "failed", "deleted"]
    reason: str | None = None
    chunks: int | None = None
    pipeline_version: str | None = None
    updated_at: str | None = None


class DocumentList(BaseModel):
    object: Literal["list"] = "list"
    data: list[DocumentRow]


class IndexRunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[IndexRun]  # as GET /v1/rag/runs/{run_id} answers


class RootFolders(BaseModel):
    path: str  # the root's name, as sources show it
    folders: list[str]  # the root and its folders, relative paths that POST /v1/rag/index takes
    truncated: bool = False


class Roots(BaseModel):
    roots: list[RootFolders]


# -- experiments ----------------------------------------------------------------------------------


class ExperimentRun(BaseModel):
    run_id: str
    experiment: str
    name: str | None = None
    status: str
    start_time: float | None = None
    params: dict[str, str]
    metrics: dict[str, float]
    url: str | None = None


class Experiments(BaseModel):
    mlflow_ui_url: str | None = None
    data: list[ExperimentRun]
