"""The CSD gradient as pure JAX: prior -> latent gradient -> image gradient -> parameters.

    grad_phi L_CSD = E[ w(T) (eps_hat(I_t(phi); y, p, T) - eps) dI_t/dphi ]

I_t(phi) are the 4 views of frame t of the articulated model, rendered through
the backward warp into the canonical field (`csd.term`). Here:

1. `image_gradient` encodes the views (the encoder's `jax.vjp` is kept),
   noises the latents at ONE timestep shared by the views, drawn uniformly in
   [floor(1000 t_min), floor(1000 t_max)], asks the prior for eps
   (classifier-free guidance [cond; uncond] in one batch, MVDream-threestudio's
   order) and forms the latent gradient (`latent_gradient`):
   - mode "sds": (1 - abar_T) (eps_hat - eps);
   - mode "recon" (MVDream's default): z - x0_hat, x0_hat from eps_hat with its
     spread rescaled toward the conditional x0 (CFG-std rescale);
   divided by the number of views (threestudio's 0.5 sum(.)^2 / B) or by the
   latent size (reduction "mean"), then pulls it back through the encoder.
2. `pullback` pulls an image gradient back to the parameters with `jax.vjp`
   of (render o warp), at once or patch by patch (only one patch's samples and
   activations alive at a time, as AnimatableDreamer does above 88 px). The
   prior's Jacobian is never formed: everything from it is under stop_gradient.
3. `surrogate_loss` is the same gradient written as a loss term: a scalar whose
   value is the CSD pseudo-loss and whose gradient is exactly the pullback of
   (2), so CSD trains through the one update rule like any other term.
   `csd_gradient` (the explicit vjp) is kept as the reference it is tested
   against.

Pixel subsets (pixel-separable priors only, e.g. the pixel-space oracle):
with `cameras.pixels` (P of the R x R pixels per view, images a (V, 1, P, 3)
strip) the "sum" reduction is scaled by R^2 / P, so the gradient is an
unbiased estimate of the full views'.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import priors
from animdreamer_jax.csd.settings import CsdSettings
from animdreamer_jax.data import batching
from animdreamer_jax.prior import guidance as guidance_lib
from animdreamer_jax.prior import schedule as schedule_lib

Text = Optional[tuple[jnp.ndarray, jnp.ndarray]]
# render(params, cameras, uv (V, N, 2), alpha) -> (V, N, 3) colours over the background;
# alpha: the coarse-to-fine fraction (a traced scalar) or None (all bands).
RenderFn = Callable[[Any, cameras_lib.CsdCameras, jnp.ndarray, Any], jnp.ndarray]
# split(tree) -> tree: marks a batch to split over the step's devices (`StepContext.split`).
Split = Callable[[Any], Any]


def _unsplit(tree: Any) -> Any:
  return tree


def sample_timestep(key: jax.Array, t_min: jnp.ndarray, t_max: jnp.ndarray,
                    num_timesteps: int) -> jnp.ndarray:
  """One int32 timestep, uniform in [floor(T t_min), floor(T t_max)] (threestudio)."""
  lo = jnp.clip(jnp.floor(num_timesteps * t_min), 0, num_timesteps - 1).astype(jnp.int32)
  hi = jnp.clip(jnp.floor(num_timesteps * t_max), 0, num_timesteps - 1).astype(jnp.int32)
  hi = jnp.maximum(hi, lo)
  return jax.random.randint(key, (), lo, hi + 1)


def guided_eps(prior: priors.DiffusionPrior, prior_params: Any, noisy: jnp.ndarray,
               timesteps: jnp.ndarray, text: Text, cameras: cameras_lib.CsdCameras,
               guidance_scale: float, split: Split = _unsplit) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(guided eps, conditional eps), each like `noisy`.

  With a text-conditional prior and (cond, uncond) states, one batch
  [cond views; uncond views] (MVDream-threestudio's order) goes through the
  prior, split over the devices by `split` (on 2 devices: the conditional
  views on one, the unconditional on the other); otherwise one plain call
  (guidance is then the identity).
  """
  n = noisy.shape[0]
  if prior.conditional and text is not None:
    cond, uncond = text
    context = jnp.concatenate([jnp.broadcast_to(cond, (n,) + cond.shape),
                               jnp.broadcast_to(uncond, (n,) + uncond.shape)])
    both = prior.eps_fn(prior_params, *split((jnp.concatenate([noisy, noisy]),
                                              jnp.concatenate([timesteps, timesteps]), context,
                                              cameras_lib.repeat_views(cameras, 2))))
    eps_uncond, eps_cond = guidance_lib.split_guidance_batch(both, uncond_first=False)
    return guidance_lib.classifier_free_guidance(eps_uncond, eps_cond, guidance_scale), eps_cond
  context = None
  if text is not None:
    context = jnp.broadcast_to(text[0], (n,) + text[0].shape)
  eps = prior.eps_fn(prior_params, noisy, timesteps, context, cameras)
  return eps, eps


def latent_gradient(prior: priors.DiffusionPrior, prior_params: Any, latents: jnp.ndarray,
                    noise: jnp.ndarray, t: jnp.ndarray, cameras: cameras_lib.CsdCameras,
                    text: Text, settings: CsdSettings, split: Split = _unsplit) -> jnp.ndarray:
  """The CSD gradient w.r.t. the latents, before the reduction (deterministic).

  Args:
    prior, prior_params: the prior and its parameters.
    latents: (V, h, w, c) encoded views z.
    noise: (V, h, w, c) the injected noise eps.
    t: () int timestep shared by the views.
    cameras: CsdCameras of the V views.
    text: (cond, uncond) text states or None.
    settings: mode, guidance_scale, rescale.
    split: marks the prior's batch to split over the devices (`StepContext.split`).

  Returns:
    (V, h, w, c): mode "sds": (1 - abar_t) (eps_hat - eps); mode "recon":
    z - x0_hat (x0_hat CFG-std rescaled toward the conditional x0). No
    gradient flows.
  """
  latents = jax.lax.stop_gradient(latents)
  abar = jnp.asarray(prior.alphas_cumprod, jnp.float32)
  timesteps = jnp.full((latents.shape[0],), t, jnp.int32)
  noisy = schedule_lib.q_sample(latents, timesteps, noise, abar)
  eps_hat, eps_cond = guided_eps(prior, prior_params, noisy, timesteps, text, cameras,
                                 settings.guidance_scale, split)
  eps_hat, eps_cond = jax.lax.stop_gradient((eps_hat, eps_cond))
  if settings.mode == "sds":
    grad = (1.0 - abar[t]) * (eps_hat - noise)
  else:
    x0 = schedule_lib.predict_x0_from_eps(noisy, timesteps, eps_hat, abar)
    if settings.rescale > 0:
      x0_cond = schedule_lib.predict_x0_from_eps(noisy, timesteps, eps_cond, abar)
      x0 = guidance_lib.rescale_to_cond_std(x0, x0_cond, settings.rescale, cameras_lib.NUM_VIEWS)
    grad = latents - x0
  return jnp.nan_to_num(grad)


def image_gradient(prior: priors.DiffusionPrior, prior_params: Any, images: jnp.ndarray,
                   cameras: cameras_lib.CsdCameras, text: Text, key: jax.Array,
                   t_min: jnp.ndarray, t_max: jnp.ndarray, settings: CsdSettings,
                   split: Split = _unsplit) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """dL_CSD / d images for rendered views (no gradient flows through the result).

  Draws the timestep (shared by the views), the noise and the VAE posterior
  sample from `key`, then pulls `latent_gradient` / reduction back through
  the encoder's vjp.

  Args:
    prior, prior_params: the DiffusionPrior and its parameters.
    images: (V, H, W, 3) renders in [0, 1], or the (V, 1, P, 3) strip of `cameras.pixels`.
    cameras: CsdCameras of the V views.
    text: (cond, uncond) text states (L, D) each, or None.
    key: PRNG key (timestep, noise, posterior sample).
    t_min, t_max: step fractions (scalars).
    settings: mode, guidance, reduction, resolution.
    split: see latent_gradient.

  Returns:
    (image gradient like images, {"csd_loss" (the pseudo-loss 0.5 |g|^2 / norm
    whose gradient w.r.t. z is g / norm), "csd_t", "csd_grad_latent_rms"}).
  """
  images = jax.lax.stop_gradient(images)
  k_t, k_noise, k_post = jax.random.split(key, 3)
  latents, encoder_vjp = jax.vjp(lambda im: prior.encode_fn(prior_params, im, k_post), images)
  t = sample_timestep(k_t, t_min, t_max, prior.num_timesteps)
  noise = jax.random.normal(k_noise, latents.shape, latents.dtype)
  grad = latent_gradient(prior, prior_params, latents, noise, t, cameras, text, settings, split)
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
# Pixels of the views.


def image_pixels(resolution: int, num_views: int) -> jnp.ndarray:
  """(V, R*R, 2) pixel indices (u, v) of every view, row-major."""
  uv = batching.image_pixels(resolution, resolution)
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


def _patches(uv: jnp.ndarray, patches: int) -> jnp.ndarray:
  """(V, N, 2) -> (patches, V, N / patches, 2)."""
  num_views, count = uv.shape[:2]
  return uv.reshape(num_views, patches, count // patches, 2).swapaxes(0, 1)


def _render_patches(render: RenderFn, params: Any, cameras, uv_patches, alpha) -> jnp.ndarray:
  """Renders without gradient, one patch's samples alive at a time -> (V, N, 3)."""
  frozen = jax.lax.stop_gradient(params)
  colours = jax.lax.map(lambda uv_k: render(frozen, cameras, uv_k, alpha), uv_patches)
  return jax.lax.stop_gradient(colours).swapaxes(0, 1).reshape(
      uv_patches.shape[1], -1, colours.shape[-1])


def _patchwise_vjp(render: RenderFn, params: Any, cameras, uv_patches, alpha, cotangent) -> Any:
  """sum over patches of vjp(render patch)(cotangent patch): a lax.scan, one patch at a time."""
  cot_patches = cotangent.reshape(uv_patches.shape[1], uv_patches.shape[0], -1,
                                  cotangent.shape[-1]).swapaxes(0, 1)

  def body(acc, inputs):
    uv_k, cot_k = inputs
    _, vjp_k = jax.vjp(lambda p: render(p, cameras, uv_k, alpha), params)
    (g_k,) = vjp_k(cot_k)
    return jax.tree_util.tree_map(jnp.add, acc, g_k), None

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(body, zeros, (uv_patches, cot_patches))
  return grads


def pullback(render: RenderFn, params: Any, cameras: cameras_lib.CsdCameras,
             image_grad_fn: Callable[[jnp.ndarray], tuple[jnp.ndarray, dict]], resolution: int,
             patches: int = 0, alpha: Any = None) -> tuple[Any, jnp.ndarray, dict]:
  """Renders, asks `image_grad_fn` for dL/dimage, and pulls it back to `params` by jax.vjp.

  Args:
    render: see RenderFn.
    params: the (possibly partly stop_gradient-ed) parameters.
    cameras: the views (with `pixels`, only those pixels are rendered).
    image_grad_fn: images -> (dL/dimages, metrics).
    resolution: R.
    patches: > 1: render without gradient first, then vjp patch by patch.
    alpha: passed to render.

  Returns:
    (parameter gradient, images (V, R, R, 3) or (V, 1, P, 3), metrics).
  """
  uv, shape = view_pixels(cameras, resolution)
  if patches <= 1:
    colours, render_vjp = jax.vjp(lambda p: render(p, cameras, uv, alpha), params)
    images = colours.reshape(shape)
    image_grad, metrics = image_grad_fn(images)
    (grads,) = render_vjp(image_grad.reshape(colours.shape))
    return grads, images, metrics
  uv_patches = _patches(uv, patches)
  colours = _render_patches(render, params, cameras, uv_patches, alpha)
  images = colours.reshape(shape)
  image_grad, metrics = image_grad_fn(images)
  grads = _patchwise_vjp(render, params, cameras, uv_patches, alpha,
                         image_grad.reshape(colours.shape))
  return grads, images, metrics


def _zero_cotangent(x):
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, jax.dtypes.float0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _injected(render: RenderFn, params: Any, cameras, uv_patches, alpha, cotangent) -> jnp.ndarray:
  """0, whose gradient w.r.t. params is the patch-wise vjp of `cotangent` (see surrogate_loss)."""
  del render, params, cameras, uv_patches, alpha, cotangent
  return jnp.zeros((), jnp.float32)


def _injected_fwd(render, params, cameras, uv_patches, alpha, cotangent):
  return jnp.zeros((), jnp.float32), (params, cameras, uv_patches, alpha, cotangent)


def _injected_bwd(render, residuals, g):
  params, cameras, uv_patches, alpha, cotangent = residuals
  grads = _patchwise_vjp(render, params, cameras, uv_patches, alpha, cotangent)
  grads = jax.tree_util.tree_map(lambda x: g * x, grads)
  zeros = functools.partial(jax.tree_util.tree_map, _zero_cotangent)
  return grads, zeros(cameras), zeros(uv_patches), zeros(alpha), jnp.zeros_like(cotangent)


_injected.defvjp(_injected_fwd, _injected_bwd)


def surrogate_loss(render: RenderFn, params: Any, cameras: cameras_lib.CsdCameras,
                   image_grad_fn: Callable[[jnp.ndarray], tuple[jnp.ndarray, dict]],
                   resolution: int, patches: int = 0, alpha: Any = None
                   ) -> tuple[jnp.ndarray, jnp.ndarray, dict]:
  """CSD as a loss term: (scalar, images, metrics) with d scalar / d params = `pullback`'s gradient.

  The scalar's value is the CSD pseudo-loss `metrics["csd_loss"]` (what gets
  logged); its gradient is exactly the vjp of the prior's image gradient
  through (render o warp), injected as <stop_gradient(dL/dI), I(params)> (or,
  with patches, by a custom vjp that runs `pullback`'s patch-wise scan, so the
  patches are rendered without gradient once and back-propagated once).
  `render` must get every traced value through its arguments (with patches
  it runs inside a custom vjp).
  """
  uv, shape = view_pixels(cameras, resolution)
  if patches <= 1:
    colours = render(params, cameras, uv, alpha)
    images = colours.reshape(shape)
    image_grad, metrics = image_grad_fn(jax.lax.stop_gradient(images))
    inner = jnp.sum(jax.lax.stop_gradient(image_grad) * images)
    return metrics["csd_loss"] + (inner - jax.lax.stop_gradient(inner)), images, metrics
  uv_patches = _patches(uv, patches)
  colours = _render_patches(render, params, cameras, uv_patches, alpha)
  images = colours.reshape(shape)
  image_grad, metrics = image_grad_fn(images)
  injected = _injected(render, params, cameras, uv_patches, alpha,
                       jax.lax.stop_gradient(image_grad).reshape(colours.shape))
  return jax.lax.stop_gradient(metrics["csd_loss"]) + injected, images, metrics
