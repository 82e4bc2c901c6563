"""What every route reads: the app's `ServingContext`, built once by `create_app`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

if TYPE_CHECKING:
    from pipelines.settings import Settings
    from serving.engine.manager import ModelManager
    from serving.http.metrics import Metrics
    from serving.services.embedders import EmbedderPool
    from serving.services.rag import RagService


@dataclass
class ServingContext:
    """The collaborators of one app (no process-global state: two apps never share one)."""

    settings: Settings
    manager: ModelManager
    embedders: EmbedderPool
    metrics: Metrics
    rag: RagService | None = None  # retrieval and index runs (serving/services/rag.py)
    started_at: float = field(default_factory=time.time)


async def get_ctx(request: Request) -> ServingContext:
    """(async: FastAPI runs a plain function dependency in a worker thread, a hop per request)"""
    ctx: ServingContext = request.app.state.ctx
    return ctx
