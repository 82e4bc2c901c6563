#!/usr/bin/env bash
# The wheels that `python3 -m flows.bench.gpu.runner` needs on the GPU machine (Python 3.12, no
# network), at the versions uv.lock pins: MLX with its CUDA backend, mlx-lm, and what Impetus's
# HTTP app imports that the machine's image lacks (../shared/GPU.md lists what it has). Written
# to .whl/ (gitignored). The CUDA wheel is re-packed as tar.xz (the GPU machine unpacks it into
# the same folder as the others): as a wheel it is over one transfer's 64 MiB.
#
#   flows/bench/gpu/wheels.sh            # → .whl/*.whl and .whl/mlx_cuda_13.tar.xz
set -euo pipefail
cd "$(dirname "$0")/../../.."
out=.whl
mkdir -p "$out"
MLX=0.32.4
pins=(
  "mlx==$MLX" "mlx-lm==0.32.2"
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 python-dotenv==1.2.4
  annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
  fastapi==0.154.0 starlette==1.10.0 uvicorn==0.54.0 sse-starlette==3.7.0 h11==0.16.0
  anyio==4.16.0 annotated-doc==0.0.7 opentelemetry-api==1.45.2 importlib-metadata==9.1.0
  zipp==4.1.2 structlog==26.1.0 limits==5.8.0 deprecated==1.3.1 swagger-ui-bundle-v2==5.31.0
  # tool schemas (serving/services/tools.py), for the agent loop's requests with tools
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  attrs==26.1.0
)
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_39_x86_64 --platform manylinux_2_35_x86_64 \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$1" "${@:2}"
}
download "$out" "${pins[@]}"
if [ ! -f "$out/mlx_cuda_13.tar.xz" ]; then
  tmp=$(mktemp -d)
  download "$tmp" "mlx-cuda-13==$MLX"
  (cd "$tmp" && mkdir site && python3 -m zipfile -e mlx_cuda_13-*.whl site)
  tar -C "$tmp/site" -cf - . | xz -T0 -9 > "$out/mlx_cuda_13.tar.xz"
  rm -rf "$tmp"
fi
ls -la "$out"
du -sh "$out"
