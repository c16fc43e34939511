"""Text -> 4 views of one object with the MVDream prior (DDIM + CFG), saved as a PNG grid.

  animdreamer sample --prompt "a corgi wearing a beret" --weights weights/mvdream --out corgi.png
  animdreamer sample --prompt "a fox" --tiny --out smoke.png      # random tiny model: a CPU smoke test

As MVDream's `scripts/t2i.py`: the prompt gets the suffix ", 3d asset", the unconditional prompt is "",
4 views at elevation 15 degrees and azimuths 90, 180, 270, 0 (MVDream's `get_camera`), DDIM with 50 steps
and eta 0, guidance scale 10, 256 x 256 pixels (32 x 32 latents), the views side by side (1x4).

--weights is a folder written by `animdreamer convert-mvdream` from `sd-v2.1-base-4view.pt` (Hugging Face
repository MVDream/MVDream). --tiny replaces every network by a small random one (the output is noise, but
every stage runs: tokenizer, text encoder, multi-view UNet with cameras, CFG, DDIM, VAE decoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import convert
from animdreamer_jax.prior import ddim, guidance, schedule, text_encoder, tokenizer, vae
from animdreamer_jax.prior import unet as unet_lib
from animdreamer_jax.prior.camera_embedding import orbit_cameras

CHECKPOINT_NAME = "sd-v2.1-base-4view.pt"
CHECKPOINT_REPO = "https://huggingface.co/MVDream/MVDream"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--prompt", required=True, help="text prompt")
  parser.add_argument("--weights", type=pathlib.Path, default=None,
                      help="folder written by `animdreamer convert-mvdream` (from " + CHECKPOINT_NAME + ")")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="output PNG")
  parser.add_argument("--tiny", action="store_true",
                      help="use small random networks instead of --weights (CPU smoke test)")
  parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
  parser.add_argument("--guidance", type=float, default=10.0, help="CFG scale (default 10)")
  parser.add_argument("--seed", type=int, default=23, help="PRNG seed of the initial noise")
  parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
  parser.add_argument("--negative-prompt", default="", help="unconditional prompt (default empty)")
  parser.add_argument("--suffix", default=", 3d asset", help="appended to the prompt (MVDream's default)")
  parser.add_argument("--size", type=int, default=None,
                      help="image size in pixels (default 256; 32 with --tiny)")
  parser.add_argument("--elevation", type=float, default=15.0, help="camera elevation in degrees")
  parser.add_argument("--azimuth-start", type=float, default=90.0, help="azimuth of the first view")
  parser.add_argument("--layout", choices=("1x4", "2x2"), default="1x4", help="grid of the 4 views")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="activation dtype of the UNet/VAE/text encoder (bfloat16 for GPUs)")


@dataclasses.dataclass
class Prior:
  """The three networks of MVDream with their configs and parameters."""
  unet_config: Any
  unet_params: Any
  text_config: Any
  text_params: Any
  vae_config: Any
  vae_params: Any


def missing_weights_message(weights: pathlib.Path | None) -> str:
  where = f"{weights}: no converted MVDream weights here" if weights else "--weights: not given"
  return (f"{where}. The MVDream weights are the file {CHECKPOINT_NAME} (about 5 GB) from the Hugging Face "
          f"repository MVDream/MVDream ({CHECKPOINT_REPO}); download it, convert it with `animdreamer "
          f"convert-mvdream --ckpt {CHECKPOINT_NAME} --out weights/mvdream`, then pass "
          f"--weights weights/mvdream (or use --tiny for a smoke test with random weights)")


def load_prior(weights: pathlib.Path | None) -> Prior:
  """Loads a converted folder (UserError naming the checkpoint to get when it is absent)."""
  if weights is None or not (weights / "config.json").is_file():
    raise UserError(missing_weights_message(weights))
  loaded = convert.load_prior_params(weights)
  config = loaded["config"]
  for part in ("vae", "text_encoder"):
    if part not in loaded:
      raise UserError(f"{weights}/config.json: no '{part}' part; sampling needs the UNet, the VAE and the "
                      f"text encoder (convert the full {CHECKPOINT_NAME})")
  where = f"{weights}/config.json"
  return Prior(
      unet_config=unet_lib.UNetConfig.from_dict(config["unet"], where=where + " unet"),
      unet_params=loaded["unet"],
      text_config=text_encoder.TextEncoderConfig.from_dict(config["text_encoder"],
                                                           where=where + " text_encoder"),
      text_params=loaded["text_encoder"],
      vae_config=vae.VaeConfig.from_dict(config["vae"], where=where + " vae"),
      vae_params=loaded["vae"])


def random_params(shapes: Any, seed: int) -> Any:
  """Random float32 params for a tree of ShapeDtypeStructs (NumPy; much faster than compiling `init`).

  Kernels ~ N(0, 1/fan_in), norm scales 1, biases 0, embeddings N(0, 0.02^2).
  """
  rng = np.random.default_rng(seed)

  def make(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    shape = tuple(leaf.shape)
    if name == "kernel":
      return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    if name == "scale":
      return np.ones(shape, np.float32)
    if name == "bias":
      return np.zeros(shape, np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(make, shapes)


def tiny_prior(seed: int = 0) -> Prior:
  """Small random networks with MVDream's structure (CPU-sized)."""
  unet_config = unet_lib.UNetConfig.tiny()
  width = unet_config.context_dim
  text_config = text_encoder.TextEncoderConfig(width=width, num_heads=max(1, width // 16), num_layers=3,
                                               mlp_width=4 * width)
  vae_config = vae.VaeConfig.tiny()
  shapes = (unet_lib.unet_param_shapes(unet_config),
            jax.eval_shape(lambda: text_encoder.init_text_encoder_params(text_config,
                                                                         jax.random.PRNGKey(0))),
            jax.eval_shape(lambda: vae.init_vae_params(vae_config, jax.random.PRNGKey(0))))
  unet_params, text_params, vae_params = random_params(shapes, seed)
  return Prior(unet_config, unet_params, text_config, text_params, vae_config, vae_params)


@functools.partial(jax.jit, static_argnames=("unet_config", "dtype", "num_views"))
def guided_eps(unet_params: Any, x: jax.Array, t: jax.Array, context: jax.Array, cameras: jax.Array,
               guidance_scale: jax.Array, *, unet_config: unet_lib.UNetConfig, dtype: Any,
               num_views: int) -> jax.Array:
  """Classifier-free-guided noise prediction for the views of one object (jitted once per config).

  Args:
    unet_params: MultiViewUNet params.
    x: (F, h, w, 4) latents of the F = num_views views.
    t: int32 scalar timestep.
    context: (2F, 77, C) text states, [uncond x F; cond x F] (MVDream's DDIM batch order).
    cameras: (2F, 16) cameras, the F views twice (the uncond half keeps its cameras).
    guidance_scale: scalar.

  Returns:
    (F, h, w, 4) guided eps.
  """
  both = unet_lib.MultiViewUNet(unet_config, dtype=dtype).apply(
      {"params": unet_params}, jnp.concatenate([x, x]), jnp.full((2 * num_views,), t, jnp.int32),
      context, cameras, num_views=num_views)
  uncond, cond = guidance.split_guidance_batch(both, uncond_first=True)
  return guidance.classifier_free_guidance(uncond, cond, guidance_scale)


def sample_views(prior: Prior, prompt: str, negative_prompt: str = "", *, num_views: int = 4,
                 size: int = 256, steps: int = 50, guidance_scale: float = 10.0, eta: float = 0.0,
                 seed: int = 0, elevation: float = 15.0, azimuth_start: float = 90.0,
                 dtype: str = "float32", progress: bool = False) -> np.ndarray:
  """DDIM-samples `num_views` views of one object.

  Returns:
    uint8 (num_views, size, size, 3) images.
  """
  act = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
  factor = prior.vae_config.downsample_factor
  unet_multiple = 2 ** (len(prior.unet_config.channel_mult) - 1)
  if size % (factor * unet_multiple):
    raise UserError(f"--size: {size} is not a multiple of {factor * unet_multiple} (VAE factor {factor} "
                    f"x UNet downsampling {unet_multiple})")
  if prior.text_config.width != prior.unet_config.context_dim:
    raise UserError(f"text encoder width {prior.text_config.width} != UNet context_dim "
                    f"{prior.unet_config.context_dim}")

  tokens = tokenizer.tokenize([negative_prompt, prompt], prior.text_config.context_length)
  if tokens.max() >= prior.text_config.vocab_size:
    raise UserError(f"text encoder: vocabulary of {prior.text_config.vocab_size} tokens is smaller than the "
                    f"CLIP tokenizer's (token id {int(tokens.max())}); not an OpenCLIP text tower")
  context = text_encoder.encode_text(prior.text_params, tokens, prior.text_config, dtype=act)
  # Batch order as MVDream's DDIM sampler: [uncond views; cond views], the cameras repeated.
  context = jnp.repeat(context, num_views, axis=0)
  cameras = orbit_cameras(num_views, elevation, azimuth_start)
  cameras = jnp.concatenate([cameras, cameras])
  unet_params = jax.tree_util.tree_map(jnp.asarray, prior.unet_params)

  def eps_fn(x, t):
    return guided_eps(unet_params, x, t, context, cameras, guidance_scale,
                      unet_config=prior.unet_config, dtype=act, num_views=num_views)

  latent = size // factor
  key_noise, key_ddim = jax.random.split(jax.random.PRNGKey(seed))
  x_T = jax.random.normal(key_noise, (num_views, latent, latent, prior.vae_config.z_channels))
  sched = ddim.make_ddim_schedule(schedule.make_alphas_cumprod(), steps, eta=eta)
  latents = ddim.ddim_sample_loop(eps_fn, x_T, sched, key_ddim if eta > 0 else None, progress=progress)
  images = vae.decode_latents(prior.vae_params, latents, prior.vae_config, dtype=act)
  images = np.asarray(images, np.float32)
  if not np.all(np.isfinite(images)):
    raise UserError("sampling produced non-finite values (corrupt weights, or overflow with --dtype "
                    "bfloat16)")
  images = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
  return np.round(255.0 * images).astype(np.uint8)


def make_grid(views: np.ndarray, layout: str = "1x4") -> np.ndarray:
  """(4, H, W, 3) -> (H, 4W, 3) for "1x4" or (2H, 2W, 3) for "2x2" (row-major view order)."""
  rows, cols = (int(v) for v in layout.split("x"))
  n, h, w, c = views.shape
  if n != rows * cols:
    raise ValueError(f"{n} views do not fill a {layout} grid")
  return views.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, c)


def run(args: argparse.Namespace) -> int:
  if args.out.suffix.lower() != ".png":
    raise UserError(f"{args.out}: --out must be a .png file")
  if args.steps < 1 or args.steps > 1000:
    raise UserError(f"--steps: {args.steps} is not in [1, 1000]")
  start = time.time()
  if args.tiny:
    prior = tiny_prior(args.seed)
    size = args.size or 32
  else:
    prior = load_prior(args.weights)
    size = args.size or 256
  views = sample_views(prior, args.prompt + args.suffix, args.negative_prompt, size=size,
                       steps=args.steps, guidance_scale=args.guidance, eta=args.eta, seed=args.seed,
                       elevation=args.elevation, azimuth_start=args.azimuth_start, dtype=args.dtype,
                       progress=True)
  files.save_png(args.out, make_grid(views, args.layout))
  print(f"wrote {args.out} (4 views, {size}x{size}, {args.steps} DDIM steps, guidance {args.guidance}"
        f"{', tiny random model' if args.tiny else ''}) in {time.time() - start:.0f} s")
  return 0
