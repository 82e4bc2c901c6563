"""Entry point of the `impetus` console script: set up the process, then run the CLI.

Kept free of heavy imports: on Linux it re-executes the interpreter once with Debian's OpenBLAS
preloaded when it is installed (MLX's CPU wheel bundles the reference BLAS, 20-30x slower for
float32 GEMM; see DESIGN.md), and only then imports the CLI. `IMPETUS_BLAS=reference` opts out.
"""

from __future__ import annotations

import os
import sys


def _reexec_with_openblas() -> None:
    from pipelines.hardware import blas_preload

    preload = blas_preload(dict(os.environ))
    if preload is None or os.environ.get("_IMPETUS_REEXEC"):
        return
    env = {**os.environ, "LD_PRELOAD": preload, "_IMPETUS_REEXEC": "1"}
    os.execve(sys.executable, [sys.executable, "-m", "flows.launch", *sys.argv[1:]], env)


def main() -> None:
    from pipelines import telemetry

    telemetry.disable()
    _reexec_with_openblas()
    from flows.cli import app

    app(prog_name="impetus")


if __name__ == "__main__":
    main()
