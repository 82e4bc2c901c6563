"""The dashboard's HTTP routes (docs/api.md "Dashboard"; roles in serving/http/auth.py ROUTES):

    GET    /api/info                               who am I, auth on?, links, defaults    READ
    GET    /api/models                             the registry with status and memory    READ
    GET    /api/requests?limit=200                 the last finished requests, newest first READ
    GET    /api/experiments?limit=20               latest MLflow runs ([] without a store) READ
    GET    /api/keys | POST /api/keys | DELETE /api/keys/{ref}   keys (secret shown once) ADMIN
    GET    /api/lineage/chunks/{chunk_id}          a cited chunk's text and lineage     USE_READ
    GET    /api/rag/collections                    collections, versions, sizes         USE_READ
    GET    /api/rag/collections/{name}/documents   documents with their status          USE_READ
    GET    /api/rag/runs?limit=20                  recent index runs                       ADMIN
    GET    /api/rag/roots                          folders an index run may read           ADMIN

Thin: serving/services/knowledge.py and experiments.py read the data; the request ring buffer is
the app's `LiveFeed` (serving/http/live.py). The WebSocket /api/ws is serving/http/routes/events.py.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Query, Request

from pipelines.keys import ApiKey, KeyStoreError, parse_duration
from serving.http import dashboard_schemas as S
from serving.http.auth import Guard, principal
from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import APIError
from serving.http.live import LiveFeed
from serving.http.schemas import ErrorResponse, index_run
from serving.services import knowledge
from serving.services.experiments import ExperimentsProvider

log = structlog.get_logger(__name__)
router = APIRouter()
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorResponse}}


def _version() -> str:
    try:
        return metadata.version("impetus")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def prefect_ui_url(ctx: ServingContext) -> str | None:
    """`serve.prefect_ui_url`, else the Prefect UI that `impetus ui prefect` runs on this
    data_dir (it records its API address in data_dir/prefect/ui-server-url while it runs)."""
    if ctx.settings.serve.prefect_ui_url:
        return ctx.settings.serve.prefect_ui_url.rstrip("/")
    try:
        api = (ctx.settings.data_dir / "prefect" / "ui-server-url").read_text().strip()
    except OSError:
        return None
    return api.removesuffix("/api").rstrip("/") or None


def _rag(ctx: ServingContext) -> Any:
    assert ctx.rag is not None, "create_app builds the RAG service"
    return ctx.rag


@router.get("/api/info")
async def info(request: Request, ctx: ServingContext = Depends(get_ctx)) -> S.Info:
    """What the dashboard asks first: is auth on, which role this key has, where the UIs are."""
    guard: Guard = request.app.state.guard
    who = principal(request)
    key = who.key if who else None
    return S.Info(
        version=_version(),
        auth_enabled=guard.enabled(),
        role=key.role if key else None,
        key_name=key.name if key else None,
        prefect_ui_url=prefect_ui_url(ctx),
        mlflow_ui_url=ctx.settings.serve.mlflow_ui_url,
        default_model=ctx.manager.default_model,
        default_collection=ctx.settings.rag.collection,
    )


@router.get("/api/models")
async def registry(ctx: ServingContext = Depends(get_ctx)) -> S.RegistryModels:
    """Every registry model with kind, format, size on disk and status (loaded or not)."""
    m = ctx.manager
    memory = {s["model"]: s["memory_bytes"] for s in m.status()}
    embedders = set(ctx.embedders.loaded())
    rows = []
    for e in m.entries():
        loaded = m.is_loaded(e.name) or e.name in embedders
        status = "loaded" if loaded else ("available" if e.status == "ready" else e.status)
        rows.append(
            S.RegistryModel(
                id=e.name,
                kind=e.kind,
                format=e.format,
                size_bytes=e.size,
                status=status,
                default=e.name in (m.default_model, ctx.settings.models.embedding),
                memory_bytes=memory.get(e.name),
            )
        )
    return S.RegistryModels(data=rows)


@router.get("/api/requests")
async def requests(request: Request, limit: int = Query(200, ge=1, le=1000)) -> S.RequestList:
    """The last finished requests of this server (in memory, 1,000 at most), newest first."""
    feed: LiveFeed = request.app.state.live
    rows = list(feed.requests)[-limit:]
    rows.reverse()
    return S.RequestList(data=[S.RequestRow.model_validate(r) for r in rows])


@router.get("/api/experiments")
async def experiments(
    request: Request, limit: int = Query(20, ge=1, le=200), ctx: ServingContext = Depends(get_ctx)
) -> S.Experiments:
    """The newest MLflow runs (benchmarks, retrieval evals); an empty list without a store."""
    provider: ExperimentsProvider = request.app.state.experiments
    try:
        rows = await anyio.to_thread.run_sync(provider, limit)
    except Exception as exc:  # a store MLflow cannot read: the page says so, the API stays up
        log.warning("experiments.unavailable", error=str(exc)[:300])
        rows = []
    return S.Experiments(
        mlflow_ui_url=ctx.settings.serve.mlflow_ui_url,
        data=[S.ExperimentRun.model_validate(r) for r in rows],
    )


# -- keys -----------------------------------------------------------------------------------------


def _key_row(key: ApiKey) -> S.KeyRow:
    return S.KeyRow(
        id=key.id,
        name=key.name,
        role=key.role,
        prefix=f"imp_{key.id}",
        created_at=key.created,
        expires_at=key.expires,
        revoked_at=key.revoked,
        last_used_at=key.last_used,
        status=key.status(),
    )


def _store(request: Request) -> Any:
    guard: Guard = request.app.state.guard
    return guard.store


@router.get("/api/keys")
async def list_keys(request: Request) -> S.KeyList:
    """Every key (revoked and expired too), without secrets or hashes."""
    keys = await anyio.to_thread.run_sync(_store(request).all)
    return S.KeyList(data=[_key_row(k) for k in keys])


@router.post("/api/keys", status_code=201)
async def create_key(body: S.KeyCreate, request: Request) -> S.KeyCreated:
    """A new key; the answer holds its secret, the only time the server shows it."""
    try:
        expires = parse_duration(body.expires_in) if body.expires_in else None
    except (KeyStoreError, OverflowError) as e:
        raise APIError("invalid_request", str(e), param="expires_in") from None
    try:
        key, secret = await anyio.to_thread.run_sync(
            lambda: _store(request).create(
                body.name, body.role, expires_in=expires, rate_limit=body.rate_limit
            )
        )
    except KeyStoreError as e:
        raise APIError("invalid_request", str(e)) from None
    who = principal(request)
    log.info("audit.key_created_via_api", key=key.name, by=who and who.name)
    return S.KeyCreated(key=_key_row(key), secret=secret)


@router.delete("/api/keys/{ref}", responses=NOT_FOUND)
async def revoke_key(ref: str, request: Request) -> S.KeyRow:
    """Revoke a key (by id or name): its next request is refused. Revoking twice is not an error."""
    try:
        key = await anyio.to_thread.run_sync(_store(request).revoke, ref)
    except KeyStoreError as e:
        raise APIError("invalid_request", str(e), param="ref", status=404) from None
    who = principal(request)
    log.info("audit.key_revoked_via_api", key=key.name, by=who and who.name)
    return _key_row(key)


# -- knowledge ------------------------------------------------------------------------------------


@router.get("/api/lineage/chunks/{chunk_id}", responses=NOT_FOUND)
async def chunk_lineage(chunk_id: str, ctx: ServingContext = Depends(get_ctx)) -> S.ChunkLineage:
    """A cited chunk: its text, document and version, pipeline version and flow run."""
    try:
        row = await anyio.to_thread.run_sync(
            knowledge.chunk, _rag(ctx), chunk_id, prefect_ui_url(ctx)
        )
    except knowledge.ChunkNotFound as e:
        raise APIError("invalid_request", str(e), param="chunk_id", status=404) from None
    return S.ChunkLineage.model_validate(row)


@router.get("/api/rag/collections")
async def collections(ctx: ServingContext = Depends(get_ctx)) -> S.CollectionList:
    rows = await anyio.to_thread.run_sync(knowledge.collections, _rag(ctx))
    return S.CollectionList(data=[S.CollectionRow.model_validate(r) for r in rows])


@router.get("/api/rag/collections/{name}/documents", responses=NOT_FOUND)
async def documents(name: str, ctx: ServingContext = Depends(get_ctx)) -> S.DocumentList:
    rows = await anyio.to_thread.run_sync(knowledge.documents, _rag(ctx), name)
    return S.DocumentList(data=[S.DocumentRow.model_validate(r) for r in rows])


@router.get("/api/rag/runs")
async def runs(
    limit: int = Query(20, ge=1, le=200), ctx: ServingContext = Depends(get_ctx)
) -> S.IndexRunList:
    """This server's runs (active first), then what lineage recorded, newest first."""
    rag = _rag(ctx)

    def read() -> list[dict[str, Any]]:
        mine = rag.runner.runs() if rag.runner is not None else []
        jobs = sorted(mine, key=lambda j: j.created_at, reverse=True)
        rows = [rag.public_run(j.to_dict()) for j in jobs]
        seen = {r["id"] for r in rows}
        for r in rag._lineage_runs(limit=limit):
            if r["run_id"] not in seen:
                rows.append({"id": r["run_id"], "flow_run_id": r["run_id"], **r})
        return rows[:limit]

    rows = await anyio.to_thread.run_sync(read)
    return S.IndexRunList(data=[index_run(r) for r in rows])


@router.get("/api/rag/roots")
async def roots(ctx: ServingContext = Depends(get_ctx)) -> S.Roots:
    """The folders an index run may read, relative to their roots (POST /v1/rag/index takes
    them as they are)."""
    rows = await anyio.to_thread.run_sync(knowledge.roots, _rag(ctx))
    return S.Roots(roots=[S.RootFolders.model_validate(r) for r in rows])
