"""One Canonical Score Distillation step as pure JAX, and the jitted train step around it.

    grad_phi L_CSD = E[ w(T) (eps_hat(I_t(phi); y, p, T) - eps) dI_t/dphi ]

I_t(phi) renders frame t of the articulated model from 4 orbit cameras p
(`cameras.sample_cameras`) through the backward warp of frame t into the
canonical field. The step

1. renders the 4 views (`make_view_renderer`, white background);
2. encodes them (prior-dependent; `jax.vjp` keeps the encoder's pullback),
   noises the latents at ONE timestep shared by the views, drawn uniformly in
   [floor(1000 t_min), floor(1000 t_max)] (fractions annealed on the host,
   `timestep_fractions`);
3. asks the prior for eps (classifier-free guidance [cond; uncond] in one
   batch, MVDream-threestudio's order) and forms the latent gradient
   - mode "sds": w(T) (eps_hat - eps), w = 1 - abar_T (or 1);
   - mode "recon" (MVDream's default): z - x0_hat, with x0_hat from eps_hat
     and its spread rescaled toward the unguided x0 (CFG-std rescale);
   divided by the number of views (threestudio's 0.5 sum(.)^2 / B) or by the
   whole latent size (reduction "mean");
4. pulls it back to image space through the encoder's vjp, then to the
   parameters through the vjp of (render o warp). The prior's Jacobian is
   never formed (everything from the prior is under stop_gradient).

Memory options: `patches > 1` renders without gradient (patch by patch,
`lax.map`) and then back-propagates the image gradient patch by patch (a
`lax.scan` of per-patch vjps), so only one patch's samples and activations
live at a time, as AnimatableDreamer does above 88 px (it uses 8 patches);
`remat=True` renders the views one by one under `jax.checkpoint`.

Cost option (pixel-separable priors only, the pixel-space oracle):
`pixels_per_view = P > 0` renders P random pixels of each R x R view
(`cameras.pixels`, a (V, 1, P, 3) strip through the prior); with the "sum"
reduction scaled by R^2 / P the gradient is an unbiased estimate of the full
views', so a CPU run can afford views at the video's resolution.

Parameter groups: only leaves selected by `param_group_mask` (optax-style
boolean tree; presets "canonical" = lab4d's CSD default, "fg" = also the
warp, skinning, bones and appearance) receive CSD gradient. Frozen leaves
are stop_gradient-ed before rendering (their backward is never built) and
their gradient is exactly zero. As in PyTorch, where a parameter without a
gradient is skipped by the optimiser, the train step leaves the parameters
AND their optimiser moments untouched on every leaf that got no CSD
gradient (`apply_masked_update`), so interleaving CSD steps does not decay
the Adam moments of the reconstruction-only parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import config as config_lib
from animdreamer_jax.csd import prior_interface
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax.prior import guidance as guidance_lib
from animdreamer_jax.prior import schedule as schedule_lib
from animdreamer_jax.render import compositing
from animdreamer_jax.render import density as density_lib
from animdreamer_jax.render import warp_render

# fold_in tag of the CSD step's PRNG stream (distinct from the reconstruction step's).
CSD_KEY_TAG = 0xC5D

# Parameter-group presets (prefixes of parameter paths, see articulated_model).
PARAM_GROUP_PRESETS = {
    # lab4d / AnimatableDreamer default: canonical colour, RGB, SDF, visibility.
    "canonical": tuple(articulated_model.CSD_DEFAULT_GROUPS),
    # `gen3d_optim_new`: everything of the foreground but the camera (root pose,
    # intrinsics) and the feature field (frozen whenever CSD is on).
    "fg": tuple(articulated_model.CSD_DEFAULT_GROUPS) + (
        "appearance", "bones", "delta_mlp", "delta_time", "log_gauss", "logibeta",
        "bone_logibeta"),
}


@dataclasses.dataclass(frozen=True)
class CsdSettings:
  """Static settings of the CSD step (hashable); see csd.config for meanings."""
  resolution: int = 64
  num_samples: int = 64
  guidance_scale: float = 50.0
  rescale: float = 0.5
  mode: str = "recon"
  weighting: str = "sds"
  reduction: str = "sum"
  elevation_range: tuple[float, float] = (-10.0, 40.0)
  fov_range: tuple[float, float] = (40.0, 70.0)
  distance_range: tuple[float, float] = (0.42, 0.7)
  patches: int = 0
  remat: bool = False
  background: float = 1.0
  encoder_sample: bool = True
  # Coarse-to-fine fraction of the encodings on CSD steps: None = all bands;
  # follow_alpha: the reconstruction's current alpha (scalars["alpha"]), so
  # CSD never writes into bands the reconstruction steps cannot see.
  alpha: Optional[float] = None
  follow_alpha: bool = True
  # Extra importance samples per ray (coarse pass without gradient) and a
  # factor on the density's beta in CSD renders: a sharper render ties the
  # CSD views to the SDF's zero level (the mesh) rather than to a soft halo.
  importance_samples: int = 0
  beta_scale: float = 1.0
  fixed_frame: int = -1
  num_views: int = cameras_lib.NUM_VIEWS
  # > 0: the object size (framing, near/far) is this fixed length instead of
  # the largest side of the canonical box (lab4d); look_at "origin" aims the
  # cameras at the object-frame origin instead of the box centre.
  object_size: float = 0.0
  look_at: str = "aabb"
  # Near/far enclose the object's bounding sphere times this (posed limbs may
  # leave the canonical box).
  radius_margin: float = 1.25
  # > 0: render only this many random pixels of each view (pixel-separable
  # priors, e.g. the pixel-space oracle): an unbiased estimate of the full
  # view's gradient at a fraction of the cost, so views can be rendered at
  # the video's resolution on a CPU.
  pixels_per_view: int = 0

  def __post_init__(self):
    if self.mode not in config_lib.MODES:
      raise UserError(f"config.csd.mode: {self.mode!r} unknown; use one of "
                      f"{list(config_lib.MODES)}")
    if self.weighting not in config_lib.WEIGHTINGS:
      raise UserError(f"config.csd.weighting: {self.weighting!r} unknown; use one of "
                      f"{list(config_lib.WEIGHTINGS)}")
    if self.reduction not in config_lib.REDUCTIONS:
      raise UserError(f"config.csd.reduction: {self.reduction!r} unknown; use one of "
                      f"{list(config_lib.REDUCTIONS)}")
    if self.resolution < 2:
      raise UserError(f"config.csd.resolution: {self.resolution} must be >= 2")
    if self.importance_samples < 0:
      raise UserError(f"config.csd.importance_samples: {self.importance_samples} must be >= 0")
    if not self.beta_scale > 0:
      raise UserError(f"config.csd.beta_scale: {self.beta_scale} must be > 0")
    if self.num_samples < 2:
      raise UserError(f"config.csd.num_samples: {self.num_samples} must be >= 2")
    if not 0 <= self.pixels_per_view <= self.resolution * self.resolution:
      raise UserError(f"config.csd.pixels_per_view: {self.pixels_per_view} must be in [0, "
                      f"resolution^2 = {self.resolution * self.resolution}] (0: every pixel)")
    if self.patches > 1 and self.pixels_rendered % self.patches:
      raise UserError(f"config.csd.patches: {self.patches} must divide the pixels rendered per "
                      f"view, {self.pixels_rendered}")
    for name in ("elevation_range", "fov_range", "distance_range"):
      lo, hi = getattr(self, name)
      if not lo <= hi:
        raise UserError(f"config.csd.{name}: ({lo}, {hi}) is not an interval")
    if self.look_at not in ("aabb", "origin"):
      raise UserError(f"config.csd.look_at: {self.look_at!r} unknown; use 'aabb' or 'origin'")
    if self.object_size < 0:
      raise UserError(f"config.csd.object_size: {self.object_size} must be >= 0 (0: from the box)")
    if not (0 < self.fov_range[0] and self.fov_range[1] < 180):
      raise UserError(f"config.csd.fov_range: {self.fov_range} must lie in (0, 180)")

  @property
  def pixels_rendered(self) -> int:
    """Pixels rendered per view: pixels_per_view, or all R^2."""
    return self.pixels_per_view or self.resolution * self.resolution

  @classmethod
  def from_config(cls, csd: ml_collections.ConfigDict, render_samples: int = 64) -> "CsdSettings":
    """From a `csd_config()` section (num_samples 0 -> `render_samples`)."""
    alpha = float(csd.alpha)
    if alpha == 0 or alpha > 1:
      raise UserError(f"config.csd.alpha: {alpha} must be < 0 (follow the reconstruction) "
                      "or in (0, 1]")
    return cls(
        resolution=int(csd.resolution),
        num_samples=int(csd.num_samples) if int(csd.num_samples) > 0 else int(render_samples),
        guidance_scale=float(csd.guidance_scale), rescale=float(csd.rescale), mode=str(csd.mode),
        weighting=str(csd.weighting), reduction=str(csd.reduction),
        elevation_range=tuple(float(x) for x in csd.elevation_range),
        fov_range=tuple(float(x) for x in csd.fov_range),
        distance_range=tuple(float(x) for x in csd.distance_range),
        patches=int(csd.patches), remat=bool(csd.remat), background=float(csd.background),
        encoder_sample=bool(csd.encoder_sample),
        alpha=None if alpha >= 1.0 or alpha < 0 else alpha, follow_alpha=alpha < 0,
        importance_samples=int(csd.importance_samples), beta_scale=float(csd.beta_scale),
        fixed_frame=int(csd.fixed_frame), object_size=float(csd.object_size),
        look_at=str(csd.look_at), pixels_per_view=int(csd.pixels_per_view))


# ----------------------------------------------------------------------------
# Host-side schedule.


def timestep_fractions(step: int, total_steps: int, t_start: float = 0.98,
                       t_min_end: float = 0.02, t_max_end: float = 0.5,
                       anneal_steps: int = 8000, anneal_fraction: float = 0.0
                       ) -> tuple[float, float]:
  """(min, max) diffusion-step fractions at a training step (threestudio `C()`).

  Both start at `t_start` and move linearly to `t_min_end` / `t_max_end`
  over `anneal_steps` steps (or `anneal_fraction` x total_steps when > 0),
  then stay.
  """
  length = anneal_fraction * total_steps if anneal_fraction > 0 else anneal_steps
  progress = 1.0 if length <= 0 else min(max(step / length, 0.0), 1.0)
  return (t_start + (t_min_end - t_start) * progress,
          t_start + (t_max_end - t_start) * progress)


def csd_scalars(csd: ml_collections.ConfigDict, step: int,
                total_steps: int) -> dict[str, np.float32]:
  """Scalars the CSD train step takes: csd_t_min, csd_t_max, csd_weight (float32)."""
  t_min, t_max = timestep_fractions(step, total_steps, csd.t_start, csd.t_min_end, csd.t_max_end,
                                    int(csd.anneal_steps), float(csd.anneal_fraction))
  return {"csd_t_min": np.float32(t_min), "csd_t_max": np.float32(t_max),
          "csd_weight": np.float32(csd.weight)}


def prior_name(csd: ml_collections.ConfigDict) -> str:
  """config.csd.prior lower-cased; "none" also for None / "" (the override parser turns
  `--config.csd.prior=none` into None)."""
  name = csd.prior
  return "none" if name is None or str(name).lower() in ("", "none") else str(name).lower()


def is_csd_step(csd: ml_collections.ConfigDict, step: int, total_steps: int = 0) -> bool:
  """lab4d's alternation: iteration i is a CSD step when i % every_k == 0, from
  step start_fraction x total_steps on (0: from the start, as lab4d)."""
  if prior_name(csd) == "none" or int(csd.every_k) <= 0 or step % int(csd.every_k):
    return False
  start = float(csd.get("start_fraction", 0.0)) * total_steps
  return step >= start


# ----------------------------------------------------------------------------
# Parameter groups.


def param_group_mask(params: Any, groups: str | tuple[str, ...]) -> Any:
  """Boolean pytree (Python bools): True on leaves that receive CSD gradient.

  Args:
    params: the model's variables (with or without the "params" level).
    groups: a preset name ("canonical", "fg"), a comma-separated string of
      parameter-path prefixes ("canonical/sdf_trunk,bones"), or a tuple of them.
  """
  if isinstance(groups, str):
    names = PARAM_GROUP_PRESETS.get(groups)
    if names is None:
      names = tuple(g.strip() for g in groups.split(",") if g.strip())
  else:
    names = tuple(groups)
  if not names:
    raise UserError("config.csd.param_groups: no parameter group given")
  mask = articulated_model.group_mask(params, names)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise UserError(f"config.csd.param_groups: {groups!r} selects no parameter; use "
                    f"{sorted(PARAM_GROUP_PRESETS)} or prefixes of the model's parameter paths")
  return mask


def freeze_unmasked(params: Any, mask: Any) -> Any:
  """stop_gradient on leaves outside the mask (their backward is never built)."""
  return jax.tree_util.tree_map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)


def _key_names(path) -> tuple[str, ...]:
  out = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        out.append(str(getattr(entry, attr)))
        break
  return tuple(out)


def opt_state_mask(opt_state: Any, params: Any, leaf_mask: Any) -> Any:
  """Maps a per-parameter mask onto an optax state (True on non-parameter leaves).

  An optimiser-state leaf belongs to the parameter whose key path is a suffix
  of its own and whose shape it has (mu/nu of Adam under chain/multi_transform).
  """
  by_path = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    by_path[_key_names(path)] = np.shape(leaf)
  masks = {}
  for (path, _), m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                          jax.tree_util.tree_leaves(leaf_mask)):
    masks[_key_names(path)] = m

  def pick(path, leaf):
    names = _key_names(path)
    for start in range(len(names)):
      suffix = names[start:]
      if suffix in by_path and by_path[suffix] == np.shape(leaf):
        return masks[suffix]
    return True
  return jax.tree_util.tree_map_with_path(pick, opt_state)


def apply_masked_update(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any,
                        update_mask: Any, learning_rate: jnp.ndarray) -> tuple[Any, Any]:
  """One optimiser step that only touches leaves where `update_mask` is True.

  Args:
    tx: the unit-rate optax chain (train.optimizer); updates are multiplied by
      `learning_rate`.
    grads, opt_state, params: as for tx.update.
    update_mask: pytree of bool scalars (traced or Python) like params.

  Returns:
    (new params, new opt_state): unmasked leaves of both are the old ones.
  """
  updates, new_opt = tx.update(grads, opt_state, params)
  updates = jax.tree_util.tree_map(lambda u: u * jnp.asarray(learning_rate, u.dtype), updates)
  new_params = optax.apply_updates(params, updates)
  keep = lambda m, new, old: jnp.where(m, new, old)
  new_params = jax.tree_util.tree_map(keep, update_mask, new_params, params)
  state_mask = opt_state_mask(opt_state, params, update_mask)
  new_opt = jax.tree_util.tree_map(keep, state_mask, new_opt, opt_state)
  return new_params, new_opt


# ----------------------------------------------------------------------------
# Rendering the views.


RenderFn = Callable[[Any, cameras_lib.CsdCameras, jnp.ndarray], jnp.ndarray]


def make_view_renderer(model, settings: CsdSettings, *, warp=warp_render.SkinningWarp(),
                       density_fn=density_lib.volsdf_density) -> RenderFn:
  """render(params, cameras, uv, alpha=None) -> (V, P, 3) colours over the background.

  uv: (V, P, 2) pixel indices per view. alpha: coarse-to-fine fraction
  (traced scalar) overriding `settings.alpha`. Only SDF and colour are
  evaluated (features, visibility, cycle terms are not computed / dead code
  under jit).
  """
  if settings.beta_scale != 1.0:
    base_density, scale = density_fn, settings.beta_scale
    density_fn = lambda sdf, beta: base_density(sdf, beta * scale)  # noqa: E731

  def canonical_fn(model, params, x, appearance, alpha):
    out = model.apply(params, x, alpha=alpha, appearance=appearance, method="canonical")
    return {"sdf": out["sdf"], "rgb": out["rgb"]}
  options = warp_render.RenderOptions(
      num_samples=settings.num_samples, importance_samples=settings.importance_samples,
      density_fn=density_fn, warp=warp, canonical_fn=canonical_fn, eikonal_rays=0,
      gauss_mask=False)

  def render_view(params, w2c, intrinsics, near_far, frame, uv, alpha):
    out = warp_render.render_rays(
        model, params, uv, frame, None, near_far=near_far, options=options, alpha=alpha,
        cameras=warp_render.CameraOverride(obj2cam=w2c, intrinsics=intrinsics))
    return compositing.over_background(out["rgb"], out["opacity"], settings.background)

  def render(params, cameras, uv, alpha=None):
    alpha = settings.alpha if alpha is None else alpha
    if settings.remat:
      one = jax.checkpoint(lambda w2c, k, nf, uv_v: render_view(params, w2c, k, nf,
                                                                  cameras.frame, uv_v, alpha))
      return jax.lax.map(lambda a: one(*a), (cameras.w2c, cameras.intrinsics,
                                             cameras.near_far, uv))
    return jax.vmap(render_view, in_axes=(None, 0, 0, 0, None, 0, None))(
        params, cameras.w2c, cameras.intrinsics, cameras.near_far, cameras.frame, uv, alpha)

  return render


def image_pixels(resolution: int, num_views: int) -> jnp.ndarray:
  """(V, R*R, 2) pixel indices (u, v) of every view, row-major."""
  v, u = np.meshgrid(np.arange(resolution), np.arange(resolution), indexing="ij")
  uv = np.stack([u.reshape(-1), v.reshape(-1)], -1).astype(np.float32)
  return jnp.asarray(np.broadcast_to(uv, (num_views,) + uv.shape))


def sample_pixels(key: jax.Array, resolution: int, num_views: int, count: int) -> jnp.ndarray:
  """(V, count, 2) int32 pixel indices (u, v): `count` distinct pixels per view, uniform."""
  keys = jax.random.split(key, num_views)
  flat = jax.vmap(lambda k: jax.random.choice(k, resolution * resolution, (count,),
                                              replace=False))(keys)
  return jnp.stack([flat % resolution, flat // resolution], -1).astype(jnp.int32)


def view_pixels(cameras: cameras_lib.CsdCameras, resolution: int
                ) -> tuple[jnp.ndarray, tuple[int, ...]]:
  """(uv (V, N, 2) float32 pixels to render, image shape): the full R x R views, or the
  (V, 1, P, 3) strip of `cameras.pixels`."""
  num_views = cameras.w2c.shape[0]
  if cameras.pixels is None:
    return image_pixels(resolution, num_views), (num_views, resolution, resolution, 3)
  count = cameras.pixels.shape[1]
  return jnp.asarray(cameras.pixels, jnp.float32), (num_views, 1, count, 3)


# ----------------------------------------------------------------------------
# The image-space gradient from the prior.


def sample_timestep(key: jax.Array, t_min: jnp.ndarray, t_max: jnp.ndarray,
                    num_timesteps: int) -> jnp.ndarray:
  """One int32 timestep, uniform in [floor(T t_min), floor(T t_max)] (threestudio)."""
  lo = jnp.clip(jnp.floor(num_timesteps * t_min), 0, num_timesteps - 1).astype(jnp.int32)
  hi = jnp.clip(jnp.floor(num_timesteps * t_max), 0, num_timesteps - 1).astype(jnp.int32)
  hi = jnp.maximum(hi, lo)
  return jax.random.randint(key, (), lo, hi + 1)


def guided_eps(prior: prior_interface.DiffusionPrior, prior_params: Any, noisy: jnp.ndarray,
               timesteps: jnp.ndarray, text: Optional[tuple[jnp.ndarray, jnp.ndarray]],
               cameras: cameras_lib.CsdCameras, guidance_scale: float
               ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(guided eps, conditional eps), each like `noisy`.

  With a text-conditional prior and (cond, uncond) states, one batch
  [cond views; uncond views] (MVDream-threestudio's order) goes through the
  prior; otherwise one plain call (guidance is then the identity).
  """
  n = noisy.shape[0]
  if prior.conditional and text is not None:
    cond, uncond = text
    context = jnp.concatenate([jnp.broadcast_to(cond, (n,) + cond.shape),
                               jnp.broadcast_to(uncond, (n,) + uncond.shape)])
    both = prior.eps_fn(prior_params, jnp.concatenate([noisy, noisy]),
                        jnp.concatenate([timesteps, timesteps]), context,
                        cameras_lib.repeat_views(cameras, 2))
    eps_uncond, eps_cond = guidance_lib.split_guidance_batch(both, uncond_first=False)
    return guidance_lib.classifier_free_guidance(eps_uncond, eps_cond, guidance_scale), eps_cond
  context = None
  if text is not None:
    context = jnp.broadcast_to(text[0], (n,) + text[0].shape)
  eps = prior.eps_fn(prior_params, noisy, timesteps, context, cameras)
  return eps, eps


def latent_gradient(prior: prior_interface.DiffusionPrior, prior_params: Any, latents: jnp.ndarray,
                    noise: jnp.ndarray, t: jnp.ndarray, cameras: cameras_lib.CsdCameras,
                    text: Optional[tuple[jnp.ndarray, jnp.ndarray]], settings: CsdSettings
                    ) -> jnp.ndarray:
  """The CSD gradient w.r.t. the latents, before the reduction (deterministic).

  Args:
    prior, prior_params: the prior and its parameters.
    latents: (V, h, w, c) encoded views z.
    noise: (V, h, w, c) the injected noise eps.
    t: () int timestep shared by the views.
    cameras: CsdCameras of the V views.
    text: (cond, uncond) text states or None.
    settings: CsdSettings (mode, weighting, guidance, rescale).

  Returns:
    (V, h, w, c): mode "sds": w(t) (eps_hat - eps); mode "recon": z - x0_hat
    (x0_hat CFG-std rescaled toward the conditional x0). No gradient flows.
  """
  latents = jax.lax.stop_gradient(latents)
  abar = jnp.asarray(prior.alphas_cumprod, jnp.float32)
  timesteps = jnp.full((latents.shape[0],), t, jnp.int32)
  noisy = schedule_lib.q_sample(latents, timesteps, noise, abar)
  eps_hat, eps_cond = guided_eps(prior, prior_params, noisy, timesteps, text, cameras,
                                 settings.guidance_scale)
  eps_hat, eps_cond = jax.lax.stop_gradient((eps_hat, eps_cond))
  if settings.mode == "sds":
    weight = 1.0 - abar[t] if settings.weighting == "sds" else 1.0
    grad = weight * (eps_hat - noise)
  else:
    x0 = schedule_lib.predict_x0_from_eps(noisy, timesteps, eps_hat, abar)
    if settings.rescale > 0:
      x0_cond = schedule_lib.predict_x0_from_eps(noisy, timesteps, eps_cond, abar)
      x0 = guidance_lib.rescale_to_cond_std(x0, x0_cond, settings.rescale, settings.num_views)
    grad = latents - x0
  return jnp.nan_to_num(grad)


def image_gradient(prior: prior_interface.DiffusionPrior, prior_params: Any, images: jnp.ndarray,
                   cameras: cameras_lib.CsdCameras,
                   text: Optional[tuple[jnp.ndarray, jnp.ndarray]], key: jax.Array,
                   t_min: jnp.ndarray, t_max: jnp.ndarray, settings: CsdSettings
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """dL_CSD / d images for rendered views (no gradient flows through the result).

  Draws the timestep (shared by the views), the noise and the VAE posterior
  sample from `key`, then pulls `latent_gradient` / reduction back through
  the encoder's vjp.

  With a pixel subset (`cameras.pixels`, P of the R x R pixels per view,
  images a (V, 1, P, 3) strip) the "sum" reduction is scaled by R^2 / P, so
  the gradient is an unbiased estimate of the full views' ("mean" is the
  subset's own mean, unbiased as it is).

  Args:
    prior: the DiffusionPrior.
    prior_params: its parameters.
    images: (V, H, W, 3) renders in [0, 1] (already at the prior's size).
    cameras: CsdCameras of the V views.
    text: (cond, uncond) text states (L, D) each, or None.
    key: PRNG key (timestep, noise, posterior sample).
    t_min, t_max: step fractions (scalars).
    settings: CsdSettings.

  Returns:
    (V, H, W, 3) image gradient, and {"csd_loss" (the pseudo-loss
    0.5 |g|^2 / norm whose gradient w.r.t. z is g / norm), "csd_t",
    "csd_grad_latent_rms"}.
  """
  images = jax.lax.stop_gradient(images)
  k_t, k_noise, k_post = jax.random.split(key, 3)
  post_key = k_post if settings.encoder_sample else None
  latents, encoder_vjp = jax.vjp(lambda im: prior.encode_fn(prior_params, im, post_key), images)
  t = sample_timestep(k_t, t_min, t_max, prior.num_timesteps)
  noise = jax.random.normal(k_noise, latents.shape, latents.dtype)
  grad = latent_gradient(prior, prior_params, latents, noise, t, cameras, text, settings)
  if settings.reduction == "sum":
    norm = float(latents.shape[0])
    if cameras.pixels is not None:  # the subset stands for all R^2 pixels of each view
      norm *= cameras.pixels.shape[1] / float(settings.resolution * settings.resolution)
  else:
    norm = float(latents.size)
  (image_grad,) = encoder_vjp(grad / norm)
  metrics = {"csd_loss": 0.5 * jnp.sum(grad * grad) / norm, "csd_t": t,
             "csd_grad_latent_rms": jnp.sqrt(jnp.mean(grad * grad))}
  return jax.lax.stop_gradient(image_grad), metrics


# ----------------------------------------------------------------------------
# The parameter gradient.


def pullback(render: RenderFn, params: Any, cameras: cameras_lib.CsdCameras,
             image_grad_fn: Callable[[jnp.ndarray], tuple[jnp.ndarray, dict]], resolution: int,
             patches: int = 0) -> tuple[Any, jnp.ndarray, dict]:
  """Renders, asks `image_grad_fn` for dL/dimage, and pulls it back to `params`.

  Args:
    render: from `make_view_renderer`.
    params: the (possibly partly stop_gradient-ed) parameters.
    cameras: the views.
    image_grad_fn: images (V, R, R, 3) -> (dL/dimages, metrics).
    resolution: R.
    patches: > 1: render without gradient first, then vjp patch by patch.

  With `cameras.pixels` only those pixels are rendered: images are then the
  (V, 1, P, 3) strip.

  Returns:
    (parameter gradient, images (V, R, R, 3) or (V, 1, P, 3), metrics).
  """
  num_views = cameras.w2c.shape[0]
  uv, shape = view_pixels(cameras, resolution)
  if patches <= 1:
    colours, render_vjp = jax.vjp(lambda p: render(p, cameras, uv), params)
    images = colours.reshape(shape)
    image_grad, metrics = image_grad_fn(images)
    (grads,) = render_vjp(image_grad.reshape(colours.shape))
    return grads, images, metrics

  per_patch = uv.shape[1] // patches
  uv_patches = uv.reshape(num_views, patches, per_patch, 2).swapaxes(0, 1)  # (P, V, n, 2)
  # The no-gradient render also goes patch by patch (one patch's samples live at a time).
  frozen = jax.lax.stop_gradient(params)
  colours = jax.lax.map(lambda uv_k: render(frozen, cameras, uv_k), uv_patches)
  images = jax.lax.stop_gradient(colours).swapaxes(0, 1).reshape(shape)
  image_grad, metrics = image_grad_fn(images)
  grad_patches = image_grad.reshape(num_views, patches, per_patch, 3).swapaxes(0, 1)

  def body(acc, inputs):
    uv_k, cot_k = inputs
    _, vjp_k = jax.vjp(lambda p: render(p, cameras, uv_k), params)
    (g_k,) = vjp_k(cot_k)
    return jax.tree_util.tree_map(jnp.add, acc, g_k), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(body, zeros, (uv_patches, grad_patches))
  return grads, images, metrics


def csd_gradient(render: RenderFn, params: Any, mask: Any, prior: prior_interface.DiffusionPrior,
                 prior_params: Any, cameras: cameras_lib.CsdCameras,
                 text: Optional[tuple[jnp.ndarray, jnp.ndarray]], key: jax.Array,
                 t_min: jnp.ndarray, t_max: jnp.ndarray, settings: CsdSettings
                 ) -> tuple[Any, jnp.ndarray, dict]:
  """CSD gradient w.r.t. `params` (zero outside `mask`), the renders and metrics.

  Args:
    render: from `make_view_renderer`.
    params: model variables.
    mask: `param_group_mask(params, ...)` (Python bools).
    prior, prior_params, text: the prior, its parameters, (cond, uncond) or None.
    cameras: CsdCameras.
    key: PRNG key of the prior's randomness.
    t_min, t_max: step fractions.
    settings: CsdSettings.
  """
  image_grad_fn = functools.partial(image_gradient, prior, prior_params, cameras=cameras, text=text,
                                    key=key, t_min=t_min, t_max=t_max, settings=settings)
  def masked_render(p, cams, uv):
    return render(freeze_unmasked(p, mask), cams, uv)

  grads, images, metrics = pullback(masked_render, params, cameras,
                                    lambda im: image_grad_fn(images=im), settings.resolution,
                                    settings.patches)
  grads = jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
  return grads, images, metrics


def object_bounds(aabb: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(centre (3,), size = largest side (), radius of the bounding sphere ()) of a (2, 3) box."""
  aabb = jnp.asarray(aabb, jnp.float32)
  extent = aabb[1] - aabb[0]
  return 0.5 * (aabb[0] + aabb[1]), jnp.max(extent), 0.5 * jnp.linalg.norm(extent)


def draw_cameras(model, params, key: jax.Array, aabb: jnp.ndarray, num_frames: int,
                 settings: CsdSettings) -> cameras_lib.CsdCameras:
  """Frame t (random or fixed) and its 4 orbit cameras around the canonical box.

  Framing: the object size is the box's largest side (lab4d) or the fixed
  `settings.object_size`; the cameras aim at the box centre or the origin.
  """
  k_frame, k_cam = jax.random.split(key)
  if settings.fixed_frame >= 0:
    frame = jnp.int32(min(settings.fixed_frame, num_frames - 1))
  else:
    frame = jax.random.randint(k_frame, (), 0, num_frames)
  root = jax.lax.stop_gradient(model.apply(params, frame, method="root_pose"))
  center, size, radius = object_bounds(aabb)
  if settings.object_size > 0:
    size = jnp.float32(settings.object_size)
    radius = jnp.maximum(radius, 0.5 * size)
  if settings.look_at == "origin":
    center = jnp.zeros(3, jnp.float32)
  return cameras_lib.sample_cameras(
      k_cam, resolution=settings.resolution, object_center=center, object_size=size,
      object_radius=settings.radius_margin * radius, frame=frame, root_pose=root,
      num_views=settings.num_views, elevation_range=settings.elevation_range,
      fov_range=settings.fov_range, distance_range=settings.distance_range)


# ----------------------------------------------------------------------------
# The train step (same TrainState and optimiser as train/step.py).


def render_settings(config: ml_collections.ConfigDict) -> dict:
  """density_fn and warp from config.render (the reconstruction's choices)."""
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  return step_lib.render_kwargs(config)


def make_csd_train_step(config: ml_collections.ConfigDict, model, params_template: Any,
                        prior: prior_interface.DiffusionPrior, num_frames: int,
                        prior_params: Any = None,
                        text: Optional[tuple[jnp.ndarray, jnp.ndarray]] = None,
                        tx: Optional[optax.GradientTransformation] = None):
  """The jitted CSD step, a drop-in for train/step.py's step: fn(state, data, scalars).

  `state` (train.state.TrainState) is donated; `data` is unused (kept for the
  signature); `scalars` must hold "lr" and `csd_scalars(...)`'s keys, and
  "alpha" (the reconstruction's coarse-to-fine fraction) when the settings
  follow it. The
  prior parameters and text states are jit ARGUMENTS (bound here), never
  constants baked into the program.

  Returns:
    fn(state, data, scalars) -> (new state, metrics) with metrics "loss"
    (weight x csd_loss), "grad_norm", "finite", "applied" and csd_* values.
  """
  settings = CsdSettings.from_config(config.csd, int(config.render.num_samples))
  if tx is None:
    from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
    tx = step_lib.make_optimizer(config, params_template)
  if settings.pixels_per_view and not prior.pixel_separable:
    raise UserError(f"config.csd.pixels_per_view: the {prior.name} prior judges whole images "
                    "(a UNet or pooled latents); random pixel subsets need a pixel-separable "
                    "prior (the oracle with oracle_downsample=1); use 0")
  mask = param_group_mask(params_template, config.csd.param_groups)
  render = make_view_renderer(model, settings, **render_settings(config))

  def step(state, scalars, prior_params, text):
    key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), CSD_KEY_TAG)
    k_cam, k_prior = jax.random.split(key)
    cameras = draw_cameras(model, state.params, k_cam, state.aux["aabb"], num_frames, settings)
    if settings.pixels_per_view:
      cameras = cameras._replace(pixels=sample_pixels(
          jax.random.fold_in(key, 1), settings.resolution, settings.num_views,
          settings.pixels_per_view))
    alpha = scalars.get("alpha") if settings.follow_alpha else None
    step_render = functools.partial(render, alpha=alpha)
    grads, images, metrics = csd_gradient(step_render, state.params, mask, prior, prior_params, cameras,
                                          text, k_prior, scalars["csd_t_min"],
                                          scalars["csd_t_max"], settings)
    weight = scalars["csd_weight"]
    grads = jax.tree_util.tree_map(lambda g: g * weight, grads)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(grad_norm)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, 0.0), grads)
    # PyTorch semantics: leaves without gradient are not touched by the optimiser.
    update_mask = jax.tree_util.tree_map(
        lambda g, m: jnp.logical_and(finite, jnp.any(g != 0)) if m else jnp.bool_(False),
        grads, mask)
    params, opt_state = apply_masked_update(tx, grads, state.opt_state, state.params,
                                            update_mask, scalars["lr"])
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {**metrics, "loss": weight * metrics["csd_loss"], "grad_norm": grad_norm,
               "finite": finite.astype(jnp.int32), "applied": finite.astype(jnp.int32),
               "csd_frame": cameras.frame, "csd_elevation": cameras.elevation,
               "csd_fov": cameras.fov, "csd_distance": cameras.distance,
               "csd_mean_image": jnp.mean(images)}
    return new_state, metrics

  jitted = jax.jit(step, donate_argnums=(0,))

  def run(state, data, scalars):
    del data
    return jitted(state, scalars, prior_params, text)

  run.settings = settings  # type: ignore[attr-defined]
  run.mask = mask  # type: ignore[attr-defined]
  return run
