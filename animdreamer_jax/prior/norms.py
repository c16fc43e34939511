"""LayerNorm and GroupNorm with PyTorch's numerics, for the UNet, the VAE and the text encoder.

Statistics and the affine are computed in float32 whatever the activation dtype
(LDM's GroupNorm32 and OpenCLIP's LayerNorm do the same) with a two-pass
variance (`use_fast_variance=False`), as torch does: the converted MVDream
weights then reproduce the PyTorch reference (tests/test_unet.py, test_vae.py,
test_text_encoder.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def layer_norm(epsilon: float, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=jnp.float32, name=name)


def group_norm(groups: int, epsilon: float, name: str) -> nn.GroupNorm:
  return nn.GroupNorm(num_groups=groups, epsilon=epsilon, use_fast_variance=False,
                      dtype=jnp.float32, name=name)
