"""/v1/rag/*: search, index runs and status. Thin: serving/services/rag.py does the work; errors are mapped
in serving/http/errors.py.

    POST /v1/rag/search   {"query", "collection"?, "top_k"?, "mode"?, "filter"?: {"source", "doc_id"}}
    POST /v1/rag/index    {"paths": [...], "collection"?, "prune"?}  → 202 {"id", "status", ...}
    GET  /v1/rag/runs/{id}                                           → the run's progress/summary
    GET  /v1/rag/status                                              → collections, versions, runs
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from serving.http.auth import principal
from serving.http.deps import ServingContext, get_ctx
from serving.http.redact import PathRedactor
from serving.http.schemas import IndexRun, RagStatus, SearchHit, SearchResults, index_run
from serving.services.rag import RagService

log = structlog.get_logger(__name__)
router = APIRouter()


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    collection: str | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    mode: Literal["hybrid", "dense", "sparse"] | None = None
    filter: dict[str, str | list[str]] | None = None


class IndexRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(min_length=1)
    collection: str = Field("default", min_length=1)
    prune: bool = False

    @field_validator("paths")
    @classmethod
    def _absolute_existing(cls, value: list[str]) -> list[str]:
        # The server reads the files itself: paths are on the server's machine.
        missing = [p for p in value if not Path(p).exists()]
        if missing:
            raise ValueError(f"no such file or directory on the server: {', '.join(missing)}")
        return [str(Path(p).resolve()) for p in value]


def rag(ctx: ServingContext) -> RagService:
    assert ctx.rag is not None, "create_app builds the RAG service"
    return ctx.rag


@router.post("/v1/rag/search")
async def search(body: SearchRequest, ctx: ServingContext = Depends(get_ctx)) -> SearchResults:
    s = ctx.settings.rag
    hits = await rag(ctx).search(
        body.query,
        collection=body.collection,
        k=body.top_k,
        mode=body.mode,
        filter=body.filter,
    )
    return SearchResults(
        collection=body.collection or s.collection,
        mode=body.mode or s.search_mode,
        data=[SearchHit.model_validate(h.to_dict()) for h in hits],
    )


@router.post("/v1/rag/index", status_code=202, response_model=IndexRun)
async def index(
    body: IndexRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    job = await rag(ctx).start_index(body.paths, body.collection, body.prune)
    who = principal(request)
    log.info(
        "audit.index_run",
        run_id=job.to_dict().get("id"),
        collection=body.collection,
        paths=len(body.paths),
        key=who and who.name,
        client=who and who.client,
    )
    return JSONResponse(job.to_dict(), status_code=202)


@router.get("/v1/rag/runs/{run_id}")
async def run(run_id: str, ctx: ServingContext = Depends(get_ctx)) -> IndexRun:
    return index_run(await anyio.to_thread.run_sync(rag(ctx).run, run_id))


@router.get("/v1/rag/status")
async def status(ctx: ServingContext = Depends(get_ctx)) -> RagStatus:
    raw = await anyio.to_thread.run_sync(rag(ctx).status)
    # The store's folder (and a lock error naming it) is under data_dir: "<data_dir>/vectors".
    redact = PathRedactor.from_settings(ctx.settings)
    store = raw["store"]
    for key in ("path", "error"):
        if store.get(key):
            store[key] = redact(store[key])
    return RagStatus.model_validate({**raw, "runs": [index_run(r) for r in raw["runs"]]})
