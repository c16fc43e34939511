"""Benchmarks of the `bench` subcommand: each prints ratios measured in the same run.

  step    the extraction's reconstruction train step (achieved FLOP/s over dense matmul FLOP/s)
  unet    the MVDream UNet forward + input VJP, JAX vs PyTorch
  csd     one paper-scale CSD train step (GPU): time, FLOP/s over matmul, peak memory
  common  what they share: the matmul peak, XLA's FLOP and memory figures, a synthetic video
"""
