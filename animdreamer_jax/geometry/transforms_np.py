"""Host-side (NumPy, float64) transforms: applying them to points, building them from TRS.

For exports, metrics and ground truth, which stay in float64 on the CPU; the
jnp transforms used inside jit are in `geometry.se3`.
"""

from __future__ import annotations

import numpy as np

from animdreamer_jax.geometry import quaternion_np


def to_camera(points: np.ndarray, w2c: np.ndarray) -> np.ndarray:
  """Maps points through 4x4 transforms (world-to-camera, or any rigid one), in float64.

  One matrix for all points (e.g. one camera), or one per leading index (e.g.
  per-frame object-to-camera transforms of a (T, V, 3) mesh sequence).

  Args:
    points: (..., V, 3).
    w2c: (..., 4, 4); its leading axes broadcast against those of `points`.

  Returns:
    (..., V, 3) float64: R p + t for every point p.
  """
  points = np.asarray(points, np.float64)
  w2c = np.asarray(w2c, np.float64)
  return points @ np.swapaxes(w2c[..., :3, :3], -1, -2) + w2c[..., None, :3, 3]


def compose_trs(translation: np.ndarray, rotation: np.ndarray,
                scale: np.ndarray) -> np.ndarray:
  """T * R * S as 4x4 matrices (glTF's node transform).

  Args:
    translation: (..., 3).
    rotation: (..., 4) quaternions (x, y, z, w), used as they are (not
      renormalised, as glTF players do).
    scale: (..., 3).
  Returns:
    (..., 4, 4) float64.
  """
  rs = quaternion_np.quaternion_to_matrix(rotation) * np.asarray(scale)[..., None, :]
  out = np.zeros(rs.shape[:-2] + (4, 4))
  out[..., :3, :3] = rs
  out[..., :3, 3] = translation
  out[..., 3, 3] = 1.0
  return out


def rigid_matrix(quat: np.ndarray, trans: np.ndarray) -> np.ndarray:
  """(..., 4) quaternions (x, y, z, w), renormalised, + (..., 3) translations -> (..., 4, 4) float64."""
  quat = quaternion_np.normalize(np.asarray(quat, np.float64))
  return compose_trs(np.asarray(trans, np.float64), quat, np.ones(quat.shape[:-1] + (3,)))
