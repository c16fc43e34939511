"""Quaternions as (..., 4) arrays in (x, y, z, w) order, with w the scalar part.

Every function broadcasts over leading dimensions and is jit/vmap/grad-safe:
singular points (zero rotation, 180-degree rotations) use the "double where"
pattern so that neither values nor gradients become NaN there.
"""

from __future__ import annotations

import jax.numpy as jnp

from animdreamer_jax.geometry import vector

# Below this squared angle / squared sine, Taylor expansions replace divisions.
_SMALL_SQ = 1e-12


def quat_identity(dtype=jnp.float32) -> jnp.ndarray:
  """The identity rotation, shape (4,)."""
  return jnp.array([0.0, 0.0, 0.0, 1.0], dtype=dtype)


def _split(q: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  return q[..., :3], q[..., 3:]


def quat_multiply(q1: jnp.ndarray, q2: jnp.ndarray) -> jnp.ndarray:
  """Hamilton product q1 * q2 (apply q2 first, then q1).

  Args:
    q1: (..., 4) quaternion.
    q2: (..., 4) quaternion, broadcastable against q1.

  Returns:
    (..., 4) product.
  """
  v1, w1 = _split(q1)
  v2, w2 = _split(q2)
  v1, v2 = jnp.broadcast_arrays(v1, v2)
  w = w1 * w2 - jnp.sum(v1 * v2, axis=-1, keepdims=True)
  v = w1 * v2 + w2 * v1 + jnp.cross(v1, v2)
  return jnp.concatenate([v, w], axis=-1)


def quat_conjugate(q: jnp.ndarray) -> jnp.ndarray:
  """(x, y, z, w) -> (-x, -y, -z, w); the inverse of a unit quaternion. (..., 4)."""
  return q * jnp.array([-1.0, -1.0, -1.0, 1.0], dtype=q.dtype)


def quat_normalize(q: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """Scales q to unit norm. (..., 4) -> (..., 4). A zero q maps to zero."""
  return q / jnp.maximum(vector.safe_norm(q, keepdims=True), eps)


def quat_rotate(q: jnp.ndarray, v: jnp.ndarray) -> jnp.ndarray:
  """Rotates 3-vectors by unit quaternions.

  Uses v' = v + 2 w (u x v) + 2 u x (u x v), which is q v q^* for unit q
  without forming a matrix.

  Args:
    q: (..., 4) unit quaternion.
    v: (..., 3) vectors, broadcastable against q's leading dims.

  Returns:
    (..., 3) rotated vectors.
  """
  u, w = _split(q)
  u, v = jnp.broadcast_arrays(u, v)
  uv = 2.0 * jnp.cross(u, v)
  return v + w * uv + jnp.cross(u, uv)


def quat_to_matrix(q: jnp.ndarray) -> jnp.ndarray:
  """Rotation matrix of a quaternion (acting on column vectors).

  Non-unit quaternions are allowed: the formula divides by |q|^2, so q and
  s * q give the same matrix.

  Args:
    q: (..., 4) non-zero quaternion.

  Returns:
    (..., 3, 3) rotation matrix.
  """
  x, y, z, w = jnp.moveaxis(q, -1, 0)
  s = 2.0 / jnp.sum(q * q, axis=-1)
  xx, yy, zz = s * x * x, s * y * y, s * z * z
  xy, xz, yz = s * x * y, s * x * z, s * y * z
  wx, wy, wz = s * w * x, s * w * y, s * w * z
  rows = [
      [1.0 - (yy + zz), xy - wz, xz + wy],
      [xy + wz, 1.0 - (xx + zz), yz - wx],
      [xz - wy, yz + wx, 1.0 - (xx + yy)],
  ]
  return jnp.stack([jnp.stack(r, axis=-1) for r in rows], axis=-2)


def matrix_to_quat(rotation: jnp.ndarray) -> jnp.ndarray:
  """Unit quaternion (w >= 0) of a rotation matrix; robust at every angle.

  All four classic formulas (divide by the largest of 4w^2, 4x^2, 4y^2, 4z^2)
  are evaluated and the best-conditioned one is selected with a one-hot
  weighted sum, so the function is branch-free. The largest of the four
  squared terms is always >= 1, so clamping the others at 0.1 before the
  square root keeps unselected branches (and their gradients) finite.

  Args:
    rotation: (..., 3, 3) rotation matrix.

  Returns:
    (..., 4) quaternion (x, y, z, w) with w >= 0.
  """
  r = jnp.asarray(rotation)
  r00, r01, r02 = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
  r10, r11, r12 = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
  r20, r21, r22 = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
  # 4 * (x^2, y^2, z^2, w^2).
  four_sq = jnp.stack([
      1.0 + r00 - r11 - r22,
      1.0 - r00 + r11 - r22,
      1.0 - r00 - r11 + r22,
      1.0 + r00 + r11 + r22,
  ], axis=-1)
  # Each candidate below equals 4 * q_k * q, for k = x, y, z, w.
  cand_x = jnp.stack([four_sq[..., 0], r01 + r10, r02 + r20, r21 - r12], -1)
  cand_y = jnp.stack([r01 + r10, four_sq[..., 1], r12 + r21, r02 - r20], -1)
  cand_z = jnp.stack([r02 + r20, r12 + r21, four_sq[..., 2], r10 - r01], -1)
  cand_w = jnp.stack([r21 - r12, r02 - r20, r10 - r01, four_sq[..., 3]], -1)
  candidates = jnp.stack([cand_x, cand_y, cand_z, cand_w], axis=-2)
  # 2 * |q_k| = sqrt(4 q_k^2).
  denom = 2.0 * jnp.sqrt(jnp.maximum(four_sq, 0.1))
  candidates = candidates / denom[..., None]
  best = jnp.argmax(four_sq, axis=-1)
  one_hot = (jnp.arange(4) == best[..., None]).astype(r.dtype)
  q = jnp.sum(candidates * one_hot[..., None], axis=-2)
  return jnp.where(q[..., 3:] < 0.0, -q, q)


def axis_angle_to_quat(axis_angle: jnp.ndarray) -> jnp.ndarray:
  """Unit quaternion of an axis-angle (rotation-vector) rotation.

  Safe at zero: a Taylor expansion of sin(theta/2)/theta replaces the division
  there, with a double `where` so gradients stay finite.

  Args:
    axis_angle: (..., 3) rotation axis times angle in radians.

  Returns:
    (..., 4) unit quaternion (x, y, z, w).
  """
  theta_sq = jnp.sum(axis_angle * axis_angle, axis=-1, keepdims=True)
  small = theta_sq < _SMALL_SQ
  safe_sq = jnp.where(small, 1.0, theta_sq)
  theta = jnp.sqrt(safe_sq)
  half = 0.5 * theta
  sin_over_theta = jnp.where(small, 0.5 - theta_sq / 48.0, jnp.sin(half) / theta)
  cos_half = jnp.where(small, 1.0 - theta_sq / 8.0, jnp.cos(half))
  return jnp.concatenate([axis_angle * sin_over_theta, cos_half], axis=-1)


def quat_to_axis_angle(q: jnp.ndarray) -> jnp.ndarray:
  """Axis-angle (rotation vector) of a unit quaternion, angle in [0, pi].

  q and -q give the same result (q is flipped to w >= 0 first). Uses
  angle = 2 atan2(|v|, w), accurate near 0 and near pi.

  Args:
    q: (..., 4) unit quaternion.

  Returns:
    (..., 3) rotation vector.
  """
  q = jnp.where(q[..., 3:] < 0.0, -q, q)
  v, w = _split(q)
  sin_sq = jnp.sum(v * v, axis=-1, keepdims=True)
  small = sin_sq < _SMALL_SQ
  sin_half = jnp.sqrt(jnp.where(small, 1.0, sin_sq))
  angle_over_sin = jnp.where(
      small,
      # 2 atan2(s, w) / s ~ (2 / w) (1 - s^2 / (3 w^2)) as s -> 0 (w ~ 1 there).
      2.0 / w * (1.0 - sin_sq / (3.0 * w * w)),
      2.0 * jnp.arctan2(sin_half, w) / sin_half)
  return v * angle_over_sin
