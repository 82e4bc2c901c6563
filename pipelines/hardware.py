"""Hardware detection: OS, chip, memory, MLX's device, Neural Engine and Core ML, and which BLAS MLX uses.

`detect()` is what `/api/hardware/info`, `impetus models list` and the embedding backend dispatch
read. On Linux, MLX's CPU wheel bundles the reference BLAS (a few GFLOP/s); the launcher preloads
Debian's OpenBLAS when it is installed (`blas_preload()`), which is 20-30x faster for float32 GEMM.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# Debian's libopenblas0-pthread puts its BLAS here; it exports the reference BLAS symbols, so
# preloading it makes MLX's `sgemm_` calls land in OpenBLAS.
OPENBLAS_CANDIDATES = (
    Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"),
    Path("/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3"),
)


@dataclass(frozen=True)
class HardwareInfo:
    os: str
    os_version: str
    machine: str
    chip: str
    cpu_count: int
    memory_bytes: int
    apple_silicon: bool
    mlx_version: str | None
    mlx_device: str | None
    metal_available: bool
    cuda_available: bool
    neural_engine: bool
    coreml_usable: bool
    blas: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def openblas_path() -> Path | None:
    """Debian's OpenBLAS, if installed."""
    return next((p for p in OPENBLAS_CANDIDATES if p.exists()), None)


def blas_preload(environ: dict[str, str]) -> str | None:
    """The LD_PRELOAD value that puts OpenBLAS under MLX, or None when there is nothing to do.

    `IMPETUS_BLAS=reference` opts out (for benchmarks that compare the two).
    """
    if platform.system() != "Linux" or environ.get("IMPETUS_BLAS", "auto") == "reference":
        return None
    lib = openblas_path()
    if lib is None:
        return None
    current = environ.get("LD_PRELOAD", "")
    if str(lib) in current.split():
        return None
    return f"{lib} {current}".strip()


def _chip() -> str:
    system = platform.system()
    if system == "Darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=2,
                check=False,
            )
            if out.stdout.strip():
                return out.stdout.strip()
        except OSError:
            pass
    if system == "Linux":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def loaded_blas() -> str:
    """Which BLAS this process's MLX calls: 'accelerate', 'openblas' or 'reference'."""
    if platform.system() == "Darwin":
        return "accelerate"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    if "libopenblas" in maps:
        return "openblas"
    # Not yet loaded (mlx not imported): say what would be used.
    if "libmlx" not in maps:
        preload = os.environ.get("LD_PRELOAD", "")
        return "openblas" if "openblas" in preload else "reference"
    return "reference"


def _coreml_usable(apple_silicon: bool) -> bool:
    # Core ML runs models only on macOS; the Linux coremltools wheel converts but cannot predict.
    return apple_silicon and importlib.util.find_spec("coremltools") is not None


@lru_cache(maxsize=1)
def detect() -> HardwareInfo:
    """Probe the host once (imports mlx to ask for its device)."""
    system = platform.system()
    machine = platform.machine()
    apple_silicon = system == "Darwin" and machine == "arm64"
    mlx_version = mlx_device = None
    metal = cuda = False
    try:
        import mlx.core as mx

        mlx_version = str(getattr(mx, "__version__", "unknown"))
        mlx_device = str(mx.default_device())
        metal = bool(mx.metal.is_available())
        cuda = bool(getattr(mx, "cuda", None) and mx.cuda.is_available())
    except ImportError:
        pass
    return HardwareInfo(
        os=system,
        os_version=platform.mac_ver()[0] if system == "Darwin" else platform.release(),
        machine=machine,
        chip=_chip(),
        cpu_count=os.cpu_count() or 1,
        memory_bytes=_memory_bytes(),
        apple_silicon=apple_silicon,
        mlx_version=mlx_version,
        mlx_device=mlx_device,
        metal_available=metal,
        cuda_available=cuda,
        neural_engine=apple_silicon,  # every Apple Silicon chip has an ANE
        coreml_usable=_coreml_usable(apple_silicon),
        blas=loaded_blas(),
    )
