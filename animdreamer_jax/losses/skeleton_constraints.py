"""AnimatableDreamer's skeleton constraints on the bones' motion: L_skel and L_bone.

L_skel (`skeleton_loss`) holds the model's bones to a skeleton
(skeleton/skeleton_file.py, one joint per kept bone). Each tree edge links a
joint's bone (the child) to its parent joint's bone; at the joint's rest point
p, where the two meet:
- translation: both bones carry p along, P_b = posed_b * rest_b^-1, and the two
  copies must stay together: relu(|P_child(p) - P_parent(p)| - tolerance)^2
  (linked bones keep their rest relative translation);
- rotation: the angle theta of the child's rotation relative to the parent's,
  measured from its rest value, theta of (Rp_t Rp_0^T)^T (Rc_t Rc_0^T), must
  stay within what the video showed: relu(theta - max_angle)^2.
Both are zero - with a zero gradient - inside the allowed range, so the
constraint only acts on poses the video never showed (e.g. the views a
diffusion prior imagines).

L_bone (`bone_inside_loss`) keeps the bone centres inside the surface: the
public code's `surf_loss`, mean over bones of relu(SDF(centre) - margin).

Everything is pure jnp (jit / vmap / grad friendly); `SkeletonConstraints` is
a NamedTuple of arrays, so it travels as a jit argument.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.geometry import vector
from animdreamer_jax.model.skinning import Bones
from animdreamer_jax.skeleton import skeleton_file

# Added to the dislocation the video showed (normalised units: rest bbox diagonal 1). One
# Gaussian-bone radius (lab4d's 0.01 x 2.5): a joint gap that small is within a bone's own
# blur and invisible on the mesh, while a real dislocation is several times larger.
TRANSLATION_SLACK = 0.025
# Added to the largest angle the video showed. The learned bones' rotations jitter by a few
# degrees from frame to frame, so a limit at exactly the observed maximum would already bite
# at poses next to the video's own; 10 degrees is still small against a limb's range.
ANGLE_SLACK_DEG = 10.0


class SkeletonConstraints(NamedTuple):
  """The constraints of a skeleton, one row per tree edge (non-root joint; E = K - 1).

  Attributes:
    parent_bone: (E,) int32 model bone of the edge's parent joint.
    child_bone: (E,) int32 model bone of the joint itself.
    joint: (E, 3) float32 the joint's rest position (where the two bones meet), canonical frame.
    translation_tolerance: (E,) float32 how far apart the two bones may carry the joint.
    max_angle: (E,) float32 largest allowed angle (radians) of the child's rotation relative
      to the parent's, measured from its rest value.
  """
  parent_bone: jnp.ndarray
  child_bone: jnp.ndarray
  joint: jnp.ndarray
  translation_tolerance: jnp.ndarray
  max_angle: jnp.ndarray

  @property
  def num_edges(self) -> int:
    return int(self.parent_bone.shape[0])


def constraints_from_skeleton(skel: skeleton_file.Skeleton,
                              translation_slack: float = TRANSLATION_SLACK,
                              angle_slack_deg: float = ANGLE_SLACK_DEG) -> SkeletonConstraints:
  """The constraints of a skeleton's edges (NumPy arrays; `jnp.asarray` them for the device).

  The file records, per joint, the largest gap |P_child(p) - P_parent(p)| the
  video showed (`dislocation_max`: the unlinked model bones pull joints apart a
  little). The tolerance is that plus `translation_slack`; the angle limit is
  the largest observed angle (`angle_range_deg[:, 1]`) plus `angle_slack_deg`.

  Args:
    skel: the skeleton (validated here).
    translation_slack: >= 0, normalised units, added to the observed dislocation.
    angle_slack_deg: >= 0, degrees, added to the observed largest angle.

  Raises:
    UserError: a negative slack or an invalid skeleton.
  """
  if translation_slack < 0:
    raise UserError(f"translation_slack: must be >= 0, got {translation_slack}")
  if angle_slack_deg < 0:
    raise UserError(f"angle_slack_deg: must be >= 0, got {angle_slack_deg}")
  skel = skeleton_file.validate(skel)
  child = np.arange(1, skel.num_joints)  # the root has no edge
  dislocation = skel.dislocation_max[child]
  return SkeletonConstraints(
      parent_bone=skel.bone[skel.parent[child]].astype(np.int32),
      child_bone=skel.bone[child].astype(np.int32),
      joint=skel.rest_position[child].astype(np.float32),
      translation_tolerance=(np.maximum(dislocation, 0.0) + translation_slack).astype(np.float32),
      max_angle=np.radians(skel.angle_range_deg[child, 1] + angle_slack_deg).astype(np.float32))


def _carried_joint(constraints: SkeletonConstraints, bone: jnp.ndarray, rest: Bones,
                   posed: Bones) -> jnp.ndarray:
  """Each edge's joint carried by `bone` (E,) from rest to posed: P_b(p). -> (..., E, 3)."""
  local = quat_lib.quat_rotate(quat_lib.quat_conjugate(rest.quat[bone]),
                               constraints.joint - rest.trans[bone])  # the joint in the bone's frame
  return quat_lib.quat_rotate(posed.quat[..., bone, :], local) + posed.trans[..., bone, :]


def _rest_to_posed_rotation(bone: jnp.ndarray, rest: Bones, posed: Bones) -> jnp.ndarray:
  """R_t R_0^T of `bone` (E,) as quaternions. -> (..., E, 4)."""
  return quat_lib.quat_multiply(posed.quat[..., bone, :], quat_lib.quat_conjugate(rest.quat[bone]))


def rotation_angle(q: jnp.ndarray) -> jnp.ndarray:
  """Angle in [0, pi] of the rotation of quaternions (..., 4) -> (...,); finite gradient at 0.

  2 atan2(|v|, |w|), with a norm whose gradient is zero (not 0/0) at v = 0:
  the identity rotation is every constraint's rest value, and JAX multiplies
  a NaN there by the relu's zero gradient into NaN. It does not depend on |q|.
  """
  return 2.0 * jnp.arctan2(vector.safe_norm(q[..., :3]), jnp.abs(q[..., 3]))


def skeleton_violations(constraints: SkeletonConstraints, rest: Bones, posed: Bones
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each edge's joint gap and relative rotation angle.

  Args:
    constraints: the skeleton's constraints (E edges).
    rest: rest Bones, quat (B, 4) unit, trans (B, 3).
    posed: posed Bones, quat (..., B, 4) unit, trans (..., B, 3) (any leading axes: frames).

  Returns:
    gap: (..., E) |P_child(p) - P_parent(p)| at each edge's joint p.
    angle: (..., E) radians, angle of (Rp_t Rp_0^T)^T (Rc_t Rc_0^T).
  """
  gap = vector.safe_norm(_carried_joint(constraints, constraints.child_bone, rest, posed)
                         - _carried_joint(constraints, constraints.parent_bone, rest, posed))
  parent = _rest_to_posed_rotation(constraints.parent_bone, rest, posed)
  child = _rest_to_posed_rotation(constraints.child_bone, rest, posed)
  angle = rotation_angle(quat_lib.quat_multiply(quat_lib.quat_conjugate(parent), child))
  return gap, angle


def skeleton_loss(constraints: SkeletonConstraints, rest: Bones, posed: Bones) -> jnp.ndarray:
  """L_skel: mean over edges (and posed's leading axes, e.g. frames) of
  relu(gap - translation_tolerance)^2 + relu(angle - max_angle)^2.

  The mean (not the sum) over frames keeps the loss's scale, and so its weight,
  independent of how many frames a batch holds. A squared gap (normalised
  units, ~1e-3 for a visible dislocation) and a squared angle excess (radians,
  ~1e-2 for 6 degrees) are of similar size; they are summed unweighted.

  Args:
    constraints: the skeleton's constraints (E edges; E = 0 gives 0).
    rest: rest Bones, quat (B, 4), trans (B, 3).
    posed: posed Bones, quat (..., B, 4), trans (..., B, 3).

  Returns:
    () loss, exactly 0 (with a zero gradient) while every edge is in range.
  """
  if constraints.num_edges == 0:
    return jnp.zeros((), posed.trans.dtype)
  gap, angle = skeleton_violations(constraints, rest, posed)
  translation = jax.nn.relu(gap - constraints.translation_tolerance) ** 2
  rotation = jax.nn.relu(angle - constraints.max_angle) ** 2
  return jnp.mean(translation + rotation)


def bone_inside_loss(sdf_values: jnp.ndarray, margin: float) -> jnp.ndarray:
  """L_bone: mean of relu(sdf - margin) over the bone centres' SDF values (..., B) -> ().

  The public code's `surf_loss` (its margin 0.01 in lab4d's units): a bone
  centre may sit up to `margin` outside the surface; beyond that it is pulled
  in (and the surface pushed out) linearly.
  """
  return jnp.mean(jax.nn.relu(sdf_values - margin))
