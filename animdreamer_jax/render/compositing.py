"""Alpha compositing along rays (lab4d `utils/render_utils.py` semantics).

alpha_i = 1 - exp(-sigma_i delta_i), T_i = exp(-sum_{j<i} sigma_j delta_j),
w_i = T_i alpha_i. Expected values are taken with weights normalised by the
opacity sum_i w_i (lab4d renders the foreground colour, depth and features
this way; composite onto a background with `over_background`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

# Added to the opacity before normalising (lab4d uses the same 1e-6).
NORMALIZE_EPS = 1e-6


def alpha_weights(density: jnp.ndarray,
                  deltas: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Volume-rendering weights and transmittance.

  Args:
    density: (..., S) densities sigma >= 0.
    deltas: (..., S) distances between consecutive samples along the ray (the
      last one repeats the previous interval, as lab4d does).

  Returns:
    weights: (..., S) T_i alpha_i.
    transmittance: (..., S) T_{i+1} = exp(-sum_{j<=i} sigma_j delta_j), i.e.
      the light left AFTER sample i (lab4d's `transmit`, used by the
      visibility loss).
  """
  optical = density * deltas
  alpha = -jnp.expm1(-optical)  # 1 - exp(-x), accurate for small x
  after = jnp.exp(-jnp.cumsum(optical, axis=-1))
  before = jnp.concatenate([jnp.ones_like(after[..., :1]), after[..., :-1]], axis=-1)
  return before * alpha, after


def opacity(weights: jnp.ndarray) -> jnp.ndarray:
  """Accumulated opacity (the rendered mask). (..., S) -> (...,)."""
  return jnp.sum(weights, axis=-1)


def normalized_weights(weights: jnp.ndarray) -> jnp.ndarray:
  """weights / (opacity + 1e-6). (..., S) -> (..., S)."""
  return weights / (opacity(weights)[..., None] + NORMALIZE_EPS)


def composite(weights: jnp.ndarray, values: jnp.ndarray,
              normalize: bool = True, detach_weights: bool = False) -> jnp.ndarray:
  """Weighted sum of per-sample values along rays.

  Args:
    weights: (..., S) compositing weights.
    values: (..., S, C) or (..., S) per-sample values.
    normalize: divide the weights by the opacity first (lab4d's expected
      values); False gives the plain alpha-composite over black.
    detach_weights: stop the gradient through the weights (lab4d does this for
      the cycle distance and skinning entropy, so those losses do not move the
      density).

  Returns:
    (..., C) or (...,).
  """
  w = normalized_weights(weights) if normalize else weights
  if detach_weights:
    w = jax.lax.stop_gradient(w)
  if values.ndim == w.ndim:
    return jnp.sum(w * values, axis=-1)
  return jnp.einsum("...s,...sc->...c", w, values)


def expected_depth(weights: jnp.ndarray, depths: jnp.ndarray) -> jnp.ndarray:
  """Opacity-normalised expected depth. (..., S), (..., S) -> (...,)."""
  return composite(weights, depths)


def masked_composite(weights: jnp.ndarray, values: jnp.ndarray,
                     valid: jnp.ndarray) -> jnp.ndarray:
  """Composite with weights w_i * valid_i renormalised (lab4d's flow rendering).

  Args:
    weights: (..., S).
    values: (..., S, C).
    valid: (..., S) in {0, 1}.

  Returns:
    (..., C).
  """
  w = weights * valid
  w = w / (jnp.sum(w, axis=-1, keepdims=True) + NORMALIZE_EPS)
  return jnp.einsum("...s,...sc->...c", w, values)


def over_background(rgb: jnp.ndarray, mask: jnp.ndarray,
                    background: jnp.ndarray | float = 1.0) -> jnp.ndarray:
  """Puts an opacity-normalised colour over a background: rgb m + bg (1 - m).

  Args:
    rgb: (..., 3) normalised colour (as returned by the renderer).
    mask: (...,) opacity.
    background: scalar or (..., 3) background colour (1.0: white, as CSD).

  Returns:
    (..., 3).
  """
  return rgb * mask[..., None] + jnp.asarray(background) * (1.0 - mask[..., None])


def sample_mean(values: jnp.ndarray, axis: int = -1,
                where: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Plain mean over samples (lab4d reduces eikonal and delta-skin this way)."""
  return jnp.mean(values, axis=axis, where=where)
