"""SE(3) matrices and OpenCV camera rays against plain NumPy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import rays
from animdreamer_jax.geometry import se3


def _random_pose(seed):
  rotation = Rotation.random(random_state=seed)
  matrix = np.eye(4)
  matrix[:3, :3] = rotation.as_matrix()
  matrix[:3, 3] = np.random.default_rng(seed).normal(size=3)
  return rotation, matrix


def test_rt_matrix_round_trip_and_inverse():
  rotations = Rotation.random(5, random_state=0)
  t = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  matrices = se3.rt_to_matrix(jnp.asarray(rotations.as_matrix(), jnp.float32),
                              jnp.asarray(t))
  chex.assert_shape(matrices, (5, 4, 4))
  chex.assert_type(matrices, jnp.float32)
  np.testing.assert_array_equal(matrices[:, 3], np.tile([0, 0, 0, 1.0], (5, 1)))
  r_back, t_back = se3.matrix_to_rt(matrices)
  np.testing.assert_allclose(r_back, rotations.as_matrix(), atol=1e-7)
  np.testing.assert_array_equal(t_back, t)
  np.testing.assert_allclose(se3.se3_inverse(matrices),
                             np.linalg.inv(np.asarray(matrices, np.float64)), atol=3e-6)


def test_rt_to_matrix_broadcasts_translation():
  out = se3.rt_to_matrix(jnp.eye(3), jnp.zeros((2, 3)))
  chex.assert_shape(out, (2, 4, 4))
  np.testing.assert_array_equal(out, np.tile(np.eye(4), (2, 1, 1)))


def test_apply_and_quat_t_to_matrix():
  rotation, matrix = _random_pose(1)
  points = np.random.default_rng(2).normal(size=(7, 3))
  homogeneous = np.concatenate([points, np.ones((7, 1))], -1)
  want = (homogeneous @ matrix.T)[:, :3]
  np.testing.assert_allclose(se3.apply_se3(jnp.asarray(matrix, jnp.float32),
                                           jnp.asarray(points, jnp.float32)),
                             want, atol=3e-6)
  built = se3.quat_t_to_matrix(jnp.asarray(rotation.as_quat(), jnp.float32),
                               jnp.asarray(matrix[:3, 3], jnp.float32))
  np.testing.assert_allclose(built, matrix, atol=1e-6)
  q, t = se3.matrix_to_quat_t(built)
  assert q[3] >= 0
  np.testing.assert_allclose(np.abs(np.dot(q, rotation.as_quat())), 1.0, atol=1e-6)
  np.testing.assert_allclose(t, matrix[:3, 3], atol=1e-6)


def _numpy_pixel_rays(intrinsics, w2c, uv):
  fx, fy, cx, cy = intrinsics
  k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
  pixels = np.concatenate([uv + 0.5, np.ones((len(uv), 1))], -1)
  dirs_cam = pixels @ np.linalg.inv(k).T
  c2w = np.linalg.inv(w2c)
  dirs = dirs_cam @ c2w[:3, :3].T
  dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
  return np.tile(c2w[:3, 3], (len(uv), 1)), dirs, dirs_cam


def test_pixel_rays_match_numpy():
  intrinsics = np.array([120.0, 110.0, 64.0, 48.5])
  _, w2c = _random_pose(3)
  uv = np.array([[0, 0], [127, 95], [64, 48], [10.25, 80.75]])
  origins, dirs = rays.pixel_rays(jnp.asarray(intrinsics, jnp.float32),
                                  jnp.asarray(w2c, jnp.float32),
                                  jnp.asarray(uv, jnp.float32))
  chex.assert_shape([origins, dirs], (4, 3))
  want_origins, want_dirs, want_cam = _numpy_pixel_rays(intrinsics, w2c, uv)
  np.testing.assert_allclose(origins, want_origins, atol=5e-6)
  np.testing.assert_allclose(dirs, want_dirs, atol=2e-6)
  np.testing.assert_allclose(rays.camera_rays(jnp.asarray(intrinsics, jnp.float32),
                                              jnp.asarray(uv, jnp.float32)),
                             want_cam, atol=1e-6)
  # A point along the ray transforms to camera coordinates on the pixel's ray.
  point = want_origins[1] + 2.5 * want_dirs[1]
  p_cam = w2c[:3, :3] @ point + w2c[:3, 3]
  np.testing.assert_allclose(p_cam / p_cam[2], want_cam[1], atol=1e-9)


def test_project_inverts_camera_rays():
  intrinsics = jnp.asarray([300.0, 280.0, 160.0, 120.0])
  rng = np.random.default_rng(4)
  uv = jnp.asarray(rng.uniform(0, 320, size=(50, 2)), jnp.float32)
  depth = jnp.asarray(rng.uniform(0.5, 4.0, size=(50, 1)), jnp.float32)
  points = depth * rays.camera_rays(intrinsics, uv)
  projected = rays.project(intrinsics, points)
  chex.assert_shape(projected, (50, 2))
  np.testing.assert_allclose(projected, uv, atol=1e-4)
  # Against K @ p / z, with the half-pixel centre offset removed.
  k = np.array([[300.0, 0, 160.0], [0, 280.0, 120.0], [0, 0, 1]])
  homogeneous = np.asarray(points, np.float64) @ k.T
  want = homogeneous[:, :2] / homogeneous[:, 2:] - 0.5
  np.testing.assert_allclose(projected, want, atol=1e-4)


def test_project_is_finite_behind_camera_and_grads():
  intrinsics = jnp.asarray([100.0, 100.0, 50.0, 50.0])
  assert np.all(np.isfinite(rays.project(intrinsics, jnp.asarray([0.1, 0.2, 0.0]))))
  grad = jax.jacrev(lambda p: rays.project(intrinsics, p))(jnp.asarray([0.1, -0.2, 2.0]))
  # d(f x / z)/dx = f / z, d(f x / z)/dz = -f x / z^2.
  np.testing.assert_allclose(grad, [[50.0, 0, -2.5], [0, 50.0, 5.0]], rtol=1e-6)


def test_pixel_grid():
  grid = rays.pixel_grid(2, 3)
  np.testing.assert_array_equal(grid, [[0, 0], [1, 0], [2, 0], [0, 1], [1, 1], [2, 1]])


def _loop_look_at(eye, target, up=(0.0, 1.0, 0.0)):
  """Slow reference for one camera: rows right, down, forward, written out by hand."""
  eye, target, up = (np.asarray(a, np.float64) for a in (eye, target, up))
  f = (target - eye) / np.linalg.norm(target - eye)
  r = np.cross(f, up)
  if np.linalg.norm(r) < 1e-9:  # looking along up: right from +X
    r = np.cross(f, [1.0, 0.0, 0.0])
  r /= np.linalg.norm(r)
  d = np.cross(f, r)
  w2c = np.eye(4)
  for row, axis in enumerate((r, d, f)):
    w2c[row, :3] = axis
    w2c[row, 3] = -sum(axis[k] * eye[k] for k in range(3))
  return w2c


def test_look_at_numpy_matches_loop_reference():
  rng = np.random.default_rng(5)
  eyes = rng.normal(size=(2, 3, 3)) * 3
  targets = rng.normal(size=(3, 3)) * 0.2  # broadcast against the (2, 3) cameras
  got = rays.look_at(eyes, targets)
  assert got.shape == (2, 3, 4, 4) and got.dtype == np.float64
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(got[i, j], _loop_look_at(eyes[i, j], targets[j]), atol=1e-13)
  single = rays.look_at(eyes[0, 0], targets[0], up=(0.0, 0.0, 1.0))
  np.testing.assert_allclose(single, _loop_look_at(eyes[0, 0], targets[0], (0.0, 0.0, 1.0)),
                             atol=1e-13)


def test_look_at_is_an_opencv_camera():
  eye, target = np.array([1.0, 2.0, 3.0]), np.array([0.2, 0.1, -0.4])
  w2c = rays.look_at(eye, target)
  rot = w2c[:3, :3]
  np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
  assert np.linalg.det(rot) == pytest.approx(1.0)
  np.testing.assert_allclose(rot @ eye + w2c[:3, 3], 0.0, atol=1e-12)
  in_cam = rot @ target + w2c[:3, 3]
  np.testing.assert_allclose(in_cam[:2], 0.0, atol=1e-12)  # on the optical axis
  assert in_cam[2] == pytest.approx(np.linalg.norm(target - eye))
  above = rot @ (target + [0, 0.1, 0]) + w2c[:3, 3]
  assert above[1] < 0  # world +Y is image up (OpenCV y is down)


def test_look_at_jnp_in_jit_matches_reference():
  rng = np.random.default_rng(0)
  eyes = rng.normal(size=(5, 3)) * 3
  targets = rng.normal(size=(5, 3)) * 0.2
  got = jax.jit(lambda e, t: rays.look_at(e, t, xp=jnp))(jnp.asarray(eyes), jnp.asarray(targets))
  chex.assert_type(got, jnp.float32)
  want = np.stack([_loop_look_at(e, t) for e, t in zip(eyes, targets)])
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_look_at_along_up_is_a_rotation_with_finite_gradient():
  # Straight down and straight up: the cross product with `up` vanishes.
  for eye in ([0.0, 2.0, 0.0], [0.0, -2.0, 0.0]):
    w2c = rays.look_at(eye, [0.0, 0.0, 0.0])
    np.testing.assert_allclose(w2c, _loop_look_at(eye, [0.0, 0.0, 0.0]), atol=1e-13)
    rot = w2c[:3, :3]
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(rot) == pytest.approx(1.0)
    got = rays.look_at(jnp.asarray(eye), jnp.zeros(3), xp=jnp)
    np.testing.assert_allclose(got, w2c, atol=1e-6)
  # Neither branch of the degenerate-up choice makes NaN gradients under jit.
  loss = jax.jit(jax.grad(lambda e: jnp.sum(rays.look_at(e, jnp.zeros(3), xp=jnp) ** 2)))
  for eye in ([0.0, 2.0, 0.0], [1.0, 0.5, 2.0], [2.0, 0.0, 0.0]):
    assert np.all(np.isfinite(loss(jnp.asarray(eye))))
