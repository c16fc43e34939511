"""The jitted, state-donating train step of the extraction stage, and its set-up.

`make_train_step` returns ONE `jax.jit` function

  step(state, data, scalars) -> (new_state, metrics)

with `state` donated. Everything scheduled on the host (learning rate,
coarse-to-fine alpha, every loss weight) arrives in `scalars`, a dict of
float32 scalars, so changing them never re-traces the step. Inside, the step
draws its batch from the device-resident video with the PRNG key
fold_in(state.key, state.step), renders it through the warp
(`render.warp_render.render_rays`), sums the weighted lab4d losses
(`train.losses`), and applies AdamW. A step whose loss or gradient is not
finite, or whose gradient norm exceeds `train.grad_spike_threshold`, leaves
params and optimiser state unchanged (`metrics["applied"] == 0`); the host
loop then rolls back (lab4d's rule).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.model import skinning
from animdreamer_jax.render import density as density_lib
from animdreamer_jax.render import warp_render
from animdreamer_jax.train import losses
from animdreamer_jax.train import optimizer as optimizer_lib
from animdreamer_jax.train import schedules
from animdreamer_jax.train import state as state_lib

DENSITY_FNS = {"volsdf": density_lib.volsdf_density, "neus": density_lib.neus_density}
# Every loss `compute_losses` knows (config.loss.weights may only name these).
KNOWN_LOSSES = ("mask", "rgb", "depth", "flow", "feature", "feat_reproj", "vis", "eikonal", "cycle",
                "skin_entropy", "delta_skin", "gauss_mask", "gauss_skin", "cam_prior")
MESH_FRAMES = ("object", "camera", "world")


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks values a typo could break late (after minutes of training).

  Raises:
    UserError naming the config key.
  """
  def require(ok: bool, key: str, what: str):
    if not ok:
      raise UserError(f"config.{key}: {what}")

  for name in config.loss.weights:
    require(name in KNOWN_LOSSES, f"loss.weights.{name}",
            f"unknown loss; known: {', '.join(KNOWN_LOSSES)}")
    require(float(config.loss.weights[name]) >= 0, f"loss.weights.{name}", "must be >= 0")
  require(config.render.density in DENSITY_FNS, "render.density",
          f"unknown density {config.render.density!r}; use one of {sorted(DENSITY_FNS)}")
  require(config.render.blend in ("dqs", "lbs"), "render.blend",
          f"unknown blending {config.render.blend!r}; use 'dqs' or 'lbs'")
  require(config.extract.mesh_frame in MESH_FRAMES, "extract.mesh_frame",
          f"unknown frame {config.extract.mesh_frame!r}; use one of {', '.join(MESH_FRAMES)}")
  for key in ("train.num_rounds", "train.iters_per_round", "data.pairs_per_batch",
              "data.pixels_per_frame", "render.num_samples", "render.eval_chunk",
              "train.mc_resolution", "extract.mc_resolution", "train.checkpoint_every_rounds",
              "train.keep_checkpoints", "train.log_every"):
    section, field = key.split(".")
    require(int(config[section][field]) >= 1, key, "must be >= 1")
  require(int(config.render.num_samples) >= 2, "render.num_samples", "must be >= 2")
  require(0.0 <= float(config.data.fg_fraction) <= 1.0, "data.fg_fraction", "must be in [0, 1]")
  require(float(config.optim.lr) > 0, "optim.lr", "must be > 0")


@flax.struct.dataclass
class TrainData:
  """Device-resident inputs of every step (not donated).

  Attributes:
    video: the batching.DeviceVideo.
    prior_w2c: (T, 4, 4) the video's cameras (object frame = world frame).
    intrinsics: (T, 4) the video's intrinsics (fx, fy, cx, cy).
  """
  video: batching.DeviceVideo
  prior_w2c: jnp.ndarray
  intrinsics: jnp.ndarray


def make_train_data(video, config: ml_collections.ConfigDict, source: str = "video") -> TrainData:
  """TrainData from a loaded `data.video.Video` (validates it; UserError on problems)."""
  del config
  device_video = batching.from_video(video, source=source)
  return TrainData(video=device_video, prior_w2c=jnp.asarray(video.w2c, jnp.float32),
                   intrinsics=jnp.asarray(video.intrinsics, jnp.float32))


def model_config(config: ml_collections.ConfigDict, num_frames: int,
                 image_size: tuple[int, int], feature_dim: int) -> articulated_model.ModelConfig:
  """The ModelConfig of config.model; frame count, image size and feature width follow the video."""
  values = dict(config.model)
  values["video_lengths"] = (int(num_frames),)
  values["image_size"] = tuple(int(s) for s in image_size)
  if values.get("feature_dim", 0) > 0:
    values["feature_dim"] = int(feature_dim)
  return articulated_model.ModelConfig.from_dict(values, where="config.model")


def make_model(config: ml_collections.ConfigDict, video) -> articulated_model.ArticulatedModel:
  return articulated_model.ArticulatedModel(
      model_config(config, video.num_frames, (video.height, video.width), video.feature_dim))


def train_resolution(config: ml_collections.ConfigDict, data: TrainData) -> float:
  """Pixels per unit of flow / re-projection loss (lab4d: 256; default max(H, W))."""
  res = float(config.loss.train_res)
  return res if res > 0 else float(max(data.video.height, data.video.width))


# ----------------------------------------------------------------------------
# Schedules.


def scheduled_scalars(config: ml_collections.ConfigDict, step: int, total: int) -> dict[str, np.float32]:
  """Host-side scalars for one step (float32): lr, alpha, the gradient-spike
  threshold and the "w_<loss>" weights."""
  cfg_o = config.optim
  warmup = int(round(cfg_o.warmup_fraction * total))
  lr = schedules.one_cycle_lr(step, total, cfg_o.lr, warmup, cfg_o.initial_div, cfg_o.final_div)
  sched = config.loss.schedules
  steps = lambda fraction: max(1, int(round(fraction * total)))
  alpha = (schedules.positional_encoding_alpha(step, sched.pos_alpha_start, 1.0,
                                               steps(sched.pos_alpha_fraction))
           if sched.pos_alpha_fraction > 0 else 1.0)
  flow_warmup = sched.get("flow_warmup_fraction", 0.0)
  factors = schedules.lab4d_loss_weight_factors(
      eikonal_steps=steps(sched.eikonal_fraction), cam_prior_steps=steps(sched.cam_prior_fraction),
      gauss_mask_steps=steps(sched.gauss_mask_fraction),
      flow_warmup_steps=steps(flow_warmup) if flow_warmup > 0 else 0)
  weights = schedules.loss_weights(dict(config.loss.weights), factors, step)
  out = {"lr": np.float32(lr), "alpha": np.float32(alpha),
         "grad_spike_threshold": np.float32(config.train.grad_spike_threshold),
         # Not in lab4d (0 = off): the root pose is held at its camera fit for
         # this fraction of training (the arc benchmark's early SDF collapse).
         "root_pose_scale": np.float32(
             step >= int(round(float(cfg_o.get("root_pose_warmup_fraction", 0.0)) * total)))}
  out.update({f"w_{k}": np.float32(v) for k, v in weights.items()})
  return out


def scale_group(updates, group: str, scale: jnp.ndarray):
  """Multiplies the updates of one top-level parameter group by `scale` (())."""
  inner = dict(updates["params"])
  inner[group] = jax.tree_util.tree_map(lambda u: u * jnp.asarray(scale, u.dtype), inner[group])
  return {**updates, "params": inner}


def enabled_losses(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Losses with a non-zero base weight (static: the step only builds these)."""
  return tuple(sorted(k for k, v in config.loss.weights.items() if v != 0))


# ----------------------------------------------------------------------------
# Losses.


def render_kwargs(config: ml_collections.ConfigDict) -> dict:
  density = config.render.density
  if density not in DENSITY_FNS:
    raise UserError(f"config.render.density: unknown density {density!r}; use one of {sorted(DENSITY_FNS)}")
  blend = config.render.blend
  if blend not in ("dqs", "lbs"):
    raise UserError(f"config.render.blend: unknown blending {blend!r}; use 'dqs' or 'lbs'")
  return dict(density_fn=DENSITY_FNS[density], warp=warp_render.SkinningWarp(blend=blend))


def compute_losses(model, params, batch: batching.Batch, data: TrainData, aux: dict,
                   scalars: dict, key: jax.Array, config: ml_collections.ConfigDict
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Weighted sum of the enabled losses for one batch.

  Returns:
    (total loss (), {loss name: unweighted value ()} plus a few diagnostics).
  """
  names = enabled_losses(config)
  key_match, key_points = jax.random.split(key)
  num_rays = batch.uv.shape[1]
  eik_rays = max(1, int(round(num_rays * config.render.eikonal_ray_fraction)))
  cameras = partner_cameras = None
  if config.train.use_video_intrinsics:
    cameras = warp_render.CameraOverride(intrinsics=data.intrinsics[batch.frame_index])
    partner_cameras = warp_render.CameraOverride(intrinsics=data.intrinsics[batch.partner_frame])
  options = warp_render.RenderOptions(
      num_samples=int(config.render.num_samples), eikonal_rays=eik_rays,
      gauss_mask="gauss_mask" in names, match_candidates=int(config.render.match_candidates),
      **render_kwargs(config))
  out = warp_render.render_rays(
      model, params, batch.uv, batch.frame_index, batch.partner_frame,
      near_far=aux["near_far"][batch.frame_index], options=options, alpha=scalars["alpha"],
      cameras=cameras, partner_cameras=partner_cameras,
      match_features=batch.feature if "feat_reproj" in names else None, match_key=key_match)
  fg = batch.mask
  train_res = train_resolution(config, data)
  terms: dict[str, jnp.ndarray] = {}
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
  if "gauss_skin" in names:
    terms["gauss_skin"] = gauss_skin_term(model, params, aux, key_points, config)
  if "cam_prior" in names:
    frames = jnp.arange(data.prior_w2c.shape[0], dtype=jnp.int32)
    root = model.apply(params, frames, method="root_pose")
    terms["cam_prior"] = losses.camera_prior_loss(root, data.prior_w2c)
  total = sum(scalars[f"w_{k}"] * v for k, v in terms.items())
  diagnostics = {"opacity_fg": jnp.sum(out["opacity"] * fg) / jnp.maximum(jnp.sum(fg), 1),
                 "opacity_bg": jnp.sum(out["opacity"] * (1 - fg)) / jnp.maximum(jnp.sum(1 - fg), 1)}
  return total, {**terms, **diagnostics}


def gauss_skin_term(model, params, aux: dict, key: jax.Array,
                    config: ml_collections.ConfigDict) -> jnp.ndarray:
  """lab4d reg_gauss_skin on random points of the (extended) canonical box."""
  aabb = aux["aabb"]
  center, half = (aabb[0] + aabb[1]) / 2, (aabb[1] - aabb[0]) / 2 * 1.25
  pts = center + half * jax.random.uniform(key, (int(config.loss.gauss_skin_points), 3),
                                           minval=-1.0, maxval=1.0)
  rest = model.apply(params, method="rest_bones")
  radius = model.config.bone_density_radius
  bone_density = jax.vmap(lambda x: skinning.gaussian_bone_density(x, rest, radius))(pts)
  sdf = model.apply(params, pts, method="sdf")
  beta = model.apply(params, method="beta")
  occupancy = density_lib.occupancy(sdf, beta, DENSITY_FNS[config.render.density])
  return losses.gauss_skin_consistency_loss(bone_density, occupancy)


# ----------------------------------------------------------------------------
# The step.


def make_optimizer(config: ml_collections.ConfigDict, params) -> optax.GradientTransformation:
  return optimizer_lib.make_optimizer_from_config(params, config.optim)


def make_train_step(config: ml_collections.ConfigDict, model, params_template):
  """Builds the jitted step(state, data, scalars) -> (state, metrics); state is donated.

  Args:
    config: the run config.
    model: the ArticulatedModel.
    params_template: the parameter tree (its structure labels the optimiser).
  """
  tx = make_optimizer(config, params_template)
  num_pairs = int(config.data.pairs_per_batch)
  pixels = int(config.data.pixels_per_frame)
  fg_fraction = float(config.data.fg_fraction)

  def step(state: state_lib.TrainState, data: TrainData, scalars: dict):
    key = jax.random.fold_in(state.key, state.step)
    key_batch, key_loss = jax.random.split(key)
    batch = batching.sample_batch(data.video, key_batch, num_pairs, pixels, fg_fraction)

    def loss_fn(params):
      return compute_losses(model, params, batch, data, state.aux, scalars, key_loss, config)

    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A threshold <= 0 disables the spike test (NaN/Inf is always refused).
    spike = scalars["grad_spike_threshold"]
    applied = finite & ((grad_norm <= spike) | (spike <= 0))
    # Zero a bad gradient before the optimiser sees it (NaN never enters Adam's moments).
    safe_grads = jax.tree_util.tree_map(lambda g: jnp.where(applied, g, 0.0), grads)
    updates, new_opt = tx.update(safe_grads, state.opt_state, state.params)
    updates = optimizer_lib.apply_learning_rate(updates, scalars["lr"])
    updates = scale_group(updates, "root_pose", scalars["root_pose_scale"])
    new_params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jnp.where(applied, new, old)
    params = jax.tree_util.tree_map(keep, new_params, state.params)
    opt_state = jax.tree_util.tree_map(keep, new_opt, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite.astype(jnp.int32),
               "applied": applied.astype(jnp.int32), **terms}
    return new_state, metrics

  return jax.jit(step, donate_argnums=(0,))


# ----------------------------------------------------------------------------
# Initialisation.


def initial_aux(config: ml_collections.ConfigDict, data: TrainData) -> dict:
  half = float(config.train.init_aabb_half)
  t = data.prior_w2c.shape[0]
  return {"aabb": np.array([[-half] * 3, [half] * 3], np.float32),
          "near_far": np.tile(np.array([[0.1, 10.0]], np.float32), (t, 1)),
          "proxy_points": np.zeros((int(config.train.proxy_points), 3), np.float32)}


def initial_state(config: ml_collections.ConfigDict, model, data: TrainData, video=None,
                  fit: bool = True) -> state_lib.TrainState:
  """PyTorch-style random init, then lab4d's mlp_init fits (model/init.py).

  The intrinsics are set from the video's first frame, the root-pose MLP is
  fitted to the video's cameras (at most train.init_root_steps Adam steps, or
  until the MSE is below 1e-4) and the SDF to a sphere of
  model.sphere_radius (train.init_sdf_steps steps). With fit=False only the
  structure matters (e.g. as a template to resume into).
  """
  del video
  seed = int(config.train.seed)
  params = init_lib.init_variables(model, seed)
  params = init_lib.set_intrinsics(model, params, np.asarray(data.intrinsics[0]))
  aux = initial_aux(config, data)
  if fit:
    lr = float(config.train.init_lr)
    root_steps = int(config.train.init_root_steps)
    if root_steps > 0:
      params, _ = init_lib.fit_root_pose(model, params, np.asarray(data.prior_w2c), learning_rate=lr,
                                         max_steps=root_steps, chunk=min(100, root_steps))
    if int(config.train.init_sdf_steps) > 0:
      params, _ = init_lib.fit_sphere(model, params, steps=int(config.train.init_sdf_steps),
                                      learning_rate=lr, seed=seed)
  params = jax.tree_util.tree_map(jnp.asarray, params)
  tx = make_optimizer(config, params)
  return state_lib.create(params, tx, aux, seed=seed + 1)


# ----------------------------------------------------------------------------
# Rendering whole images (TensorBoard, contact sheets).


def make_render_fn(config: ml_collections.ConfigDict, model, data: TrainData,
                   background=(1.0, 1.0, 1.0)):
  """fn(params, aux, frame) -> {"rgb" (H, W, 3) over the background, "mask" (H, W), "depth" (H, W)}.

  Renders in fixed-size chunks of rays with the evaluation sampling
  (render.eval_samples uniform + render.eval_importance_samples).
  """
  h, w = data.video.height, data.video.width
  uv_all = batching.image_pixels(h, w)
  chunk = int(config.render.eval_chunk)
  pad = (-uv_all.shape[0]) % chunk
  uv_all = np.concatenate([uv_all, np.zeros((pad, 2), np.float32)])
  options = warp_render.RenderOptions(
      num_samples=int(config.render.eval_samples),
      importance_samples=int(config.render.eval_importance_samples), eikonal_rays=0,
      gauss_mask=False, **render_kwargs(config))

  @jax.jit
  def render_chunk(params, near_far, intrinsics, frame, uv):
    out = warp_render.render_rays(
        model, params, uv, frame, None, near_far=near_far, options=options,
        cameras=warp_render.CameraOverride(intrinsics=intrinsics))
    return {"rgb": out["rgb"], "mask": out["opacity"], "depth": out["depth"]}

  background = np.asarray(background, np.float32)

  def render(params, aux, frame: int) -> dict[str, np.ndarray]:
    frame = int(frame)
    near_far = jnp.asarray(aux["near_far"])[frame]
    intrinsics = data.intrinsics[frame] if config.train.use_video_intrinsics else None
    if intrinsics is None:
      intrinsics = model.apply(params, jnp.int32(frame), method="intrinsics")
    pieces = [render_chunk(params, near_far, intrinsics, jnp.int32(frame), jnp.asarray(uv_all[i:i + chunk]))
              for i in range(0, uv_all.shape[0], chunk)]
    out = {k: np.concatenate([np.asarray(p[k]) for p in pieces])[:h * w] for k in pieces[0]}
    mask = out["mask"].reshape(h, w)
    rgb = out["rgb"].reshape(h, w, 3) * mask[..., None] + background * (1 - mask[..., None])
    return {"rgb": rgb, "mask": mask, "depth": out["depth"].reshape(h, w)}

  return render
