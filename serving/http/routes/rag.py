"""/v1/rag/*: search, index runs and status. Thin: serving/services/rag.py does the work; errors are mapped
in serving/http/errors.py.

    POST /v1/rag/search   {"query", "collection"?, "top_k"?, "mode"?, "filter"?: {"source", "doc_id"}}
    POST /v1/rag/index    {"paths"?: [...], "file_ids"?: [...], "collection"?, "prune"?}
                                                                     → 202 {"id", "status", ...}

Index runs read only paths inside `rag.index_roots` (and uploads); any other path gets one fixed
403 whether or not it exists (pipelines/roots.py). Sources in responses are relative to their
index root, never the server's absolute paths.
    GET  /v1/rag/runs/{id}                                           → the run's progress/summary
    POST /v1/rag/runs/{id}/cancel                                    → the run, `cancelling`
                                                                       (then `cancelled`)
    GET  /v1/rag/status                                              → collections, versions, runs
"""

from __future__ import annotations

from typing import Literal

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.roots import PathNotAllowed
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

    # Paths on the server's machine, inside rag.index_roots (checked by the service, so that
    # every refused path gets the same answer).
    paths: list[str] = Field(default_factory=list, max_length=1000)
    # Uploaded files (POST /v1/files).
    file_ids: list[str] = Field(default_factory=list, max_length=1000)
    collection: str = Field("default", min_length=1)
    prune: bool = False

    @model_validator(mode="after")
    def _something(self) -> IndexRequest:
        if not self.paths and not self.file_ids:
            raise ValueError("give paths (inside rag.index_roots) or file_ids (POST /v1/files)")
        return self


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
        data=[SearchHit.model_validate(rag(ctx).public_hit(h)) for h in hits],
    )


@router.post("/v1/rag/index", status_code=202, response_model=IndexRun)
async def index(
    body: IndexRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    who = principal(request)
    try:
        job = await rag(ctx).start_index(body.paths, body.collection, body.prune, body.file_ids)
    except PathNotAllowed:
        log.warning(
            "audit.index_refused",
            collection=body.collection,
            key=who and who.name,
            client=who and who.client,
        )
        raise
    log.info(
        "audit.index_run",
        run_id=job.to_dict().get("id"),
        collection=body.collection,
        paths=len(body.paths),
        file_ids=len(body.file_ids),
        key=who and who.name,
        client=who and who.client,
    )
    return JSONResponse(
        index_run(rag(ctx).public_run(job.to_dict())).model_dump(mode="json"), status_code=202
    )


@router.get("/v1/rag/runs/{run_id}")
async def run(run_id: str, ctx: ServingContext = Depends(get_ctx)) -> IndexRun:
    return index_run(await anyio.to_thread.run_sync(rag(ctx).run, run_id))


@router.post("/v1/rag/runs/{run_id}/cancel")
async def cancel(run_id: str, request: Request, ctx: ServingContext = Depends(get_ctx)) -> IndexRun:
    """Stop an index run between batches: what it committed stays, whole; re-running converges."""
    who = principal(request)
    run = index_run(await anyio.to_thread.run_sync(rag(ctx).cancel_run, run_id))
    log.info(
        "audit.index_cancel",
        run_id=run_id,
        status=run.status,
        key=who and who.name,
        client=who and who.client,
    )
    return run


@router.get("/v1/rag/status")
async def status(ctx: ServingContext = Depends(get_ctx)) -> RagStatus:
    raw = await anyio.to_thread.run_sync(rag(ctx).status)
    # A lock error names the store's folder, under data_dir: "<data_dir>/vectors".
    store = raw["store"]
    if store.get("error"):
        store["error"] = PathRedactor.from_settings(ctx.settings)(store["error"])
    return RagStatus.model_validate({**raw, "runs": [index_run(r) for r in raw["runs"]]})
