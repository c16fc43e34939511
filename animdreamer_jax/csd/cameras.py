"""CSD's four orthogonal cameras in the frame-t object space, and MVDream's 16-number camera.

The views orbit the object in its own (frame-t, posed) object space, the space
the root pose maps into the video camera; rendering from them goes through
the backward warp of frame t into the canonical field (lab4d: the cameras
replace the root pose, `field2cam["fg"]`).

Sampling (MVDream-threestudio `RandomMultiviewCameraIterableDataset` with
`n_view=4, relative_radius=True`, as AnimatableDreamer configures it), all
shared by the 4 views except the azimuth:
- elevation in `elevation_range` degrees: with probability 1/2 uniform in
  degrees, otherwise uniform on the sphere band (arcsin of a uniform);
- field of view uniform in `fov_range` degrees (square images, principal
  point at the image centre);
- distance = U(distance_range) x object size / tan(fov / 2), so the view's
  half-width at the look-at point is distance_range x the object size (the
  largest side of the canonical bounding box);
- azimuths offset + 0, 90, 180, 270 degrees with one uniform offset.

Angles use this project's convention (`data.synthetic.camera_poses`): +Y up,
azimuth 0 puts the camera on +Z (facing the animal's head), 90 on +X, positive
elevation raises it along +Y; cameras look at the target with world up +Y.
These are exactly MVDream's `get_camera` angles (its y-up sphere before the
z-up flip), so `to_mvdream` of an orbit view equals MVDream's own camera for
the same elevation and azimuth.

MVDream's camera (see `prior.camera_embedding`): the camera-to-world matrix
with OpenGL camera axes in a z-up world, translation scaled to unit length,
flattened row-major. `to_mvdream` is that module's `camera_from_w2c` (written
once); `from_mvdream` inverts it given the distance it dropped.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.geometry import rays
from animdreamer_jax.prior import camera_embedding

NUM_VIEWS = 4


class CsdCameras(NamedTuple):
  """The views of one CSD step and the frame they belong to.

  Attributes:
    w2c: (V, 4, 4) frame-t object space -> camera (OpenCV axes).
    intrinsics: (V, 4) (fx, fy, cx, cy) in pixels of the render resolution.
    near_far: (V, 2) ray depth range enclosing the object's bounding sphere.
    mvdream: (V, 16) MVDream camera inputs (`to_mvdream(w2c)`).
    frame: () int32 video frame t.
    elevation: () degrees; azimuth: (V,) degrees; fov: () degrees;
    distance: () camera distance from the look-at point.
    pixels: None (every pixel of the R x R views is rendered), or (V, P, 2)
      int32 pixel indices (u, v) of the P pixels rendered per view: a random
      subset for priors that judge each pixel on its own (the pixel-space
      oracle), so a CPU can afford full-resolution views.
  """
  w2c: jnp.ndarray
  intrinsics: jnp.ndarray
  near_far: jnp.ndarray
  mvdream: jnp.ndarray
  frame: jnp.ndarray
  elevation: jnp.ndarray
  azimuth: jnp.ndarray
  fov: jnp.ndarray
  distance: jnp.ndarray
  pixels: Optional[jnp.ndarray] = None


def orbit_positions(elevation_deg: jnp.ndarray, azimuth_deg: jnp.ndarray) -> jnp.ndarray:
  """Unit offsets from the target (cos e sin a, sin e, cos e cos a). (...) -> (..., 3)."""
  el = jnp.deg2rad(jnp.asarray(elevation_deg, jnp.float32))
  az = jnp.deg2rad(jnp.asarray(azimuth_deg, jnp.float32))
  el, az = jnp.broadcast_arrays(el, az)
  return jnp.stack([jnp.cos(el) * jnp.sin(az), jnp.sin(el), jnp.cos(el) * jnp.cos(az)], axis=-1)


def orbit_w2c(elevation_deg: jnp.ndarray, azimuth_deg: jnp.ndarray, distance: jnp.ndarray,
              target: jnp.ndarray) -> jnp.ndarray:
  """Cameras on a sphere around `target`, looking at it.

  Args:
    elevation_deg: () or (V,) degrees.
    azimuth_deg: (V,) degrees.
    distance: () or (V,) distance from the target.
    target: (3,) look-at point.

  Returns:
    (V, 4, 4) OpenCV world-to-camera matrices.
  """
  offsets = orbit_positions(elevation_deg, azimuth_deg)
  eye = jnp.asarray(target, jnp.float32) + jnp.asarray(distance, jnp.float32)[..., None] * offsets
  return rays.look_at(eye, target, xp=jnp)


def pinhole_intrinsics(resolution: int, fov_deg: jnp.ndarray) -> jnp.ndarray:
  """(fx, fy, cx, cy) of a square image with this field of view. () -> (4,)."""
  focal = 0.5 * resolution / jnp.tan(0.5 * jnp.deg2rad(jnp.asarray(fov_deg, jnp.float32)))
  half = jnp.float32(0.5 * resolution)
  return jnp.stack([focal, focal, half, half])


def sample_elevation(key: jax.Array, elevation_range: tuple[float, float]) -> jnp.ndarray:
  """threestudio's elevation: uniform in degrees or on the sphere band (1/2 each); () degrees."""
  k_choice, k_u = jax.random.split(key)
  lo, hi = float(elevation_range[0]), float(elevation_range[1])
  u = jax.random.uniform(k_u, ())
  in_degrees = lo + (hi - lo) * u
  # Uniform area on the band: sin(elevation) uniform between sin(lo) and sin(hi)
  # (threestudio's later form; its older "(e + 90) / 180" form does not span
  # the range: [-6.4, 26.4] degrees for [-10, 40]).
  s_lo, s_hi = np.sin(np.radians(lo)), np.sin(np.radians(hi))
  on_sphere = jnp.rad2deg(jnp.arcsin(s_lo + (s_hi - s_lo) * u))
  return jnp.where(jax.random.bernoulli(k_choice), in_degrees, on_sphere)


def to_mvdream(w2c: jnp.ndarray) -> jnp.ndarray:
  """MVDream 16-number cameras of OpenCV w2c in the +Y-up world. (..., 4, 4) -> (..., 16)."""
  return camera_embedding.camera_from_w2c(w2c)


def from_mvdream(camera: jnp.ndarray, distance: jnp.ndarray) -> jnp.ndarray:
  """Inverse of `to_mvdream`: OpenCV w2c from MVDream cameras and their distance from the origin.

  Args:
    camera: (..., 16) MVDream cameras (unit-length translation).
    distance: () or (...,) distance of each camera from the world origin (the
      part `to_mvdream` drops).

  Returns:
    (..., 4, 4) rigid world-to-camera matrices.
  """
  c2w_mv = jnp.asarray(camera, jnp.float32).reshape(camera.shape[:-1] + (4, 4))
  scale = jnp.asarray(distance, jnp.float32)[..., None]
  c2w_mv = c2w_mv.at[..., :3, 3].multiply(scale)
  # c2w_mv = FLIP_YZ @ c2w_cv @ AXES with AXES = diag(1, -1, -1, 1) its own inverse.
  flip_inv = camera_embedding.FLIP_YZ.T  # a rotation: inverse = transpose
  c2w = flip_inv @ c2w_mv @ camera_embedding.OPENCV_TO_OPENGL_AXES
  rot_w2c = jnp.swapaxes(c2w[..., :3, :3], -1, -2)
  trans = -jnp.einsum("...ij,...j->...i", rot_w2c, c2w[..., :3, 3])
  top = jnp.concatenate([rot_w2c, trans[..., None]], axis=-1)
  bottom = jnp.broadcast_to(jnp.array([0.0, 0.0, 0.0, 1.0], jnp.float32), top.shape[:-2] + (1, 4))
  return jnp.concatenate([top, bottom], axis=-2)


def sample_cameras(key: jax.Array, *, resolution: int, object_center: jnp.ndarray,
                   object_size: jnp.ndarray, object_radius: jnp.ndarray, frame: jnp.ndarray,
                   num_views: int = NUM_VIEWS,
                   elevation_range: tuple[float, float] = (-10.0, 40.0),
                   fov_range: tuple[float, float] = (40.0, 70.0),
                   distance_range: tuple[float, float] = (0.42, 0.7)) -> CsdCameras:
  """Draws the `num_views` CSD cameras (see the module docstring).

  Args:
    key: PRNG key.
    resolution: static image size (pixels).
    object_center: (3,) look-at point in the frame-t object space (the
      canonical bounding-box centre).
    object_size: () largest side of the canonical bounding box.
    object_radius: () radius of a sphere around `object_center` holding the
      object (sets near/far).
    frame: () video frame t.
    num_views: V (4 for MVDream).
    elevation_range, fov_range: degrees.
    distance_range: view half-width at the target over `object_size`.

  Returns:
    CsdCameras with V views.
  """
  k_el, k_fov, k_dist, k_az = jax.random.split(key, 4)
  elevation = sample_elevation(k_el, elevation_range)
  fov = jax.random.uniform(k_fov, (), minval=fov_range[0], maxval=fov_range[1])
  relative = jax.random.uniform(k_dist, (), minval=distance_range[0], maxval=distance_range[1])
  distance = relative * object_size / jnp.tan(0.5 * jnp.deg2rad(fov))
  offset = jax.random.uniform(k_az, (), minval=0.0, maxval=360.0)
  azimuth = offset + jnp.arange(num_views, dtype=jnp.float32) * (360.0 / num_views)
  w2c = orbit_w2c(elevation, azimuth, distance, object_center)
  near = jnp.maximum(distance - object_radius, 1e-2 * distance)
  near_far = jnp.broadcast_to(jnp.stack([near, distance + object_radius]), (num_views, 2))
  intrinsics = jnp.broadcast_to(pinhole_intrinsics(resolution, fov), (num_views, 4))
  return CsdCameras(
      w2c=w2c, intrinsics=intrinsics, near_far=near_far, mvdream=to_mvdream(w2c),
      frame=jnp.asarray(frame, jnp.int32),
      elevation=elevation, azimuth=azimuth, fov=fov, distance=distance)


def repeat_views(cameras: CsdCameras, times: int) -> CsdCameras:
  """Cameras of a batch stacked `times` (e.g. cond + uncond halves of CFG)."""
  per_view = ("w2c", "intrinsics", "near_far", "mvdream", "azimuth", "pixels")
  return cameras._replace(**{
      name: jnp.concatenate([getattr(cameras, name)] * times, axis=0) for name in per_view
      if getattr(cameras, name) is not None})
