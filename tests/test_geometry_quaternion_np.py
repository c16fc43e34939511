"""Host-side NumPy quaternions (x, y, z, w) against hand-built matrices and loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import quaternion_np


def _axis_angle_matrix(axis, angle):
  """Rodrigues' formula, written out: I + sin(a) K + (1 - cos(a)) K^2."""
  x, y, z = np.asarray(axis, np.float64) / np.linalg.norm(axis)
  k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
  return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _axis_angle_quat(axis, angle):
  axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
  return np.append(axis * math.sin(angle / 2), math.cos(angle / 2))


def _cases():
  """(axis, angle) pairs: generic ones and near-pi ones that exercise every branch."""
  rng = np.random.default_rng(0)
  cases = [(rng.normal(size=3), a) for a in rng.uniform(0, np.pi, 20)]
  for axis in np.eye(3):
    for angle in (np.pi, np.pi - 1e-3, 2.5, 0.0):
      cases.append((axis + 1e-2 * rng.normal(size=3), angle))
  return cases


def test_quaternion_to_matrix_matches_rodrigues():
  cases = _cases()
  q = np.stack([_axis_angle_quat(a, t) for a, t in cases]).reshape(4, -1, 4)
  got = quaternion_np.quaternion_to_matrix(q)
  assert got.shape == (4, len(cases) // 4, 3, 3) and got.dtype == np.float64
  want = np.stack([_axis_angle_matrix(a, t) for a, t in cases]).reshape(got.shape)
  np.testing.assert_allclose(got, want, atol=1e-14)


def test_quaternion_to_matrix_is_not_renormalised():
  # glTF players use stored values as they are: 2q gives 4x the quadratic terms.
  q = _axis_angle_quat([0.2, 0.5, -1.0], 1.1)
  x, y, z, w = 2 * q
  want = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                   [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                   [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
  np.testing.assert_allclose(quaternion_np.quaternion_to_matrix(2 * q), want, atol=1e-15)


def test_matrix_to_quaternion_round_trips_every_branch():
  cases = _cases()
  matrices = np.stack([_axis_angle_matrix(a, t) for a, t in cases])
  got = quaternion_np.matrix_to_quaternion(matrices.reshape(2, -1, 3, 3)).reshape(-1, 4)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-15)
  for q, (axis, angle), m in zip(got, cases, matrices):
    want = _axis_angle_quat(axis, angle)
    assert abs(np.dot(q, want)) == pytest.approx(1.0, abs=1e-12)  # q or -q
    np.testing.assert_allclose(quaternion_np.quaternion_to_matrix(q), m, atol=1e-14)
  # Each branch of Shepperd's method is taken: w (trace > 0) and x, y, z (near pi).
  largest = np.argmax(np.abs(got), axis=-1)
  assert set(largest) == {0, 1, 2, 3}
  # One matrix in, one quaternion out.
  assert quaternion_np.matrix_to_quaternion(np.eye(3)).tolist() == [0.0, 0.0, 0.0, 1.0]


def test_normalize():
  q = np.random.default_rng(1).normal(size=(5, 4)) * 3
  got = quaternion_np.normalize(q)
  for row, out in zip(q, got):
    np.testing.assert_allclose(out, row / math.sqrt(sum(c * c for c in row)), atol=1e-15)


def test_slerp_matches_scipy_and_takes_the_short_way():
  rng = np.random.default_rng(2)
  q0 = Rotation.random(30, random_state=3).as_quat()
  q1 = Rotation.random(30, random_state=4).as_quat()
  u = rng.uniform(0, 1, 30)
  got = quaternion_np.slerp(q0, q1 * np.sign(rng.normal(size=(30, 1))), u)
  for i in range(30):
    want = Rotation.from_quat(q0[i]) * Rotation.from_rotvec(
        u[i] * (Rotation.from_quat(q0[i]).inv() * Rotation.from_quat(q1[i])).as_rotvec())
    assert abs(np.dot(got[i], want.as_quat())) == pytest.approx(1.0, abs=1e-12)
  # -q1 of a 90 degree turn about z: the short way is 45 degrees at u = 0.5.
  half = np.sin(np.pi / 4)
  q = quaternion_np.slerp(np.array([[0.0, 0.0, 0.0, 1.0]]), -np.array([[0.0, 0.0, half, half]]),
                          np.array([0.5]))
  assert Rotation.from_quat(q).magnitude()[0] == pytest.approx(np.pi / 4, abs=1e-12)
  # Nearly parallel keys: the lerp branch, still unit length.
  q = quaternion_np.slerp(q0[:1], q0[:1] + 1e-9, np.array([0.3]))
  np.testing.assert_allclose(q, q0[:1], atol=1e-8)


def test_continuous_quaternions():
  rng = np.random.default_rng(2)
  q = Rotation.random(20, random_state=3).as_quat()
  signs = rng.choice([-1.0, 1.0], size=(20, 1))
  out = quaternion_np.continuous_quaternions(2.0 * q * signs)
  assert np.all(np.sum(out[1:] * out[:-1], -1) >= 0)
  np.testing.assert_allclose(out[0], q[0] * signs[0], atol=1e-15)  # the first key is kept
  # Same rotations, unit length.
  np.testing.assert_allclose(np.abs(np.sum(out * q, -1)), 1.0, atol=1e-12)
