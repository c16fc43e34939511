"""The extraction stage as a training plan: the model, its data, loss terms and schedule.

Two kinds of step share one trainer and one update rule:
- "reconstruction" (`losses.reconstruction`): a batch of video rays through the
  warp, lab4d's losses; trains every parameter;
- "csd" (`csd.term`, only with `csd.prior` set): 4 views of a random frame
  judged by the diffusion prior; trains the `csd.param_groups` only.
Iteration i is a CSD step when i % csd.every_k == 0 (lab4d `gen3d_freq`).
The schedule gives every step the same scalar names (learning rate, spike
threshold, the root-pose hold, the reconstruction weights and alpha, and the
CSD weight and timestep range), so neither program is ever re-traced; CSD
steps get no spike test (only non-finite steps are refused).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.csd import priors as priors_lib
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.csd import term as csd_term
from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses import reconstruction
from animdreamer_jax.losses import skeleton_constraints
from animdreamer_jax.model import articulated_model
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.render import settings as render_settings
from animdreamer_jax.stages.extraction.settings import ExtractionSettings
from animdreamer_jax.train import loop
from animdreamer_jax.train import optimizer as optimizer_lib
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib
from animdreamer_jax.train import update

RECONSTRUCTION = "reconstruction"
CSD = "csd"


@flax.struct.dataclass
class ExtractionData:
  """Device-resident inputs of every step (not donated).

  Attributes:
    video: the batching.DeviceVideo.
    prior_w2c: (T, 4, 4) the video's cameras (object frame = world frame).
    intrinsics: (T, 4) the video's intrinsics (fx, fy, cx, cy).
    prior: the CSD prior's {"params", "text"} (jit arguments, not constants), or None.
    skeleton: the constraints of `loss.skeleton_file` (jit arguments), or None when the
      skeleton loss is off.
  """
  video: batching.DeviceVideo
  prior_w2c: jnp.ndarray
  intrinsics: jnp.ndarray
  prior: Optional[dict] = None
  skeleton: Optional[skeleton_constraints.SkeletonConstraints] = None


def model_config(settings: ExtractionSettings, num_frames: int, image_size: tuple[int, int],
                 feature_dim: int) -> articulated_model.ModelConfig:
  """The model section with the frame count, image size and feature width of the video."""
  model = settings.model
  return dataclasses.replace(
      model, video_lengths=(int(num_frames),), image_size=tuple(int(s) for s in image_size),
      feature_dim=int(feature_dim) if model.feature_dim > 0 else 0)


def make_model(settings: ExtractionSettings, video) -> articulated_model.ArticulatedModel:
  return articulated_model.ArticulatedModel(
      model_config(settings, video.num_frames, (video.height, video.width), video.feature_dim))


def initial_aux(settings: ExtractionSettings, num_frames: int) -> dict:
  """Placeholders of the host-refreshed arrays (replaced by the first proxy mesh)."""
  half = settings.init.aabb_half
  return {"aabb": np.array([[-half] * 3, [half] * 3], np.float32),
          "near_far": np.tile(np.array([[0.1, 10.0]], np.float32), (num_frames, 1)),
          "proxy_points": np.zeros((settings.train.proxy_points, 3), np.float32)}


def initial_state(settings: ExtractionSettings, model, video, fit: bool = True
                  ) -> state_lib.TrainState:
  """PyTorch-style random init, then lab4d's mlp_init fits (model/init.py).

  The intrinsics are set from the video's first frame, the root-pose MLP is
  fitted to the video's cameras (at most init.root_steps Adam steps, or until
  the MSE is below 1e-4) and the SDF to a sphere of model.sphere_radius
  (init.sdf_steps steps). With fit=False only the structure matters (a
  template to restore a checkpoint into).
  """
  seed = settings.train.seed
  params = init_lib.init_variables(model, seed)
  params = init_lib.set_intrinsics(model, params, np.asarray(video.intrinsics[0]))
  if fit:
    cfg = settings.init
    if cfg.root_steps > 0:
      params, _ = init_lib.fit_root_pose(model, params, np.asarray(video.w2c), learning_rate=cfg.lr,
                                         max_steps=cfg.root_steps, chunk=min(100, cfg.root_steps))
    if cfg.sdf_steps > 0:
      params, _ = init_lib.fit_sphere(model, params, steps=cfg.sdf_steps, learning_rate=cfg.lr,
                                      seed=seed)
    if cfg.bones == "ground_truth":
      params = init_lib.place_bones(model, params, ground_truth_bone_centres(video,
                                                                             model.config.num_bones))
  return state_from_params(settings, jax.tree_util.tree_map(jnp.asarray, params), video.num_frames)


def ground_truth_bone_centres(video, num_bones: int) -> np.ndarray:
  """(B, 3) bone centres from the video's ground-truth rig (`init.bones="ground_truth"`)."""
  gt = video.gt
  skin = None if gt is None else getattr(gt.meshes, "skin_weights", None)
  if skin is None:
    raise UserError("config.init.bones=ground_truth: needs a video whose gt/meshes.npz has "
                    "skin weights (a rigged asset rendered by `animdreamer synth`)")
  return init_lib.skin_centroids(gt.rest_vertices, skin, num_bones)


def state_from_params(settings: ExtractionSettings, params, num_frames: int
                      ) -> state_lib.TrainState:
  """A step-0 train state around `params`: fresh optimiser moments and placeholder aux."""
  tx = optimizer_lib.make_optimizer(params, settings.optim)
  return state_lib.create(params, tx, initial_aux(settings, num_frames), seed=settings.train.seed + 1)


def make_data(video, prior_inputs: Optional[dict] = None, source: str = "video",
              skeleton: Optional[skeleton_constraints.SkeletonConstraints] = None
              ) -> ExtractionData:
  """ExtractionData from a loaded `data.video.Video` (validates it; UserError on problems)."""
  return ExtractionData(video=batching.from_video(video, source=source),
                        prior_w2c=jnp.asarray(video.w2c, jnp.float32),
                        intrinsics=jnp.asarray(video.intrinsics, jnp.float32), prior=prior_inputs,
                        skeleton=skeleton)


def sharpness_constraint(params, scalars: dict):
  """After every update: the density's beta under the schedule's cap (`render.final_beta`)."""
  return articulated_model.cap_beta(params, scalars["max_beta"])


def make_schedule(settings: ExtractionSettings):
  """(step, total) -> (kind, scalars) of the extraction stage (see the module docstring)."""
  csd = settings.csd

  def schedule(step: int, total: int) -> tuple[str, dict[str, Any]]:
    kind = CSD if csd_settings.is_csd_step(csd, step) else RECONSTRUCTION
    hold = int(round(settings.optim.root_pose_warmup_fraction * total))
    # lab4d refuses (and rolls back) a reconstruction step whose gradient norm spikes;
    # CSD steps are refused only when non-finite (0 = no spike test): AnimatableDreamer's
    # check uses a threshold of 5e4 there, and a diffusion prior's gradient is large by nature.
    spike = settings.train.grad_spike_threshold if kind == RECONSTRUCTION else 0.0
    scalars = {"lr": np.float32(settings.optim.learning_rate(step, total)),
               "grad_spike_threshold": np.float32(spike),
               # The root pose is held at its camera fit for the first steps (0 = off).
               update.UPDATE_SCALE_PREFIX + "root_pose": np.float32(step >= hold),
               **reconstruction.scalars(settings.loss, step, total)}
    if settings.render.final_beta > 0:
      scalars["max_beta"] = settings.render.max_beta(settings.model.init_beta, step, total)
    if csd.enabled:
      scalars.update(csd_settings.scalars(csd, step, total))
    return kind, scalars

  return schedule


def build_plan(settings: ExtractionSettings, video, source: str = "video",
               prior: Optional[tuple] = None) -> loop.TrainingPlan:
  """The TrainingPlan of an extraction on `video`.

  Args:
    settings: the extraction settings.
    video: a loaded data.video.Video.
    source: the video's path, for messages.
    prior: (DiffusionPrior, prior_params, text) to use instead of building
      `settings.csd.prior` (tests, custom priors); None: built from the settings.
  """
  model = make_model(settings, video)
  skeleton = reconstruction.load_skeleton_constraints(settings.loss, model.config.num_bones)
  template = initial_state(settings, model, video, fit=False)
  tx = optimizer_lib.make_optimizer(template.params, settings.optim)
  warp = settings.render.make_warp(video.gt)
  terms = (reconstruction.make_reconstruction_term(model, settings.loss, settings.render,
                                                   settings.data, warp),)
  constrain = sharpness_constraint if settings.render.final_beta > 0 else None
  kinds = {RECONSTRUCTION: step_lib.StepKind(RECONSTRUCTION, terms, constrain=constrain)}
  prior_inputs = None
  if settings.csd.enabled:
    diffusion_prior, prior_params, text = prior or priors_lib.build_prior(settings.csd, video)
    renderer = csd_term.make_view_renderer(model, settings.render.options(
        warp, num_samples=settings.csd.samples_per_ray(settings.render.num_samples)))
    term = csd_term.make_csd_term(settings.csd, diffusion_prior, video.num_frames, renderer)
    mask = csd_term.param_group_mask(template.params, settings.csd.param_groups)
    kinds[CSD] = step_lib.StepKind(CSD, (term,), trainable=mask, constrain=constrain)
    prior_inputs = {"params": prior_params, "text": text}
  intrinsics = np.asarray(video.intrinsics) if settings.render.use_video_intrinsics else None
  render_image = render_settings.make_image_renderer(
      model, settings.render, video.height, video.width, intrinsics,
      video.meta.get("background", (1.0, 1.0, 1.0)), warp)
  return loop.TrainingPlan(
      name="extract", model=model, num_frames=video.num_frames,
      data=make_data(video, prior_inputs, source=source, skeleton=skeleton), tx=tx, kinds=kinds,
      schedule=make_schedule(settings),
      # fit=False is the structure (and a random init): one copy per call of the one drawn here.
      initial_state=lambda fit: (initial_state(settings, model, video, fit=True) if fit
                                 else state_lib.to_device(state_lib.to_host(template))),
      render_image=render_image,
      reference_image=lambda frame: video.rgb[frame].astype(np.float32) / 255.0,
      recovery_scalars=({update.UPDATE_SCALE_PREFIX + "root_pose": np.float32(0.0)}
                        if settings.optim.hold_root_pose_without_surface else None))
