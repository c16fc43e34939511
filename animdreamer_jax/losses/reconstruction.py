"""The reconstruction loss term: a batch of video rays rendered through the warp, lab4d's losses.

Each step draws frame pairs and pixels from the device-resident video
(`data.batching.sample_batch`, with this term's PRNG key), renders them
through the warp (`render.warp_render.render_rays`, flow to the partner frame,
cycle, eikonal on a share of the rays, bone mask, feature matching) and
returns lab4d's unweighted losses (`lab4d_losses`); the train step weights
each by its scheduled scalar "w_<name>". Only losses with a non-zero base
weight are built at all.

Two AnimatableDreamer constraints are off by default (`losses.skeleton_constraints`):
"bone_inside" (L_bone: the rest bone centres inside the canonical surface) and
"skeleton" (L_skel: the bones of the batch's frames keep the joints of a given
skeleton.json connected and within its observed rotation range; its
constraints are device data, `ctx.data.skeleton`, built by
`load_skeleton_constraints`).

The `loss` config section (`LossSettings`) is declared here: base weights,
schedule lengths and the term's own constants.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import schedules
from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses import lab4d_losses as losses
from animdreamer_jax.losses import skeleton_constraints
from animdreamer_jax.losses.term import LossTerm, StepContext
from animdreamer_jax.model import skinning
from animdreamer_jax.render import density as density_lib
from animdreamer_jax.render import settings as render_settings_lib
from animdreamer_jax.render import warp_render
from animdreamer_jax.skeleton import skeleton_file as skeleton_file_lib

NAME = "reconstruction"


@dataclasses.dataclass(frozen=True)
class LossWeights:
  """`loss.weights`: base weight of each reconstruction loss (lab4d's defaults; 0 = not built)."""
  mask: float = 0.1  # silhouette vs the video's mask
  rgb: float = 0.1  # colour inside the mask
  depth: float = 0.0  # camera-space depth (synthetic videos only; off in lab4d)
  flow: float = 0.5  # rendered 2-D flow to the partner frame vs the video's flow
  feature: float = 1e-2  # rendered feature vs the video's (DINOv2 or oracle) feature
  feat_reproj: float = 5e-2  # feature-matched canonical point re-projected onto its pixel
  vis: float = 0.0  # visibility field vs detached transmittance
  eikonal: float = 1e-3  # (|grad sdf| - 1)^2 in canonical space (ramped x100 by the schedule)
  cycle: float = 1e-2  # canonical -> frame -> canonical cycle distance of the warp
  delta_skin: float = 5e-3  # size of the skinning delta MLP's correction
  skin_entropy: float = 5e-4  # entropy of the skinning weights
  gauss_skin: float = 1e-3  # bone Gaussians agree with the SDF's occupancy
  gauss_mask: float = 1e-2  # rendered bone density vs the rendered silhouette (decays to 0)
  cam_prior: float = 0.1  # root poses stay near the video's cameras (decays to 0)
  # Rest bone centres at most `bone_inside_margin` outside the canonical surface
  # (AnimatableDreamer's L_bone; its code: 0.1; decays to 0).
  bone_inside: float = 0.0
  # The batch frames' bones keep the joints of `skeleton_file` connected and within the
  # rotation range the video showed (AnimatableDreamer's L_skel; needs skeleton_file).
  skeleton: float = 0.0


@dataclasses.dataclass(frozen=True)
class LossSchedules:
  """`loss.schedules`: schedule lengths as fractions of training (lab4d's shapes at any length).

  lab4d's eikonal ramp, bone-mask decay and coarse-to-fine window end at step
  4000 of its 4000-step default run, its camera prior at step 800.
  """
  eikonal_fraction: float = 1.0  # eikonal weight x1 -> x100 (log-linear) over this fraction
  cam_prior_fraction: float = 0.2  # camera-prior weight 1 -> 0 over this fraction
  gauss_mask_fraction: float = 1.0  # bone-mask weight 1 -> 0 over this fraction
  # Bone-inside weight 1 -> 0 over this fraction (AnimatableDreamer's reg_anneal).
  bone_inside_fraction: float = 1.0
  pos_alpha_start: float = 0.6  # coarse-to-fine window of the encodings starts at this fraction
  pos_alpha_fraction: float = 1.0  # ... and opens fully over this fraction of training


@dataclasses.dataclass(frozen=True)
class LossSettings:
  """`loss`: the reconstruction term."""
  weights: LossWeights = LossWeights()
  # Pixels per unit of flow and re-projection error (lab4d: 256); 0: max(H, W) of the video.
  train_res: float = 0.0
  gauss_skin_points: int = 2048  # random canonical points of the bone/SDF consistency term
  # How far outside the surface a bone centre may sit before "bone_inside" pulls it in
  # (AnimatableDreamer's 0.01 in lab4d's units, x2.5 for the normalised sequences here).
  bone_inside_margin: float = 0.025
  # skeleton.json (joints over THIS model's bones: a run resumed or continued from the one
  # it was built from) that `weights.skeleton` holds the bones to; "": none.
  skeleton_file: str = ""
  schedules: LossSchedules = LossSchedules()

  def __post_init__(self):
    for field in dataclasses.fields(LossWeights):
      if getattr(self.weights, field.name) < 0:
        raise UserError(f"config.loss.weights.{field.name}: must be >= 0")
    if self.gauss_skin_points < 1:
      raise UserError("config.loss.gauss_skin_points: must be >= 1")
    if self.weights.skeleton > 0 and not self.skeleton_file:
      raise UserError("config.loss.weights.skeleton: needs config.loss.skeleton_file (the "
                      "skeleton.json of this model's bones)")
    if self.skeleton_file and self.weights.skeleton == 0:
      raise UserError("config.loss.skeleton_file: set but config.loss.weights.skeleton is 0; "
                      "give the skeleton loss a weight or leave the file empty")

  def enabled(self) -> tuple[str, ...]:
    """Losses with a non-zero base weight (static: only these are built)."""
    return tuple(sorted(f.name for f in dataclasses.fields(LossWeights)
                        if getattr(self.weights, f.name) != 0))


# The video inputs each loss reads, when not every video has them (a real video has no depth,
# and no features without DINOv2 weights).
NEEDS_DEPTH = ("depth",)
NEEDS_FEATURES = ("feature", "feat_reproj")


def fit_to_video(settings: LossSettings, has_depth: bool, has_features: bool
                 ) -> tuple[LossSettings, list[str]]:
  """The loss settings with the terms the video cannot feed switched off, and one notice per
  switched-off group (empty when nothing changed)."""
  off, notices = {}, []
  for needed, present, what in ((NEEDS_DEPTH, has_depth, "no depth.npy"),
                                (NEEDS_FEATURES, has_features, "no features (feature_kind none)")):
    names = [n for n in needed if getattr(settings.weights, n) > 0 and not present]
    if names:
      off.update({n: 0.0 for n in names})
      notices.append(f"the video has {what}: loss {', '.join(names)} turned off")
  if not off:
    return settings, notices
  return dataclasses.replace(settings, weights=dataclasses.replace(settings.weights, **off)), notices


def train_resolution(settings: LossSettings, video: batching.DeviceVideo) -> float:
  """Pixels per unit of flow / re-projection loss (lab4d: 256; default max(H, W))."""
  return settings.train_res if settings.train_res > 0 else float(max(video.height, video.width))


def load_skeleton_constraints(settings: LossSettings, num_bones: int
                              ) -> Optional[skeleton_constraints.SkeletonConstraints]:
  """The device arrays of `skeleton_file`'s constraints (None when the skeleton loss is off).

  Raises:
    UserError: a missing or malformed file, or one over another number of model bones.
  """
  if "skeleton" not in settings.enabled():
    return None
  skel = skeleton_file_lib.load(settings.skeleton_file)
  if skel.num_model_bones != num_bones:
    raise UserError(f"{settings.skeleton_file}: a skeleton over {skel.num_model_bones} model bones, "
                    f"but the model has {num_bones} (config.loss.skeleton_file must come from "
                    "this model)")
  return jax.tree_util.tree_map(jnp.asarray,
                                skeleton_constraints.constraints_from_skeleton(skel))


def gauss_skin_term(model, params, aabb: jnp.ndarray, key: jax.Array, num_points: int,
                    density_fn) -> jnp.ndarray:
  """lab4d reg_gauss_skin on random points of the (extended) canonical box."""
  center, half = (aabb[0] + aabb[1]) / 2, (aabb[1] - aabb[0]) / 2 * 1.25
  pts = center + half * jax.random.uniform(key, (num_points, 3), minval=-1.0, maxval=1.0)
  rest = model.apply(params, method="rest_bones")
  radius = model.config.bone_density_radius
  bone_density = jax.vmap(lambda x: skinning.gaussian_bone_density(x, rest, radius))(pts)
  sdf = model.apply(params, pts, method="sdf")
  beta = model.apply(params, method="beta")
  occupancy = density_lib.occupancy(sdf, beta, density_fn)
  return losses.gauss_skin_consistency_loss(bone_density, occupancy)


def _losses_from_render(out: dict, batch: batching.Batch, names: tuple[str, ...],
                        train_res: float) -> dict[str, jnp.ndarray]:
  """The per-ray losses of one rendered batch (those in `names` that need only the render)."""
  fg = batch.mask
  terms = {}
  if "mask" in names:
    terms["mask"] = losses.silhouette_loss(out["opacity"], batch.mask)
  if "rgb" in names:
    terms["rgb"] = losses.rgb_loss(out["rgb"], batch.rgb, fg)
  if "depth" in names:
    terms["depth"] = losses.depth_loss(out["depth"], batch.depth, fg)
  if "flow" in names:
    valid = batch.flow_valid * (out["flow_valid"] > 0.5)
    terms["flow"] = losses.flow_loss(out["flow"], batch.flow, valid, fg, train_res)
  if "feature" in names:
    terms["feature"] = losses.feature_loss(out["feature"], batch.feature, fg)
  if "feat_reproj" in names:
    terms["feat_reproj"] = losses.reprojection_loss(out["xy_reproj"], batch.uv, fg, train_res)
  if "vis" in names:
    terms["vis"] = losses.mean_over_positive(out["vis"] * fg)
  if "eikonal" in names:
    terms["eikonal"] = losses.eikonal_loss(out["eikonal"].reshape(-1), out["eikonal_mask"].reshape(-1))
  if "cycle" in names:
    terms["cycle"] = losses.mean_over_positive(out["cyc_dist"])
  if "skin_entropy" in names:
    terms["skin_entropy"] = losses.skin_entropy_loss(out["skin_entropy"])
  if "delta_skin" in names:
    terms["delta_skin"] = losses.delta_skin_loss(out["delta_skin"])
  if "gauss_mask" in names:
    terms["gauss_mask"] = losses.gauss_mask_loss(out["gauss_mask"], out["opacity"])
  return terms


def make_reconstruction_term(model, loss: LossSettings, render: render_settings_lib.RenderSettings,
                             batch: batching.BatchSettings,
                             warp: Optional[warp_render.Warp] = None) -> LossTerm:
  """The reconstruction LossTerm (warp: `render.make_warp(...)`'s, None: built from `render`).

  Its `ctx.data` must have `video` (batching.DeviceVideo), `prior_w2c` (T, 4, 4)
  the video's cameras, `intrinsics` (T, 4) and, with the skeleton loss on,
  `skeleton` (`load_skeleton_constraints`'s); `ctx.aux` near_far (T, 2) and
  aabb (2, 3); `ctx.scalars` "alpha" (coarse-to-fine fraction).
  """
  names = loss.enabled()
  density_fn = render.density_fn()
  num_rays = batch.pixels_per_frame
  options = render.options(
      warp, eikonal_rays=max(1, int(round(num_rays * render.eikonal_ray_fraction))),
      gauss_mask="gauss_mask" in names)

  def fn(params, ctx: StepContext) -> tuple[dict, dict]:
    data = ctx.data
    key_batch, key_match, key_points = jax.random.split(ctx.key, 3)
    # On several devices each renders its share of the frame rows.
    rays = ctx.split(batching.sample_batch(data.video, key_batch, batch.pairs_per_batch,
                                           batch.pixels_per_frame, batch.fg_fraction))
    cameras = partner_cameras = None
    if render.use_video_intrinsics:
      cameras = warp_render.CameraOverride(intrinsics=data.intrinsics[rays.frame_index])
      partner_cameras = warp_render.CameraOverride(intrinsics=data.intrinsics[rays.partner_frame])
    out = warp_render.render_rays(
        model, params, rays.uv, rays.frame_index, rays.partner_frame,
        near_far=ctx.aux["near_far"][rays.frame_index], options=options,
        alpha=ctx.scalars["alpha"], cameras=cameras, partner_cameras=partner_cameras,
        match_features=rays.feature if "feat_reproj" in names else None, match_key=key_match)
    terms = _losses_from_render(out, rays, names, train_resolution(loss, data.video))
    if "gauss_skin" in names:
      terms["gauss_skin"] = gauss_skin_term(model, params, ctx.aux["aabb"], key_points,
                                            loss.gauss_skin_points, density_fn)
    if "cam_prior" in names:
      frames = jnp.arange(data.prior_w2c.shape[0], dtype=jnp.int32)
      root = model.apply(params, frames, method="root_pose")
      terms["cam_prior"] = losses.camera_prior_loss(root, data.prior_w2c)
    if "bone_inside" in names or "skeleton" in names:
      rest = model.apply(params, method="rest_bones")
    if "bone_inside" in names:
      # The SDF the renderer sees this step (same coarse-to-fine window).
      sdf = model.apply(params, rest.trans, ctx.scalars["alpha"], method="sdf")
      terms["bone_inside"] = skeleton_constraints.bone_inside_loss(sdf, loss.bone_inside_margin)
    if "skeleton" in names:
      posed = model.apply(params, rays.frame_index, method="bones")
      terms["skeleton"] = skeleton_constraints.skeleton_loss(data.skeleton, rest, posed)
    fg = rays.mask
    metrics = {"opacity_fg": jnp.sum(out["opacity"] * fg) / jnp.maximum(jnp.sum(fg), 1),
               "opacity_bg": jnp.sum(out["opacity"] * (1 - fg)) / jnp.maximum(jnp.sum(1 - fg), 1)}
    return terms, metrics

  return LossTerm(NAME, fn, splits=(("config.data.pairs_per_batch x 2 (frame rows)",
                                     2 * batch.pairs_per_batch),))


def scalars(settings: LossSettings, step: int, total_steps: int) -> dict[str, np.float32]:
  """Host-side scalars of the term at `step`: "alpha" and "w_<loss>" for the enabled losses.

  lab4d's schedules (lab4d_internals A.6), their lengths as fractions of
  training: the eikonal weight ramps x1 -> x100 log-linearly, the camera prior
  and the bone mask decay linearly to 0; the coarse-to-fine window opens
  linearly from `pos_alpha_start` to 1. AnimatableDreamer's bone-inside weight
  decays linearly to 0 too (its reg_anneal).
  """
  sched = settings.schedules

  def steps(fraction):
    return max(1, int(round(fraction * total_steps)))

  factors = {
      "eikonal": schedules.log_anneal(step, 0, steps(sched.eikonal_fraction), 1.0, 100.0),
      "cam_prior": schedules.linear_anneal(step, 0, steps(sched.cam_prior_fraction), 1.0, 0.0),
      "gauss_mask": schedules.linear_anneal(step, 0, steps(sched.gauss_mask_fraction), 1.0, 0.0),
      "bone_inside": schedules.linear_anneal(step, 0, steps(sched.bone_inside_fraction), 1.0, 0.0),
  }
  alpha = (schedules.positional_encoding_alpha(step, sched.pos_alpha_start, 1.0,
                                               steps(sched.pos_alpha_fraction))
           if sched.pos_alpha_fraction > 0 else 1.0)
  out = {"alpha": np.float32(alpha)}
  for name in settings.enabled():
    out[f"w_{name}"] = np.float32(getattr(settings.weights, name) * factors.get(name, 1.0))
  return out
