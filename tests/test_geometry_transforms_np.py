"""Host-side float64 point transforms against per-point loops."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import transforms_np


def _rigid(seed, n=None):
  rng = np.random.default_rng(seed)
  count = 1 if n is None else n
  m = np.tile(np.eye(4), (count, 1, 1))
  m[:, :3, :3] = Rotation.random(count, random_state=seed).as_matrix()
  m[:, :3, 3] = rng.normal(size=(count, 3))
  return m[0] if n is None else m


def _loop(points, matrix):
  """Slow reference: R p + t one point at a time, by hand."""
  out = np.zeros(points.shape)
  for v in range(points.shape[0]):
    for i in range(3):
      out[v, i] = matrix[i, 3] + sum(matrix[i, k] * points[v, k] for k in range(3))
  return out


def test_one_matrix_for_all_points():
  points = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
  w2c = _rigid(1)
  got = transforms_np.to_camera(points, w2c)
  assert got.dtype == np.float64 and got.shape == (7, 3)
  np.testing.assert_allclose(got, _loop(points.astype(np.float64), w2c), atol=1e-13)
  # Several point sets, one matrix.
  many = np.random.default_rng(2).normal(size=(2, 3, 5, 3))
  got = transforms_np.to_camera(many, w2c)
  assert got.shape == (2, 3, 5, 3)
  for i in range(2):
    for j in range(3):
      np.testing.assert_allclose(got[i, j], _loop(many[i, j], w2c), atol=1e-13)


def test_one_matrix_per_frame():
  points = np.random.default_rng(3).normal(size=(4, 6, 3))
  obj2cam = _rigid(4, n=4)
  obj2cam[2, :3, :3] *= 1.7  # not only rigid: any 4x4 affine map
  got = transforms_np.to_camera(points, obj2cam)
  assert got.shape == (4, 6, 3)
  for t in range(4):
    np.testing.assert_allclose(got[t], _loop(points[t], obj2cam[t]), atol=1e-13)


def test_inverse_maps_back():
  points = np.random.default_rng(5).normal(size=(3, 8, 3))
  w2c = _rigid(6, n=3)
  back = transforms_np.to_camera(transforms_np.to_camera(points, w2c), np.linalg.inv(w2c))
  np.testing.assert_allclose(back, points, atol=1e-12)


def test_compose_trs_is_t_times_r_times_s():
  rng = np.random.default_rng(7)
  t = rng.normal(size=(2, 3, 3))
  quat = Rotation.random(6, random_state=8).as_quat().reshape(2, 3, 4)
  s = rng.uniform(0.5, 2.0, size=(2, 3, 3))
  got = transforms_np.compose_trs(t, quat, s)
  assert got.shape == (2, 3, 4, 4)
  for i in range(2):
    for j in range(3):
      trans, rot, scale = np.eye(4), np.eye(4), np.diag(np.append(s[i, j], 1.0))
      trans[:3, 3] = t[i, j]
      rot[:3, :3] = Rotation.from_quat(quat[i, j]).as_matrix()
      np.testing.assert_allclose(got[i, j], trans @ rot @ scale, atol=1e-14)
