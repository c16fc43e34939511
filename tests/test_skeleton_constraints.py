"""Skeleton constraints (L_skel, L_bone) against slow NumPy loops over frames and edges."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu
from scipy.spatial.transform import Rotation

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.losses import skeleton_constraints as sc
from animdreamer_jax.model.skinning import Bones
from animdreamer_jax.skeleton import skeleton_file

NUM_BONES = 5


def small_skeleton() -> skeleton_file.Skeleton:
  """4 joints over 4 of 5 model bones: root (bone 2) -> a (bone 0) -> {b (bone 3), c (bone 1)}."""
  return skeleton_file.Skeleton(
      names=np.array(["root", "a", "b", "c"]), parent=np.array([-1, 0, 1, 1]),
      bone=np.array([2, 0, 3, 1]),
      rest_position=np.array([[0, 0, 0], [0.1, 0.2, 0], [0.3, 0.2, 0], [0.1, 0.5, -0.1]]),
      weight_target=np.array([1, 3, 0, 2, 0]), skin_mass=np.full(4, 0.25),
      strength=np.array([0, 0.9, 0.5, 0.7]), rest_length=np.array([0, 0.2236, 0.2, 0.3162]),
      length_range=np.array([[0, 0], [0.2036, 0.2336], [0.15, 0.21], [0.3162, 0.3162]]),
      dislocation_max=np.array([0, 0.02, 0.05, 0.0]),
      angle_range_deg=np.array([[0, 0], [0, 30], [2, 45], [0, 0]]))


def _constraints(dtype=np.float32, **overrides) -> sc.SkeletonConstraints:
  c = sc.constraints_from_skeleton(small_skeleton())
  c = c._replace(**overrides)
  return sc.SkeletonConstraints(*(jnp.asarray(a, dtype) if np.asarray(a).dtype.kind == "f"
                                  else jnp.asarray(a) for a in c))


def _random_bones(seed, lead=(), dtype=np.float32) -> Bones:
  rng = np.random.default_rng(seed)
  n = int(np.prod(lead)) * NUM_BONES
  quat = Rotation.random(n, random_state=seed).as_quat().reshape(lead + (NUM_BONES, 4))
  trans = rng.normal(size=lead + (NUM_BONES, 3)) * 0.3
  return Bones(jnp.asarray(quat, dtype), jnp.asarray(trans, dtype))


def _perturbed(rest: Bones, seed, frames, angle=0.4, shift=0.05, dtype=np.float32) -> Bones:
  """rest moved by small random rotations/shifts per frame and bone (some edges in range, some not)."""
  rng = np.random.default_rng(seed)
  aa = rng.normal(size=(frames, NUM_BONES, 3)) * angle
  delta = Rotation.from_rotvec(aa.reshape(-1, 3))
  rest_q = np.broadcast_to(np.asarray(rest.quat, np.float64), (frames, NUM_BONES, 4)).reshape(-1, 4)
  quat = (delta * Rotation.from_quat(rest_q)).as_quat().reshape(frames, NUM_BONES, 4)
  trans = np.asarray(rest.trans, np.float64) + rng.normal(size=(frames, NUM_BONES, 3)) * shift
  return Bones(jnp.asarray(quat, dtype), jnp.asarray(trans, dtype))


# ----------------------------------------------------------------------------
# The reference: one frame and one edge at a time, 4x4 matrices, arccos of the trace.


def _matrix(q, t):
  m = np.eye(4)
  m[:3, :3] = Rotation.from_quat(np.asarray(q, np.float64)).as_matrix()
  m[:3, 3] = np.asarray(t, np.float64)
  return m


def ref_skeleton_loss(c: sc.SkeletonConstraints, rest: Bones, posed: Bones) -> float:
  posed_q = np.asarray(posed.quat, np.float64).reshape(-1, NUM_BONES, 4)
  posed_t = np.asarray(posed.trans, np.float64).reshape(-1, NUM_BONES, 3)
  terms = []
  for t in range(posed_q.shape[0]):
    for e in range(len(c.parent_bone)):
      pb, cb = int(c.parent_bone[e]), int(c.child_bone[e])
      moved = {b: _matrix(posed_q[t, b], posed_t[t, b]) @ np.linalg.inv(
          _matrix(rest.quat[b], rest.trans[b])) for b in (pb, cb)}
      p = np.append(np.asarray(c.joint[e], np.float64), 1.0)
      gap = np.linalg.norm(moved[cb] @ p - moved[pb] @ p)
      relative = moved[pb][:3, :3].T @ moved[cb][:3, :3]
      theta = np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1))
      terms.append(max(gap - float(c.translation_tolerance[e]), 0) ** 2
                   + max(theta - float(c.max_angle[e]), 0) ** 2)
  return float(np.mean(terms))


def _leaves_finite_and_zero(tree):
  leaves = jax.tree_util.tree_leaves(tree)
  return (all(bool(jnp.all(jnp.isfinite(g))) for g in leaves),
          all(bool(jnp.all(g == 0)) for g in leaves))


# ----------------------------------------------------------------------------
# constraints_from_skeleton.


def test_constraints_from_a_hand_built_skeleton():
  c = sc.constraints_from_skeleton(small_skeleton(), translation_slack=0.01, angle_slack_deg=5.0)
  # Edges are joints 1..3: (parent's bone, own bone), joint = own rest position.
  np.testing.assert_array_equal(c.parent_bone, [2, 0, 0])
  np.testing.assert_array_equal(c.child_bone, [0, 3, 1])
  np.testing.assert_allclose(c.joint, [[0.1, 0.2, 0], [0.3, 0.2, 0], [0.1, 0.5, -0.1]])
  # The recorded dislocations 0.02, 0.05, 0, + 0.01.
  np.testing.assert_allclose(c.translation_tolerance, [0.03, 0.06, 0.01], atol=1e-6)
  np.testing.assert_allclose(c.max_angle, np.radians([35.0, 50.0, 5.0]), rtol=1e-6)
  assert c.parent_bone.dtype == np.int32 and c.joint.dtype == np.float32
  defaults = sc.constraints_from_skeleton(small_skeleton())
  np.testing.assert_allclose(defaults.translation_tolerance,
                             np.array([0.02, 0.05, 0.0]) + sc.TRANSLATION_SLACK, atol=1e-6)
  np.testing.assert_allclose(defaults.max_angle, np.radians(np.array([30.0, 45.0, 0.0])
                                                            + sc.ANGLE_SLACK_DEG), rtol=1e-6)


def test_constraints_reject_bad_input():
  with pytest.raises(UserError, match="translation_slack: must be >= 0"):
    sc.constraints_from_skeleton(small_skeleton(), translation_slack=-0.1)
  with pytest.raises(UserError, match="angle_slack_deg: must be >= 0"):
    sc.constraints_from_skeleton(small_skeleton(), angle_slack_deg=-1.0)
  skel = small_skeleton()
  broken = dataclasses.replace(skel, parent=np.array([-1, 2, 1, 1]))
  with pytest.raises(UserError, match="parent must come before"):
    sc.constraints_from_skeleton(broken)


# ----------------------------------------------------------------------------
# skeleton_loss.


def test_skeleton_loss_matches_the_loop_reference():
  rest = _random_bones(0)
  posed = _perturbed(rest, 1, frames=3)
  c = _constraints()
  expected = ref_skeleton_loss(c, rest, posed)
  assert expected > 1e-3  # some edges are out of range
  np.testing.assert_allclose(sc.skeleton_loss(c, rest, posed), expected, rtol=1e-4)
  np.testing.assert_allclose(jax.jit(sc.skeleton_loss)(c, rest, posed), expected, rtol=1e-4)
  # Tighter limits: every edge out of range in both parts.
  tight = _constraints(translation_tolerance=np.zeros(3), max_angle=np.zeros(3))
  np.testing.assert_allclose(sc.skeleton_loss(tight, rest, posed),
                             ref_skeleton_loss(tight, rest, posed), rtol=1e-4)


def test_skeleton_loss_is_the_mean_over_frames():
  """A leading frame axis: the mean of the per-frame losses (batch size does not scale it)."""
  rest = _random_bones(2)
  posed = _perturbed(rest, 3, frames=4)
  c = _constraints()
  per_frame = jax.vmap(lambda q, t: sc.skeleton_loss(c, rest, Bones(q, t)))(posed.quat, posed.trans)
  np.testing.assert_allclose(sc.skeleton_loss(c, rest, posed), jnp.mean(per_frame), rtol=1e-6)
  assert float(jnp.max(per_frame)) > 0


def _rotate_about_joint(rest: Bones, bone: int, joint, axis_angle) -> Bones:
  """rest with `bone` rotated about the point `joint` (the joint itself stays put)."""
  q = quat_lib.axis_angle_to_quat(jnp.asarray(axis_angle, jnp.float32))
  joint = jnp.asarray(joint, jnp.float32)
  quat = rest.quat.at[bone].set(quat_lib.quat_multiply(q, rest.quat[bone]))
  trans = rest.trans.at[bone].set(quat_lib.quat_rotate(q, rest.trans[bone] - joint) + joint)
  return Bones(quat, trans)


def test_zero_with_zero_gradient_inside_the_allowed_range():
  rest = _random_bones(4)
  c = _constraints()
  grad_fn = jax.grad(lambda r, p: sc.skeleton_loss(c, r, p), argnums=(0, 1))
  # One rigid motion of the whole body: no gap, no relative rotation.
  g = Rotation.from_rotvec([0.3, -1.2, 0.5])
  moved = Bones(jnp.asarray((g * Rotation.from_quat(np.asarray(rest.quat))).as_quat(), jnp.float32),
                jnp.asarray(g.apply(np.asarray(rest.trans)) + [0.2, 0.1, -0.4], jnp.float32))
  # Bone 3 (edge 1's child, limit 45 + 10 deg) bent 50 deg about its joint, and bone 1
  # (edge 2's child, gap tolerance 0.025) shifted by 0.02.
  bent = _rotate_about_joint(rest, 3, c.joint[1], np.radians(50.0) * np.array([0.0, 0.6, 0.8]))
  bent = Bones(bent.quat, bent.trans.at[1].add(jnp.array([0.0, 0.02, 0.0])))
  for posed in (rest, moved, bent):
    assert float(sc.skeleton_loss(c, rest, posed)) == 0.0
    finite, zero = _leaves_finite_and_zero(grad_fn(rest, posed))
    assert finite and zero


def test_positive_outside_the_range_with_the_exact_excess():
  rest = _random_bones(5)
  c = _constraints()
  # Edge 1 bent 70 deg about its joint: 15 deg over its 55 deg limit, no gap; mean over 3 edges.
  bent = _rotate_about_joint(rest, 3, c.joint[1], np.radians(70.0) * np.array([1.0, 0.0, 0.0]))
  np.testing.assert_allclose(sc.skeleton_loss(c, rest, bent), np.radians(15.0) ** 2 / 3, rtol=1e-4)
  # Edge 2's child shifted 0.1 (tolerance 0.025): (0.075)^2 / 3.
  shifted = Bones(rest.quat, rest.trans.at[1].add(jnp.array([0.06, 0.0, -0.08])))
  np.testing.assert_allclose(sc.skeleton_loss(c, rest, shifted), 0.075 ** 2 / 3, rtol=1e-4)


def test_no_nan_gradient_at_the_rest_pose_on_the_boundary():
  """Rest pose with zero tolerances: gap 0 and angle 0 where the relu turns on (exactly 0
  with identity bones at the origin, within rounding for random ones)."""
  c = _constraints(translation_tolerance=np.zeros(3), max_angle=np.zeros(3))
  identity = Bones(jnp.tile(quat_lib.quat_identity(), (NUM_BONES, 1)), jnp.zeros((NUM_BONES, 3)))
  gap, angle = sc.skeleton_violations(c, identity, identity)
  assert not np.any(np.asarray(gap)) and not np.any(np.asarray(angle))
  finite, zero = _leaves_finite_and_zero(
      jax.grad(lambda r, p: sc.skeleton_loss(c, r, p), argnums=(0, 1))(identity, identity))
  assert finite and zero
  rest = _random_bones(6)

  def through_axis_angle(axis_angle, trans):  # the model's own parametrisation of the bones
    return sc.skeleton_loss(c, rest, Bones(quat_lib.axis_angle_to_quat(axis_angle), trans))

  rest_aa = quat_lib.quat_to_axis_angle(rest.quat)
  for grads in (jax.grad(lambda r, p: sc.skeleton_loss(c, r, p), argnums=(0, 1))(rest, rest),
                jax.grad(through_axis_angle, argnums=(0, 1))(rest_aa, rest.trans),
                jax.grad(sc.rotation_angle)(jnp.array([0.0, 0.0, 0.0, 1.0]))):
    finite, _ = _leaves_finite_and_zero(grads)
    assert finite
  assert float(sc.skeleton_loss(c, rest, rest)) == pytest.approx(0.0, abs=1e-10)


def test_a_gradient_step_reduces_the_loss():
  rest = _random_bones(7)
  posed = _perturbed(rest, 8, frames=2, angle=0.8, shift=0.1)
  c = _constraints()
  aa0 = quat_lib.quat_to_axis_angle(posed.quat)

  def loss(aa, trans):
    return sc.skeleton_loss(c, rest, Bones(quat_lib.axis_angle_to_quat(aa), trans))

  value, (g_aa, g_trans) = jax.value_and_grad(loss, argnums=(0, 1))(aa0, posed.trans)
  assert float(value) > 0
  stepped = loss(aa0 - 0.05 * g_aa, posed.trans - 0.05 * g_trans)
  assert float(stepped) < 0.95 * float(value)


def test_check_grads_outside_the_range():
  with jax.enable_x64(True):
    rest = _random_bones(9, dtype=np.float64)
    posed = _perturbed(rest, 10, frames=2, angle=0.6, shift=0.1, dtype=np.float64)
    c = _constraints(np.float64, translation_tolerance=np.zeros(3), max_angle=np.zeros(3))
    gap, angle = sc.skeleton_violations(c, rest, posed)
    assert float(jnp.min(gap)) > 1e-2 and float(jnp.min(angle)) > 1e-2  # off every kink

    def loss(rest_aa, rest_trans, aa, trans):
      return sc.skeleton_loss(c, Bones(quat_lib.axis_angle_to_quat(rest_aa), rest_trans),
                              Bones(quat_lib.axis_angle_to_quat(aa), trans))

    args = (quat_lib.quat_to_axis_angle(rest.quat), rest.trans,
            quat_lib.quat_to_axis_angle(posed.quat), posed.trans)
    jtu.check_grads(jax.jit(loss), args, order=1, modes=("fwd", "rev"))


def test_one_joint_skeleton_has_no_edges():
  skel = small_skeleton()
  one = skeleton_file.Skeleton(
      names=skel.names[:1], parent=skel.parent[:1], bone=skel.bone[:1],
      rest_position=skel.rest_position[:1], weight_target=np.zeros(NUM_BONES, np.int32),
      skin_mass=np.ones(1), strength=skel.strength[:1], rest_length=skel.rest_length[:1],
      length_range=skel.length_range[:1], dislocation_max=skel.dislocation_max[:1],
      angle_range_deg=skel.angle_range_deg[:1])
  c = sc.constraints_from_skeleton(one)
  assert c.num_edges == 0
  rest = _random_bones(11)
  assert float(sc.skeleton_loss(c, rest, _perturbed(rest, 12, frames=2))) == 0.0


# ----------------------------------------------------------------------------
# bone_inside_loss.


def ref_bone_inside(sdf, margin):
  values = [max(float(s) - margin, 0.0) for s in np.asarray(sdf, np.float64).ravel()]
  return sum(values) / len(values)


def test_bone_inside_loss_against_the_loop():
  sdf = np.random.default_rng(13).normal(size=(7,)) * 0.05
  np.testing.assert_allclose(sc.bone_inside_loss(jnp.asarray(sdf, jnp.float32), 0.025),
                             ref_bone_inside(sdf, 0.025), rtol=1e-5)
  grad = jax.grad(lambda s: sc.bone_inside_loss(s, 0.025))(jnp.asarray(sdf, jnp.float32))
  np.testing.assert_allclose(grad, (sdf > 0.025) / sdf.size, rtol=1e-6)
  inside = jnp.array([-0.2, -0.01, 0.0, 0.02])  # inside, or outside by less than the margin
  assert float(sc.bone_inside_loss(inside, 0.025)) == 0.0
  assert not np.any(np.asarray(jax.grad(lambda s: sc.bone_inside_loss(s, 0.025))(inside)))


def test_bone_inside_loss_through_an_sdf():
  """Bone centres pulled into a sphere SDF by gradient steps; check_grads outside it."""
  def loss(centres):
    return sc.bone_inside_loss(jnp.linalg.norm(centres, axis=-1) - 0.5, 0.025)

  centres = jnp.asarray(np.random.default_rng(14).normal(size=(NUM_BONES, 3)), jnp.float32)
  start = float(loss(centres))
  assert start > 0 and float(loss(centres - 0.1 * jax.grad(loss)(centres))) < start
  with jax.enable_x64(True):
    far = jnp.asarray(np.random.default_rng(15).normal(size=(NUM_BONES, 3)) + 2.0, jnp.float64)
    jtu.check_grads(loss, (far,), order=1, modes=("fwd", "rev"))
