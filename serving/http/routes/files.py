"""/v1/files: OpenAI's Files API, for documents a remote client wants indexed.

    POST   /v1/files                  multipart: file, purpose       → file object (admin)
    GET    /v1/files[?purpose=]                                      → list of file objects
    GET    /v1/files/{file_id}                                       → file object
    GET    /v1/files/{file_id}/content                               → the bytes
    DELETE /v1/files/{file_id}                                       → file.deleted (admin)

An upload is streamed to disk under `rag.upload_max_bytes` (BodyLimitMiddleware refuses a
larger declared body first; serving/services/files.py counts while streaming), its type judged
by content, its name sanitised (pipelines/uploads.py); index it with `POST /v1/rag/index
{"file_ids": [...]}` or `POST /v1/vector_stores/{id}/files`. The `openai` SDK's
`client.files.create(file=..., purpose="assistants")` works unchanged.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile

from pipelines.uploads import sanitize_filename
from serving.http.auth import principal
from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import APIError
from serving.http.routes.rag import rag
from serving.http.schemas import list_page
from serving.services.files import UploadTooLarge, receive_upload

log = structlog.get_logger(__name__)
router = APIRouter()
PURPOSES = (
    "assistants",
    "assistants_output",
    "batch",
    "batch_output",
    "fine-tune",
    "fine-tune-results",
    "vision",
    "user_data",
)


@router.post("/v1/files")
async def create_file(request: Request, ctx: ServingContext = Depends(get_ctx)) -> JSONResponse:
    service = rag(ctx)
    limit = ctx.settings.rag.upload_max_bytes
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise APIError("invalid_request", "send the file as multipart/form-data (file, purpose)")
    async with request.form(max_files=1, max_fields=8) as form:
        upload, purpose = form.get("file"), form.get("purpose") or "assistants"
        if not isinstance(upload, UploadFile):
            raise APIError("invalid_request", "Missing required parameter 'file'.", param="file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise APIError(
                "invalid_request",
                f"purpose must be one of: {', '.join(PURPOSES)}",
                param="purpose",
            )
        name = sanitize_filename(upload.filename)
        store = await anyio.to_thread.run_sync(service.uploads)
        try:
            rec = await receive_upload(store, upload, name, purpose, limit)
        except UploadTooLarge as e:
            raise APIError("invalid_request", str(e), param="file", status=413) from None
    who = principal(request)
    log.info("audit.file_uploaded", file_id=rec.id, bytes=rec.bytes, key=who and who.name)
    return JSONResponse(rec.to_openai())


@router.get("/v1/files")
async def list_files(
    purpose: str | None = None, ctx: ServingContext = Depends(get_ctx)
) -> dict[str, Any]:
    store = await anyio.to_thread.run_sync(rag(ctx).uploads)
    files = await anyio.to_thread.run_sync(store.files, purpose)
    return list_page([f.to_openai() for f in files])


@router.get("/v1/files/{file_id}")
async def get_file(file_id: str, ctx: ServingContext = Depends(get_ctx)) -> dict[str, Any]:
    store = await anyio.to_thread.run_sync(rag(ctx).uploads)
    return (await anyio.to_thread.run_sync(store.get, file_id)).to_openai()


@router.get("/v1/files/{file_id}/content")
async def file_content(file_id: str, ctx: ServingContext = Depends(get_ctx)) -> FileResponse:
    store = await anyio.to_thread.run_sync(rag(ctx).uploads)
    rec = await anyio.to_thread.run_sync(store.get, file_id)
    return FileResponse(
        store.path(rec),
        media_type=rec.mime,
        filename=rec.filename,
        # never rendered as a page of this origin, whatever the upload holds
        headers={"Content-Security-Policy": "sandbox", "X-Content-Type-Options": "nosniff"},
    )


@router.delete("/v1/files/{file_id}")
async def delete_file(
    file_id: str, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> dict[str, Any]:
    store = await anyio.to_thread.run_sync(rag(ctx).uploads)
    await anyio.to_thread.run_sync(store.delete, file_id)
    who = principal(request)
    log.info("audit.file_deleted", file_id=file_id, key=who and who.name)
    return {"id": file_id, "object": "file", "deleted": True}
