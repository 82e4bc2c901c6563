from __future__ import annotations

import platform

import pytest

from pipelines import hardware


def test_detect_describes_this_host() -> None:
    info = hardware.detect()
    assert info.os == platform.system()
    assert info.cpu_count >= 1 and info.memory_bytes > 0
    assert info.mlx_version is not None and info.mlx_device is not None
    assert info.blas in {"openblas", "reference", "accelerate"}
    if platform.system() == "Linux":
        # No Neural Engine, Metal or Core ML runtime off macOS.
        assert not info.apple_silicon and not info.neural_engine and not info.coreml_usable
        assert not info.metal_available
        assert "cpu" in info.mlx_device.lower()
    assert set(info.to_dict()) >= {"os", "chip", "memory_bytes", "mlx_device", "blas"}


@pytest.mark.skipif(platform.system() != "Linux", reason="OpenBLAS preloading is for Linux")
def test_blas_preload_rules() -> None:
    lib = hardware.openblas_path()
    if lib is None:
        assert hardware.blas_preload({}) is None
        return
    assert hardware.blas_preload({}) == str(lib)
    assert hardware.blas_preload({"LD_PRELOAD": "/x.so"}) == f"{lib} /x.so"
    assert hardware.blas_preload({"LD_PRELOAD": str(lib)}) is None  # already there
    assert hardware.blas_preload({"IMPETUS_BLAS": "reference"}) is None  # opted out


@pytest.mark.skipif(hardware.openblas_path() is None, reason="Debian's OpenBLAS is not installed")
def test_the_cli_runs_mlx_on_openblas(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "_IMPETUS_REEXEC")}
    env["IMPETUS_DATA_DIR"] = str(tmp_path)
    out = subprocess.run(
        ["impetus", "hardware", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["blas"] == "openblas"
    env["IMPETUS_BLAS"] = "reference"
    out = subprocess.run(
        ["impetus", "hardware", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout)["blas"] == "reference"
