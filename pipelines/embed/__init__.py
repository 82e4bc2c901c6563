"""Text embedding: the `Embedder` protocol and its implementations.

`MLXBertEmbedder` is re-exported lazily so that importing the protocol does not import MLX.
"""

from typing import TYPE_CHECKING, Any

from pipelines.embed.base import Embedder, EmbedderLoadError, Embedding

if TYPE_CHECKING:
    from pipelines.embed.mlx_bert import MLXBertEmbedder, bundled_minilm_folder

__all__ = ["Embedder", "EmbedderLoadError", "Embedding", "MLXBertEmbedder", "bundled_minilm_folder"]


def __getattr__(name: str) -> Any:
    if name in ("MLXBertEmbedder", "bundled_minilm_folder"):
        from pipelines.embed import mlx_bert

        return getattr(mlx_bert, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
