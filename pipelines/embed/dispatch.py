"""Pick and load the embedding backend for a registry model.

`load_embedder(settings)` is what ingestion, search and /v1/embeddings call. `embedding.backend`
chooses: `mlx` and `coreml` force a backend; `auto` takes Core ML (the Neural Engine) when the host
is macOS on Apple Silicon with Core ML usable (`pipelines.hardware.detect()`), else MLX. Core ML
converts the model on first use (cached in the model store). Any Core ML failure at conversion
or load falls back to MLX with a warning: a run never fails because the ANE path did.

The embedder is its own object (its own MLX arrays or Core ML models), separate from the LLM
engine and never run on the engine's thread, so embedding and decode can proceed together.
`describe_embedding_backend()` says which backend embeds and why (for /api/hardware/info and the
ingest summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from pipelines.embed.base import Backend, Embedder

if TYPE_CHECKING:
    from pipelines.hardware import HardwareInfo
    from pipelines.settings import Settings

log = structlog.get_logger(__name__)

# Why Core ML was not used for a model in this process (name -> reason), for describe().
_FALLBACKS: dict[str, str] = {}


def choose_backend(settings: Settings, hardware: HardwareInfo | None = None) -> tuple[Backend, str]:
    """The backend `embedding.backend` asks for on this host, and why."""
    requested = settings.embedding.backend
    if requested != "auto":
        return requested, "set by embedding.backend"
    if hardware is None:
        from pipelines.hardware import detect

        hardware = detect()
    if hardware.apple_silicon and hardware.coreml_usable:
        return "coreml", "auto: macOS on Apple Silicon with Core ML usable"
    return "mlx", f"auto: Core ML is not usable on this host ({hardware.os} {hardware.machine})"


def load_embedder(
    settings: Settings, name: str | None = None, *, hardware: HardwareInfo | None = None
) -> Embedder:
    """The embedder for registry model `name` (default: `models.embedding`)."""
    from pipelines.embed.mlx_bert import MLXBertEmbedder
    from pipelines.models.store import ModelStore

    name = name or settings.models.embedding
    folder = ModelStore(settings.models_dir).resolve(name)
    backend, _ = choose_backend(settings, hardware)
    if backend == "coreml":
        try:
            from pipelines.embed.coreml_bert import CoreMLBertEmbedder

            embedder = CoreMLBertEmbedder.from_folder(
                folder, models_dir=settings.models_dir, name=name
            )
            _FALLBACKS.pop(name, None)
            return embedder
        except Exception as exc:  # any Core ML failure: conversion, compile, load
            reason = f"{type(exc).__name__}: {exc}"
            _FALLBACKS[name] = reason
            log.warning(
                "embedding.coreml.fallback",
                model=name,
                requested=settings.embedding.backend,
                reason=reason,
                using="mlx",
            )
    return MLXBertEmbedder.from_folder(folder, name=name)


def describe_embedding_backend(
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    hardware: HardwareInfo | None = None,
) -> dict[str, Any]:
    """Which backend embeds (the loaded `embedder`'s, else the one that would be chosen) and why."""
    if hardware is None:
        from pipelines.hardware import detect

        hardware = detect()
    name = embedder.name if embedder is not None else settings.models.embedding
    planned, reason = choose_backend(settings, hardware)
    fallback = _FALLBACKS.get(name) if planned == "coreml" else None
    if embedder is not None:
        backend = embedder.backend
        fallback = fallback if backend == "mlx" else None
    else:  # what load_embedder would give, given what already happened in this process
        backend = "mlx" if fallback else planned
    return {
        "model": name,
        "requested": settings.embedding.backend,
        "backend": backend,
        "reason": f"fallback to MLX: {fallback}" if fallback else reason,
        "fallback": fallback is not None,
        "loaded": embedder is not None,
        "device": "coreml:ALL (ANE, GPU or CPU)" if backend == "coreml" else hardware.mlx_device,
        "coreml_usable": hardware.coreml_usable,
        "package_dir": str(getattr(embedder, "package_dir", "") or "") or None,
    }
