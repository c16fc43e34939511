"""Samples along camera rays (lab4d `utils/render_utils.py` semantics).

Rays are camera-frame directions scaled to z = 1 (`geometry.rays.camera_rays`),
so a "depth" is the camera z coordinate and the point at depth z is z * dir.
- Training: `uniform_depths` (evenly spaced between the frame's near and far,
  no jitter: lab4d's `perturb=False`); `stratified_depths` is available.
- Evaluation: 32 coarse + 32 importance samples drawn deterministically from
  the coarse weights (`importance_depths`, nerf_pl's `sample_pdf`), merged and
  sorted.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def uniform_depths(near_far: jnp.ndarray, num_samples: int) -> jnp.ndarray:
  """Evenly spaced depths from near to far (both included).

  Args:
    near_far: (..., 2) near and far depth.
    num_samples: S >= 2.

  Returns:
    (..., S) depths.
  """
  steps = jnp.linspace(0.0, 1.0, num_samples, dtype=near_far.dtype)
  return near_far[..., :1] * (1.0 - steps) + near_far[..., 1:2] * steps


def stratified_depths(key: jax.Array, depths: jnp.ndarray) -> jnp.ndarray:
  """Jitters sorted depths uniformly inside their mid-point intervals (lab4d `perturb`).

  Args:
    key: PRNG key.
    depths: (..., S) sorted depths.

  Returns:
    (..., S) jittered depths, still sorted.
  """
  mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
  upper = jnp.concatenate([mids, depths[..., -1:]], axis=-1)
  lower = jnp.concatenate([depths[..., :1], mids], axis=-1)
  u = jax.random.uniform(key, depths.shape, depths.dtype)
  return lower + (upper - lower) * u


def ray_points(dirs: jnp.ndarray, depths: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Points and interval lengths along rays.

  Args:
    dirs: (..., 3) camera-frame directions with z = 1.
    depths: (..., S) sample depths (camera z).

  Returns:
    points: (..., S, 3) = depth * dir.
    deltas: (..., S) Euclidean distance to the next sample; the last interval
      repeats the previous one (lab4d).
  """
  points = dirs[..., None, :] * depths[..., :, None]
  dz = depths[..., 1:] - depths[..., :-1]
  dz = jnp.concatenate([dz, dz[..., -1:]], axis=-1)
  return points, dz * jnp.linalg.norm(dirs, axis=-1, keepdims=True)


def sample_pdf(bins: jnp.ndarray, weights: jnp.ndarray, num_samples: int,
               key: Optional[jax.Array] = None, eps: float = 1e-5) -> jnp.ndarray:
  """Inverse-CDF sampling of a piecewise-constant density (nerf_pl's `sample_pdf`).

  Args:
    bins: (..., M + 1) bin edges.
    weights: (..., M) non-negative bin weights (eps is added).
    num_samples: K.
    key: PRNG key for random u; None gives the deterministic u = linspace(0, 1, K).

  Returns:
    (..., K) samples (not sorted when random).
  """
  weights = weights + eps
  pdf = weights / jnp.sum(weights, axis=-1, keepdims=True)
  cdf = jnp.concatenate([jnp.zeros_like(pdf[..., :1]), jnp.cumsum(pdf, axis=-1)], axis=-1)
  lead = cdf.shape[:-1]
  if key is None:
    u = jnp.broadcast_to(jnp.linspace(0.0, 1.0, num_samples, dtype=cdf.dtype),
                         lead + (num_samples,))
  else:
    u = jax.random.uniform(key, lead + (num_samples,), cdf.dtype)
  num_bins = weights.shape[-1]
  # searchsorted(cdf, u, right=True) as a fixed-shape count.
  above = jnp.sum(cdf[..., None, :] <= u[..., :, None], axis=-1)
  below = jnp.maximum(above - 1, 0)
  above = jnp.minimum(above, num_bins)
  cdf_lo = jnp.take_along_axis(cdf, below, axis=-1)
  cdf_hi = jnp.take_along_axis(cdf, above, axis=-1)
  bin_lo = jnp.take_along_axis(bins, below, axis=-1)
  bin_hi = jnp.take_along_axis(bins, above, axis=-1)
  denom = cdf_hi - cdf_lo
  denom = jnp.where(denom < eps, 1.0, denom)  # empty bins are never chosen anyway
  return bin_lo + (u - cdf_lo) / denom * (bin_hi - bin_lo)


def importance_depths(depths: jnp.ndarray, weights: jnp.ndarray,
                      num_importance: int) -> jnp.ndarray:
  """lab4d's evaluation resampling: coarse depths + K deterministic PDF samples, sorted.

  Bins are the mid-points of the coarse depths and the PDF is the coarse
  weights without the first and last sample (as lab4d / nerf_pl). No gradient
  flows into the new depths.

  Args:
    depths: (..., S) sorted coarse depths, S >= 3.
    weights: (..., S) coarse compositing weights.
    num_importance: K.

  Returns:
    (..., S + K) sorted depths.
  """
  mids = 0.5 * (depths[..., 1:] + depths[..., :-1])
  extra = sample_pdf(mids, weights[..., 1:-1], num_importance)
  merged = jnp.concatenate([depths, jax.lax.stop_gradient(extra)], axis=-1)
  return jax.lax.stop_gradient(jnp.sort(merged, axis=-1))
