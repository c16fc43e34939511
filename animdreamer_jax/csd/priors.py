"""The swappable diffusion prior of CSD: one interface, three kinds of prior.

A `DiffusionPrior` bundles pure functions of explicit parameters:

  eps_fn(prior_params, noisy, t, text_embedding, cameras) -> eps
      noisy (N, h, w, c) latents, t (N,) int timesteps, text_embedding
      (N, L, D) or None, cameras a `cameras.CsdCameras` with N views (views of
      one object contiguous); returns the predicted noise (N, h, w, c).
  encode_fn(prior_params, images, key) -> latents
      images (N, H, W, 3) in [0, 1] -> (N, h, w, c); differentiable in images
      (CSD back-propagates the latent gradient through it); key: the
      posterior sample's PRNG key (priors without a posterior ignore it).

plus the noise schedule `alphas_cumprod` (T,), the size renders are resized
to before `encode_fn` (None: as rendered) and whether eps depends on the
text (classifier-free guidance is skipped when it does not).

Priors:
- `mvdream_prior`: the Flax MVDream UNet (`prior.unet`) with the SD VAE
  encoder (`prior.vae`) in front, latent space (prior_params = {"unet",
  "vae"}); `load_mvdream` reads a converted folder and encodes the prompt.
- `oracle_prior`: the exact optimal denoiser of a point mass at the ground
  truth, eps = (x_t - sqrt(abar_t) x_gt) / sqrt(1 - abar_t), with x_gt the
  ground-truth mesh of frame t rendered (CPU rasteriser, `assets.rasterize`,
  shaded like the synthetic videos, white background) from the same cameras,
  placed in the world frame of the video's cameras (`GroundTruthRenderer`).
  Pixel space: latents = 2 x image - 1. It makes CSD a known objective
  (multi-view photometric supervision weighted by the schedule) with no
  pretrained weights.
- `function_prior`: any user eps function with the signature above.

`build_prior` makes the one a `csd` config section names.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.assets import rasterize
from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import settings as settings_lib
from animdreamer_jax.data import synthetic
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.prior import convert
from animdreamer_jax.prior import schedule as schedule_lib
from animdreamer_jax.prior import text_encoder
from animdreamer_jax.prior import tokenizer
from animdreamer_jax.prior import unet as unet_lib
from animdreamer_jax.prior import vae as vae_lib

EpsFn = Callable[[Any, jnp.ndarray, jnp.ndarray, Optional[jnp.ndarray], cameras_lib.CsdCameras],
                 jnp.ndarray]
EncodeFn = Callable[[Any, jnp.ndarray, Optional[jax.Array]], jnp.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class DiffusionPrior:
  """A prior for CSD (see the module docstring).

  Attributes:
    name: for messages and logs.
    eps_fn: the noise predictor.
    encode_fn: images in [0, 1] -> latents.
    alphas_cumprod: (T,) float32 alpha_bar table.
    image_size: renders are resized to image_size^2 before encode_fn (None: kept).
    conditional: eps depends on the text (False: no CFG batch).
    pixel_separable: encode_fn and eps_fn act on each pixel on its own (no
      convolution, pooling or attention across pixels), so the prior can judge
      a random subset of a view's pixels (`cameras.pixels`, laid out as a
      (V, 1, P, 3) strip): the subset's gradient is an unbiased estimate of the
      full view's (csd.pixels_per_view). True for the pixel-space oracle.
  """
  name: str
  eps_fn: EpsFn
  encode_fn: EncodeFn
  alphas_cumprod: np.ndarray
  image_size: Optional[int] = None
  conditional: bool = True
  pixel_separable: bool = False

  @property
  def num_timesteps(self) -> int:
    return int(np.shape(self.alphas_cumprod)[0])


def gather_pixels(images: jnp.ndarray, pixels: jnp.ndarray) -> jnp.ndarray:
  """The (V, 1, P, C) strip of `pixels` (V, P, 2) (u = column, v = row) of images (V, H, W, C)."""
  u = jnp.asarray(pixels[..., 0], jnp.int32)
  v = jnp.asarray(pixels[..., 1], jnp.int32)
  views = jnp.arange(images.shape[0])[:, None]
  return images[views, v, u][:, None]


def pixel_encode(prior_params: Any, images: jnp.ndarray, key: Optional[jax.Array]) -> jnp.ndarray:
  """Pixel-space 'encoder': [0, 1] -> [-1, 1] (the range the SD VAE takes)."""
  del prior_params, key
  return 2.0 * images - 1.0


def function_prior(eps_fn: EpsFn, *, encode_fn: EncodeFn = pixel_encode,
                   alphas_cumprod: Optional[np.ndarray] = None,
                   image_size: Optional[int] = None, conditional: bool = True,
                   name: str = "function", pixel_separable: bool = False) -> DiffusionPrior:
  """Wraps a user eps function (default: pixel space, the SD/MVDream schedule).

  pixel_separable: declare it only if eps_fn and encode_fn treat each pixel
  on its own (see DiffusionPrior); it allows csd.pixels_per_view.
  """
  if alphas_cumprod is None:
    alphas_cumprod = schedule_lib.make_alphas_cumprod()
  return DiffusionPrior(name=name, eps_fn=eps_fn, encode_fn=encode_fn,
                        alphas_cumprod=np.asarray(alphas_cumprod, np.float32),
                        image_size=image_size, conditional=conditional,
                        pixel_separable=bool(pixel_separable))


# ----------------------------------------------------------------------------
# Oracle prior.


def _gather_abar(alphas_cumprod: np.ndarray, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
  a = jnp.asarray(alphas_cumprod, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return a.reshape(a.shape + (1,) * (ndim - 1))


def oracle_eps(noisy: jnp.ndarray, t: jnp.ndarray, clean: jnp.ndarray,
               alphas_cumprod: np.ndarray) -> jnp.ndarray:
  """Optimal denoiser of a point mass at `clean`: (x_t - sqrt(a) x0) / sqrt(1 - a).

  Args:
    noisy: (N, ...) x_t.
    t: (N,) int timesteps.
    clean: (N, ...) the point mass x0.
    alphas_cumprod: (T,) table.

  Returns:
    (N, ...) eps.
  """
  a = _gather_abar(alphas_cumprod, t, noisy.ndim)
  return (noisy - jnp.sqrt(a) * clean) / jnp.sqrt(1.0 - a)


class GroundTruthRenderer:
  """Host renderer of a ground-truth mesh sequence (for the oracle prior).

  The model's object frame is the world frame its cameras were given in (the
  video's), so a CSD camera w2c (frame-t object -> camera) sees the ground
  truth's world-frame mesh of frame t directly: the targets pin the model
  where the cameras say the animal is, as a multi-view rig would. (A refitted
  model-to-ground-truth registration, in video-camera or object space, and
  per-frame refinements were measured and made the experiment worse or no
  better; they were removed.)

  Shading = the synthetic videos' (vertex colour x (ambient + Lambert),
  two-sided, white background), with the light kept where the video's camera
  had it at frame t: the model's colours are the video's pixels, this shading
  baked in, so a ground-truth point shows the shade the video gave it.

  Args:
    vertices: (T, V, 3) per-frame vertices in the video's world frame.
    faces: (F, 3).
    colors: (V, 3) in [0, 1], or None for the synthetic grey.
    world_to_video_camera: (T, 4, 4) the video's (noise-free) cameras.
    rest_vertices: (V, 3) rest pose (welds split seams for smooth normals);
      None: frame 0.
    supersample: renders at this many times the resolution and box-averages
      (anti-aliasing).
  """

  def __init__(self, vertices: np.ndarray, faces: np.ndarray, colors: Optional[np.ndarray],
               world_to_video_camera: np.ndarray, rest_vertices: Optional[np.ndarray] = None,
               supersample: int = 1):
    self.vertices = np.asarray(vertices, np.float64)
    self.faces = np.asarray(faces, np.int64)
    if self.vertices.ndim != 3 or self.vertices.shape[-1] != 3:
      raise UserError(f"oracle prior: vertices must be (T, V, 3), got {self.vertices.shape}")
    if self.faces.ndim != 2 or self.faces.shape[-1] != 3:
      raise UserError(f"oracle prior: faces must be (F, 3), got {self.faces.shape}")
    num_frames, num_vertices = self.vertices.shape[:2]
    self.colors = (np.full((num_vertices, 3), synthetic.DEFAULT_GREY) if colors is None
                   else np.asarray(colors, np.float64))
    self.world_to_video_camera = np.asarray(world_to_video_camera, np.float64)
    if self.world_to_video_camera.shape != (num_frames, 4, 4):
      raise UserError(f"oracle prior: cameras must be ({num_frames}, 4, 4), "
                      f"got {self.world_to_video_camera.shape}")
    rest = self.vertices[0] if rest_vertices is None else np.asarray(rest_vertices)
    self.weld = synthetic.weld_index(rest)
    if int(supersample) < 1:
      raise UserError(f"oracle prior: supersample must be >= 1, got {supersample}")
    self.supersample = int(supersample)

  @property
  def num_frames(self) -> int:
    return int(self.vertices.shape[0])

  def render(self, frame: int, w2c: np.ndarray, intrinsics: np.ndarray,
             resolution: int) -> np.ndarray:
    """(R, R, 3) float32 image of frame `frame` seen by a world-to-camera `w2c`.

    With supersample s: rendered at s R with intrinsics x s (pixel centres at
    u + 0.5, so s x s blocks tile the low-resolution pixels exactly), then
    box-averaged.
    """
    s = self.supersample
    verts = self.vertices[int(frame)]
    w2c = np.asarray(w2c, np.float64)
    v_cam = transforms_np.to_camera(verts, w2c)
    raster = rasterize.rasterize(v_cam, self.faces, s * np.asarray(intrinsics, np.float64),
                                 s * resolution, s * resolution)
    rotation = w2c[:3, :3]
    normals = synthetic.vertex_normals(verts, self.faces, self.weld) @ rotation.T
    # The light where the video's camera had it at frame t (world direction
    # W_t^T L), seen from this camera.
    video_rotation = self.world_to_video_camera[int(frame), :3, :3]
    light = rotation @ (video_rotation.T @ synthetic.LIGHT_DIRECTION_CAM)
    image = synthetic.shade(raster, self.faces, v_cam, normals, self.colors,
                            np.full(3, settings_lib.BACKGROUND), light_direction=light)
    if s > 1:
      image = image.reshape(resolution, s, resolution, s, 3).mean(axis=(1, 3))
    return image.astype(np.float32)

  def render_views(self, frame, w2c, intrinsics, resolution: int) -> np.ndarray:
    """(N, R, R, 3) float32 for world-to-camera (N, 4, 4) and intrinsics (N, 4)."""
    w2c, intrinsics = np.asarray(w2c, np.float64), np.asarray(intrinsics, np.float64)
    return np.stack([self.render(int(frame), w2c[i], intrinsics[i], resolution)
                     for i in range(w2c.shape[0])])

  def render_in_jax(self, cameras: cameras_lib.CsdCameras, resolution: int) -> jnp.ndarray:
    """Ground-truth views (N, R, R, 3) in [0, 1] from inside jit (a host callback)."""
    num_views = cameras.w2c.shape[0]
    w2c = jax.lax.stop_gradient(cameras.w2c)
    intrinsics = jax.lax.stop_gradient(cameras.intrinsics)
    out = jax.ShapeDtypeStruct((num_views, resolution, resolution, 3), jnp.float32)

    def host(frame, w2c, intrinsics):
      return self.render_views(int(np.asarray(frame)), w2c, intrinsics, resolution)

    return jax.pure_callback(host, out, cameras.frame, w2c, intrinsics, vmap_method="sequential")


def oracle_prior(renderer: GroundTruthRenderer, resolution: int,
                 alphas_cumprod: Optional[np.ndarray] = None) -> DiffusionPrior:
  """The oracle prior over renders of `resolution` pixels (pixel space, no text).

  Args:
    renderer: GroundTruthRenderer of the video's ground truth.
    resolution: the CSD render size (the oracle renders x_gt at the same size).
    alphas_cumprod: noise schedule (default: SD/MVDream's).
  """
  if alphas_cumprod is None:
    alphas_cumprod = schedule_lib.make_alphas_cumprod()
  alphas_cumprod = np.asarray(alphas_cumprod, np.float32)

  def eps_fn(prior_params, noisy, t, text_embedding, cameras):
    del prior_params, text_embedding
    truth = renderer.render_in_jax(cameras, resolution)
    if cameras.pixels is not None:  # a pixel subset (pixel_separable): the same pixels
      truth = gather_pixels(truth, cameras.pixels)
    return oracle_eps(noisy, t, pixel_encode(None, truth, None), alphas_cumprod)

  return DiffusionPrior(name="oracle", eps_fn=eps_fn, encode_fn=pixel_encode,
                        alphas_cumprod=alphas_cumprod, image_size=None, conditional=False,
                        pixel_separable=True)


def ground_truth_renderer(video, supersample: int = 1) -> GroundTruthRenderer:
  """GroundTruthRenderer of a `data.video.Video`'s ground truth (UserError without)."""
  gt = getattr(video, "gt", None)
  if gt is None:
    raise UserError("csd.prior=oracle: the video has no ground truth (gt/ folder); "
                    "use csd.prior=mvdream or none")
  seq = gt.meshes
  colors = None
  if getattr(seq, "vertex_colors", None) is not None:
    colors = np.asarray(seq.vertex_colors, np.float64) / 255.0
  return GroundTruthRenderer(seq.vertices, seq.faces, colors, gt.w2c,
                             rest_vertices=gt.rest_vertices, supersample=supersample)


# ----------------------------------------------------------------------------
# MVDream.


def resize_images(images: jnp.ndarray, size: int) -> jnp.ndarray:
  """Bilinear resize (N, H, W, C) -> (N, size, size, C); torch align_corners=False, no antialias."""
  if images.shape[1] == size and images.shape[2] == size:
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]),
                          method="bilinear", antialias=False)


def mvdream_prior(unet_config, vae_config, *, image_size: int = 256, num_views: int = 4,
                  dtype: Any = jnp.float32, remat: bool = False, fused_attention: bool = False,
                  alphas_cumprod: Optional[np.ndarray] = None) -> DiffusionPrior:
  """MVDream (multi-view UNet + SD VAE encoder); prior_params = {"unet": ..., "vae": ...}.

  Args:
    unet_config: prior.unet.UNetConfig.
    vae_config: prior.vae.VaeConfig.
    image_size: renders are resized to this before the VAE (256 in MVDream).
    num_views: views per object (static).
    dtype: UNet/VAE activation dtype.
    remat: checkpoint the UNet blocks (no effect on its forward-only use here).
    fused_attention: `jax.nn.dot_product_attention` in the UNet (flash kernels on GPU).
    alphas_cumprod: default: the LDM linear schedule.
  """
  if alphas_cumprod is None:
    alphas_cumprod = schedule_lib.make_alphas_cumprod()
  unet = unet_lib.MultiViewUNet(unet_config, dtype=dtype, remat=remat,
                                fused_attention=fused_attention)

  def eps_fn(prior_params, noisy, t, text_embedding, cameras):
    return unet.apply({"params": prior_params["unet"]}, noisy, t, text_embedding,
                      cameras.mvdream, num_views=num_views)

  def encode_fn(prior_params, images, key):
    pixels = 2.0 * resize_images(images, image_size) - 1.0
    return vae_lib.encode_to_latents(prior_params["vae"], pixels, vae_config, key, dtype)

  return DiffusionPrior(name="mvdream", eps_fn=eps_fn, encode_fn=encode_fn,
                        alphas_cumprod=np.asarray(alphas_cumprod, np.float32),
                        image_size=image_size, conditional=True)


def encode_prompts(text_params: Any, text_config, prompt: str, negative_prompt: str
                   ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(cond, uncond) text states, each (L, D), from the OpenCLIP text tower."""
  tokens = jnp.asarray(tokenizer.tokenize([prompt, negative_prompt], text_config.context_length))
  states = text_encoder.encode_text(text_params, tokens, text_config)
  return states[0], states[1]


def load_mvdream(weights_dir: str, prompt: str, negative_prompt: str, *, image_size: int = 256,
                 dtype: Any = jnp.float32, fused_attention: bool = False
                 ) -> tuple[DiffusionPrior, dict, tuple[jnp.ndarray, jnp.ndarray]]:
  """(prior, prior_params, (cond, uncond) text states) from a converted MVDream folder.

  Raises:
    UserError: no weights folder / parts missing / empty prompt.
  """
  if not weights_dir:
    raise UserError("config.csd.mvdream.weights: csd.prior=mvdream needs the folder of converted "
                    "MVDream weights (animdreamer convert-mvdream --out DIR)")
  if not prompt:
    raise UserError("config.csd.mvdream.prompt: csd.prior=mvdream needs a text prompt")
  loaded = convert.load_prior_params(pathlib.Path(weights_dir))
  config = loaded["config"]
  for part in ("vae", "text_encoder"):
    if part not in loaded:
      raise UserError(f"{weights_dir}: the converted weights have no {part} "
                      "(convert the full sd-v2.1-base-4view checkpoint)")
  unet_config = unet_lib.UNetConfig.from_dict(config["unet"],
                                              where=f"{weights_dir}/config.json unet")
  vae_config = vae_lib.VaeConfig.from_dict(config["vae"], where=f"{weights_dir}/config.json vae")
  text_config = text_encoder.TextEncoderConfig.from_dict(
      config["text_encoder"], where=f"{weights_dir}/config.json text_encoder")
  prior = mvdream_prior(unet_config, vae_config, image_size=image_size, dtype=dtype,
                        fused_attention=fused_attention)
  params = {"unet": jax.tree_util.tree_map(jnp.asarray, loaded["unet"]),
            "vae": jax.tree_util.tree_map(jnp.asarray, loaded["vae"])}
  text = encode_prompts(loaded["text_encoder"], text_config, prompt, negative_prompt)
  return prior, params, text


def build_prior(settings: settings_lib.CsdSettings, video
                ) -> tuple[DiffusionPrior, Any, Optional[tuple[jnp.ndarray, jnp.ndarray]]]:
  """(prior, prior_params, (cond, uncond) text states or None) for `settings.prior`.

  Raises:
    UserError: CSD off, oracle without ground truth, mvdream without weights or prompt.
  """
  if settings.prior == "oracle":
    renderer = ground_truth_renderer(video, supersample=settings.oracle.supersample)
    return oracle_prior(renderer, settings.resolution), None, None
  if settings.prior == "mvdream":
    m = settings.mvdream
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[m.dtype]
    return load_mvdream(m.weights, m.prompt, m.negative_prompt, image_size=m.encode_resolution,
                        dtype=dtype, fused_attention=m.fused_attention)
  raise UserError(f"config.csd.prior: {settings.prior!r} has no prior to build")
