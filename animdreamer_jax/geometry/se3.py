"""Rigid transforms as 4x4 matrices (row-major, acting on column vectors).

A transform M maps p to M[:3, :3] @ p + M[:3, 3]; its last row is (0, 0, 0, 1).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import quaternion as quat_lib

# Full float32 matmuls: GPUs would otherwise use TF32 (~1e-3 relative error).
_EXACT = jax.lax.Precision.HIGHEST


def rt_to_matrix(rotation: jnp.ndarray, translation: jnp.ndarray) -> jnp.ndarray:
  """Builds 4x4 transforms.

  Args:
    rotation: (..., 3, 3) rotation matrix.
    translation: (..., 3) translation, broadcastable against rotation's
      leading dims.

  Returns:
    (..., 4, 4) transform.
  """
  lead = jnp.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
  rotation = jnp.broadcast_to(rotation, lead + (3, 3))
  translation = jnp.broadcast_to(translation, lead + (3,)).astype(rotation.dtype)
  top = jnp.concatenate([rotation, translation[..., None]], axis=-1)
  bottom = jnp.broadcast_to(
      jnp.array([0.0, 0.0, 0.0, 1.0], dtype=rotation.dtype), lead + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def matrix_to_rt(matrix: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(..., 4, 4) -> rotation (..., 3, 3), translation (..., 3)."""
  return matrix[..., :3, :3], matrix[..., :3, 3]


def se3_inverse(matrix: jnp.ndarray) -> jnp.ndarray:
  """Inverse of rigid 4x4 transforms via (R^T, -R^T t). (..., 4, 4)."""
  rotation, translation = matrix_to_rt(matrix)
  rotation_inv = jnp.swapaxes(rotation, -1, -2)
  return rt_to_matrix(
      rotation_inv, -jnp.einsum("...ij,...j->...i", rotation_inv, translation,
                  precision=_EXACT))


def apply_se3(matrix: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
  """Applies 4x4 transforms to points.

  Args:
    matrix: (..., 4, 4) transform (only the top 3x4 block is read).
    points: (..., 3) points, broadcastable against matrix's leading dims.

  Returns:
    (..., 3) transformed points.
  """
  rotation, translation = matrix_to_rt(matrix)
  return jnp.einsum("...ij,...j->...i", rotation, points,
                    precision=_EXACT) + translation


def quat_t_to_matrix(q: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
  """(..., 4) quaternion (x, y, z, w) and (..., 3) translation -> (..., 4, 4)."""
  return rt_to_matrix(quat_lib.quat_to_matrix(q), t)


def matrix_to_quat_t(matrix: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(..., 4, 4) -> quaternion (..., 4) with w >= 0, translation (..., 3)."""
  rotation, translation = matrix_to_rt(matrix)
  return quat_lib.matrix_to_quat(rotation), translation
