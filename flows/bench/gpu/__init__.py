"""The serving bench on a machine with an accelerator (MLX's CUDA backend on an NVIDIA GPU) that has
Python but no network, no uv and no MLflow: `runner` measures and writes JSON there, with only the
wheels that `wheels.sh` fetches; `flows/bench/serving_gpu.py` logs that JSON here as an MLflow run.

- `runner.py`: Impetus through HTTP, `mlx_lm.server` and a bare `BatchGenerator` loop on the same
  weights, stream levels, percentiles, the share of the memory-bandwidth limit, the step profile.
- `models.py`: the bench's model folders (random weights of a given shape decode at the speed of
  real ones) and what one decode step reads.
- `profile.py`: `impetus serve`'s app with timers wrapped around the engine from outside (no flag
  in the engine), and the `BatchGenerator` step timer the bare loop shares.
"""
