"""Gaussian-bone skinning against loop-over-bones NumPy references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from scipy.spatial.transform import Rotation

from animdreamer_jax.model import skinning

NUM_BONES = 5


def _random_bones(seed, num_bones=NUM_BONES, spread=0.3, dtype=np.float32):
  quat = Rotation.random(num_bones, random_state=seed).as_quat()
  trans = np.random.default_rng(seed).normal(size=(num_bones, 3)) * spread
  return skinning.Bones(jnp.asarray(quat, dtype), jnp.asarray(trans, dtype))


def _log_scale(seed, num_bones=NUM_BONES, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return jnp.asarray(np.log(0.2) + 0.3 * rng.normal(size=(num_bones, 3)), dtype)


def _points(seed, n=16, dtype=np.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, 3)) * 0.3, dtype)


# ----------------------------------------------------------------------------
# NumPy references: one bone at a time, 4x4 matrices, scipy rotations.


def _np(a):
  return np.asarray(a, np.float64)


def _bone_matrices(bones):
  out = []
  for q, t in zip(_np(bones.quat), _np(bones.trans)):
    m = np.eye(4)
    m[:3, :3] = Rotation.from_quat(q).as_matrix()
    m[:3, 3] = t
    out.append(m)
  return out


def _np_logits(x, bones, log_scale, delta=None):
  x = _np(x)
  logits = []
  for b, m in enumerate(_bone_matrices(bones)):
    local = m[:3, :3].T @ (x - m[:3, 3])
    scaled = local / np.exp(_np(log_scale)[b])
    logits.append(-np.dot(scaled, scaled) - (0.0 if delta is None else _np(delta)[b]))
  return np.array(logits)


def _np_softmax(logits):
  e = np.exp(logits - logits.max())
  return e / e.sum()


def _np_rel(bones_from, bones_to):
  return [mt @ np.linalg.inv(mf)
          for mf, mt in zip(_bone_matrices(bones_from), _bone_matrices(bones_to))]


def _np_lbs(x, weights, rel):
  x = _np(x)
  return sum(w * (m[:3, :3] @ x + m[:3, 3]) for w, m in zip(weights, rel))


def _np_dqs(x, weights, rel):
  """Kavan's DQS: (quaternion, translation) per bone from its matrix, loop over bones."""
  quats = [Rotation.from_matrix(m[:3, :3]).as_quat() for m in rel]
  pivot = quats[int(np.argmax(weights))]
  real = np.zeros(4)
  dual = np.zeros(4)
  for w, q, m in zip(weights, quats, rel):
    sign = -1.0 if np.dot(q, pivot) < 0 else 1.0
    real += w * sign * q
    dual += w * sign * 0.5 * _hamilton(np.append(m[:3, 3], 0.0), q)
  norm = np.linalg.norm(real)
  real_unit, dual_unit = real / norm, dual / norm
  t = 2.0 * _hamilton(dual_unit, real_unit * np.array([-1, -1, -1, 1.0]))[:3]
  return Rotation.from_quat(real_unit).as_matrix() @ _np(x) + t


def _hamilton(a, b):
  ax, ay, az, aw = a
  bx, by, bz, bw = b
  return np.array([
      aw * bx + ax * bw + ay * bz - az * by,
      aw * by - ax * bz + ay * bw + az * bx,
      aw * bz + ax * by - ay * bx + az * bw,
      aw * bw - ax * bx - ay * by - az * bz,
  ])


def _np_warp(x, bones_weights, bones_from, bones_to, log_scale, blend, delta=None):
  weights = _np_softmax(_np_logits(x, bones_weights, log_scale, delta))
  rel = _np_rel(bones_from, bones_to)
  return (_np_dqs if blend == "dqs" else _np_lbs)(x, weights, rel)


def _small_delta_fn(x):
  """A smooth non-negative delta depending on the point (stands in for the MLP)."""
  return 0.1 * jax.nn.softplus(jnp.arange(NUM_BONES, dtype=x.dtype) * x[0] - x[1])


# ----------------------------------------------------------------------------
# Weights.


def test_logits_and_weights_match_loop_reference():
  bones, log_scale, points = _random_bones(0), _log_scale(1), _points(2)
  logits = jax.vmap(lambda x: skinning.gaussian_skinning_logits(x, bones, log_scale))(points)
  weights = skinning.skinning_weights_points(points, bones, log_scale)
  chex.assert_shape([logits, weights], (16, NUM_BONES))
  chex.assert_type([logits, weights], jnp.float32)
  for x, got_logits, got_weights in zip(points, logits, weights):
    want = _np_logits(x, bones, log_scale)
    np.testing.assert_allclose(got_logits, want, rtol=2e-5, atol=1e-4)
    np.testing.assert_allclose(got_weights, _np_softmax(want), atol=2e-6)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)


def test_delta_reduces_influence():
  bones, log_scale = _random_bones(3), _log_scale(4)
  x = _points(5)[0]
  delta = jnp.asarray([0.0, 2.0, 0.0, 0.5, 0.0])
  got = skinning.skinning_weights(x, bones, log_scale, delta)
  want = _np_softmax(_np_logits(x, bones, log_scale, delta))
  np.testing.assert_allclose(got, want, atol=2e-6)
  plain = skinning.skinning_weights(x, bones, log_scale)
  assert got[1] < plain[1] and got[3] < plain[3]


def test_point_at_bone_centre_prefers_that_bone():
  bones = _random_bones(6, spread=1.0)
  log_scale = jnp.full((NUM_BONES, 3), np.log(0.1), jnp.float32)
  for b in range(NUM_BONES):
    weights = skinning.skinning_weights(bones.trans[b], bones, log_scale)
    assert int(jnp.argmax(weights)) == b


def test_mahalanobis_uses_bone_frame_axes():
  """A bone stretched along its local x: distance depends on the rotated axis."""
  quat = Rotation.from_euler("z", 90, degrees=True).as_quat()  # local x -> world y
  bones = skinning.Bones(jnp.asarray([quat], jnp.float32), jnp.zeros((1, 3)))
  log_scale = jnp.log(jnp.asarray([[2.0, 0.5, 1.0]]))
  along_world_y = skinning.gaussian_skinning_logits(jnp.asarray([0.0, 1.0, 0.0]),
                                                    bones, log_scale)
  along_world_x = skinning.gaussian_skinning_logits(jnp.asarray([1.0, 0.0, 0.0]),
                                                    bones, log_scale)
  np.testing.assert_allclose(along_world_y, [-0.25], rtol=1e-6)
  np.testing.assert_allclose(along_world_x, [-4.0], rtol=1e-6)


def test_skinning_entropy():
  logits = jnp.asarray([-3.0, -0.5, -2.0, -10.0])
  p = _np_softmax(_np(logits))
  np.testing.assert_allclose(skinning.skinning_entropy(logits), -np.log(p[1]), rtol=1e-6)
  one_bone = jnp.asarray([0.0, -100.0, -100.0])
  assert float(skinning.skinning_entropy(one_bone)) < 1e-6


# ----------------------------------------------------------------------------
# Relative transforms and blending.


def test_relative_transforms_follow_each_bone():
  bones_from, bones_to = _random_bones(7), _random_bones(8)
  rel = skinning.relative_transforms(bones_from, bones_to)
  chex.assert_shape(rel, (NUM_BONES, 8))
  mats = skinning.relative_matrices(rel)
  np.testing.assert_allclose(mats, np.stack(_np_rel(bones_from, bones_to))[:, :3],
                             atol=5e-6)


@pytest.mark.parametrize("blend", ["lbs", "dqs"])
def test_blend_matches_reference(blend):
  bones_from, bones_to = _random_bones(9), _random_bones(10)
  rel = skinning.relative_transforms(bones_from, bones_to)
  rng = np.random.default_rng(11)
  for x, w in zip(_points(12, n=8), rng.dirichlet(np.ones(NUM_BONES), size=8)):
    got = skinning.warp_point(x, jnp.asarray(w, jnp.float32), rel, blend)
    want = (_np_dqs if blend == "dqs" else _np_lbs)(x, w, _np_rel(bones_from, bones_to))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_one_hot_lbs_equals_dqs_equals_bone_transform():
  bones_from, bones_to = _random_bones(13), _random_bones(14)
  rel = skinning.relative_transforms(bones_from, bones_to)
  rel_np = _np_rel(bones_from, bones_to)
  x = jnp.asarray([0.1, 0.2, -0.3])
  for b in range(NUM_BONES):
    one_hot = jnp.zeros(NUM_BONES).at[b].set(1.0)
    want = rel_np[b][:3, :3] @ _np(x) + rel_np[b][:3, 3]
    np.testing.assert_allclose(skinning.warp_point(x, one_hot, rel, "dqs"), want, atol=3e-6)
    np.testing.assert_allclose(skinning.warp_point(x, one_hot, rel, "lbs"), want, atol=3e-6)
  np.testing.assert_allclose(skinning.blend_lbs(one_hot, rel),
                             skinning.blend_lbs(one_hot, skinning.relative_matrices(rel)))


def test_blend_choices():
  rel = skinning.relative_transforms(_random_bones(15), _random_bones(16))
  weights = jnp.full((NUM_BONES,), 1.0 / NUM_BONES)
  x = jnp.ones(3)
  custom = skinning.warp_point(x, weights, rel, lambda p, w, r: p + w.sum())
  np.testing.assert_allclose(custom, x + 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match="blend"):
    skinning.warp_point(x, weights, rel, "slerp")


# ----------------------------------------------------------------------------
# Warps.


@pytest.mark.parametrize("blend", ["dqs", "lbs"])
def test_backward_and_forward_warp_match_reference(blend):
  bones_t, bones_rest, log_scale = _random_bones(17), _random_bones(18), _log_scale(19)
  points = _points(20, n=6)
  backward, aux = skinning.backward_warp_points(points, bones_t, bones_rest, log_scale,
                                                _small_delta_fn, blend)
  forward, _ = skinning.forward_warp_points(points, bones_rest, bones_t, log_scale,
                                            None, blend)
  chex.assert_shape(backward, (6, 3))
  chex.assert_shape([aux["weights"], aux["logits"], aux["delta"]], (6, NUM_BONES))
  for i, x in enumerate(points):
    delta = np.asarray(_small_delta_fn(x))
    # Backward: weights from the time-t bones; forward: from the rest bones.
    want_b = _np_warp(x, bones_t, bones_t, bones_rest, log_scale, blend, delta)
    want_f = _np_warp(x, bones_rest, bones_rest, bones_t, log_scale, blend)
    np.testing.assert_allclose(backward[i], want_b, atol=2e-5)
    np.testing.assert_allclose(forward[i], want_f, atol=2e-5)
    np.testing.assert_allclose(aux["logits"][i], _np_logits(x, bones_t, log_scale, delta),
                               rtol=2e-5, atol=1e-4)


def test_batched_helpers_match_single_point_and_jit():
  bones_t, bones_rest, log_scale = _random_bones(21), _random_bones(22), _log_scale(23)
  points = _points(24, n=12).reshape(3, 4, 3)
  warped, aux = jax.jit(skinning.backward_warp_points, static_argnums=(4, 5))(
      points, bones_t, bones_rest, log_scale, None, "dqs")
  chex.assert_shape(warped, (3, 4, 3))
  chex.assert_shape(aux["weights"], (3, 4, NUM_BONES))
  single, single_aux = skinning.backward_warp(points[2, 1], bones_t, bones_rest, log_scale)
  np.testing.assert_allclose(warped[2, 1], single, atol=1e-6)
  np.testing.assert_allclose(aux["weights"][2, 1], single_aux["weights"], atol=1e-7)


@pytest.mark.parametrize("blend", ["dqs", "lbs"])
def test_identical_poses_warp_to_identity(blend):
  bones, log_scale = _random_bones(25), _log_scale(26)
  points = _points(27)
  back, _ = skinning.backward_warp_points(points, bones, bones, log_scale, blend=blend)
  fwd, _ = skinning.forward_warp_points(back, bones, bones, log_scale, blend=blend)
  np.testing.assert_allclose(back, points, atol=2e-6)
  np.testing.assert_allclose(fwd, points, atol=2e-6)
  cycle = jax.vmap(lambda x: skinning.cycle_distance(x, bones, bones, log_scale,
                                                     blend=blend))(points)
  np.testing.assert_allclose(cycle, 0.0, atol=5e-6)


def _well_separated_bones(seed):
  """Bones on a 3x3x3 grid (spacing 0.5) with random rotations, scale 0.05."""
  grid = np.stack(np.meshgrid(*[np.array([-0.5, 0.0, 0.5])] * 3, indexing="ij"), -1)
  trans = grid.reshape(-1, 3)[:8]
  quat = Rotation.random(len(trans), random_state=seed).as_quat()
  return skinning.Bones(jnp.asarray(quat), jnp.asarray(trans)), len(trans)


@pytest.mark.parametrize("blend", ["dqs", "lbs"])
def test_forward_then_backward_is_identity_with_dominant_bones(blend):
  """Large per-bone rigid motions; points near a bone centre keep one dominant bone."""
  with jax.enable_x64(True):
    bones_rest, num_bones = _well_separated_bones(28)
    motion = Rotation.random(num_bones, random_state=29)
    moved_quat = (motion * Rotation.from_quat(np.array(bones_rest.quat))).as_quat()
    moved_trans = motion.apply(np.array(bones_rest.trans)) + np.random.default_rng(
        30).normal(size=(num_bones, 3)) * 0.5
    bones_t = skinning.Bones(jnp.asarray(moved_quat), jnp.asarray(moved_trans))
    log_scale = jnp.full((num_bones, 3), np.log(0.05))
    rng = np.random.default_rng(31)
    owner = rng.integers(0, num_bones, size=32)
    points = bones_rest.trans[owner] + jnp.asarray(rng.normal(size=(32, 3)) * 0.05)
    x_t, _ = skinning.forward_warp_points(points, bones_rest, bones_t, log_scale,
                                          blend=blend)
    back, aux = skinning.backward_warp_points(x_t, bones_t, bones_rest, log_scale,
                                              blend=blend)
    assert np.all(np.argmax(aux["weights"], -1) == owner)
    np.testing.assert_allclose(back, points, atol=1e-6)
    # The moved points are really moved (the test is not trivially passing).
    assert float(jnp.min(jnp.linalg.norm(x_t - points, axis=-1))) > 0.05


def _cycle_error(eps, blend):
  """Max cycle distance after perturbing every bone by ~eps (rotation and translation)."""
  bones_rest, log_scale = _random_bones(32, dtype=np.float64), _log_scale(33, dtype=np.float64)
  rng = np.random.default_rng(34)
  perturb = Rotation.from_rotvec(rng.normal(size=(NUM_BONES, 3)) * eps)
  quat = (perturb * Rotation.from_quat(np.array(bones_rest.quat))).as_quat()
  trans = np.asarray(bones_rest.trans) + rng.normal(size=(NUM_BONES, 3)) * eps
  bones_t = skinning.Bones(jnp.asarray(quat), jnp.asarray(trans))
  points = _points(35, n=64, dtype=np.float64)
  cycle = jax.vmap(lambda x: skinning.cycle_distance(
      x, bones_t, bones_rest, log_scale, blend=blend))(points)
  return float(jnp.max(cycle))


@pytest.mark.parametrize("blend", ["dqs", "lbs"])
def test_cycle_error_is_second_order_in_deformation(blend):
  """forward(backward(x)) - x = O(eps^2): weights move by O(eps), transforms by O(eps)."""
  with jax.enable_x64(True):
    small, half = _cycle_error(2e-3, blend), _cycle_error(1e-3, blend)
  assert small < 1e-3
  np.testing.assert_allclose(small / half, 4.0, rtol=0.1)


def test_cycle_distance_reuses_canonical_point():
  bones_t, bones_rest, log_scale = _random_bones(36), _random_bones(37), _log_scale(38)
  x = _points(39)[0]
  x_c, _ = skinning.backward_warp(x, bones_t, bones_rest, log_scale)
  x_back, _ = skinning.forward_warp(x_c, bones_rest, bones_t, log_scale)
  full = skinning.cycle_distance(x, bones_t, bones_rest, log_scale)
  given = skinning.cycle_distance(x, bones_t, bones_rest, log_scale, x_canonical=x_c)
  np.testing.assert_allclose(full, np.linalg.norm(_np(x_back) - _np(x)), rtol=1e-5)
  np.testing.assert_allclose(given, full, rtol=1e-6)


# ----------------------------------------------------------------------------
# Bone density prior.


def test_gaussian_bone_density_and_sdf():
  bones = _random_bones(40)
  points = _points(41)
  points = points.at[0].set(bones.trans[2])
  density = jax.vmap(lambda x: skinning.gaussian_bone_density(x, bones, 0.1))(points)
  sdf = jax.vmap(lambda x: skinning.gaussian_bone_sdf(x, bones, 0.1))(points)
  for x, got_density, got_sdf in zip(_np(points), density, sdf):
    want = max(np.exp(-0.5 * np.sum((x - t) ** 2) / 0.1**2) for t in _np(bones.trans))
    np.testing.assert_allclose(got_density, want, rtol=1e-5, atol=1e-30)
    clipped = np.clip(want, 1e-6, 1 - 1e-6)
    np.testing.assert_allclose(got_sdf, -np.log(clipped / (1 - clipped)), rtol=1e-4)
  np.testing.assert_allclose(density[0], 1.0)
  assert float(sdf[0]) < 0.0


# ----------------------------------------------------------------------------
# Gradients (float64, so check_grads' finite differences are tight).


def _x64_case(seed):
  bones_t = _random_bones(seed, dtype=np.float64)
  bones_rest = _random_bones(seed + 1, dtype=np.float64)
  log_scale = _log_scale(seed + 2, dtype=np.float64)
  x = _points(seed + 3, n=1, dtype=np.float64)[0]
  return x, bones_t, bones_rest, log_scale


def test_skinning_weights_grads():
  with jax.enable_x64(True):
    x, bones, _, log_scale = _x64_case(50)
    delta = jnp.asarray(np.linspace(0.0, 0.3, NUM_BONES))

    def fn(x, quat, trans, log_scale, delta):
      return skinning.skinning_weights(x, skinning.Bones(quat, trans), log_scale, delta)

    jtu.check_grads(jax.jit(fn), (x, bones.quat, bones.trans, log_scale, delta),
                    order=1, modes=("fwd", "rev"))


def test_warp_grads():
  """Backward and forward warps, both blends, w.r.t. point, both bone sets, scales.

  One function with all four warps keeps this to a single compilation.
  """
  with jax.enable_x64(True):
    x, bones_t, bones_rest, log_scale = _x64_case(60)

    def fn(x, quat_t, trans_t, quat_rest, trans_rest, log_scale):
      b_t = skinning.Bones(quat_t, trans_t)
      b_rest = skinning.Bones(quat_rest, trans_rest)
      outputs = []
      for blend in ("dqs", "lbs"):
        backward, aux_b = skinning.backward_warp(x, b_t, b_rest, log_scale,
                                                 _small_delta_fn, blend)
        forward, aux_f = skinning.forward_warp(x, b_rest, b_t, log_scale,
                                               _small_delta_fn, blend)
        outputs += [backward, forward, skinning.skinning_entropy(aux_b["logits"]),
                    skinning.skinning_entropy(aux_f["logits"])]
      return outputs

    args = (x, bones_t.quat, bones_t.trans, bones_rest.quat, bones_rest.trans, log_scale)
    jtu.check_grads(jax.jit(fn), args, order=1, modes=("fwd", "rev"))


def test_cycle_distance_grads():
  with jax.enable_x64(True):
    x, bones_t, bones_rest, log_scale = _x64_case(70)

    def fn(x, trans_t, log_scale):
      return skinning.cycle_distance(x, skinning.Bones(bones_t.quat, trans_t), bones_rest,
                                     log_scale)

    jtu.check_grads(jax.jit(fn), (x, bones_t.trans, log_scale), order=1,
                    modes=("fwd", "rev"))


def test_grads_finite_at_singular_points():
  """Bone centres, identity rotations and zero cycle distance give finite gradients."""
  bones = skinning.Bones(jnp.tile(jnp.asarray([0.0, 0, 0, 1]), (NUM_BONES, 1)),
                         _random_bones(80).trans)
  log_scale = _log_scale(81)

  def loss(x, quat, trans, log_scale):
    b = skinning.Bones(quat, trans)
    warped, aux = skinning.backward_warp(x, b, b, log_scale)
    cycle = skinning.cycle_distance(x, b, b, log_scale)
    density = skinning.gaussian_bone_sdf(x, b)
    return jnp.sum(warped) + skinning.skinning_entropy(aux["logits"]) + cycle + density

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3)))(
      bones.trans[0], bones.quat, bones.trans, log_scale)
  for g in grads:
    assert np.all(np.isfinite(g))
