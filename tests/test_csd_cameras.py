"""CSD cameras: orbit geometry, sampling ranges, MVDream's 16-number camera (both ways)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.csd import cameras as cameras_lib


def _np_mvdream_get_camera(elevation_deg, azimuth_deg):
  """MVDream `get_camera(blender_coord=True)` for one view, written from its description.

  Unit sphere of a y-up world, look at the origin, c2w columns (right, up', -forward, pos)
  with right = forward x up, up' = right x forward, then rows mapped (x, y, z) -> (x, -z, y).
  """
  e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
  pos = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
  forward = -pos / np.linalg.norm(pos)
  right = np.cross(forward, [0.0, 1.0, 0.0])
  right /= np.linalg.norm(right)
  up = np.cross(right, forward)
  c2w = np.eye(4)
  c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, pos
  flip = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
  return (flip @ c2w).reshape(16)


def _random_rigid(rng):
  q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  if np.linalg.det(q) < 0:
    q[:, 0] *= -1
  w2c = np.eye(4)
  w2c[:3, :3] = q
  w2c[:3, 3] = rng.normal(size=3) * 2.0
  return w2c


def test_orbit_views_are_90_degrees_apart_and_look_at_the_target():
  target = np.array([0.1, -0.05, 0.2])
  w2c = np.asarray(cameras_lib.orbit_w2c(25.0, jnp.array([10.0, 100.0, 190.0, 280.0]), 2.5,
                                         jnp.asarray(target)), np.float64)
  centres = np.stack([-m[:3, :3].T @ m[:3, 3] for m in w2c])
  offsets = centres - target
  np.testing.assert_allclose(np.linalg.norm(offsets, axis=-1), 2.5, rtol=1e-5)
  # Same elevation, azimuths 90 degrees apart in the horizontal (x, z) plane.
  np.testing.assert_allclose(np.degrees(np.arcsin(offsets[:, 1] / 2.5)), 25.0, atol=1e-4)
  horizontal = offsets[:, [0, 2]] / np.linalg.norm(offsets[:, [0, 2]], axis=-1, keepdims=True)
  for i in range(4):
    j = (i + 1) % 4
    np.testing.assert_allclose(horizontal[i] @ horizontal[j], 0.0, atol=1e-5)
  # Azimuth 10: camera at (sin 10, ., cos 10) from the target (0 = +Z, 90 = +X).
  ten = math.radians(10)
  np.testing.assert_allclose(horizontal[0], [math.sin(ten), math.cos(ten)], atol=1e-5)
  # The target lies on the optical axis and projects to the image centre.
  for m in w2c:
    p = m[:3, :3] @ target + m[:3, 3]
    np.testing.assert_allclose(p[:2], 0.0, atol=1e-5)
    assert p[2] == pytest.approx(2.5, rel=1e-5)
    # Image up (-y row) has a positive world-Y component: the world is upright.
    assert -m[1, 1] > 0


def test_to_mvdream_matches_get_camera():
  elevation = 17.0
  azimuths = np.array([0.0, 90.0, 180.0, 270.0]) + 33.0
  w2c = cameras_lib.orbit_w2c(elevation, jnp.asarray(azimuths), 3.7, jnp.zeros(3))
  got = np.asarray(cameras_lib.to_mvdream(w2c))
  want = np.stack([_np_mvdream_get_camera(elevation, a) for a in azimuths])
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_mvdream_round_trip():
  rng = np.random.default_rng(1)
  w2c = np.stack([_random_rigid(rng) for _ in range(6)]).astype(np.float32)
  distance = np.linalg.norm(np.stack([-m[:3, :3].T @ m[:3, 3] for m in w2c]), axis=-1)
  cam16 = cameras_lib.to_mvdream(jnp.asarray(w2c))
  assert cam16.shape == (6, 16)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(cam16).reshape(6, 4, 4)[:, :3, 3], axis=-1),
                             1.0, atol=1e-6)
  back = np.asarray(cameras_lib.from_mvdream(cam16, jnp.asarray(distance)))
  np.testing.assert_allclose(back, w2c, atol=1e-5)
  again = np.asarray(cameras_lib.to_mvdream(jnp.asarray(back)))
  np.testing.assert_allclose(again, np.asarray(cam16), atol=1e-6)


def test_pinhole_intrinsics():
  k = np.asarray(cameras_lib.pinhole_intrinsics(64, 60.0))
  f = 32.0 / math.tan(math.radians(30.0))
  np.testing.assert_allclose(k, [f, f, 32.0, 32.0], rtol=1e-6)


def test_sample_cameras_ranges_and_sharing():
  center = jnp.array([0.05, 0.0, -0.1])
  size, radius = 0.8, 0.6

  def draw(key):
    return cameras_lib.sample_cameras(key, resolution=16, object_center=center, object_size=size,
                                      object_radius=radius, frame=3)

  cams = jax.jit(jax.vmap(draw))(jax.random.split(jax.random.PRNGKey(0), 256))
  el, fov, dist, az = (np.asarray(x) for x in (cams.elevation, cams.fov, cams.distance,
                                               cams.azimuth))
  assert el.min() >= -10.0 - 1e-4 and el.max() <= 40.0 + 1e-4
  assert el.max() - el.min() > 30.0
  assert fov.min() >= 40.0 and fov.max() <= 70.0
  relative = dist * np.tan(np.radians(fov) / 2) / size
  assert relative.min() >= 0.42 - 1e-5 and relative.max() <= 0.7 + 1e-5
  np.testing.assert_allclose(np.diff(az, axis=1), 90.0, atol=1e-3)
  assert np.ptp(az[:, 0] % 360.0) > 300.0  # the offset is random
  # Every view shares elevation, fov and distance; near/far hold the sphere.
  k = np.asarray(cams.intrinsics)
  focal = np.broadcast_to((8.0 / np.tan(np.radians(fov) / 2))[:, None], (256, 4))
  np.testing.assert_allclose(k[:, :, 0], focal, rtol=1e-5)
  np.testing.assert_allclose(k[:, :, 2:], 8.0)
  nf = np.asarray(cams.near_far)
  far = np.broadcast_to((dist + radius)[:, None], (256, 4))
  np.testing.assert_allclose(nf[..., 1], far, rtol=1e-5)
  near = np.maximum(dist - radius, 0.01 * dist)  # in front of the camera even inside the sphere
  np.testing.assert_allclose(nf[..., 0], np.broadcast_to(near[:, None], (256, 4)), rtol=1e-5)
  w2c = np.asarray(cams.w2c, np.float64)
  for i in range(0, 256, 37):
    for v in range(4):
      centre = -w2c[i, v, :3, :3].T @ w2c[i, v, :3, 3]
      off = centre - np.asarray(center)
      assert np.linalg.norm(off) == pytest.approx(dist[i], rel=1e-4)
      assert np.degrees(np.arcsin(off[1] / np.linalg.norm(off))) == pytest.approx(el[i], abs=1e-3)
      p = w2c[i, v, :3, :3] @ np.asarray(center) + w2c[i, v, :3, 3]
      np.testing.assert_allclose(p[:2], 0.0, atol=1e-4)
  np.testing.assert_allclose(np.asarray(cams.mvdream), np.asarray(cameras_lib.to_mvdream(cams.w2c)),
                             atol=1e-6)
  assert np.all(np.asarray(cams.frame) == 3)


def test_sample_elevation_mixture():
  """Half uniform in degrees, half uniform on the sphere band (threestudio)."""
  keys = jax.random.split(jax.random.PRNGKey(3), 20000)
  el = np.asarray(jax.vmap(lambda k: cameras_lib.sample_elevation(k, (-10.0, 40.0)))(keys))
  # Reference CDF at 15 degrees: mean of the two components' CDFs.
  lo, hi = math.radians(-10), math.radians(40)
  cdf_deg = (15.0 + 10.0) / 50.0
  cdf_sphere = (math.sin(math.radians(15)) - math.sin(lo)) / (math.sin(hi) - math.sin(lo))
  assert np.mean(el <= 15.0) == pytest.approx(0.5 * (cdf_deg + cdf_sphere), abs=0.015)


def test_repeat_views():
  cams = cameras_lib.sample_cameras(jax.random.PRNGKey(0), resolution=8, object_center=jnp.zeros(3),
                                    object_size=1.0, object_radius=0.7, frame=0)
  twice = cameras_lib.repeat_views(cams, 2)
  assert twice.w2c.shape == (8, 4, 4) and twice.mvdream.shape == (8, 16)
  np.testing.assert_array_equal(np.asarray(twice.w2c[4:]), np.asarray(cams.w2c))
  assert twice.fov.shape == ()
