"""Operations: /api/health/live | ready | status, /api/hardware/info and /api/metrics."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from serving.http.deps import ServingContext, get_ctx
from serving.http.errors import APIError
from serving.http.metrics import CONTENT_TYPE
from serving.http.redact import PathRedactor
from serving.http.schemas import ErrorResponse, HardwareInfo, Live, Ready, ServerStatus

if TYPE_CHECKING:
    from serving.engine.manager import LoadState

router = APIRouter()


@router.get("/api/health/live")
async def live() -> Live:
    """200 whenever the process answers."""
    return Live()


@router.get("/api/health/ready", responses={503: {"model": ErrorResponse}})
async def ready(ctx: ServingContext = Depends(get_ctx)) -> Ready:
    """200 once the default model is loaded; 503 model_not_loaded before."""
    default = ctx.manager.default_model
    if default is not None and not ctx.manager.is_loaded(default):
        state = ctx.manager.load_states.get(default)
        raise APIError(
            "model_not_loaded",
            f"The default model {default!r} is not loaded yet: {_why(state)}.",
            headers={"Retry-After": "1"},
        )
    return Ready(model=default)


def _why(state: LoadState | None) -> str:
    """What the default model is waiting for, in words."""
    if state is None:
        return "nothing is loading it (POST /api/models/load starts it)"
    waited = f"{time.time() - state.started_at:.0f} s ago"
    if state.state == "failed":
        return f"loading failed: {state.error}"
    if state.state == "loaded":  # since then unloaded
        return "it was unloaded (POST /api/models/load loads it again)"
    if state.state == "importing":
        return f"importing it from its wheel into MLX format (first start; began {waited})"
    return f"loading it into memory (began {waited})"


@router.get("/api/health/status")
async def status(ctx: ServingContext = Depends(get_ctx)) -> ServerStatus:
    """Loaded models with their engine stats and queues, background loads, memory, uptime."""
    m = ctx.manager
    models = m.status()
    redact = PathRedactor.from_settings(ctx.settings)  # a load error may name model files
    loading = [
        {**s.__dict__, "error": s.error and redact(s.error)}
        for s in m.load_states.values()
        if s.state != "loaded"
    ]
    return ServerStatus.model_validate(
        {
            "status": "ready"
            if m.default_model is None or m.is_loaded(m.default_model)
            else "starting",
            "default_model": m.default_model,
            "uptime_s": round(time.time() - ctx.started_at, 1),
            "models": models,
            "loading": loading,
            "embedders": ctx.embedders.loaded(),
            "queue": {
                "depth": sum(x["engine"]["queue_depth"] for x in models),
                "limit": sum(x["engine"]["queue_limit"] for x in models),
                "running": sum(x["engine"]["batch_size"] for x in models),
            },
            "memory": m.memory_report(),
        }
    )


@router.get("/api/hardware/info")
async def hardware_info(ctx: ServingContext = Depends(get_ctx)) -> HardwareInfo:
    """`pipelines.hardware.detect()` plus the embedding backend in use: the loaded embedder's
    (after a Core ML fallback, MLX), else the one loading it would give."""
    from pipelines.embed.dispatch import describe_embedding_backend
    from pipelines.hardware import detect

    hardware = await asyncio.to_thread(detect)  # first call imports mlx
    info = hardware.to_dict()
    name = ctx.settings.models.embedding
    described = describe_embedding_backend(
        ctx.settings, ctx.embedders.peek(name), hardware=hardware
    )
    info["embedding"] = {
        "model": name,
        "backend": described["backend"],
        "configured_backend": ctx.settings.embedding.backend,
        "reason": described["reason"],
        "fallback": described["fallback"],
        "loaded": described["loaded"],
    }
    return HardwareInfo.model_validate(info)


@router.get(
    "/api/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(ctx: ServingContext = Depends(get_ctx)) -> Response:
    """Prometheus text exposition."""
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)
