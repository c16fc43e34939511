"""Pinhole (OpenCV) camera rays and projection.

Conventions (see README): camera x right, y down, z forward; a pose is a
world-to-camera 4x4 `w2c`; intrinsics are (fx, fy, cx, cy) in pixels; the
centre of pixel (u, v) (column, row) is at image coordinate (u + 0.5, v + 0.5).
`uv` arguments and `project` results are in *pixel-index* units, so
`project(intrinsics, camera_rays(intrinsics, uv)) == uv`, and a flow is simply
the difference of two `project` results.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import se3

# Offset from a pixel index to its centre in image coordinates.
PIXEL_CENTER = 0.5


def camera_rays(intrinsics: jnp.ndarray, uv: jnp.ndarray) -> jnp.ndarray:
  """Camera-frame ray directions scaled to z = 1 through pixel centres.

  A point at depth z along pixel (u, v) is `z * camera_rays(...)`.

  Args:
    intrinsics: (4,) (fx, fy, cx, cy).
    uv: (..., 2) pixel indices (column, row); may be fractional.

  Returns:
    (..., 3) directions (x, y, 1) in the camera frame.
  """
  fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]
  x = (uv[..., 0] + PIXEL_CENTER - cx) / fx
  y = (uv[..., 1] + PIXEL_CENTER - cy) / fy
  return jnp.stack([x, y, jnp.ones_like(x)], axis=-1)


def project(intrinsics: jnp.ndarray, points_cam: jnp.ndarray,
            min_depth: float = 1e-6) -> jnp.ndarray:
  """Projects camera-frame points to pixel-index coordinates.

  Depth is clamped at `min_depth` so points on or behind the camera plane give
  finite (meaningless) values instead of inf/NaN.

  Args:
    intrinsics: (4,) (fx, fy, cx, cy).
    points_cam: (..., 3) points in the camera frame.
    min_depth: smallest depth used in the division.

  Returns:
    (..., 2) (u, v) such that the point lies on the ray of pixel (u, v).
  """
  fx, fy, cx, cy = intrinsics[0], intrinsics[1], intrinsics[2], intrinsics[3]
  z = jnp.maximum(points_cam[..., 2], min_depth)
  u = fx * points_cam[..., 0] / z + cx - PIXEL_CENTER
  v = fy * points_cam[..., 1] / z + cy - PIXEL_CENTER
  return jnp.stack([u, v], axis=-1)


def pixel_rays(intrinsics: jnp.ndarray, w2c: jnp.ndarray,
               uv: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """World-frame rays through pixel centres.

  Args:
    intrinsics: (4,) (fx, fy, cx, cy).
    w2c: (4, 4) world-to-camera rigid transform.
    uv: (N, 2) pixel indices (column, row).

  Returns:
    origins: (N, 3) camera centre in world coordinates (repeated).
    directions: (N, 3) unit directions in world coordinates.
  """
  c2w = se3.se3_inverse(w2c)
  dirs_cam = camera_rays(intrinsics, uv)
  dirs_cam = dirs_cam / jnp.linalg.norm(dirs_cam, axis=-1, keepdims=True)
  # Full float32 matmul: GPUs would otherwise use TF32 (~1e-3 relative error).
  directions = jnp.matmul(dirs_cam, c2w[:3, :3].T,
                          precision=jax.lax.Precision.HIGHEST)
  origins = jnp.broadcast_to(c2w[:3, 3], directions.shape)
  return origins, directions


def pixel_grid(height: int, width: int) -> jnp.ndarray:
  """All pixel indices of an image, row-major. Returns (height * width, 2) (u, v)."""
  v, u = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  return jnp.stack([u.reshape(-1), v.reshape(-1)], axis=-1).astype(jnp.float32)
