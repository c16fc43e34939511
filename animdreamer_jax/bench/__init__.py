"""Benchmarks of the `bench` subcommand: each prints ratios measured in the same run.

  step   the jitted reconstruction train step (achieved FLOP/s over dense matmul FLOP/s)
  unet   the MVDream UNet forward + input VJP, JAX vs PyTorch
  csd    one paper-scale CSD train step (GPU): time, FLOP/s over matmul, peak memory
"""
