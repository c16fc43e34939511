"""Gaussian-bone skinning (lab4d's "bag of bones") as pure functions of one point.

Every per-point function takes a single point `x` of shape (3,) and is meant to
be `jax.vmap`-ed over samples (the `*_points` helpers do that for arrays of any
leading shape). Quantities that do not depend on the point (bone rotation
matrices, relative transforms, the DQS sign table) stay un-batched under vmap,
so they are computed once per frame, not once per sample.

Semantics follow lab4d (`nnutils/skinning.py`, `nnutils/warping.py`,
`utils/geom_utils.py::dual_quaternion_skinning`):
- a bone is a rigid bone-to-object transform (rotation quaternion, translation
  = bone centre) with per-axis log-scales;
- logit_b = -(|diag(exp(-log_scale_b)) R_b^T (x - t_b)|^2 + delta_b), with an
  optional non-negative delta; weights = softmax over bones (no temperature);
- backward warp (frame t -> canonical) takes the weights from the time-t bones,
  forward warp (canonical -> frame t) from the rest bones;
- the per-bone relative transforms are blended with DQS (hemisphere alignment
  to the highest-weight bone, then normalisation) or, selectably, LBS.
Deliberate differences:
- `blend` may also be any callable (x, weights, rel) -> x', so a researcher
  can swap the blending without touching this module;
- bones are stored as (quat, trans) rather than as a dual quaternion pair;
- the bone SDF clamps log(density) instead of density (same range, but exact
  in float32 next to the bone centres);
- the delta is whatever `delta_fn` returns: non-negativity (lab4d's
  ReLU(.) * 0.1) is the caller's MLP's job, not enforced here.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import dual_quaternion as dq_lib
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.geometry import vector

DeltaFn = Callable[[jnp.ndarray], jnp.ndarray]
BlendFn = Callable[[jnp.ndarray, jnp.ndarray, jnp.ndarray], jnp.ndarray]
Blend = Union[str, BlendFn]

# Full float32 matmuls: GPUs would otherwise use TF32 (~1e-3 relative error).
_EXACT = jax.lax.Precision.HIGHEST


class Bones(NamedTuple):
  """B rigid bone-to-object transforms (a pytree; vmap/jit friendly).

  Attributes:
    quat: (B, 4) unit quaternions (x, y, z, w): bone-frame axes in object space.
    trans: (B, 3) bone centres in object space.
  """
  quat: jnp.ndarray
  trans: jnp.ndarray


def bones_to_dq(bones: Bones) -> jnp.ndarray:
  """Bone-to-object dual quaternions, (B, 8)."""
  return dq_lib.dq_from_rt(bones.quat, bones.trans)


def bones_from_dq(dqs: jnp.ndarray) -> Bones:
  """Inverse of `bones_to_dq`: (B, 8) unit dual quaternions -> Bones."""
  quat, trans = dq_lib.dq_to_rt(dqs)
  return Bones(quat=quat, trans=trans)


# ----------------------------------------------------------------------------
# Skinning weights.


def bone_local_coords(x: jnp.ndarray, bones: Bones) -> jnp.ndarray:
  """Point expressed in every bone's frame: R_b^T (x - t_b).

  This is also the input lab4d feeds to its delta-skinning MLP (flattened).

  Args:
    x: (3,) point in object space.
    bones: B bones.

  Returns:
    (B, 3) bone-local coordinates.
  """
  rotations = quat_lib.quat_to_matrix(bones.quat)  # (B, 3, 3), point-independent
  return jnp.einsum("bji,bj->bi", rotations, x - bones.trans, precision=_EXACT)


def gaussian_skinning_logits(x: jnp.ndarray, bones: Bones,
                             log_scale: jnp.ndarray) -> jnp.ndarray:
  """Minus the squared Mahalanobis distance of x to every bone Gaussian.

  Written as one (3B x 3) matrix-vector product, u = A x - c with
  A_b = diag(exp(-log_scale_b)) R_b^T and c_b = A_b t_b: A and c do not depend
  on x, so under vmap they are computed once and the per-sample work becomes a
  single (N, 3) x (3, 3B) matmul instead of B small ones.

  Args:
    x: (3,) point in object space.
    bones: B bones.
    log_scale: (B, 3) per-bone, per-axis log standard deviations (in the bone
      frame). lab4d initialises them to log(0.03).

  Returns:
    (B,) logits -|diag(exp(-log_scale_b)) R_b^T (x - t_b)|^2.
  """
  num_bones = log_scale.shape[0]
  rotations_t = jnp.swapaxes(quat_lib.quat_to_matrix(bones.quat), -1, -2)
  to_local = rotations_t * jnp.exp(-log_scale)[:, :, None]  # (B, 3, 3)
  offsets = jnp.einsum("bij,bj->bi", to_local, bones.trans, precision=_EXACT)
  local = jnp.matmul(to_local.reshape(num_bones * 3, 3), x, precision=_EXACT)
  local = local.reshape(num_bones, 3) - offsets
  return -jnp.sum(local * local, axis=-1)


def skinning_weights(x: jnp.ndarray, bones: Bones, log_scale: jnp.ndarray,
                     delta: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Skinning weights softmax(-(d^2 + delta)) over bones.

  Args:
    x: (3,) point in object space.
    bones: B bones.
    log_scale: (B, 3) per-axis log-scales.
    delta: optional (B,) non-negative offsets (lab4d's delta-skinning MLP
      output); it can only reduce a bone's influence.

  Returns:
    (B,) weights summing to 1.
  """
  logits = gaussian_skinning_logits(x, bones, log_scale)
  if delta is not None:
    logits = logits - delta
  return jax.nn.softmax(logits)


def skinning_entropy(logits: jnp.ndarray) -> jnp.ndarray:
  """Cross-entropy of softmax(logits) against the one-hot of its argmax.

  lab4d's `skin_entropy` (loss weight 5e-4): small when one bone dominates.
  Equals logsumexp(logits) - max(logits) >= 0.

  Args:
    logits: (B,) skinning logits.

  Returns:
    () scalar.
  """
  return jax.nn.logsumexp(logits) - jnp.max(logits)


# ----------------------------------------------------------------------------
# Relative transforms and blending.


def relative_transforms(bones_from: Bones, bones_to: Bones) -> jnp.ndarray:
  """Per-bone transforms moving points posed by `bones_from` to `bones_to`.

  rel_b = to_b o from_b^-1, so a point rigidly attached to bone b follows it.
  Backward warp: relative_transforms(bones_t, bones_rest) (= rest o t^-1);
  forward warp: relative_transforms(bones_rest, bones_t). Compute it once per
  frame and share it across samples.

  Args:
    bones_from: B bones of the source pose.
    bones_to: B bones of the target pose.

  Returns:
    (B, 8) unit dual quaternions.
  """
  return dq_lib.dq_multiply(bones_to_dq(bones_to),
                            dq_lib.dq_inverse(bones_to_dq(bones_from)))


def relative_matrices(rel: jnp.ndarray) -> jnp.ndarray:
  """(B, 8) unit dual quaternions -> (B, 3, 4) [R | t] blocks (for LBS)."""
  quat, trans = dq_lib.dq_to_rt(rel)
  return jnp.concatenate([quat_lib.quat_to_matrix(quat), trans[..., None]], -1)


def blend_dqs(weights: jnp.ndarray, rel: jnp.ndarray) -> jnp.ndarray:
  """Dual-quaternion blend of per-bone transforms.

  Args:
    weights: (B,) skinning weights.
    rel: (B, 8) unit dual quaternions.

  Returns:
    (8,) blended dual quaternion with unit real part.
  """
  return dq_lib.dq_blend(weights, rel)


def blend_lbs(weights: jnp.ndarray, rel: jnp.ndarray) -> jnp.ndarray:
  """Linear blend of per-bone transforms as matrices.

  Args:
    weights: (B,) skinning weights.
    rel: (B, 8) unit dual quaternions, or (B, 3, 4) / (B, 4, 4) matrices.

  Returns:
    (3, 4) blended [R | t] block (R is generally not a rotation).
  """
  matrices = relative_matrices(rel) if rel.shape[-1] == 8 else rel[..., :3, :4]
  return jnp.einsum("b,bij->ij", weights, matrices, precision=_EXACT)


def warp_point(x: jnp.ndarray, weights: jnp.ndarray, rel: jnp.ndarray,
               blend: Blend = "dqs") -> jnp.ndarray:
  """Moves a point by the blend of per-bone transforms.

  Args:
    x: (3,) point.
    weights: (B,) skinning weights.
    rel: (B, 8) per-bone unit dual quaternions.
    blend: "dqs" (dual-quaternion skinning, lab4d's default), "lbs" (linear
      blend skinning), or a callable (x, weights, rel) -> (3,).

  Returns:
    (3,) warped point.
  """
  if callable(blend):
    return blend(x, weights, rel)
  if blend == "dqs":
    return dq_lib.dq_apply(blend_dqs(weights, rel), x)
  if blend == "lbs":
    matrix = blend_lbs(weights, rel)
    return jnp.matmul(matrix[:, :3], x, precision=_EXACT) + matrix[:, 3]
  raise ValueError(f"blend: unknown blending {blend!r}; use 'dqs', 'lbs' or a callable")


# ----------------------------------------------------------------------------
# Warps.


def _skin_and_warp(x, bones_weights, log_scale, delta_fn, rel, blend):
  """Shared body of the backward and forward warps (weights from `bones_weights`)."""
  distance_logits = gaussian_skinning_logits(x, bones_weights, log_scale)
  if delta_fn is None:
    delta = jnp.zeros_like(distance_logits)
  else:
    delta = delta_fn(x)
  logits = distance_logits - delta
  weights = jax.nn.softmax(logits)
  warped = warp_point(x, weights, rel, blend)
  return warped, {"weights": weights, "logits": logits, "delta": delta}


def backward_warp(x_t: jnp.ndarray, bones_t: Bones, bones_rest: Bones,
                  log_scale: jnp.ndarray, delta_fn: Optional[DeltaFn] = None,
                  blend: Blend = "dqs", rel: Optional[jnp.ndarray] = None
                  ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Frame t -> canonical (rest) object space.

  Weights come from the time-t bones evaluated at x_t (lab4d convention).

  Args:
    x_t: (3,) point in time-t object space.
    bones_t: B bones at time t.
    bones_rest: B rest bones.
    log_scale: (B, 3) per-axis log-scales.
    delta_fn: optional x -> (B,) non-negative delta (for the backward warp,
      conditioned on frame t's time embedding).
    blend: "dqs", "lbs" or a callable, see `warp_point`.
    rel: optional precomputed relative_transforms(bones_t, bones_rest).

  Returns:
    x_canonical: (3,) point in canonical space.
    aux: {"weights": (B,), "logits": (B,) = -(d^2 + delta), "delta": (B,)}.
  """
  if rel is None:
    rel = relative_transforms(bones_t, bones_rest)
  return _skin_and_warp(x_t, bones_t, log_scale, delta_fn, rel, blend)


def forward_warp(x_c: jnp.ndarray, bones_rest: Bones, bones_t: Bones,
                 log_scale: jnp.ndarray, delta_fn: Optional[DeltaFn] = None,
                 blend: Blend = "dqs", rel: Optional[jnp.ndarray] = None
                 ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Canonical (rest) -> frame t object space.

  Weights come from the rest bones evaluated at x_c (lab4d convention).

  Args:
    x_c: (3,) point in canonical space.
    bones_rest: B rest bones.
    bones_t: B bones at time t.
    log_scale: (B, 3) per-axis log-scales.
    delta_fn: optional x -> (B,) non-negative delta (lab4d conditions it on
      the mean time embedding for the forward warp).
    blend: "dqs", "lbs" or a callable, see `warp_point`.
    rel: optional precomputed relative_transforms(bones_rest, bones_t).

  Returns:
    x_t: (3,) point in time-t object space.
    aux: {"weights": (B,), "logits": (B,), "delta": (B,)}.
  """
  if rel is None:
    rel = relative_transforms(bones_rest, bones_t)
  return _skin_and_warp(x_c, bones_rest, log_scale, delta_fn, rel, blend)


def cycle_distance(x_t: jnp.ndarray, bones_t: Bones, bones_rest: Bones,
                   log_scale: jnp.ndarray,
                   backward_delta_fn: Optional[DeltaFn] = None,
                   forward_delta_fn: Optional[DeltaFn] = None,
                   blend: Blend = "dqs",
                   x_canonical: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """|forward(backward(x_t)) - x_t| (L2, not squared), lab4d's `cyc_dist`.

  Args:
    x_t: (3,) point in time-t object space.
    bones_t: B bones at time t.
    bones_rest: B rest bones.
    log_scale: (B, 3) per-axis log-scales.
    backward_delta_fn: delta for the backward warp (time-t conditioned).
    forward_delta_fn: delta for the forward warp (rest conditioned).
    blend: "dqs", "lbs" or a callable.
    x_canonical: optional (3,) result of the backward warp, to avoid
      recomputing it when the renderer already has it.

  Returns:
    () distance; its gradient is finite (zero) where the distance is zero.
  """
  if x_canonical is None:
    x_canonical, _ = backward_warp(x_t, bones_t, bones_rest, log_scale,
                                   backward_delta_fn, blend)
  x_cycled, _ = forward_warp(x_canonical, bones_rest, bones_t, log_scale,
                             forward_delta_fn, blend)
  return vector.safe_norm(x_cycled - x_t)


# ----------------------------------------------------------------------------
# Bone density prior.


def _log_gaussian_bone_density(x: jnp.ndarray, bones: Bones,
                               radius: float) -> jnp.ndarray:
  """log of `gaussian_bone_density`, exact even where the density underflows."""
  dist_sq = jnp.sum((x - bones.trans) ** 2, axis=-1)
  # max over bones of exp(-d / 2r^2) is the nearest centre's term.
  return -0.5 * jnp.min(dist_sq) / radius**2


def gaussian_bone_density(x: jnp.ndarray, bones: Bones,
                          radius: float = 0.01) -> jnp.ndarray:
  """lab4d's bone density: max_b exp(-0.5 |x - t_b|^2 / radius^2).

  Isotropic spheres at the bone centres; ignores rotations and log-scales
  (as lab4d's `get_gauss_density` does).

  Args:
    x: (3,) point.
    bones: B bones.
    radius: Gaussian standard deviation.

  Returns:
    () density in [0, 1].
  """
  return jnp.exp(_log_gaussian_bone_density(x, bones, radius))


def gaussian_bone_sdf(x: jnp.ndarray, bones: Bones, radius: float = 0.01,
                      bias: float = 0.0) -> jnp.ndarray:
  """Signed distance proxy of the bone density: -logit(density) + bias.

  As in lab4d the density is clamped to [1e-6, 1 - 1e-6] first, so the SDF
  lies in [-13.8155, 13.8155] (+ bias); the clamp is applied to log(density)
  and the logit is formed as log(-expm1(L)) - L, which keeps float32 exact near
  the bone centres. Used to initialise the canonical SDF of skeleton models.

  Args:
    x: (3,) point.
    bones: B bones.
    radius: Gaussian standard deviation.
    bias: added to the SDF (moves the surface off the bone spheres).

  Returns:
    () SDF value (negative inside).
  """
  log_density = jnp.clip(_log_gaussian_bone_density(x, bones, radius),
                         jnp.log(1e-6), jnp.log1p(-1e-6))
  return jnp.log(-jnp.expm1(log_density)) - log_density + bias


# ----------------------------------------------------------------------------
# Batched helpers: any leading shape of points.


def _flatten_points(points):
  lead = points.shape[:-1]
  return points.reshape(-1, 3), lead


def skinning_weights_points(points: jnp.ndarray, bones: Bones,
                            log_scale: jnp.ndarray) -> jnp.ndarray:
  """`skinning_weights` (no delta) for (..., 3) points -> (..., B)."""
  flat, lead = _flatten_points(points)
  weights = jax.vmap(lambda x: skinning_weights(x, bones, log_scale))(flat)
  return weights.reshape(lead + weights.shape[-1:])


def _warp_points(warp, points, bones_from, bones_to, log_scale, delta_fn, blend):
  """`warp` (backward_warp or forward_warp) vmapped over (..., 3) points; aux becomes (..., B)."""
  rel = relative_transforms(bones_from, bones_to)
  flat, lead = _flatten_points(points)
  warped, aux = jax.vmap(lambda x: warp(
      x, bones_from, bones_to, log_scale, delta_fn, blend, rel))(flat)
  aux = {k: v.reshape(lead + v.shape[1:]) for k, v in aux.items()}
  return warped.reshape(lead + (3,)), aux


def backward_warp_points(points: jnp.ndarray, bones_t: Bones, bones_rest: Bones,
                         log_scale: jnp.ndarray,
                         delta_fn: Optional[DeltaFn] = None,
                         blend: Blend = "dqs"
                         ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """`backward_warp` for (..., 3) points; aux entries become (..., B)."""
  return _warp_points(backward_warp, points, bones_t, bones_rest, log_scale, delta_fn, blend)


def forward_warp_points(points: jnp.ndarray, bones_rest: Bones, bones_t: Bones,
                        log_scale: jnp.ndarray,
                        delta_fn: Optional[DeltaFn] = None,
                        blend: Blend = "dqs"
                        ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """`forward_warp` for (..., 3) points; aux entries become (..., B)."""
  return _warp_points(forward_warp, points, bones_rest, bones_t, log_scale, delta_fn, blend)
