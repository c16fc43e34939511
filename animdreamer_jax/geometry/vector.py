"""Vector helpers (jnp) shared by the geometry, the model, the renderer and the losses."""

from __future__ import annotations

import jax.numpy as jnp


def safe_norm(x: jnp.ndarray, axis: int = -1, keepdims: bool = False) -> jnp.ndarray:
  """Euclidean norm over `axis` whose gradient is finite (zero) at x = 0.

  The gradient of jnp.linalg.norm, x / |x|, is 0 / 0 at the origin, and a
  distance that is exactly zero (a point the cycle warp maps back onto itself,
  a flow error of zero) would turn a whole update into NaN.

  Args:
    x: (..., C, ...) vectors along `axis`.
    axis: the axis summed over.
    keepdims: keep `axis` with length 1.

  Returns:
    |x| with `axis` removed (or of length 1).
  """
  sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
  is_zero = sq <= 0.0
  # sqrt of a safe value, so that the unused branch of `where` has a finite gradient too.
  return jnp.where(is_zero, 0.0, jnp.sqrt(jnp.where(is_zero, 1.0, sq)))
