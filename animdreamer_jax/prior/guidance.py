"""Classifier-free guidance and MVDream's std rescaling of the guided prediction.

Batch orders differ between MVDream's users: its DDIM sampler stacks [uncond; cond], MVDream-threestudio's
SDS stacks [cond; uncond]. The helpers take the two halves explicitly or say which comes first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def classifier_free_guidance(eps_uncond: jax.Array, eps_cond: jax.Array, scale: float | jax.Array
                            ) -> jax.Array:
  """eps_u + scale (eps_c - eps_u); all arrays (N, ...), scale a scalar."""
  return eps_uncond + scale * (eps_cond - eps_uncond)


def split_guidance_batch(both: jax.Array, uncond_first: bool = True) -> tuple[jax.Array, jax.Array]:
  """(2N, ...) model output of a doubled batch -> (uncond, cond), each (N, ...)."""
  first, second = jnp.split(both, 2, axis=0)
  return (first, second) if uncond_first else (second, first)


def rescale_to_cond_std(guided: jax.Array, cond: jax.Array, rescale: float | jax.Array,
                        group_size: int) -> jax.Array:
  """Pulls the spread of a guided prediction back toward the conditional one (Lin et al. 2305.08891).

  MVDream-threestudio applies this to x0 predictions with groups = the views of one object:
  factor = (std(cond) + 1e-8) / (std(guided) + 1e-8) per group (over its views and all other axes), and
  out = rescale * factor * guided + (1 - rescale) * guided. (Any consistent std estimator gives the same
  ratio; population std is used.)

  Args:
    guided: (N, ...) CFG prediction, N = groups * group_size, members of a group contiguous.
    cond: (N, ...) conditional (unguided) prediction.
    rescale: 0 = off, 1 = full rescale (MVDream-threestudio uses 0.5).
    group_size: samples per group (static; the number of views).

  Returns:
    (N, ...) rescaled prediction.
  """
  n = guided.shape[0]
  if n % group_size:
    raise ValueError(f"batch {n} is not a multiple of group_size {group_size}")
  grouped = lambda x: x.reshape(n // group_size, -1)
  std_guided = jnp.std(grouped(guided), axis=1)
  std_cond = jnp.std(grouped(cond), axis=1)
  factor = (std_cond + 1e-8) / (std_guided + 1e-8)
  factor = jnp.repeat(factor, group_size).reshape((n,) + (1,) * (guided.ndim - 1))
  return rescale * factor * guided + (1.0 - rescale) * guided
