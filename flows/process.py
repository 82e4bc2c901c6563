"""Set up an `impetus` process before the CLI is imported: telemetry off, and on Linux a re-exec
of the interpreter with Debian's OpenBLAS preloaded when it is installed (MLX's CPU wheel bundles
the reference BLAS, 20-30x slower for float32 GEMM; see DESIGN.md). `IMPETUS_BLAS=reference`
opts out. Kept free of heavy imports.
"""

from __future__ import annotations

import os
import sys


def prepare() -> None:
    """Telemetry off; re-execute as `python -m flows.launch` with OpenBLAS preloaded, once."""
    from pipelines import telemetry

    telemetry.disable()
    _reexec_with_openblas()


def _reexec_with_openblas() -> None:
    from pipelines.hardware import blas_preload

    preload = blas_preload(dict(os.environ))
    if preload is None or os.environ.get("_IMPETUS_REEXEC"):
        return
    env = {**os.environ, "LD_PRELOAD": preload, "_IMPETUS_REEXEC": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "flows.launch", *sys.argv[1:]], env)
