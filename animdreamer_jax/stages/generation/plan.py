"""The generation stage as a training plan: a new canonical model on the source's skeleton and motion.

AnimatableDreamer's second stage, as its first author's public code does it:
training continues from the finished extraction run - the same model, the
same two kinds of step over the same trainer and update rule - with

- CSD steps (`csd.term`) from a prior of the NEW animal: 4 orthogonal views of
  a random frame t rendered through the frame-t backward warp of the source's
  motion (or, `generate.warp=False`, of the canonical model itself: plain SDS,
  the paper's ablation);
- reconstruction steps on the source video whose data terms fade out
  (`settings.FADED_LOSSES`, x1 -> x`recon_floor`) while the regularisers keep
  theirs, with L_skel (the source run's skeleton) and L_bone;
- only `generate.param_groups` trained (default "fg": the root pose and the
  camera stay the source's; the bones and skinning may adapt within L_skel).

The prior: `csd.prior="oracle"` renders the ground truth of a TARGET video
(`gt/`: the new animal moving with the source's motion, e.g. the Quaternius
Wolf for a Fox run) from the same cameras at frame t; "mvdream" a prompt; or
any `(DiffusionPrior, params, text)` the caller passes.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import schedules
from animdreamer_jax.csd import priors as priors_lib
from animdreamer_jax.csd import term as csd_term
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses import reconstruction
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.model import skinning
from animdreamer_jax.render import settings as render_settings
from animdreamer_jax.render import warp_render
from animdreamer_jax.stages.extraction import plan as extraction_plan
from animdreamer_jax.stages.generation import settings as settings_lib
from animdreamer_jax.train import loop
from animdreamer_jax.train import optimizer as optimizer_lib
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib

RECONSTRUCTION = extraction_plan.RECONSTRUCTION
CSD = extraction_plan.CSD


def fade_factor(settings: settings_lib.GenerateSettings, step: int, total: int) -> float:
  """The data terms' weight factor: 1 -> recon_floor log-linearly over recon_fade_fraction."""
  length = int(round(settings.recon_fade_fraction * total))
  if length <= 0:
    return settings.recon_floor
  return schedules.log_anneal(step, 0, length, 1.0, settings.recon_floor)


def make_schedule(settings: settings_lib.GenerationSettings, extraction_settings):
  """Extraction's schedule (which kind, lr, weights, CSD range) with the data terms faded."""
  base = extraction_plan.make_schedule(extraction_settings)

  def schedule(step: int, total: int):
    kind, scalars = base(step, total)
    factor = np.float32(fade_factor(settings.generate, step, total))
    for name in settings_lib.FADED_LOSSES:
      if f"w_{name}" in scalars:
        scalars[f"w_{name}"] = np.float32(scalars[f"w_{name}"] * factor)
    return kind, scalars

  return schedule


def bones_sdf(rest: skinning.Bones, log_scale: jnp.ndarray, level: float):
  """(N, 3) -> (N,) the union of the Gaussian bones as ellipsoids at `level` standard deviations.

  Per bone, (|x in the bone's frame / sigma| - level) x the bone's smallest
  sigma: negative inside, zero on the ellipsoid, roughly a distance near it.
  """
  sigma = jnp.exp(log_scale)  # (B, 3)

  def one(x):
    local = skinning.bone_local_coords(x, rest)  # (B, 3)
    radius = jnp.linalg.norm(local / sigma, axis=-1)
    return jnp.min((radius - level) * jnp.min(sigma, axis=-1))

  return jax.vmap(one)


def start_from_bones(model, params: dict, settings: settings_lib.GenerateSettings,
                     seed: int) -> tuple[dict, dict]:
  """The canonical SDF refitted to the union of the source's bones (`generate.start="bones"`)."""
  rest = model.apply(params, method="rest_bones")
  log_scale = model.apply(params, method="log_scale")
  target = bones_sdf(rest, log_scale, settings.bone_level)
  reach = float(jnp.max(jnp.abs(rest.trans)) + settings.bone_level * jnp.max(jnp.exp(log_scale)))
  return init_lib.fit_sdf(model, params, target, bound=1.25 * reach, steps=settings.start_fit_steps,
                          seed=seed)


def rest_pose_target(video) -> priors_lib.GroundTruthRenderer:
  """The oracle of canonical-space SDS: the target's rest pose at every frame."""
  gt = video.gt
  if gt is None:
    raise UserError("csd.prior=oracle: the target video has no ground truth (gt/)")
  renderer = priors_lib.ground_truth_renderer(video)
  rest = np.asarray(gt.rest_vertices, np.float64)
  return priors_lib.GroundTruthRenderer(
      np.repeat(rest[None], video.num_frames, axis=0), renderer.faces, renderer.colors,
      renderer.world_to_video_camera, rest_vertices=rest)


def target_renderer(settings: settings_lib.GenerationSettings, target
                    ) -> priors_lib.GroundTruthRenderer:
  """What the oracle shows of `target`: its frame-t meshes (through the warp), or its rest pose
  at every frame (`generate.warp=False`, canonical-space SDS)."""
  if settings.generate.warp:
    return priors_lib.ground_truth_renderer(target, supersample=settings.csd.oracle.supersample)
  return rest_pose_target(target)


def build_prior(settings: settings_lib.GenerationSettings, target) -> tuple:
  """(prior, params, text) of the generation's `csd` section; the oracle reads `target`'s gt/."""
  csd = settings.csd
  if csd.prior == "oracle":
    if target is None:
      raise UserError("csd.prior=oracle: generation needs --target (a video folder whose gt/ holds "
                      "the new animal moving with the source's motion), or --prompt for MVDream")
    return priors_lib.oracle_prior(target_renderer(settings, target), csd.resolution), None, None
  return priors_lib.build_prior(csd, target)


def view_renderer(settings: settings_lib.GenerationSettings, model, video, warp=None):
  """The CSD term's view renderer: through the frame-t warp, or (`generate.warp=False`) none."""
  if not settings.generate.warp:
    warp = warp_render.IdentityWarp()
  elif warp is None:
    warp = settings.render.make_warp(video.gt)
  return csd_term.make_view_renderer(model, settings.render.options(
      warp, num_samples=settings.csd.samples_per_ray(settings.render.num_samples)))


def build_plan(settings: settings_lib.GenerationSettings, model, source_params: dict, video,
               target=None, prior: Optional[tuple] = None, source: str = "video"
               ) -> loop.TrainingPlan:
  """The TrainingPlan of a generation from a run's model and parameters.

  Args:
    settings: the generation settings.
    model: the source run's ArticulatedModel.
    source_params: its trained variables (host or device arrays).
    video: the source video (data.video.Video): the faded reconstruction terms.
    target: the target video (oracle prior), or None.
    prior: (DiffusionPrior, params, text) replacing the configured one (tests, custom priors).
    source: the source video's path, for messages.
  """
  if not settings.csd.enabled:
    raise UserError("config.csd.prior: generation needs a prior (oracle or mvdream), not 'none'")
  if target is not None and target.num_frames != video.num_frames:
    raise UserError(f"--target: {target.num_frames} frames, but the source run has "
                    f"{video.num_frames}; the target must move with the source's motion frame by frame")
  ext = settings_lib.as_extraction(settings, model.config)
  skeleton = reconstruction.load_skeleton_constraints(settings.loss, model.config.num_bones)
  host_params = jax.tree_util.tree_map(np.asarray, source_params)
  template = extraction_plan.state_from_params(ext, host_params, video.num_frames)
  tx = optimizer_lib.make_optimizer(template.params, settings.optim)
  mask = csd_term.param_group_mask(template.params, settings.generate.param_groups)
  warp = settings.render.make_warp(video.gt)
  constrain = extraction_plan.sharpness_constraint if settings.render.final_beta > 0 else None
  recon = reconstruction.make_reconstruction_term(model, settings.loss, settings.render,
                                                  settings.data, warp)
  diffusion_prior, prior_params, text = prior or build_prior(settings, target)
  csd = csd_term.make_csd_term(settings.csd, diffusion_prior, video.num_frames,
                               view_renderer(settings, model, video, warp))
  kinds = {RECONSTRUCTION: step_lib.StepKind(RECONSTRUCTION, (recon,), trainable=mask,
                                             constrain=constrain),
           CSD: step_lib.StepKind(CSD, (csd,), trainable=mask, constrain=constrain)}
  data = extraction_plan.make_data(video, {"params": prior_params, "text": text}, source=source,
                                   skeleton=skeleton)

  def initial_state(fit: bool) -> state_lib.TrainState:
    if not fit:
      return state_lib.to_device(state_lib.to_host(template))
    params = host_params
    if settings.generate.start == "bones":
      params, _ = start_from_bones(model, params, settings.generate, settings.train.seed)
    return extraction_plan.state_from_params(ext, jax.tree_util.tree_map(jnp.asarray, params),
                                             video.num_frames)

  intrinsics = np.asarray(video.intrinsics) if settings.render.use_video_intrinsics else None
  render_image = render_settings.make_image_renderer(
      model, settings.render, video.height, video.width, intrinsics,
      video.meta.get("background", (1.0, 1.0, 1.0)), warp)
  return loop.TrainingPlan(
      name="generate", model=model, num_frames=video.num_frames, data=data, tx=tx, kinds=kinds,
      schedule=make_schedule(settings, ext), initial_state=initial_state,
      render_image=render_image,
      reference_image=lambda frame: video.rgb[frame].astype(np.float32) / 255.0)

