"""Canonical Score Distillation (CSD): a multi-view diffusion prior pulled back through the warp.

Modules:
  config          the `csd` config section (`csd_config()`).
  cameras         the 4 orthogonal MVDream-style cameras in the frame-t object space.
  prior_interface DiffusionPrior: MVDream (UNet + VAE), the oracle prior, user functions.
  csd_step        the pure CSD gradient and the jitted train step (same TrainState as extraction).
  hook            mixing a CSD step into the extraction trainer every k-th iteration.
  memory          peak memory of the paper-scale step from XLA's memory_analysis().
"""
