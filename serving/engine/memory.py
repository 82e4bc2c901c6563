"""What this process really holds in memory, for the model manager's budget and /api/health/status.

An engine's own figure (weights + KV cache + prefix cache) misses what MLX keeps in its buffer
cache, the tokenizers, the embedder, Python's heap and the allocator's fragmentation: under
streaming load the resident set grew to 3.6-4.7 GB while the engines reported 0.8-1.0 GB
(issue 19). `process_memory()` reads the resident set size (psutil) and MLX's active and cache
memory; `footprint_bytes` is the larger of the two, because on MLX's CPU backend its buffers are
part of the resident set already, while on Metal they are GPU allocations that the resident set
may not show: the larger one is a floor in both cases and never counts a buffer twice.

MLX is never imported here: a process that has not imported it holds no MLX memory.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessMemory:
    """One reading of the process's memory, in bytes."""

    rss_bytes: int
    mlx_active_bytes: int = 0
    mlx_cache_bytes: int = 0

    @property
    def mlx_bytes(self) -> int:
        return self.mlx_active_bytes + self.mlx_cache_bytes

    @property
    def footprint_bytes(self) -> int:
        """The process's real footprint: its resident set, or MLX's memory when that is larger."""
        return max(self.rss_bytes, self.mlx_bytes)


def _mlx_memory() -> tuple[int, int]:
    """MLX's active and cache bytes, (0, 0) when MLX is not imported in this process."""
    mx = sys.modules.get("mlx.core")
    if mx is None:
        return 0, 0
    try:
        # mlx >= 0.24 names them at the top level; older releases under mx.metal.
        ns = mx if hasattr(mx, "get_active_memory") else mx.metal
        return int(ns.get_active_memory()), int(ns.get_cache_memory())
    except Exception:  # a backend without the counters
        return 0, 0


def process_memory() -> ProcessMemory:
    """The current reading (a few microseconds: one /proc read and two MLX counters)."""
    import psutil

    active, cache = _mlx_memory()
    return ProcessMemory(
        rss_bytes=int(psutil.Process().memory_info().rss),
        mlx_active_bytes=active,
        mlx_cache_bytes=cache,
    )
