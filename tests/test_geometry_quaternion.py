"""Quaternions (x, y, z, w) against explicit matrix algebra and scipy's Rotation."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import quaternion as q_lib


def _random_quats(n, seed):
  # scipy also stores quaternions as (x, y, z, w).
  return Rotation.random(n, random_state=seed).as_quat()


def _left_matrix(q):
  """4x4 matrix L(q) with q * p = L(q) @ p in (x, y, z, w) layout, from i^2=j^2=k^2=ijk=-1."""
  x, y, z, w = q
  return np.array([
      [w, -z, y, x],
      [z, w, -x, y],
      [-y, x, w, z],
      [-x, -y, -z, w],
  ])


def _same_rotation(q1, q2, atol):
  """q and -q are the same rotation: compare up to a global sign per row."""
  q1, q2 = np.asarray(q1, np.float64), np.asarray(q2, np.float64)
  sign = np.where(np.sum(q1 * q2, axis=-1, keepdims=True) < 0, -1.0, 1.0)
  np.testing.assert_allclose(q1, sign * q2, atol=atol)


def test_multiply_matches_left_matrix_and_scipy_composition():
  q1, q2 = _random_quats(16, 0), _random_quats(16, 1)
  got = np.asarray(q_lib.quat_multiply(jnp.asarray(q1), jnp.asarray(q2)))
  want = np.stack([_left_matrix(a) @ b for a, b in zip(q1, q2)])
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Hamilton product q1 * q2 = "rotate by q2, then by q1".
  composed = (Rotation.from_quat(q1) * Rotation.from_quat(q2)).as_quat()
  _same_rotation(got, composed, atol=1e-6)


def test_multiply_broadcasts_and_keeps_dtype():
  q1 = jnp.asarray(_random_quats(6, 2).reshape(2, 3, 4), jnp.float32)
  q2 = jnp.asarray(_random_quats(1, 3)[0], jnp.float32)
  out = q_lib.quat_multiply(q1, q2)
  chex.assert_shape(out, (2, 3, 4))
  chex.assert_type(out, jnp.float32)
  np.testing.assert_allclose(
      out[1, 2], q_lib.quat_multiply(q1[1, 2], q2), atol=1e-7)


def test_conjugate_inverts_unit_quaternion():
  q = jnp.asarray(_random_quats(8, 4))
  prod = q_lib.quat_multiply(q, q_lib.quat_conjugate(q))
  np.testing.assert_allclose(prod, np.tile([0, 0, 0, 1.0], (8, 1)), atol=1e-6)


def test_normalize():
  rng = np.random.default_rng(5)
  raw = rng.normal(size=(10, 4)) * 3.0
  got = q_lib.quat_normalize(jnp.asarray(raw, jnp.float32))
  np.testing.assert_allclose(got, raw / np.linalg.norm(raw, axis=-1, keepdims=True),
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(q_lib.quat_normalize(jnp.zeros(4)), np.zeros(4))


def test_rotate_and_to_matrix_match_scipy():
  q = _random_quats(32, 6)
  v = np.random.default_rng(7).normal(size=(32, 3))
  want = Rotation.from_quat(q).apply(v)
  np.testing.assert_allclose(q_lib.quat_rotate(jnp.asarray(q), jnp.asarray(v)), want,
                             atol=2e-6)
  matrices = np.asarray(q_lib.quat_to_matrix(jnp.asarray(q)))
  chex.assert_shape(matrices, (32, 3, 3))
  np.testing.assert_allclose(matrices, Rotation.from_quat(q).as_matrix(), atol=1e-6)
  # Column-vector convention: R @ v is the rotated vector.
  np.testing.assert_allclose(np.einsum("nij,nj->ni", matrices, v), want, atol=2e-6)


def test_to_matrix_is_scale_invariant():
  q = _random_quats(4, 8)
  np.testing.assert_allclose(q_lib.quat_to_matrix(jnp.asarray(3.0 * q)),
                             Rotation.from_quat(q).as_matrix(), atol=1e-6)


def _near_half_turns():
  """Rotations by pi and pi - tiny about many axes, plus generic ones."""
  rng = np.random.default_rng(9)
  axes = np.concatenate([np.eye(3), -np.eye(3), rng.normal(size=(10, 3)),
                         [[1, 1, 0], [0, 1, 1], [1, 1, 1], [1, -1, 1e-3]]])
  axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
  angles = [np.pi, np.pi - 1e-3, np.pi - 1e-6, 1e-7, 0.0, 1.0, 2.5]
  rotvecs = np.concatenate([axes * a for a in angles])
  return Rotation.from_rotvec(rotvecs)


def test_matrix_to_quat_round_trip_including_half_turns():
  rotations = _near_half_turns()
  matrices = rotations.as_matrix()
  with jax.enable_x64(True):
    got = np.asarray(q_lib.matrix_to_quat(jnp.asarray(matrices)))
  assert np.all(got[:, 3] >= 0.0)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-12)
  _same_rotation(got, rotations.as_quat(), atol=1e-9)
  # float32 path: compare matrices (the quaternion sign is ambiguous at pi).
  got32 = q_lib.matrix_to_quat(jnp.asarray(matrices, jnp.float32))
  chex.assert_type(got32, jnp.float32)
  np.testing.assert_allclose(q_lib.quat_to_matrix(got32), matrices, atol=2e-6)


def test_axis_angle_to_quat_matches_scipy_including_zero():
  rotvecs = np.concatenate([
      np.random.default_rng(10).normal(size=(20, 3)),
      [[0, 0, 0], [1e-9, 0, 0], [0, -3e-7, 1e-7], [np.pi, 0, 0]]])
  got = q_lib.axis_angle_to_quat(jnp.asarray(rotvecs, jnp.float32))
  chex.assert_shape(got, (24, 4))
  _same_rotation(got, Rotation.from_rotvec(rotvecs).as_quat(), atol=1e-6)


def test_quat_to_axis_angle_matches_scipy():
  rotations = _near_half_turns()
  with jax.enable_x64(True):
    got = np.array(q_lib.quat_to_axis_angle(jnp.asarray(rotations.as_quat())))
  want = rotations.as_rotvec()
  # At exactly pi the axis sign is ambiguous: compare the rotations instead.
  np.testing.assert_allclose(Rotation.from_rotvec(got).as_matrix(),
                             rotations.as_matrix(), atol=1e-9)
  generic = np.linalg.norm(want, axis=-1) < np.pi - 1e-3
  np.testing.assert_allclose(got[generic], want[generic], atol=1e-9)
  # -q is the same rotation and gives the same vector.
  with jax.enable_x64(True):
    flipped = q_lib.quat_to_axis_angle(-jnp.asarray(rotations.as_quat()))
  np.testing.assert_allclose(flipped[generic], want[generic], atol=1e-9)


def test_identity():
  np.testing.assert_array_equal(q_lib.quat_identity(), [0, 0, 0, 1])
  np.testing.assert_allclose(q_lib.quat_to_matrix(q_lib.quat_identity()), np.eye(3))


@pytest.mark.parametrize("rotvec", [[0.0, 0.0, 0.0], [0.3, -0.2, 0.9], [1e-8, 0, 0]])
def test_axis_angle_grads(rotvec):
  with jax.enable_x64(True):
    aa = jnp.asarray(rotvec, jnp.float64)
    jtu.check_grads(jax.jit(q_lib.axis_angle_to_quat), (aa,), order=1, modes=("fwd", "rev"))
    grad = jax.jacrev(q_lib.axis_angle_to_quat)(aa)
    assert np.all(np.isfinite(grad))
    if not np.any(rotvec):
      # d q / d aa at 0 is [I/2; 0].
      np.testing.assert_allclose(grad, np.concatenate([np.eye(3) / 2, np.zeros((1, 3))]))


@pytest.mark.parametrize("seed", [11, 12])
def test_rotation_conversion_grads(seed):
  with jax.enable_x64(True):
    q = jnp.asarray(_random_quats(1, seed)[0])
    jtu.check_grads(jax.jit(q_lib.quat_to_axis_angle), (q,), order=1, modes=("fwd", "rev"))
    jtu.check_grads(jax.jit(q_lib.quat_to_matrix), (q,), order=1, modes=("fwd", "rev"))
    matrix = jnp.asarray(Rotation.from_quat(np.asarray(q)).as_matrix())
    jtu.check_grads(jax.jit(q_lib.matrix_to_quat), (matrix,), order=1, modes=("fwd", "rev"))
    v = jnp.asarray([0.3, -1.0, 2.0])
    jtu.check_grads(jax.jit(q_lib.quat_rotate), (q, v), order=1, modes=("fwd", "rev"))
    jtu.check_grads(jax.jit(q_lib.quat_multiply), (q, q[::-1]), order=1, modes=("fwd", "rev"))


def test_grads_finite_at_identity():
  ident = q_lib.quat_identity()
  for fn in (q_lib.quat_to_axis_angle, q_lib.quat_to_matrix, q_lib.quat_normalize):
    assert np.all(np.isfinite(jax.jit(jax.jacrev(fn))(ident)))
  matrix_jacobian = jax.jit(jax.jacrev(q_lib.matrix_to_quat))
  assert np.all(np.isfinite(matrix_jacobian(jnp.eye(3))))
  # Half-turn about x: w = 0, the x branch is selected.
  half_turn = jnp.diag(jnp.array([1.0, -1.0, -1.0]))
  assert np.all(np.isfinite(matrix_jacobian(half_turn)))


def test_jit_and_vmap_agree():
  q = jnp.asarray(_random_quats(5, 13), jnp.float32)
  aa = q_lib.quat_to_axis_angle(q)
  np.testing.assert_allclose(jax.jit(jax.vmap(q_lib.quat_to_axis_angle))(q), aa,
                             atol=1e-6)
