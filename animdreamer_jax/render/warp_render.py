"""Warp-composed volume rendering of the articulated model (pure, one jit per batch).

Pipeline for the rays of frame t (lab4d `nnutils/nerf.py`, `deformable.py`):
  pixel -> camera-frame ray (z = 1 direction) -> depths between near and far
  -> camera-space samples -> time-t object space (inverse root pose)
  -> canonical space (backward skinning with the time-t bones)
  -> canonical fields (SDF, colour, feature, visibility) -> density -> weights.
Per sample it also forward-warps the canonical point with the rest-bone
skinning weights to (a) the same frame, for the cycle distance, and (b) the
partner frame, whose root pose and intrinsics project it to give 2-D flow.

Everything that depends only on the frame (bones, relative dual quaternions,
root pose, intrinsics, appearance and time codes, the bones' affine maps) is
computed ONCE per frame (`frame_states`, `Warp.prepare`), never per sample.
`render_rays` runs in three stages: (1) per frame (vmap): samples and the
backward warp; (2) the canonical networks once on the flat (F R S, 3) points;
(3) per frame (vmap): compositing, forward warps, flow, normals. Shapes are
fixed; one `jax.jit` of `render_rays` covers a whole batch of F frames x R
rays x S samples.

`render_rays(model, params, uv, frame_idx, partner_idx, near_far=...,
options=RenderOptions(...), ...)` separates the static choices from the data:
- `RenderOptions` (frozen, hashable: a `jax.jit` static argument or a closure
  constant) holds what shapes the computation: sample counts, which outputs
  to build (normals, eikonal rays, Gaussian mask, match candidates) and the
  swappable pieces, all plain functions / small frozen objects:
  - `density_fn(sdf, beta) -> density` (`render.density.volsdf_density`,
    `neus_density`, or your own);
  - `warp`: an object with `prepare`, `backward`, `forward` (see `Warp`);
    `SkinningWarp(blend="dqs"|"lbs"|callable)` is lab4d's Gaussian-bone warp,
    `IdentityWarp()` a rigid (root-pose only) model;
  - `canonical_fn(model, params, x, appearance, alpha) -> dict(sdf, rgb,
    [feature], [vis])` and `sdf_fn(model, params, x, alpha) -> sdf` replace
    the canonical network (they take the parameters as arguments, so an
    options object never holds them and stays hashable);
- the per-call arguments are arrays: pixels, frames, near/far bounds, the
  coarse-to-fine alpha, PRNG keys, match features, and `CameraOverride`s
  (obj2cam / intrinsics replacing the learned root pose and intrinsics of the
  rendered or the partner frames, e.g. CSD's orbit cameras).

Deliberate differences from lab4d:
- Normals (compute_normals=True) are d sdf / d x_cam through the warp, in the
  OpenCV camera frame, without lab4d's ECON sign flip (1, -1, -1).
- The eikonal term is always taken in canonical space (lab4d does that in
  training; at render time it uses the camera-space gradient), on a fixed
  leading subset of rays per frame instead of a random 1/16 (the pixel
  sampler already randomises ray order).
- There is no world scale `logscale` (see `model/articulated_model.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Protocol

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.geometry import rays as rays_lib
from animdreamer_jax.geometry import se3
from animdreamer_jax.geometry import vector
from animdreamer_jax.model import skinning
from animdreamer_jax.model.skinning import Bones
from animdreamer_jax.render import compositing
from animdreamer_jax.render import density as density_lib
from animdreamer_jax.render import sampling

FLOW_MIN_DEPTH = 1e-6  # lab4d: a sample behind the partner camera gives no flow


class RestState(NamedTuple):
  """Frame-independent quantities (computed once per batch).

  Attributes:
    bones: rest Bones, quat (B, 4), trans (B, 3).
    log_scale: (B, 3) Gaussian bone log-scales.
    delta_code: (T,) delta-skinning time code at the mean embedding, or None.
    beta: () SDF-density beta.
    bone_beta: () bone-density beta.
  """
  bones: Bones
  log_scale: jnp.ndarray
  delta_code: Optional[jnp.ndarray]
  beta: jnp.ndarray
  bone_beta: jnp.ndarray


class FrameState(NamedTuple):
  """Per-frame quantities (leading axis F in a batch; none inside the frame vmap).

  Attributes:
    bones: Bones at the frame, quat (B, 4), trans (B, 3).
    obj2cam: (4, 4) object-to-camera transform.
    intrinsics: (4,) (fx, fy, cx, cy).
    appearance: (A,) appearance code.
    delta_code: (T,) delta-skinning time code, or None.
    frame_idx: () int frame index (for warps that look data up per frame).
  """
  bones: Bones
  obj2cam: jnp.ndarray
  intrinsics: jnp.ndarray
  appearance: jnp.ndarray
  delta_code: Optional[jnp.ndarray]
  frame_idx: jnp.ndarray


def rest_state(model, params) -> RestState:
  """Rest bones, scales and scalars from the model (once per batch)."""
  config = model.config
  apply = functools.partial(model.apply, params)
  return RestState(
      bones=apply(method="rest_bones"),
      log_scale=apply(method="log_scale"),
      delta_code=apply(method="delta_rest_code") if config.use_delta_skin else None,
      beta=apply(method="beta"),
      bone_beta=apply(method="bone_beta"))


def frame_states(model, params, frame_idx: jnp.ndarray,
                 obj2cam: Optional[jnp.ndarray] = None,
                 intrinsics: Optional[jnp.ndarray] = None) -> FrameState:
  """Per-frame quantities for frames (F,), batched through the time MLPs once.

  Args:
    model: ArticulatedModel.
    params: its variables.
    frame_idx: (F,) int frame indices.
    obj2cam: optional (F, 4, 4) object-to-camera override (e.g. CSD cameras).
    intrinsics: optional (F, 4) intrinsics override.

  Returns:
    FrameState with leading axis F.
  """
  apply = functools.partial(model.apply, params)
  if obj2cam is None:
    obj2cam = apply(frame_idx, method="root_pose")
  if intrinsics is None:
    intrinsics = apply(frame_idx, method="intrinsics")
  delta_code = (apply(frame_idx, method="delta_time_code")
                if model.config.use_delta_skin else None)
  return FrameState(bones=apply(frame_idx, method="bones"), obj2cam=obj2cam,
                    intrinsics=intrinsics, appearance=apply(frame_idx, method="appearance"),
                    delta_code=delta_code, frame_idx=jnp.asarray(frame_idx, jnp.int32))


# ----------------------------------------------------------------------------
# Warps.


class Warp(Protocol):
  """Interface of a deformation model used by the renderer.

  `prepare` runs once per frame; `backward` / `forward` run per sample under
  `jax.vmap` (one point each) and must only read per-frame data from `ctx`.
  """

  def prepare(self, model, params, rest: RestState, frame: FrameState,
              partner: Optional[FrameState]) -> Any:
    """Per-frame context (any pytree / closures)."""

  def backward(self, ctx, x_t: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """(3,) time-t object point -> (3,) canonical point, aux {"skin_entropy", "delta_skin"} scalars."""

  def forward(self, ctx, x_c: jnp.ndarray) -> tuple[jnp.ndarray, dict]:
    """(3,) canonical point -> (K, 3) object points at the frame [0] and partner [1]."""


@dataclasses.dataclass(frozen=True)
class IdentityWarp:
  """No articulation: canonical space = object space at every frame (lab4d "rigid")."""

  def prepare(self, model, params, rest, frame, partner):
    return {"num_targets": 1 if partner is None else 2}

  def backward(self, ctx, x_t):
    zero = jnp.zeros((), x_t.dtype)
    return x_t, {"skin_entropy": zero, "delta_skin": zero}

  def forward(self, ctx, x_c):
    zero = jnp.zeros((), x_c.dtype)
    return (jnp.broadcast_to(x_c, (ctx["num_targets"], 3)),
            {"skin_entropy": zero, "delta_skin": zero})


def bone_affine_map(bones: Bones, log_scale: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """One frame's scaled bone-local coordinates as an affine map of the point.

  u_b = diag(exp(-log_scale_b)) R_b^T (x - t_b) for all bones at once is
  x @ linear + offset, one (3 x 3B) product per sample instead of B
  rotations of B differences (and the delta MLP's first layer folds into it).

  Args:
    bones: B bones (quat (B, 4), trans (B, 3)).
    log_scale: (B, 3) Gaussian log-scales.

  Returns:
    linear (3, 3B), offset (3B,): flat u = x @ linear + offset, u.reshape(B, 3).
  """
  rot = quat_lib.quat_to_matrix(bones.quat)  # (B, 3, 3) bone -> object
  inv_scale = jnp.exp(-log_scale)
  num_bones = rot.shape[0]
  linear = jnp.transpose(rot * inv_scale[:, None, :], (1, 0, 2)).reshape(3, 3 * num_bones)
  offset = -(jnp.einsum("bji,bj->bi", rot, bones.trans) * inv_scale).reshape(3 * num_bones)
  return linear, offset


@dataclasses.dataclass(frozen=True)
class SkinningWarp:
  """lab4d's Gaussian-bone skinning warp (semantics of `model.skinning`).

  Backward: weights from the time-t bones at x_t, delta conditioned on the
  frame's time code, transforms rest o t^-1. Forward: weights from the rest
  bones at x_c, delta at the mean time code, transforms t o rest^-1 (frame and
  partner share the weights). Blending: "dqs" (lab4d), "lbs", or a callable
  (x, weights, rel) -> x' (see `skinning.warp_point`).

  The Mahalanobis logits are computed through `bone_affine_map` (a per-frame
  3 x 3B matrix) rather than per-bone rotations per sample; they equal
  `skinning.gaussian_skinning_logits` (tested).
  """
  blend: Any = "dqs"

  def prepare(self, model, params, rest, frame, partner):
    targets = [frame.bones] if partner is None else [frame.bones, partner.bones]
    forward_rels = jnp.stack(
        [skinning.relative_transforms(rest.bones, b) for b in targets])  # (K, B, 8)

    def delta_fn(affine, code):
      if code is None:
        return None
      return lambda x: model.apply(params, x, affine[0], affine[1], code,
                                   method="skinning_delta_affine")

    backward_map = bone_affine_map(frame.bones, rest.log_scale)
    forward_map = bone_affine_map(rest.bones, rest.log_scale)
    return {
        "backward_map": backward_map, "forward_map": forward_map,
        "backward_rel": skinning.relative_transforms(frame.bones, rest.bones),
        "forward_rels": forward_rels,
        "backward_delta": delta_fn(backward_map, frame.delta_code),
        "forward_delta": delta_fn(forward_map, rest.delta_code),
    }

  def _weights(self, x, affine, delta_fn):
    local = x @ affine[0] + affine[1]
    logits = -jnp.sum(jnp.square(local).reshape(-1, 3), axis=-1)
    if delta_fn is None:
      delta = jnp.zeros_like(logits)
    else:
      delta = delta_fn(x)
      logits = logits - delta
    aux = {"skin_entropy": skinning.skinning_entropy(logits),
           "delta_skin": jnp.mean(delta * delta)}
    return jax.nn.softmax(logits), aux

  def backward(self, ctx, x_t):
    weights, aux = self._weights(x_t, ctx["backward_map"], ctx["backward_delta"])
    return skinning.warp_point(x_t, weights, ctx["backward_rel"], self.blend), aux

  def forward(self, ctx, x_c):
    weights, aux = self._weights(x_c, ctx["forward_map"], ctx["forward_delta"])
    warped = jax.vmap(lambda rel: skinning.warp_point(x_c, weights, rel, self.blend))(
        ctx["forward_rels"])
    return warped, aux


# ----------------------------------------------------------------------------
# Options.

# (model, params, x (N, 3), appearance (N, A) or None, alpha) -> dict(sdf (N,),
# rgb (N, 3), [feature (N, C)], [vis (N,)]).
CanonicalFn = Callable[..., dict]
# (model, params, x (N, 3), alpha) -> sdf (N,).
SdfFn = Callable[..., jnp.ndarray]


class CameraOverride(NamedTuple):
  """Cameras replacing the model's learned ones for the rendered (or partner) frames.

  Attributes:
    obj2cam: (F, 4, 4) object-to-camera transforms ((4, 4) for a single
      frame), or None: the model's root pose.
    intrinsics: (F, 4) (fx, fy, cx, cy) ((4,) for a single frame), or None:
      the model's intrinsics.
  """
  obj2cam: Optional[jnp.ndarray] = None
  intrinsics: Optional[jnp.ndarray] = None


@dataclasses.dataclass(frozen=True)
class RenderOptions:
  """The static choices of `render_rays`.

  Frozen and hashable, so it can be a `jax.jit` static argument or a closure
  constant. Function fields compare by identity: equal options need the same
  function objects (module-level functions, not fresh lambdas per call).
  """
  num_samples: int = 64  # S uniform samples per ray (lab4d training: 64)
  # K extra deterministic PDF samples per ray after a coarse pass (lab4d
  # evaluation: num_samples=32, importance_samples=32).
  importance_samples: int = 0
  density_fn: density_lib.DensityFn = density_lib.volsdf_density  # (sdf, beta) -> density
  warp: Warp = SkinningWarp()  # deformation model (lab4d's DQS skinning); see `Warp`
  canonical_fn: Optional[CanonicalFn] = None  # None: the model's canonical network
  # None: the model's SDF network, or canonical_fn's "sdf" when that is given.
  sdf_fn: Optional[SdfFn] = None
  # Camera-frame normals (the SDF gradient at every sample and a VJP through
  # the warp; for evaluation).
  compute_normals: bool = False
  # Leading rays per frame whose samples get the eikonal term (None: all;
  # lab4d trains with 1/16 of the rays).
  eikonal_rays: Optional[int] = None
  gauss_mask: bool = True  # render the Gaussian-bone density mask
  match_candidates: int = 1024  # random canonical samples each pixel feature is matched against
  # Evaluate the canonical fields on at most this many samples at a time, each chunk
  # rematerialised in the backward pass (its activations recomputed, not stored); None: all
  # samples at once with every activation kept (faster, several times the memory).
  field_chunk: Optional[int] = None


# ----------------------------------------------------------------------------
# Rendering.


def sdf_and_gradient(sdf_fn: Callable[[jnp.ndarray], jnp.ndarray],
                     points: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """SDF values and their spatial gradient by one VJP.

  Each SDF value depends only on its own point, so the VJP with a cotangent of
  ones is the per-point gradient (cheaper than a Jacobian).

  Args:
    sdf_fn: (N, 3) -> (N,).
    points: (N, 3).

  Returns:
    sdf (N,), gradient (N, 3).
  """
  sdf, vjp = jax.vjp(sdf_fn, points)
  (grad,) = vjp(jnp.ones_like(sdf))
  return sdf, grad


def eikonal_term(gradient: jnp.ndarray) -> jnp.ndarray:
  """(|grad sdf| - 1)^2 per point. (N, 3) -> (N,)."""
  return (vector.safe_norm(gradient) - 1.0) ** 2


def _field_fns(model, params, options: RenderOptions):
  """The (full, sdf-only) canonical functions of the points: the model's, or the overrides."""
  canonical_fn, sdf_fn = options.canonical_fn, options.sdf_fn
  if canonical_fn is None:
    full_fn = lambda x, appearance, alpha: model.apply(
        params, x, alpha=alpha, appearance=appearance, method="canonical")
    base_sdf_fn = lambda x, alpha: model.apply(params, x, alpha, method="sdf")
  else:
    full_fn = lambda x, appearance, alpha: canonical_fn(model, params, x, appearance, alpha)
    base_sdf_fn = lambda x, alpha: canonical_fn(model, params, x, None, alpha)["sdf"]
  if sdf_fn is not None:
    base_sdf_fn = lambda x, alpha: sdf_fn(model, params, x, alpha)
  return full_fn, base_sdf_fn


def _frame_samples(uv, near_far, depths, frame, ctx, warp):
  """Stage 1, one frame: camera-space samples -> object space -> canonical space.

  Args:
    uv: (R, 2); near_far: (R, 2) (unused when depths is given);
    depths: (R, S) sample depths; frame: FrameState; ctx: warp context.

  Returns:
    dict x_t (R, S, 3), x_c (R, S, 3), deltas (R, S), skin_entropy (R, S),
    delta_skin (R, S), dirs (R, 3).
  """
  del near_far
  dirs = rays_lib.camera_rays(frame.intrinsics, uv)  # (R, 3), z = 1
  x_cam, deltas = sampling.ray_points(dirs, depths)
  x_t = se3.apply_se3(se3.se3_inverse(frame.obj2cam), x_cam)
  x_c, aux = jax.vmap(lambda x: warp.backward(ctx, x))(x_t.reshape(-1, 3))
  shape = depths.shape
  return {"x_t": x_t, "x_c": x_c.reshape(x_t.shape), "deltas": deltas, "dirs": dirs,
          "skin_entropy": aux["skin_entropy"].reshape(shape),
          "delta_skin": aux["delta_skin"].reshape(shape)}


def _frame_outputs(uv, geo, field, grad_c, frame, partner, rest, ctx, warp, *, density_fn,
                   compute_normals, bone_density_radius):
  """Stage 3, one frame: density, compositing, forward warps (cycle, flow), normals.

  Args:
    uv: (R, 2); geo: `_frame_samples` output plus "depths" (R, S); field: the
    canonical fields reshaped to (R, S, ...); grad_c: (R, S, 3) canonical SDF
    gradients when compute_normals, else None; frame/partner/rest: states;
    ctx: warp context.

  Returns:
    dict of per-ray outputs (see `render_rays`).
  """
  dtype = uv.dtype
  num_rays, num_s = geo["depths"].shape
  x_c, x_t, deltas = geo["x_c"], geo["x_t"], geo["deltas"]
  sdf = field["sdf"]
  sigma = density_fn(sdf, rest.beta)
  weights, transmit = compositing.alpha_weights(sigma, deltas)
  out = {
      "rgb": compositing.composite(weights, field["rgb"]),
      "opacity": compositing.opacity(weights),
      "depth": compositing.expected_depth(weights, geo["depths"]),
      "weights": weights,
      "depths": geo["depths"],
      "xyz_canonical": x_c,
      "sdf": sdf,
  }
  if "feature" in field:
    out["feature"] = compositing.composite(weights, field["feature"])
    out["feature_samples"] = field["feature"]
  if "vis" in field:
    # lab4d: BCE-like term teaching visibility the detached transmittance;
    # normalised by the batch-mean transmittance in `render_rays`.
    out["vis_raw"] = -jnp.mean(jax.nn.log_sigmoid(field["vis"])
                               * jax.lax.stop_gradient(transmit), -1)
    out["transmit_mean"] = jnp.mean(jax.lax.stop_gradient(transmit), -1)

  # Forward warps: [0] the same frame (cycle), [1] the partner (flow).
  flat_c = x_c.reshape(-1, 3)
  x_fwd, aux_fwd = jax.vmap(lambda x: warp.forward(ctx, x))(flat_c)  # (P, K, 3)
  x_fwd = x_fwd.reshape(num_rays, num_s, -1, 3)
  cyc = vector.safe_norm(x_fwd[..., 0, :] - x_t)
  out["cyc_dist"] = compositing.composite(weights, cyc, detach_weights=True)
  skin_entropy = 0.5 * (geo["skin_entropy"] + aux_fwd["skin_entropy"].reshape(num_rays, num_s))
  out["skin_entropy"] = compositing.composite(weights, skin_entropy, detach_weights=True)
  delta_skin = 0.5 * (geo["delta_skin"] + aux_fwd["delta_skin"].reshape(num_rays, num_s))
  out["delta_skin"] = jnp.mean(delta_skin, -1)

  if partner is not None:
    x_partner_cam = se3.apply_se3(partner.obj2cam, x_fwd[..., 1, :])
    uv_partner = rays_lib.project(partner.intrinsics, x_partner_cam)
    flow = uv_partner - uv[:, None, :]
    valid = (x_partner_cam[..., 2] > FLOW_MIN_DEPTH).astype(dtype)
    out["flow"] = compositing.masked_composite(weights, flow, valid)
    out["flow_valid"] = compositing.composite(weights, valid)

  # Gaussian-bone density along the rays (lab4d reg_gauss_mask), rest bones
  # at the canonical points, scaled by exp(bone_logibeta).
  if bone_density_radius is not None:
    bone_density = jax.vmap(lambda x: skinning.gaussian_bone_density(
        x, rest.bones, bone_density_radius))(flat_c)
    bone_w, _ = compositing.alpha_weights(
        bone_density.reshape(num_rays, num_s) / rest.bone_beta, deltas)
    out["gauss_mask"] = compositing.opacity(bone_w)

  if compute_normals:
    # d sdf / d x_t = J_warp^T grad_c by a VJP through the backward warp, then
    # into the camera frame: d/dx_cam = R_cam2obj^T d/dx_t.
    _, warp_vjp = jax.vjp(lambda p: jax.vmap(lambda x: warp.backward(ctx, x)[0])(p),
                          x_t.reshape(-1, 3))
    (grad_t,) = warp_vjp(grad_c.reshape(-1, 3))
    grad_cam = grad_t @ se3.se3_inverse(frame.obj2cam)[:3, :3]
    normal = grad_cam / jnp.maximum(vector.safe_norm(grad_cam), 1e-12)[..., None]
    normal = compositing.composite(weights, normal.reshape(num_rays, num_s, 3))
    out["normal"] = normal / jnp.maximum(vector.safe_norm(normal), 1e-12)[..., None]
  return out


def render_rays(model, params, uv, frame_idx, partner_idx=None, *, near_far,
                options: RenderOptions = RenderOptions(), alpha=None,
                cameras: Optional[CameraOverride] = None,
                partner_cameras: Optional[CameraOverride] = None,
                match_features: Optional[jnp.ndarray] = None,
                match_key: Optional[jax.Array] = None,
                stratified_key: Optional[jax.Array] = None) -> dict[str, jnp.ndarray]:
  """Warp-composed volume rendering of a batch of rays grouped by frame.

  Args:
    model: ArticulatedModel (static).
    params: its variables ({"params": ...}).
    uv: (F, R, 2) pixel indices (u, v); (R, 2) with a scalar frame_idx renders
      one frame (outputs lose the F axis).
    frame_idx: (F,) int frame of each row of uv (or ()).
    partner_idx: (F,) int partner frame for flow (or ()), or None (no flow).
    near_far: (2,), (F, 2) or (F, R, 2) near/far camera depths.
    options: the static choices (samples, density, warp, canonical fields,
      which outputs); see `RenderOptions`.
    alpha: coarse-to-fine fraction for the SDF/colour encodings (None: off).
    cameras: overrides of the root pose / intrinsics of the rendered frames
      (fields (F, 4, 4) / (F, 4)), or None: the model's.
    partner_cameras: likewise for the partner frames.
    match_features: optional (F, R, C) pixel features: soft-argmax them
      against `options.match_candidates` random canonical samples of the batch
      (PRNG `match_key`; temperature exp(logsigma)) and re-project the matched
      points into their own frame ("xy_reproj").
    match_key: PRNG key of the match candidates (None: PRNGKey(0)).
    stratified_key: PRNG key to jitter the uniform depths (lab4d: off).

  Returns:
    dict, leading shape L = (F, R) (or (R,)):
      rgb (L, 3) opacity-normalised colour (composite with
        `compositing.over_background`); opacity (L,); depth (L,) camera z;
      feature (L, C) (normalised-weight composite, not re-normalised);
      flow (L, 2) and flow_valid (L,) when partner_idx is given (pixels,
        partner projection minus this pixel);
      normal (L, 3) when options.compute_normals;
      eikonal (L,) sample-mean (|grad sdf| - 1)^2 and eikonal_mask (L,);
      cyc_dist (L,) and skin_entropy (L,) composited with detached normalised
        weights; delta_skin (L,) sample-mean; vis (L,) lab4d visibility loss;
      gauss_mask (L,) when options.gauss_mask; xy_reproj (L, 2) with
        match_features;
      weights (L, S'), depths (L, S'), sdf (L, S'), xyz_canonical (L, S', 3),
        feature_samples (L, S', C) with S' = num_samples + importance_samples.
  """
  single, batch = _with_frame_axis(uv, frame_idx, partner_idx, near_far, cameras,
                                   partner_cameras, match_features)
  uv, warp = batch.uv, options.warp
  rest = rest_state(model, params)
  frames = frame_states(model, params, batch.frame_idx, batch.cameras.obj2cam,
                        batch.cameras.intrinsics)
  partners = None
  if batch.partner_idx is not None:
    partners = frame_states(model, params, batch.partner_idx, batch.partner_cameras.obj2cam,
                            batch.partner_cameras.intrinsics)
  full_fn, base_sdf_fn = _field_fns(model, params, options)
  sdf_fn = lambda x: base_sdf_fn(x, alpha)
  prepare = lambda frame, partner: warp.prepare(model, params, rest, frame, partner)

  def samples(depths):
    return jax.vmap(lambda u, nf, d, f: _frame_samples(u, nf, d, f, prepare(f, None), warp))(
        uv, batch.near_far, depths, frames)

  depths = _ray_depths(batch.near_far, options, stratified_key, samples, sdf_fn, rest.beta)
  # Stage 1 (per frame): samples -> canonical points.
  geo = samples(depths)
  geo["depths"] = depths
  # Stage 2 (all frames at once): the canonical fields.
  field = _canonical_fields(full_fn, geo["x_c"], frames.appearance, alpha, options.field_chunk)
  eik_out, grad_c = _eikonal_outputs(geo["x_c"], sdf_fn, options, uv.dtype)

  # Stage 3 (per frame): compositing, forward warps, flow, normals.
  def outputs(u, g, fld, gc, frame, partner):
    return _frame_outputs(
        u, g, fld, gc, frame, partner, rest, prepare(frame, partner), warp,
        density_fn=options.density_fn, compute_normals=options.compute_normals,
        bone_density_radius=model.config.bone_density_radius if options.gauss_mask else None)

  out = jax.vmap(outputs)(uv, geo, field, grad_c, frames, partners)
  out.update(eik_out)
  if "vis_raw" in out:
    out["vis"] = out.pop("vis_raw") / jnp.mean(out.pop("transmit_mean"))

  if batch.match_features is not None:
    out["xy_reproj"] = _feature_reprojection(
        model, params, out, batch.match_features, frames, rest, warp, match_key,
        options.match_candidates)
  if single:
    out = {k: v[0] for k, v in out.items()}
  return out


class _RayBatch(NamedTuple):
  """`render_rays`' per-call arguments with a leading frame axis F."""
  uv: jnp.ndarray  # (F, R, 2)
  frame_idx: jnp.ndarray  # (F,) int32
  partner_idx: Optional[jnp.ndarray]  # (F,) int32, or None (no flow)
  near_far: jnp.ndarray  # (F, R, 2)
  cameras: CameraOverride  # fields (F, 4, 4) / (F, 4) or None
  partner_cameras: CameraOverride
  match_features: Optional[jnp.ndarray]  # (F, R, C) or None


def _with_frame_axis(uv, frame_idx, partner_idx, near_far, cameras, partner_cameras,
                     match_features) -> tuple[bool, _RayBatch]:
  """(single, batch): a scalar frame_idx gets a frame axis; near/far become per ray."""
  cameras = CameraOverride() if cameras is None else cameras
  partner_cameras = CameraOverride() if partner_cameras is None else partner_cameras
  frame_idx = jnp.asarray(frame_idx, jnp.int32)
  if partner_idx is not None:
    partner_idx = jnp.asarray(partner_idx, jnp.int32)
  single = frame_idx.ndim == 0
  if single:
    add_frame_axis = functools.partial(jax.tree_util.tree_map, lambda a: a[None])
    uv = uv[None]
    frame_idx = frame_idx[None]
    partner_idx = None if partner_idx is None else partner_idx[None]
    cameras, partner_cameras = add_frame_axis(cameras), add_frame_axis(partner_cameras)
    if match_features is not None:
      match_features = match_features[None]
  num_frames, num_rays = uv.shape[:2]
  near_far = jnp.asarray(near_far, uv.dtype)
  if single and near_far.ndim == 2:  # (R, 2) per-ray bounds of the one frame
    near_far = near_far[None]
  if near_far.ndim == 1:
    near_far = jnp.broadcast_to(near_far, (num_frames, 2))
  near_far = jnp.broadcast_to(near_far.reshape(num_frames, -1, 2), (num_frames, num_rays, 2))
  return single, _RayBatch(uv, frame_idx, partner_idx, near_far, cameras, partner_cameras,
                           match_features)


def _ray_depths(near_far, options: RenderOptions, stratified_key, samples_fn, sdf_fn, beta):
  """(F, R, S') sample depths: uniform (jittered by stratified_key), then importance samples.

  Args:
    near_far: (F, R, 2).
    options: num_samples, importance_samples and density_fn are used.
    stratified_key: PRNG key or None.
    samples_fn: (F, R, S) depths -> `_frame_samples` outputs (F, R, S, ...).
    sdf_fn: (N, 3) canonical points -> (N,) SDF.
    beta: the density's scale.
  """
  depths = sampling.uniform_depths(near_far, options.num_samples)  # (F, R, S)
  if stratified_key is not None:
    depths = sampling.stratified_depths(stratified_key, depths)
  if options.importance_samples > 0:
    # Coarse pass (no gradient) picks where the extra samples go.
    coarse = samples_fn(depths)
    x_c = jax.lax.stop_gradient(coarse["x_c"])
    coarse_density = options.density_fn(sdf_fn(x_c.reshape(-1, 3)).reshape(depths.shape), beta)
    coarse_w, _ = compositing.alpha_weights(coarse_density, coarse["deltas"])
    depths = sampling.importance_depths(depths, coarse_w, options.importance_samples)
  return depths


def _canonical_fields(full_fn, x_c, appearance, alpha, chunk=None) -> dict[str, jnp.ndarray]:
  """Stage 2: the canonical fields of (F, R, S, 3) points, as (F, R, S, ...) arrays.

  Evaluated on the FLAT (N, 3) points of all frames at once: XLA:CPU runs these
  MLPs markedly faster on 2-D arrays than under the frame vmap's extra batch axis.
  With `chunk`, in rematerialised pieces of at most that many samples (`in_remat_chunks`).
  """
  lead = x_c.shape[:3]
  appearance = jnp.repeat(appearance, lead[1] * lead[2], axis=0)
  fn = lambda x, a: full_fn(x, a, alpha)
  field = in_remat_chunks(fn, chunk, x_c.reshape(-1, 3), appearance)
  return {k: v.reshape(lead + v.shape[1:]) for k, v in field.items()}


def in_remat_chunks(fn: Callable, chunk: Optional[int], *arrays: jnp.ndarray):
  """fn(*arrays) on the leading axis in pieces of at most `chunk` rows, each rematerialised.

  The forward pass loops over the pieces (`lax.map`) and keeps only each piece's inputs;
  the backward pass recomputes one piece's activations at a time, so the memory the
  pieces need is one piece's, whatever the number of rows. Piece k takes rows k, k + K,
  k + 2K, ... (K pieces): a batch split over devices along its leading axis keeps its
  split inside every piece. Rows are padded by repeating the last one; fn must treat rows
  independently.

  Args:
    fn: (N, ...) arrays -> pytree of (N, ...) arrays.
    chunk: the most rows per piece (None or >= N: one call of fn, nothing rematerialised).
    *arrays: with the same leading size N.

  Returns:
    fn(*arrays).
  """
  num = arrays[0].shape[0]
  if chunk is None or num <= chunk:
    return fn(*arrays)
  pieces = -(-num // chunk)
  rows = -(-num // pieces)
  pad = rows * pieces - num

  def to_pieces(a):
    if pad:
      a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)])
    return jnp.swapaxes(a.reshape((rows, pieces) + a.shape[1:]), 0, 1)

  def from_pieces(a):
    return jnp.swapaxes(a, 0, 1).reshape((rows * pieces,) + a.shape[2:])[:num]

  out = jax.lax.map(jax.checkpoint(lambda args: fn(*args)), tuple(map(to_pieces, arrays)))
  return jax.tree_util.tree_map(from_pieces, out)


def _eikonal_outputs(x_c, sdf_fn, options: RenderOptions, dtype):
  """The eikonal term per ray and, for normals, the canonical SDF gradient per sample.

  The term is taken in canonical space on the first `options.eikonal_rays` rays
  of each frame at detached points (so it only shapes the SDF, as lab4d), or at
  every sample, not detached, when normals are asked for.

  Args:
    x_c: (F, R, S, 3) canonical sample points.
    sdf_fn: (N, 3) -> (N,).
    options: eikonal_rays and compute_normals are used.
    dtype: of the mask.

  Returns:
    {"eikonal": (F, R), "eikonal_mask": (F, R)} ({} when no ray gets the term),
    and the (F, R, S, 3) gradients when options.compute_normals, else None.
  """
  num_frames, num_rays, num_s = x_c.shape[:3]
  compute_normals, eikonal_rays = options.compute_normals, options.eikonal_rays
  k_eik = num_rays if (compute_normals or eikonal_rays is None) else min(eikonal_rays, num_rays)
  if k_eik <= 0:
    return {}, None
  pts = x_c[:, :k_eik].reshape(-1, 3)
  if not compute_normals:
    pts = jax.lax.stop_gradient(pts)
  _, grad = sdf_and_gradient(sdf_fn, pts)
  eik = jnp.mean(eikonal_term(grad).reshape(num_frames, k_eik, num_s), -1)
  out = {"eikonal": jnp.pad(eik, ((0, 0), (0, num_rays - k_eik))),
         "eikonal_mask": jnp.broadcast_to((jnp.arange(num_rays) < k_eik).astype(dtype),
                                          (num_frames, num_rays))}
  return out, grad.reshape(x_c.shape) if compute_normals else None


def _feature_reprojection(model, params, out, pixel_features, frames, rest, warp,
                          key, num_candidates):
  """lab4d `global_match` + `forward_project`: (F, R, C) features -> (F, R, 2) pixels."""
  samples_xyz = out["xyz_canonical"].reshape(-1, 3)
  samples_feat = out["feature_samples"].reshape(samples_xyz.shape[0], -1)
  num_candidates = min(num_candidates, samples_xyz.shape[0])
  if key is None:
    key = jax.random.PRNGKey(0)
  idx = jax.random.choice(key, samples_xyz.shape[0], (num_candidates,), replace=False)
  cand_xyz, cand_feat = samples_xyz[idx], samples_feat[idx]
  temperature = model.apply(params, method="feature_temperature")
  prob = jax.nn.softmax((pixel_features @ cand_feat.T) * temperature, axis=-1)
  matched = prob @ cand_xyz  # (F, R, 3) canonical points

  def project_frame(xyz_f, frame_f):
    ctx = warp.prepare(model, params, rest, frame_f, None)
    x_obj, _ = jax.vmap(lambda x: warp.forward(ctx, x))(xyz_f)
    return rays_lib.project(frame_f.intrinsics, se3.apply_se3(frame_f.obj2cam, x_obj[:, 0]))

  return jax.vmap(project_frame)(matched, frames)
