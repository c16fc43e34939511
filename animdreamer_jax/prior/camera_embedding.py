"""MVDream's 16-D camera input, from orbit angles or from this project's OpenCV cameras.

MVDream conditions on a camera-to-world matrix with OpenGL camera axes (x right, y up, z backward) in a
z-up ("Blender") world, its translation scaled to unit length, flattened row-major (16 numbers, the last
row [0, 0, 0, 1] included). Distance and field of view never reach the network.

This project's cameras are OpenCV world-to-camera matrices in a +Y-up world (README). The conversion is
  c2w_gl = inv(w2c) @ diag(1, -1, -1, 1)      (OpenCV -> OpenGL camera axes)
  c2w_mv = FLIP_YZ @ c2w_gl                   (y-up world -> z-up world: (x, y, z) -> (x, -z, y))
then the translation is normalised. MVDream's own `get_camera(..., blender_coord=True)` builds exactly
`FLIP_YZ @ c2w_gl` for a camera on the unit sphere of a y-up world, so both routes agree (tested).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Rows of MVDream's `flip_yz`: y-up world coordinates -> z-up world coordinates.
# (NumPy constants: importing the package must not start a JAX backend, so that a
# multi-host run can still call jax.distributed.initialize.)
FLIP_YZ = np.array([[1.0, 0.0, 0.0, 0.0],
                    [0.0, 0.0, -1.0, 0.0],
                    [0.0, 1.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 1.0]], np.float32)
OPENCV_TO_OPENGL_AXES = np.diag(np.array([1.0, -1.0, -1.0, 1.0], np.float32))


def normalize_camera(c2w: jax.Array) -> jax.Array:
  """Scales the translation to unit length (+1e-8, as MVDream) and flattens row-major.

  Args:
    c2w: (..., 4, 4) camera-to-world matrices (MVDream convention).

  Returns:
    (..., 16) float32.
  """
  c2w = jnp.asarray(c2w, jnp.float32)
  t = c2w[..., :3, 3]
  t = t / (jnp.linalg.norm(t, axis=-1, keepdims=True) + 1e-8)
  c2w = c2w.at[..., :3, 3].set(t)
  return c2w.reshape(c2w.shape[:-2] + (16,))


def camera_from_w2c(w2c: jax.Array) -> jax.Array:
  """MVDream camera vectors from OpenCV world-to-camera matrices in a +Y-up world.

  Args:
    w2c: (..., 4, 4) rigid world-to-camera matrices (OpenCV axes: x right, y down, z forward).

  Returns:
    (..., 16) float32 camera inputs for `MultiViewUNet`.
  """
  w2c = jnp.asarray(w2c, jnp.float32)
  rot = w2c[..., :3, :3]
  trans = w2c[..., :3, 3]
  # Rigid inverse (R^T, -R^T t): exact and cheaper than a general inverse.
  rot_c2w = jnp.swapaxes(rot, -1, -2)
  centre = -jnp.einsum("...ij,...j->...i", rot_c2w, trans)
  c2w = jnp.concatenate([rot_c2w, centre[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], jnp.float32), c2w.shape[:-2] + (1, 4))
  c2w = jnp.concatenate([c2w, bottom], axis=-2)
  c2w_mv = FLIP_YZ @ c2w @ OPENCV_TO_OPENGL_AXES
  return normalize_camera(c2w_mv)


def orbit_cameras(num_views: int = 4, elevation_deg: float = 15.0, azimuth_start_deg: float = 0.0,
                  azimuth_span_deg: float = 360.0) -> jax.Array:
  """MVDream's `get_camera(num_views, elevation, azimuth_start, azimuth_span, blender_coord=True)`.

  Views on the unit sphere of a y-up world at azimuths start + k * span / num_views (degrees; azimuth 0
  looks from +Z, 90 from +X), looking at the origin with world up +Y. MVDream's text-to-image script uses
  elevation 15 and azimuth start 90.

  Args:
    num_views: F.
    elevation_deg: elevation above the horizontal plane.
    azimuth_start_deg: azimuth of the first view.
    azimuth_span_deg: the views split this span evenly.

  Returns:
    (F, 16) float32.
  """
  azimuth = jnp.deg2rad(azimuth_start_deg + jnp.arange(num_views, dtype=jnp.float32)
                        * (azimuth_span_deg / num_views))
  elevation = jnp.deg2rad(jnp.full((num_views,), elevation_deg, jnp.float32))
  position = jnp.stack([jnp.cos(elevation) * jnp.sin(azimuth), jnp.sin(elevation),
                        jnp.cos(elevation) * jnp.cos(azimuth)], axis=-1)
  forward = -position / jnp.linalg.norm(position, axis=-1, keepdims=True)
  world_up = jnp.broadcast_to(jnp.array([0.0, 1.0, 0.0], jnp.float32), forward.shape)
  right = jnp.cross(forward, world_up)
  right = right / jnp.linalg.norm(right, axis=-1, keepdims=True)
  up = jnp.cross(right, forward)
  up = up / jnp.linalg.norm(up, axis=-1, keepdims=True)
  c2w = jnp.concatenate([jnp.stack([right, up, -forward, position], axis=-1),
                         jnp.broadcast_to(jnp.array([[0.0, 0.0, 0.0, 1.0]]), (num_views, 1, 4))],
                        axis=-2)
  return (FLIP_YZ @ c2w).reshape(num_views, 16)
