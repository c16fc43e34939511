"""animdreamer_jax: animatable 3D models from monocular videos and text, in JAX.

Folders follow the pipeline (see README.md):
  geometry/  pure jnp rotations, dual quaternions, SE(3), rays
  assets/    host-side glTF / mesh-sequence loading and posing, CPU rasteriser
  data/      the one on-disk video format, synthetic videos, batch sampling
  model/     Flax fields, encodings, articulation, Gaussian-bone skinning
  render/    ray sampling, SDF->density, compositing, warp-composed rendering
  train/     losses, schedules, the jitted step, the host loop, checkpoints
  prior/     diffusion priors (MVDream in Flax, oracle), noise schedule, DDIM
  csd/       Canonical Score Distillation
  export/    marching cubes, rigged glTF, videos, viewer
  eval/      alignment, Chamfer distance, F-score
"""

__version__ = "0.1.0"
