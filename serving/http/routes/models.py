"""GET /v1/models (the registry, loaded or not) and POST /api/models/load | unload."""

from __future__ import annotations

import time

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from pipelines.models.store import ModelEntry
from serving.engine.window import context_window_of
from serving.http.auth import principal
from serving.http.deps import ServingContext, get_ctx
from serving.http.openai.schemas import ModelCard, ModelList, ModelRequest

log = structlog.get_logger(__name__)
router = APIRouter()


def _card(ctx: ServingContext, e: ModelEntry) -> ModelCard:
    loaded = ctx.manager.is_loaded(e.name) or e.name in ctx.embedders.loaded()
    window = context_window_of(e.path) if e.kind == "llm" else None
    return ModelCard(
        id=e.name,
        kind=e.kind,
        status=e.status,
        loaded=loaded,
        sampling_defaults=e.defaults.fields(),
        context_window=window,
        max_model_len=window,
        max_input_tokens=window,
        display_name=e.name,
    )


@router.get("/v1/models")
async def list_models(ctx: ServingContext = Depends(get_ctx)) -> JSONResponse:
    cards = [_card(ctx, e) for e in ctx.manager.entries()]
    first, last = (cards[0].id, cards[-1].id) if cards else (None, None)
    page = ModelList(data=cards, first_id=first, last_id=last)
    return JSONResponse(page.model_dump(mode="json"))


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, ctx: ServingContext = Depends(get_ctx)) -> JSONResponse:
    return JSONResponse(_card(ctx, ctx.manager.entry(model_id)).model_dump(mode="json"))


@router.post("/api/models/load")
async def load_model(
    body: ModelRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    """Load a registry model (LLM into the manager, embedding model into the pool)."""
    entry = ctx.manager.entry(body.model)  # 404 for a name outside the registry
    who = principal(request)
    log.info("audit.model_load", model=entry.name, key=who and who.name, client=who and who.client)
    started = time.perf_counter()
    if entry.kind == "embedding":
        await ctx.embedders.get(entry.name)
    else:
        await ctx.manager.load(entry.name)
    return JSONResponse(
        {
            "model": entry.name,
            "kind": entry.kind,
            "status": "loaded",
            "seconds": round(time.perf_counter() - started, 3),
            "memory_in_use_bytes": ctx.manager.memory_in_use(),
            "memory_budget_bytes": ctx.manager.memory_budget_bytes,
        }
    )


@router.post("/api/models/unload")
async def unload_model(
    body: ModelRequest, request: Request, ctx: ServingContext = Depends(get_ctx)
) -> JSONResponse:
    """Unload a model; unloading one that is not loaded is not an error."""
    entry = ctx.manager.entry(body.model)
    who = principal(request)
    log.info(
        "audit.model_unload", model=entry.name, key=who and who.name, client=who and who.client
    )
    if entry.kind == "embedding":
        was_loaded = ctx.embedders.unload(entry.name)
    else:
        was_loaded = await ctx.manager.unload(entry.name)
    return JSONResponse(
        {
            "model": entry.name,
            "kind": entry.kind,
            "status": "unloaded" if was_loaded else "not_loaded",
            "memory_in_use_bytes": ctx.manager.memory_in_use(),
        }
    )
