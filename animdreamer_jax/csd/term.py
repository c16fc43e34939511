"""CSD as a loss term: 4 views of a random frame, rendered through the warp, judged by the prior.

Each CSD step draws a video frame t and 4 orthogonal cameras around the
frame-t object (`cameras.sample_cameras`, framed by the canonical box the host
refreshes in `aux["aabb"]`), renders them through the backward warp of frame t
into the canonical field (white background), and returns the surrogate of
`gradient.surrogate_loss`: its gradient is exactly the prior's image gradient
pulled back through (render o warp) by `jax.vjp`. The term's weight is the
scheduled scalar "w_csd"; the timestep range arrives as "csd_t_min" /
"csd_t_max" (`settings.scalars`).

Which parameters CSD trains is not the term's business: the stage gives its
CSD step kind a `param_group_mask` (presets "canonical" = lab4d's CSD
default, "fg" = also the warp, skinning, bones and appearance), and the train
step freezes every other leaf before the term runs (their backward is never
built) and the update rule leaves them and their optimiser moments untouched.

The prior's parameters and text states are read from the step's data
(`ctx.data.prior`: {"params", "text"}), so they are jit arguments, never
constants baked into the compiled program.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import gradient
from animdreamer_jax.csd import priors
from animdreamer_jax.csd import settings as settings_lib
from animdreamer_jax.csd.settings import CsdSettings
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses.term import LossTerm, StepContext
from animdreamer_jax.model import articulated_model
from animdreamer_jax.render import compositing
from animdreamer_jax.render import warp_render

NAME = "csd"

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


def param_group_mask(params: Any, groups: str) -> Any:
  """Boolean pytree (Python bools): True on the leaves CSD trains.

  Args:
    params: the model's variables (with or without the "params" level).
    groups: a preset name ("canonical", "fg") or comma-separated parameter-path
      prefixes ("canonical/sdf_trunk,bones").
  """
  names = PARAM_GROUP_PRESETS.get(groups)
  if names is None:
    names = tuple(g.strip() for g in groups.split(",") if g.strip())
  if not names:
    raise UserError("config.csd.param_groups: no parameter group given")
  mask = articulated_model.group_mask(params, names)
  if not any(jax.tree_util.tree_leaves(mask)):
    raise UserError(f"config.csd.param_groups: {groups!r} selects no parameter; use "
                    f"{sorted(PARAM_GROUP_PRESETS)} or prefixes of the model's parameter paths")
  return mask


def make_view_renderer(model, options: warp_render.RenderOptions,
                       background: float = settings_lib.BACKGROUND) -> gradient.RenderFn:
  """render(params, cameras, uv, alpha) -> (V, P, 3) colours over a grey `background`.

  options: the render options (samples, density, warp); the eikonal and bone-mask
  terms are switched off. uv: (V, P, 2) pixel indices per view; alpha:
  coarse-to-fine fraction (a traced scalar) or None (all bands). Only SDF and
  colour reach the output (features, visibility and cycle terms are dead code
  under jit).
  """
  options = dataclasses.replace(options, eikonal_rays=0, gauss_mask=False)

  def render_view(params, w2c, intrinsics, near_far, frame, uv, alpha):
    out = warp_render.render_rays(
        model, params, uv, frame, None, near_far=near_far, options=options, alpha=alpha,
        cameras=warp_render.CameraOverride(obj2cam=w2c, intrinsics=intrinsics))
    return compositing.over_background(out["rgb"], out["opacity"], background)

  def render(params, cameras, uv, alpha=None):
    return jax.vmap(render_view, in_axes=(None, 0, 0, 0, None, 0, None))(
        params, cameras.w2c, cameras.intrinsics, cameras.near_far, cameras.frame, uv, alpha)

  return render


def object_bounds(aabb: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(centre (3,), size = largest side (), radius of the bounding sphere ()) of a (2, 3) box."""
  aabb = jnp.asarray(aabb, jnp.float32)
  extent = aabb[1] - aabb[0]
  return 0.5 * (aabb[0] + aabb[1]), jnp.max(extent), 0.5 * jnp.linalg.norm(extent)


def draw_cameras(key: jax.Array, aabb: jnp.ndarray, num_frames: int,
                 settings: CsdSettings) -> cameras_lib.CsdCameras:
  """A random frame t and its 4 orbit cameras around the canonical box.

  Framing: the object size is the box's largest side (lab4d) or the fixed
  `settings.object_size`; the cameras aim at the box centre. With
  `settings.pixels_per_view`, a random pixel subset of each view.
  """
  k_frame, k_cam, k_pixels = jax.random.split(key, 3)
  frame = jax.random.randint(k_frame, (), 0, num_frames)
  center, size, radius = object_bounds(aabb)
  if settings.object_size > 0:
    size = jnp.float32(settings.object_size)
    radius = jnp.maximum(radius, 0.5 * size)
  cameras = cameras_lib.sample_cameras(
      k_cam, resolution=settings.resolution, object_center=center, object_size=size,
      object_radius=settings_lib.RADIUS_MARGIN * radius, frame=frame,
      num_views=settings_lib.NUM_VIEWS, elevation_range=settings.elevation_range,
      fov_range=settings.fov_range, distance_range=settings.distance_range)
  if settings.pixels_per_view:
    cameras = cameras._replace(pixels=gradient.sample_pixels(
        k_pixels, settings.resolution, settings_lib.NUM_VIEWS, settings.pixels_per_view))
  return cameras


def alpha_for_step(settings: CsdSettings, scalars: dict) -> Optional[jnp.ndarray]:
  """The coarse-to-fine fraction of a CSD render: the reconstruction's, a fixed one, or None (all)."""
  if settings.alpha < 0:
    return scalars["alpha"]
  return None if settings.alpha >= 1.0 else jnp.float32(settings.alpha)


def check_prior(settings: CsdSettings, prior: priors.DiffusionPrior) -> None:
  if settings.pixels_per_view and not prior.pixel_separable:
    raise UserError(f"config.csd.pixels_per_view: the {prior.name} prior judges whole images "
                    "(a UNet); random pixel subsets need a pixel-separable prior (the oracle); "
                    "use 0")


def make_csd_term(settings: CsdSettings, prior: priors.DiffusionPrior, num_frames: int,
                  render: gradient.RenderFn) -> LossTerm:
  """The CSD loss term (see the module docstring).

  Args:
    settings: the csd section.
    prior: the DiffusionPrior; its params and text come from `ctx.data.prior`.
    num_frames: frames of the video (t is drawn uniformly).
    render: from `make_view_renderer`.

  Returns:
    LossTerm "csd": losses {"csd"}, metrics csd_loss, csd_t, csd_frame, ... .
  """
  check_prior(settings, prior)

  def fn(params, ctx: StepContext):
    k_cam, k_prior = jax.random.split(ctx.key)
    cameras = draw_cameras(k_cam, ctx.aux["aabb"], num_frames, settings)
    prior_inputs = ctx.data.prior or {}

    def image_grad_fn(images):
      # The views whole again: the prior sees images (a UNet, or the oracle's host renderer).
      return gradient.image_gradient(prior, prior_inputs.get("params"), ctx.gather(images),
                                     cameras, prior_inputs.get("text"), k_prior,
                                     ctx.scalars["csd_t_min"], ctx.scalars["csd_t_max"], settings,
                                     split=ctx.split)

    def render_split(p, cams, uv, alpha):  # on several devices, each renders its share of pixels
      return render(p, cams, ctx.split(uv, axis=1), alpha)

    loss, images, metrics = gradient.surrogate_loss(
        render_split, params, cameras, image_grad_fn, settings.resolution, settings.patches,
        alpha=alpha_for_step(settings, ctx.scalars))
    metrics = {**metrics, "csd_frame": cameras.frame, "csd_elevation": cameras.elevation,
               "csd_fov": cameras.fov, "csd_distance": cameras.distance,
               "csd_mean_image": jnp.mean(images)}
    return {NAME: loss}, metrics

  return LossTerm(NAME, fn, splits=split_sizes(settings, prior))


def split_sizes(settings: CsdSettings, prior: priors.DiffusionPrior) -> tuple[tuple[str, int], ...]:
  """The batch axes the term splits over the devices (see `LossTerm.splits`)."""
  if settings.pixels_per_view:
    pixels = ("config.csd.pixels_per_view", settings.pixels_per_view)
  else:
    per_patch = settings.resolution ** 2 // max(settings.patches, 1)
    pixels = ("config.csd.resolution^2 / config.csd.patches (pixels a view renders at once)",
              per_patch)
  if not prior.conditional:
    return (pixels,)
  return (pixels, ("the prior's batch (4 views x 2 for guidance)", 2 * settings_lib.NUM_VIEWS))


def csd_gradient(render: gradient.RenderFn, params: Any, mask: Any,
                 prior: priors.DiffusionPrior, prior_params: Any,
                 cameras: cameras_lib.CsdCameras, text, key: jax.Array, t_min, t_max,
                 settings: CsdSettings, alpha: Any = None) -> tuple[Any, jnp.ndarray, dict]:
  """The explicit-vjp form of the term's gradient (zero outside `mask`): the reference.

  Returns:
    (parameter gradient, images, metrics) of `gradient.pullback`.
  """
  frozen = jax.tree_util.tree_map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)

  def image_grad_fn(images):
    return gradient.image_gradient(prior, prior_params, images, cameras, text, key, t_min, t_max,
                                   settings)

  grads, images, metrics = gradient.pullback(render, frozen, cameras, image_grad_fn,
                                             settings.resolution, settings.patches, alpha)
  grads = jax.tree_util.tree_map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)
  return grads, images, metrics
