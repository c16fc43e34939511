"""Dual quaternions for rigid transforms, as (..., 8) arrays.

Layout: real part (x, y, z, w) then dual part (x, y, z, w). A rigid transform
p -> R p + t with R = rot(q) is the unit dual quaternion
  real = q,  dual = 0.5 * (t, 0) * q.
Products compose like matrices: dq_multiply(a, b) applies b first, then a.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import quaternion as quat_lib

# Full float32 matmuls: GPUs would otherwise use TF32 (~1e-3 relative error).
_EXACT = jax.lax.Precision.HIGHEST


def _real(dq: jnp.ndarray) -> jnp.ndarray:
  return dq[..., :4]


def _dual(dq: jnp.ndarray) -> jnp.ndarray:
  return dq[..., 4:]


def _pure(v: jnp.ndarray) -> jnp.ndarray:
  """Embeds 3-vectors as pure quaternions (v, 0). (..., 3) -> (..., 4)."""
  return jnp.concatenate([v, jnp.zeros_like(v[..., :1])], axis=-1)


def dq_identity(dtype=jnp.float32) -> jnp.ndarray:
  """The identity transform, shape (8,)."""
  return jnp.array([0, 0, 0, 1, 0, 0, 0, 0], dtype=dtype)


def dq_from_rt(q: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """Dual quaternion of p -> rot(q) p + t.

  Args:
    q: (..., 4) unit quaternion (x, y, z, w).
    t: (..., 3) translation, broadcastable against q.

  Returns:
    (..., 8) unit dual quaternion.
  """
  q, t = jnp.broadcast_arrays(q, jnp.concatenate([t, jnp.zeros_like(t[..., :1])], -1))
  dual = 0.5 * quat_lib.quat_multiply(t, q)
  return jnp.concatenate([q, dual], axis=-1)


def dq_to_rt(dq: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Splits a unit dual quaternion into rotation and translation.

  Args:
    dq: (..., 8) unit dual quaternion.

  Returns:
    q: (..., 4) the real part (the rotation quaternion).
    t: (..., 3) translation, t = 2 * vec(dual * conj(real)).
  """
  real = _real(dq)
  t = 2.0 * quat_lib.quat_multiply(_dual(dq), quat_lib.quat_conjugate(real))
  return real, t[..., :3]


def dq_multiply(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Dual-quaternion product a * b: the transform "b, then a". (..., 8)."""
  ar, ad = _real(a), _dual(a)
  br, bd = _real(b), _dual(b)
  real = quat_lib.quat_multiply(ar, br)
  dual = quat_lib.quat_multiply(ar, bd) + quat_lib.quat_multiply(ad, br)
  return jnp.concatenate([real, dual], axis=-1)


def dq_conjugate(dq: jnp.ndarray) -> jnp.ndarray:
  """Quaternion-conjugates both parts. (..., 8) -> (..., 8).

  For a unit dual quaternion this is its inverse.
  """
  sign = jnp.array([-1, -1, -1, 1, -1, -1, -1, 1], dtype=dq.dtype)
  return dq * sign


def dq_inverse(dq: jnp.ndarray) -> jnp.ndarray:
  """Inverse of a unit dual quaternion (= its conjugate). (..., 8)."""
  return dq_conjugate(dq)


def dq_normalize(dq: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Divides both parts by the norm of the real part (Kavan et al.'s DQS step).

  The dual part is not re-orthogonalised against the real part; `dq_to_rt`
  reads the translation from the vector part only, which is the standard DQS
  approximation (and what lab4d does).

  Args:
    dq: (..., 8) dual quaternion with non-zero real part.

  Returns:
    (..., 8) dual quaternion with unit real part.
  """
  real_sq = jnp.sum(_real(dq) ** 2, axis=-1, keepdims=True)
  return dq * (1.0 / jnp.sqrt(jnp.maximum(real_sq, eps)))


def dq_apply(dq: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Applies unit dual quaternions to points: rot(real) p + t.

  Args:
    dq: (..., 8) unit dual quaternion.
    points: (..., 3) points, broadcastable against dq's leading dims.

  Returns:
    (..., 3) transformed points.
  """
  q, t = dq_to_rt(dq)
  return quat_lib.quat_rotate(q, points) + t


def dq_blend(weights: jnp.ndarray, dqs: jnp.ndarray) -> jnp.ndarray:
  """Dual-quaternion blending (DQS) of B transforms.

  Every bone's dual quaternion is first flipped into the hemisphere of the
  highest-weight bone's real part (q and -q are the same rotation, but their
  weighted sum is not), then the weighted sum is divided by the norm of its
  real part (lab4d's `dual_quaternion_skinning` semantics).

  Args:
    weights: (..., B) non-negative blend weights (normally summing to 1).
    dqs: (B, 8) or (..., B, 8) unit dual quaternions, broadcastable against
      weights.

  Returns:
    (..., 8) blended dual quaternion with unit real part.
  """
  pivot_one_hot = jax.nn.one_hot(jnp.argmax(weights, axis=-1), weights.shape[-1],
                                 dtype=weights.dtype)  # (..., B)
  if dqs.ndim == 2:
    # One bone table shared by all points: the B x B sign table is computed
    # once, and the per-point work is two small matmuls (no gathers).
    real = _real(dqs)
    dots = jnp.matmul(real, real.T, precision=_EXACT)
    sign_table = jnp.where(dots < 0.0, -1.0, 1.0).astype(weights.dtype)
    signs = jnp.matmul(pivot_one_hot, sign_table, precision=_EXACT)  # pivot's row
    blended = jnp.matmul(weights * signs, dqs, precision=_EXACT)
  else:
    dqs = jnp.broadcast_to(dqs, weights.shape + (8,))
    pivot = jnp.sum(pivot_one_hot[..., None] * _real(dqs), axis=-2, keepdims=True)
    dots = jnp.sum(_real(dqs) * pivot, axis=-1)  # (..., B)
    signs = jnp.where(dots < 0.0, -1.0, 1.0).astype(dqs.dtype)
    blended = jnp.sum((weights * signs)[..., None] * dqs, axis=-2)
  return dq_normalize(blended)
