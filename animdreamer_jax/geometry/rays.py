"""Pinhole (OpenCV) camera rays, projection and look-at poses.

Conventions (see README): camera x right, y down, z forward; a pose is a
world-to-camera 4x4 `w2c`; intrinsics are (fx, fy, cx, cy) in pixels; the
centre of pixel (u, v) (column, row) is at image coordinate (u + 0.5, v + 0.5).
`uv` arguments and `project` results are in *pixel-index* units, so
`project(intrinsics, camera_rays(intrinsics, uv)) == uv`, and a flow is simply
the difference of two `project` results.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def look_at(eye: Any, target: Any, up: Sequence[float] = (0.0, 1.0, 0.0), xp: Any = np) -> Any:
  """OpenCV world-to-camera poses of cameras at `eye` looking at `target`.

  Written against an array namespace so that one implementation serves the
  host and jit: `xp=np` computes in float64 (synthetic videos, exports),
  `xp=jnp` in float32 (CSD's cameras, inside jit).

  Args:
    eye: (..., 3) camera centres.
    target: (..., 3) points on the optical axes (broadcast against `eye`).
    up: (3,) world up; image rows run along -up. A camera looking along `up`
      takes its right vector from +X instead.
    xp: the array namespace, `numpy` or `jax.numpy`.

  Returns:
    (..., 4, 4): rotation rows are camera x (right), y (down), z (forward).
  """
  dtype = np.float64 if xp is np else np.float32
  eye, target = xp.broadcast_arrays(xp.asarray(eye, dtype), xp.asarray(target, dtype))
  forward = target - eye
  forward = forward / xp.linalg.norm(forward, axis=-1, keepdims=True)
  right = xp.cross(forward, xp.broadcast_to(xp.asarray(up, dtype), forward.shape))
  # Picked before normalising, so neither branch of `where` divides by zero
  # (a NaN in the unused branch would still poison gradients under jit).
  along_up = xp.linalg.norm(right, axis=-1, keepdims=True) < 1e-9
  right = xp.where(along_up, xp.cross(forward, xp.asarray([1.0, 0.0, 0.0], dtype)), right)
  right = right / xp.linalg.norm(right, axis=-1, keepdims=True)
  down = xp.cross(forward, right)
  rot = xp.stack([right, down, forward], axis=-2)
  trans = -(rot @ eye[..., None])[..., 0]
  top = xp.concatenate([rot, trans[..., None]], axis=-1)
  bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype), top.shape[:-2] + (1, 4))
  return xp.concatenate([top, bottom], axis=-2)
