"""Dual quaternions against 4x4 matrices and a loop-based NumPy DQS reference."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import dual_quaternion as dq_lib


def _random_rigid(n, seed):
  """n random (quat (x,y,z,w), translation, 4x4 matrix) in float64."""
  rotations = Rotation.random(n, random_state=seed)
  t = np.random.default_rng(seed).normal(size=(n, 3))
  matrices = np.tile(np.eye(4), (n, 1, 1))
  matrices[:, :3, :3] = rotations.as_matrix()
  matrices[:, :3, 3] = t
  return rotations.as_quat(), t, matrices


def _hamilton(a, b):
  """Scalar-by-scalar Hamilton product in (x, y, z, w) layout."""
  ax, ay, az, aw = a
  bx, by, bz, bw = b
  return np.array([
      aw * bx + ax * bw + ay * bz - az * by,
      aw * by - ax * bz + ay * bw + az * bx,
      aw * bz + ax * by - ay * bx + az * bw,
      aw * bw - ax * bx - ay * by - az * bz,
  ])


def _numpy_dqs_matrix(weights, quats, trans):
  """Kavan's DQS for one point, bone by bone; returns the blended 4x4 matrix."""
  pivot = quats[np.argmax(weights)]
  real_sum = np.zeros(4)
  dual_sum = np.zeros(4)
  for w, q, t in zip(weights, quats, trans):
    dual = 0.5 * _hamilton(np.append(t, 0.0), q)
    sign = -1.0 if np.dot(q, pivot) < 0 else 1.0
    real_sum += w * sign * q
    dual_sum += w * sign * dual
  norm = np.linalg.norm(real_sum)
  real, dual = real_sum / norm, dual_sum / norm
  conj = real * np.array([-1, -1, -1, 1])
  out = np.eye(4)
  out[:3, :3] = Rotation.from_quat(real).as_matrix()
  out[:3, 3] = 2.0 * _hamilton(dual, conj)[:3]
  return out


def _apply(matrix, p):
  return matrix[..., :3, :3] @ p + matrix[..., :3, 3]


def test_from_rt_and_apply_match_matrix():
  q, t, matrices = _random_rigid(10, 0)
  p = np.random.default_rng(1).normal(size=(10, 3))
  dq = dq_lib.dq_from_rt(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  chex.assert_shape(dq, (10, 8))
  chex.assert_type(dq, jnp.float32)
  want = np.einsum("nij,nj->ni", matrices[:, :3, :3], p) + t
  np.testing.assert_allclose(dq_lib.dq_apply(dq, jnp.asarray(p, jnp.float32)), want,
                             atol=3e-6)
  q_back, t_back = dq_lib.dq_to_rt(dq)
  np.testing.assert_allclose(q_back, q, atol=1e-7)
  np.testing.assert_allclose(t_back, t, atol=2e-6)


def test_multiply_composes_like_matrices():
  qa, ta, ma = _random_rigid(8, 2)
  qb, tb, mb = _random_rigid(8, 3)
  a = dq_lib.dq_from_rt(jnp.asarray(qa), jnp.asarray(ta))
  b = dq_lib.dq_from_rt(jnp.asarray(qb), jnp.asarray(tb))
  with jax.enable_x64(True):
    a, b = jnp.asarray(np.asarray(a), jnp.float64), jnp.asarray(np.asarray(b), jnp.float64)
    ab = dq_lib.dq_multiply(a, b)
    q_ab, t_ab = dq_lib.dq_to_rt(ab)
  m_ab = ma @ mb
  np.testing.assert_allclose(t_ab, m_ab[:, :3, 3], atol=2e-6)
  np.testing.assert_allclose(Rotation.from_quat(np.asarray(q_ab)).as_matrix(),
                             m_ab[:, :3, :3], atol=2e-6)


def test_inverse_and_conjugate():
  q, t, matrices = _random_rigid(6, 4)
  dq = dq_lib.dq_from_rt(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  inverse = dq_lib.dq_inverse(dq)
  p = np.random.default_rng(5).normal(size=(6, 3))
  want = np.stack([_apply(np.linalg.inv(m), x) for m, x in zip(matrices, p)])
  np.testing.assert_allclose(dq_lib.dq_apply(inverse, jnp.asarray(p, jnp.float32)),
                             want, atol=5e-6)
  identity = dq_lib.dq_multiply(dq, inverse)
  np.testing.assert_allclose(identity, np.tile(dq_lib.dq_identity(), (6, 1)), atol=1e-6)
  np.testing.assert_array_equal(dq_lib.dq_conjugate(dq), inverse)


def test_blend_one_hot_equals_bone_transform():
  q, t, matrices = _random_rigid(5, 6)
  dqs = dq_lib.dq_from_rt(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  p = jnp.asarray([0.2, -0.5, 1.0], jnp.float32)
  for b in range(5):
    weights = jnp.zeros(5).at[b].set(1.0)
    blended = dq_lib.dq_blend(weights, dqs)
    np.testing.assert_allclose(dq_lib.dq_apply(blended, p), _apply(matrices[b], p),
                               atol=3e-6)


def test_blend_matches_loop_reference():
  q, t, _ = _random_rigid(7, 7)
  rng = np.random.default_rng(8)
  weights = rng.dirichlet(np.ones(7), size=12)  # (12, 7)
  points = rng.normal(size=(12, 3))
  dqs = dq_lib.dq_from_rt(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  blended = dq_lib.dq_blend(jnp.asarray(weights, jnp.float32), dqs)
  chex.assert_shape(blended, (12, 8))
  got = dq_lib.dq_apply(blended, jnp.asarray(points, jnp.float32))
  want = np.stack([_apply(_numpy_dqs_matrix(w, q, t), p)
                   for w, p in zip(weights, points)])
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Per-point bone tables (..., B, 8) give the same answer as a shared (B, 8).
  per_point = jnp.broadcast_to(dqs, (12, 7, 8))
  np.testing.assert_allclose(
      dq_lib.dq_blend(jnp.asarray(weights, jnp.float32), per_point), blended, atol=1e-6)


def test_blend_hemisphere_flip():
  """Negating a bone's dual quaternion (same transform) must not change the blend."""
  q, t, _ = _random_rigid(4, 9)
  dqs = dq_lib.dq_from_rt(jnp.asarray(q, jnp.float32), jnp.asarray(t, jnp.float32))
  weights = jnp.asarray([0.4, 0.3, 0.2, 0.1])
  reference = dq_lib.dq_blend(weights, dqs)
  for b in range(4):
    flipped = dq_lib.dq_blend(weights, dqs.at[b].multiply(-1.0))
    # Flipping the pivot (b = 0) flips the whole result, still the same transform.
    sign = -1.0 if b == 0 else 1.0
    np.testing.assert_allclose(flipped, sign * reference, atol=1e-6)
  # Two bones with the same rotation written as q and -q blend to that rotation.
  q0 = jnp.asarray(q[0], jnp.float32)
  pair = jnp.stack([dq_lib.dq_from_rt(q0, jnp.zeros(3)),
                    dq_lib.dq_from_rt(-q0, jnp.zeros(3))])
  blended = dq_lib.dq_blend(jnp.asarray([0.5, 0.5]), pair)
  np.testing.assert_allclose(blended[:4], q0, atol=1e-6)
  # Normalised: unit real part.
  np.testing.assert_allclose(jnp.linalg.norm(reference[:4]), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", [10, 11])
def test_blend_grads(seed):
  q, t, _ = _random_rigid(4, seed)
  rng = np.random.default_rng(seed)
  with jax.enable_x64(True):
    dqs = dq_lib.dq_from_rt(jnp.asarray(q), jnp.asarray(t))
    weights = jnp.asarray(rng.dirichlet(np.ones(4)))
    point = jnp.asarray(rng.normal(size=3))
    blend_apply = jax.jit(lambda w, d, p: dq_lib.dq_apply(dq_lib.dq_blend(w, d), p))
    jtu.check_grads(blend_apply, (weights, dqs, point), order=1, modes=("fwd", "rev"))
    jtu.check_grads(jax.jit(dq_lib.dq_blend), (weights, dqs), order=1,
                    modes=("fwd", "rev"))
    jtu.check_grads(jax.jit(dq_lib.dq_multiply), (dqs[0], dqs[1]), order=1,
                    modes=("fwd", "rev"))
