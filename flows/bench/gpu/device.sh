#!/usr/bin/env bash
# On the GPU machine, from the checkout root (see stage.sh). A call that carries DEST/a keeps its
# part outside the checkout (the next call's carry replaces DEST):
#   mkdir -p /tmp/impetus-gpu-parts && cp DEST/a/* /tmp/impetus-gpu-parts/
# The next one, carrying DEST/b, installs the wheels into /tmp/impetus-gpu-site once per machine
# and runs the bench into $OUT with the arguments given:
#   bash DEST/b/src/flows/bench/gpu/device.sh DEST [runner arguments...]
set -euo pipefail
dest="$(cd "$1" && pwd)"; shift
site=/tmp/impetus-gpu-site
if [ ! -f "$site/.installed" ]; then
  # The wheels first: pip --target replaces a package folder, and mlx-cuda-13 adds to mlx/.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$dest"/b/*.whl
  cat /tmp/impetus-gpu-parts/mlx_cuda_13.tar.xz.* "$dest"/b/mlx_cuda_13.tar.xz.* | xz -d | tar -C "$site" -xf -
  touch "$site/.installed"
fi
weights="$dest/b/smollm2/model.safetensors"
if [ ! -f "$weights" ] && ls /tmp/impetus-gpu-parts/model.safetensors.* >/dev/null 2>&1; then
  cat /tmp/impetus-gpu-parts/model.safetensors.* > "$weights"  # SmolLM2's real weights (stage.sh)
fi
export PYTHONPATH="$site" PYTHONUNBUFFERED=1
cd "$dest/b/src"
python3 -c 'import mlx.core as mx; print("mlx", mx.__version__, mx.default_device())'
[ $# -eq 0 ] || exec python3 -m flows.bench.gpu.runner "$OUT" --smollm2 "$dest/b/smollm2" "$@"
