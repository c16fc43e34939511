r"""Peak memory of the CSD step from XLA's `memory_analysis()` (compiled, never run).

  python3 -m animdreamer_jax.csd.memory [--strategy full,patches,remat,patches+remat]
      [--resolution 200] [--samples 64] [--patches 8] [--model lab4d|cpu|tiny]
      [--prior mvdream|mvdream-tiny|oracle] [--prior-part] [--json OUT]

Everything is abstract (`jax.ShapeDtypeStruct` parameters from `eval_shape`), so
the paper-scale step (lab4d-sized model, 4 views x 200^2 pixels x 64 samples,
resize to 256, SD VAE encoder + MVDream UNet with CFG: 8 x 32 x 32 latents) is
lowered and compiled for the local backend without allocating it. The numbers
are the backend's buffer assignment: on CPU they show what the strategies
change; on a GPU host run the same command there for that backend's figures.

`--prior oracle` measures the render + pull-back alone; `--prior-part` the
prior alone (resize, VAE encoder vjp, UNet forward with CFG).

Strategies: "full" = one vjp of the whole 4-view render (every sample's
activations saved); "patches" = render without gradient, then vjp patch by
patch (lax.scan); "remat" = views rendered one by one under jax.checkpoint;
"patches+remat".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import csd_step
from animdreamer_jax.csd import prior_interface

GIB = float(1 << 30)
STRATEGIES = {"full": (0, False), "patches": (None, False), "remat": (0, True),
              "patches+remat": (None, True)}


def _model(preset: str, num_frames: int):
  from animdreamer_jax.model import articulated_model  # pylint: disable=g-import-not-at-top
  make = {"lab4d": articulated_model.lab4d_config, "cpu": articulated_model.cpu_config,
          "tiny": articulated_model.tiny_config}[preset]
  model = articulated_model.ArticulatedModel(make(video_lengths=(num_frames,)))
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.int32(0))
  return model, params


def prior_and_shapes(kind: str, resolution: int, encode_resolution: int, *, dtype=jnp.float32,
                     fused_attention: bool = False):
  """(prior, abstract prior params, abstract text) for "mvdream", "mvdream-tiny" or "oracle".

  dtype / fused_attention: the MVDream UNet's activation dtype and attention kernel.
  """
  if kind == "oracle":
    # Shapes only: the host renderer is never called when compiling.
    renderer = prior_interface.GroundTruthRenderer(
        np.zeros((1, 3, 3)), np.array([[0, 1, 2]]), None, np.eye(4)[None])
    return prior_interface.oracle_prior(renderer, resolution), None, None
  from animdreamer_jax.prior import unet as unet_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.prior import vae as vae_lib  # pylint: disable=g-import-not-at-top
  tiny = kind == "mvdream-tiny"
  unet_config = unet_lib.UNetConfig.tiny() if tiny else unet_lib.UNetConfig()
  vae_config = vae_lib.VaeConfig.tiny() if tiny else vae_lib.VaeConfig()
  prior = prior_interface.mvdream_prior(unet_config, vae_config, image_size=encode_resolution,
                                        dtype=dtype, fused_attention=fused_attention)
  params = {"unet": unet_lib.unet_param_shapes(unet_config),
            "vae": jax.eval_shape(lambda: vae_lib.init_vae_params(vae_config, jax.random.PRNGKey(0),
                                                                  image_size=16))}
  text = (jax.ShapeDtypeStruct((77, unet_config.context_dim), jnp.float32),) * 2
  return prior, params, text


def memory_figures(compiled) -> dict[str, Any]:
  """XLA's buffer sizes of a compiled executable (bytes, and peak / temp / arguments in GiB)."""
  analysis = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  out: dict[str, Any] = {name: int(getattr(analysis, name, 0) or 0) for name in fields}
  peak = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
          - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  out.update(peak_bytes=peak, peak_gib=peak / GIB, temp_gib=out["temp_size_in_bytes"] / GIB,
             argument_gib=out["argument_size_in_bytes"] / GIB)
  return out


def prior_memory(*, resolution: int = 200, prior_kind: str = "mvdream",
                 encode_resolution: int = 256) -> dict[str, Any]:
  """Memory of the prior part alone: resize + VAE encoder vjp + UNet with CFG (4 views)."""
  prior, prior_params, text = prior_and_shapes(prior_kind, resolution, encode_resolution)
  settings = csd_step.CsdSettings(resolution=resolution)
  cams = jax.eval_shape(lambda k: cameras_lib.sample_cameras(
      k, resolution=resolution, object_center=jnp.zeros(3), object_size=1.0, object_radius=1.0,
      frame=0, root_pose=jnp.eye(4)), jax.ShapeDtypeStruct((2,), jnp.uint32))

  def gradient(images, prior_params, text, cams, key):
    return csd_step.image_gradient(prior, prior_params, images, cams, text, key, 0.02, 0.98,
                                   settings)

  images = jax.ShapeDtypeStruct((4, resolution, resolution, 3), jnp.float32)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  start = time.time()
  compiled = jax.jit(gradient).lower(images, prior_params, text, cams, key).compile()
  out = memory_figures(compiled)
  out.update(part="prior", prior=prior_kind, resolution=resolution,
             encode_resolution=encode_resolution, backend=jax.default_backend(),
             compile_seconds=time.time() - start)
  return out


def gradient_function(model, params: Any, prior: prior_interface.DiffusionPrior,
                      settings: csd_step.CsdSettings, num_frames: int, groups: str = "canonical"):
  """gradient(params, prior_params, text, key) -> (CSD gradient, csd_loss) with cameras drawn inside.

  Everything of the CSD train step but the optimiser update: a random frame
  and its root pose, 4 views around a unit box, render, prior, pull-back.
  `params` (arrays or ShapeDtypeStructs) only fixes the parameter-group mask.
  """
  render = csd_step.make_view_renderer(model, settings)
  mask = csd_step.param_group_mask(params, groups)
  aabb = jnp.array([[-0.5] * 3, [0.5] * 3], jnp.float32)

  def gradient(params, prior_params, text, key):
    k_cam, k_prior = jax.random.split(key)
    cams = csd_step.draw_cameras(model, params, k_cam, aabb, num_frames, settings)
    grads, _, metrics = csd_step.csd_gradient(render, params, mask, prior, prior_params, cams,
                                              text, k_prior, 0.02, 0.98, settings)
    return grads, metrics["csd_loss"]

  return gradient


def step_memory(strategy: str = "patches", *, resolution: int = 200, num_samples: int = 64,
                patches: int = 8, model_preset: str = "lab4d", prior_kind: str = "mvdream",
                encode_resolution: int = 256, num_frames: int = 64,
                groups: str = "canonical") -> dict[str, Any]:
  """Compiles one CSD gradient computation and returns its memory analysis (bytes and GiB).

  The function compiled is `csd_step.csd_gradient` with the cameras drawn
  inside (frame, root pose), i.e. everything of the CSD train step but the
  optimiser update (whose memory is that of the parameters and moments).
  With prior_kind "oracle" (pixel space, a host callback) it measures the
  render + pull-back alone.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"strategy {strategy!r}: use one of {sorted(STRATEGIES)}")
  num_patches, remat = STRATEGIES[strategy]
  settings = csd_step.CsdSettings(resolution=resolution, num_samples=num_samples,
                                  patches=patches if num_patches is None else 0, remat=remat)
  model, params = _model(model_preset, num_frames)
  prior, prior_params, text = prior_and_shapes(prior_kind, resolution, encode_resolution)
  gradient = gradient_function(model, params, prior, settings, num_frames, groups)
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  start = time.time()
  lowered = jax.jit(gradient).lower(params, prior_params, text, key)
  compiled = lowered.compile()
  seconds = time.time() - start
  out = memory_figures(compiled)
  out.update(
      part="step", strategy=strategy,
      resolution=resolution, num_samples=num_samples,
      patches=settings.patches, remat=remat, model=model_preset, prior=prior_kind,
      encode_resolution=encode_resolution,
      samples_per_step=4 * resolution * resolution * num_samples,
      backend=jax.default_backend(), compile_seconds=seconds)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--strategy", default="full,patches,remat,patches+remat")
  parser.add_argument("--resolution", type=int, default=200)
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--patches", type=int, default=8)
  parser.add_argument("--model", default="lab4d", choices=("lab4d", "cpu", "tiny"))
  parser.add_argument("--prior", default="mvdream", choices=("mvdream", "mvdream-tiny", "oracle"))
  parser.add_argument("--encode-resolution", type=int, default=256)
  parser.add_argument("--prior-part", action="store_true",
                      help="also measure the prior part alone (encoder vjp + UNet with CFG)")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  rows = []
  if args.prior_part:
    row = prior_memory(resolution=args.resolution, prior_kind=args.prior,
                       encode_resolution=args.encode_resolution)
    rows.append(row)
    print(f"{'prior part':>14}: peak {row['peak_gib']:8.2f} GiB (temp {row['temp_gib']:8.2f}, "
          f"arguments {row['argument_gib']:.2f}) [{row['backend']}, compiled in "
          f"{row['compile_seconds']:.0f} s]", flush=True)
  for strategy in [s.strip() for s in args.strategy.split(",") if s.strip()]:
    row = step_memory(strategy, resolution=args.resolution, num_samples=args.samples,
                      patches=args.patches, model_preset=args.model, prior_kind=args.prior,
                      encode_resolution=args.encode_resolution)
    rows.append(row)
    print(f"{strategy:>14}: peak {row['peak_gib']:8.2f} GiB (temp {row['temp_gib']:8.2f}, "
          f"arguments {row['argument_gib']:.2f}) [{row['backend']}, compiled in "
          f"{row['compile_seconds']:.0f} s]", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
