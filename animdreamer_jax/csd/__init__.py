"""Canonical Score Distillation (CSD): a multi-view diffusion prior pulled back through the warp.

  settings  the `csd` config section and its host schedule
  cameras   the 4 orthogonal MVDream-style cameras in the frame-t object space
  priors    DiffusionPrior: MVDream (UNet + VAE), the oracle prior, user functions
  gradient  prior -> latent -> image gradient, and its pull-back through render o warp
  term      CSD as a loss term (views of a random frame, the surrogate whose gradient is the vjp)
"""
