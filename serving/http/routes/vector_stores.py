"""/v1/vector_stores: OpenAI's vector stores, each one an Impetus collection (its id = its name).

    POST   /v1/vector_stores                          {"name"?, "metadata"?, "file_ids"?}
    GET    /v1/vector_stores                          → list of vector_store (with file_counts)
    GET    /v1/vector_stores/{id}
    DELETE /v1/vector_stores/{id}                     → vector_store.deleted (admin)
    POST   /v1/vector_stores/{id}/files               {"file_id"} → vector_store.file (in_progress)
    GET    /v1/vector_stores/{id}/files[/{file_id}]   → status from the file's index run
    POST   /v1/vector_stores/{id}/search              {"query", "max_num_results"?, "filters"?}

So `client.vector_stores.create`, `client.vector_stores.files.upload_and_poll` and
`client.vector_stores.search` of the `openai` SDK run unchanged. Logic in
serving/services/vector_stores.py.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import APIError
from serving.http.routes.rag import rag
from serving.http.schemas import list_page
from serving.services.vector_stores import VectorStores

router = APIRouter()
# How often the SDK's *_and_poll helpers ask (they read this header; default 1 s).
POLL_HEADERS = {"openai-poll-after-ms": "300"}


class CreateRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # chunking_strategy, expires_after, description

    name: str | None = Field(None, max_length=256)
    metadata: dict[str, str] | None = None
    file_ids: list[str] = Field(default_factory=list, max_length=500)


class AddFileRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # attributes, chunking_strategy

    file_id: str = Field(min_length=1)


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # ranking_options, rewrite_query

    query: str | list[str]
    max_num_results: int = Field(10, ge=1, le=50)
    filters: dict[str, Any] | None = None


def stores(ctx: ServingContext) -> VectorStores:
    return VectorStores(rag(ctx))


async def _call(fn: Any, *args: Any) -> Any:
    """A blocking service call in a worker thread (its errors are mapped in errors.py)."""
    return await anyio.to_thread.run_sync(fn, *args)


@router.post("/v1/vector_stores")
async def create(body: CreateRequest, ctx: ServingContext = Depends(get_ctx)) -> dict[str, Any]:
    vs = stores(ctx)
    created = await _call(vs.create, body.name, body.metadata)
    for file_id in body.file_ids:
        await vs.add_file(created["id"], file_id)
    return dict(await _call(vs.get, created["id"])) if body.file_ids else dict(created)


@router.get("/v1/vector_stores")
async def list_stores(ctx: ServingContext = Depends(get_ctx)) -> dict[str, Any]:
    return list_page(await _call(stores(ctx).all))


@router.get("/v1/vector_stores/{vector_store_id}")
async def get(vector_store_id: str, ctx: ServingContext = Depends(get_ctx)) -> dict[str, Any]:
    return dict(await _call(stores(ctx).get, vector_store_id))


@router.delete("/v1/vector_stores/{vector_store_id}")
async def delete(vector_store_id: str, ctx: ServingContext = Depends(get_ctx)) -> dict[str, Any]:
    return dict(await _call(stores(ctx).delete, vector_store_id))


@router.post("/v1/vector_stores/{vector_store_id}/files")
async def add_file(
    vector_store_id: str, body: AddFileRequest, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    obj = await stores(ctx).add_file(vector_store_id, body.file_id)
    return JSONResponse(obj, headers=POLL_HEADERS)


@router.get("/v1/vector_stores/{vector_store_id}/files")
async def list_files(
    vector_store_id: str, ctx: ServingContext = Depends(get_ctx)
) -> dict[str, Any]:
    return list_page(await _call(stores(ctx).files, vector_store_id))


@router.get("/v1/vector_stores/{vector_store_id}/files/{file_id}")
async def get_file(
    vector_store_id: str, file_id: str, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    obj = await _call(stores(ctx).file, vector_store_id, file_id)
    return JSONResponse(obj, headers=POLL_HEADERS)


@router.post("/v1/vector_stores/{vector_store_id}/search")
async def search(
    vector_store_id: str, body: SearchRequest, ctx: ServingContext = Depends(get_ctx)
) -> dict[str, Any]:
    query = body.query if isinstance(body.query, str) else " ".join(body.query)
    if not query.strip():
        raise APIError("invalid_request", "query must not be empty", param="query")
    data = await stores(ctx).search(vector_store_id, query, body.max_num_results, body.filters)
    return {
        "object": "vector_store.search_results.page",
        "search_query": [query],
        "data": data,
        "has_more": False,
        "next_page": None,
    }
