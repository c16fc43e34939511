"""Host-side (NumPy, float64) quaternions (x, y, z, w), for glTF reading and writing.

glTF stores rotations as (x, y, z, w), as does `geometry.quaternion` (the jnp
version used inside jit). Matrices act on column vectors.
"""

from __future__ import annotations

import numpy as np


def normalize(q: np.ndarray) -> np.ndarray:
  """q / |q| over the last axis, float64. (..., 4) -> (..., 4)."""
  q = np.asarray(q, np.float64)
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
  """Rotation matrices of quaternions (x, y, z, w), not renormalised.

  glTF posing uses the stored values as they are (as three.js does), so
  callers that need a unit quaternion normalise first.

  Args:
    q: (..., 4).
  Returns:
    (..., 3, 3) matrices acting on column vectors.
  """
  x, y, z, w = np.moveaxis(np.asarray(q, np.float64), -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w),
                2 * (x * z + y * w)], -1),
      np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z),
                2 * (y * z - x * w)], -1),
      np.stack([2 * (x * z - y * w), 2 * (y * z + x * w),
                1 - 2 * (x * x + y * y)], -1),
  ], -2)


def matrix_to_quaternion(m: np.ndarray) -> np.ndarray:
  """Unit quaternions (x, y, z, w) of rotation matrices (Shepperd's method).

  Each matrix takes the branch whose divisor is large (the trace when
  positive, else the largest diagonal entry), so no branch divides by ~0.

  Args:
    m: (..., 3, 3) rotations.
  Returns:
    (..., 4) unit quaternions.
  """
  m = np.asarray(m, np.float64)
  flat = m.reshape((-1, 3, 3))
  m00, m11, m22 = flat[:, 0, 0], flat[:, 1, 1], flat[:, 2, 2]
  trace = np.trace(flat, axis1=1, axis2=2)
  use_w = trace > 0
  use_x = ~use_w & (m00 > m11) & (m00 > m22)
  use_y = ~use_w & ~use_x & (m11 > m22)
  use_z = ~(use_w | use_x | use_y)
  q = np.empty((flat.shape[0], 4))
  a = flat[use_w]
  s = 2.0 * np.sqrt(trace[use_w] + 1.0)
  q[use_w] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / s, (a[:, 0, 2] - a[:, 2, 0]) / s,
                       (a[:, 1, 0] - a[:, 0, 1]) / s, 0.25 * s], -1)
  a = flat[use_x]
  s = 2.0 * np.sqrt(1.0 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2])
  q[use_x] = np.stack([0.25 * s, (a[:, 0, 1] + a[:, 1, 0]) / s, (a[:, 0, 2] + a[:, 2, 0]) / s,
                       (a[:, 2, 1] - a[:, 1, 2]) / s], -1)
  a = flat[use_y]
  s = 2.0 * np.sqrt(1.0 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2])
  q[use_y] = np.stack([(a[:, 0, 1] + a[:, 1, 0]) / s, 0.25 * s, (a[:, 1, 2] + a[:, 2, 1]) / s,
                       (a[:, 0, 2] - a[:, 2, 0]) / s], -1)
  a = flat[use_z]
  s = 2.0 * np.sqrt(1.0 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1])
  q[use_z] = np.stack([(a[:, 0, 2] + a[:, 2, 0]) / s, (a[:, 1, 2] + a[:, 2, 1]) / s, 0.25 * s,
                       (a[:, 1, 0] - a[:, 0, 1]) / s], -1)
  return normalize(q).reshape(m.shape[:-2] + (4,))


def slerp(q0: np.ndarray, q1: np.ndarray, u: np.ndarray) -> np.ndarray:
  """Shortest-path spherical interpolation of unit quaternions, renormalised.

  Args:
    q0, q1: (N, 4) quaternions (x, y, z, w).
    u: (N,) interpolation parameter in [0, 1].
  Returns:
    (N, 4) unit quaternions.
  """
  dot = np.sum(q0 * q1, axis=-1)
  q1 = np.where(dot[:, None] < 0, -q1, q1)  # q and -q are the same rotation
  dot = np.abs(dot)
  theta = np.arccos(np.clip(dot, -1.0, 1.0))
  sin_theta = np.sin(theta)
  # Nearly parallel: sin(theta) -> 0, lerp is exact to first order.
  nearly_parallel = sin_theta < 1e-6
  safe_sin = np.where(nearly_parallel, 1.0, sin_theta)
  w0 = np.where(nearly_parallel, 1.0 - u, np.sin((1.0 - u) * theta) / safe_sin)
  w1 = np.where(nearly_parallel, u, np.sin(u * theta) / safe_sin)
  q = w0[:, None] * q0 + w1[:, None] * q1
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def continuous_quaternions(quat: np.ndarray) -> np.ndarray:
  """Normalises, then flips signs along axis 0 so consecutive keys lie in the same hemisphere.

  q and -q are the same rotation; keeping neighbours close makes every
  player's slerp/nlerp between keys take the short way.

  Args:
    quat: (T, ..., 4).
  Returns:
    (T, ..., 4) unit quaternions.
  """
  quat = normalize(quat)
  out = quat.copy()
  for t in range(1, quat.shape[0]):
    flip = np.sum(out[t - 1] * quat[t], axis=-1, keepdims=True) < 0
    out[t] = np.where(flip, -quat[t], quat[t])
  return out
