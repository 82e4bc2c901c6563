#!/usr/bin/env bash
# Stage the GPU bench for the device tool, whose calls carry at most 64 MiB each: the wheels
# (wheels.sh), this checkout's code and SmolLM2's config and tokenizer, into two folders of the
# checkout that the tool sends, DEST/a and DEST/b (DEST must be ignored by git, e.g. listed in
# .git/info/exclude; the tool's `carry` names each). The CUDA wheel's tar.xz is split between them.
#
#   flows/bench/gpu/stage.sh DEST      # e.g. /work/main/.gpubench
# Then, on the device (from the checkout root there), one call carrying DEST/a (then DEST/w1 and
# DEST/w2 for SmolLM2's weights, the same way), and while that machine is still warm one carrying DEST/b:
#   mkdir -p /tmp/impetus-gpu-parts && cp DEST/a/* /tmp/impetus-gpu-parts/     # a, w1, w2
#   bash DEST/b/src/flows/bench/gpu/device.sh DEST [runner arguments...]
set -euo pipefail
root="$(cd "$(dirname "$0")/../../.." && pwd)"
dest="${1:?usage: stage.sh DEST}"
[ -f "$root/.whl/mlx_cuda_13.tar.xz" ] || "$root/flows/bench/gpu/wheels.sh"
rm -rf "$dest"
mkdir -p "$dest/a" "$dest/b/src" "$dest/b/smollm2"
split -b 40M "$root/.whl/mlx_cuda_13.tar.xz" "$dest/b/mlx_cuda_13.tar.xz."
mv "$dest/b/mlx_cuda_13.tar.xz.aa" "$dest/a/"
cp "$root"/.whl/*.whl "$dest/b/"
# Tracked and new files as they are in the working tree (dashboard sources stay behind).
(cd "$root" && git ls-files -z --cached --others --exclude-standard flows serving/__init__.py serving/engine serving/http \
   serving/services serving/tracing.py pipelines configs data/samples | grep -zv '^serving/dashboard' \
   | xargs -0 cp --parents -t "$dest/b/src")
models="$root/data/state/models/smollm2-135m-instruct"
cp "$models"/{config.json,tokenizer.json,tokenizer_config.json} "$dest/b/smollm2/"
# SmolLM2's real weights (110 MB; speculative decoding and the agent loop need them) in parts of
# their own folders, DEST/w1, DEST/w2: each carried like DEST/a, before the call that runs.
mkdir -p "$dest/w"
split -b 56M "$models/model.safetensors" "$dest/w/model.safetensors."
i=1
for part in "$dest"/w/model.safetensors.*; do mkdir -p "$dest/w$i"; mv "$part" "$dest/w$i/"; i=$((i + 1)); done
rmdir "$dest/w"
du -sh "$dest"/*
