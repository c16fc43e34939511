r"""Peak memory of the CSD train step from XLA's `memory_analysis()` (compiled, never run).

  python3 experiments/csd_memory.py [--strategy full,patches] [--resolution 200] [--samples 64]
      [--patches 8] [--model lab4d|cpu|tiny] [--prior mvdream|mvdream-tiny|oracle]
      [--encode-resolution 256] [--dtype float32|bfloat16] [--prior-part] [--devices N] [--json OUT]

The step compiled is the one `animdreamer bench csd` runs and extraction
trains (`animdreamer_jax.bench.csd.csd_step`: the extraction plan's CSD
StepKind through `train.step.make_train_step`, the update included). The
prior's parameters and text are abstract (`jax.ShapeDtypeStruct`), so the
paper-scale step (lab4d-sized model, 4 views x 200^2 pixels x 64 samples,
resize to 256, SD VAE encoder + MVDream UNet with CFG: 8 x 32 x 32 latents)
is lowered and compiled for the local backend without allocating the 866M
UNet parameters. The numbers are the backend's buffer assignment: on CPU
they show what the strategies change; on a GPU host run the same command
there for that backend's figures.

Strategies: "full" = one vjp of the whole 4-view render (every sample's
activations saved); "patches" = render without gradient, then vjp patch by
patch (lax.scan; `csd.patches`). `--prior oracle` measures the render and
pull-back alone (the oracle's host renderer is never called when compiling);
`--prior-part` adds the prior alone (resize, VAE encoder vjp, UNet forward
with CFG). `--devices N` compiles the step split over N devices (`parallel`; on
this CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N): the figures are
then one device's.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from typing import Any

# The package of the checkout this script lives in (as bin/animdreamer does), not an installed one.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from animdreamer_jax import files  # noqa: E402
from animdreamer_jax import parallel  # noqa: E402
from animdreamer_jax.bench import common  # noqa: E402
from animdreamer_jax.bench import csd as bench_csd  # noqa: E402
from animdreamer_jax.csd import cameras as cameras_lib  # noqa: E402
from animdreamer_jax.csd import gradient  # noqa: E402
from animdreamer_jax.errors import UserError  # noqa: E402

STRATEGIES = ("full", "patches")


def step_memory(strategy: str = "patches", *, resolution: int = 200, num_samples: int = 64,
                patches: int = 8, model_preset: str = "lab4d", prior_kind: str = "mvdream",
                encode_resolution: int = 256, dtype: str = "float32",
                groups: str = "canonical", devices: int = 1) -> dict[str, Any]:
  """Compiles one CSD train step and returns its memory analysis (bytes and GiB)."""
  if strategy not in STRATEGIES:
    raise UserError(f"--strategy: {strategy!r} unknown; use {', '.join(STRATEGIES)}")
  num_patches = patches if strategy == "patches" else 0
  settings = bench_csd.bench_settings(
      model_preset, prior_kind, resolution=resolution, samples=num_samples, patches=num_patches,
      groups=groups, encode_resolution=encode_resolution, dtype=dtype)
  prior, prior_params, text = bench_csd.prior_and_shapes(
      prior_kind, resolution, encode_resolution, dtype=bench_csd.DTYPES[dtype])
  start = time.time()
  layout = parallel.make_layout(parallel.ParallelSettings(devices=devices))
  compiled = bench_csd.lower(bench_csd.csd_step(settings, prior, prior_params, text,
                                                layout=layout)).compile()
  out = common.memory_figures(compiled)
  out.update(part="step", devices=layout.num_devices, strategy=strategy, resolution=resolution, num_samples=num_samples,
             patches=num_patches, model=model_preset, prior=prior_kind,
             encode_resolution=encode_resolution, dtype=dtype,
             samples_per_step=4 * resolution * resolution * num_samples,
             backend=jax.default_backend(), compile_seconds=time.time() - start)
  return out


def prior_memory(*, resolution: int = 200, prior_kind: str = "mvdream",
                 encode_resolution: int = 256, dtype: str = "float32") -> dict[str, Any]:
  """Memory of the prior part alone: resize + VAE encoder vjp + UNet with CFG (4 views)."""
  settings = bench_csd.bench_settings("tiny", prior_kind, resolution=resolution, patches=0,
                                      encode_resolution=encode_resolution, dtype=dtype).csd
  prior, prior_params, text = bench_csd.prior_and_shapes(
      prior_kind, resolution, encode_resolution, dtype=bench_csd.DTYPES[dtype])
  key = jax.ShapeDtypeStruct((2,), jnp.uint32)
  cams = jax.eval_shape(lambda k: cameras_lib.sample_cameras(
      k, resolution=resolution, object_center=jnp.zeros(3), object_size=1.0, object_radius=1.0,
      frame=0), key)

  def image_gradient(images, prior_params, text, cams, key):
    return gradient.image_gradient(prior, prior_params, images, cams, text, key, 0.02, 0.98,
                                   settings)

  images = jax.ShapeDtypeStruct((4, resolution, resolution, 3), jnp.float32)
  start = time.time()
  compiled = jax.jit(image_gradient).lower(images, prior_params, text, cams, key).compile()
  out = common.memory_figures(compiled)
  out.update(part="prior", prior=prior_kind, resolution=resolution,
             encode_resolution=encode_resolution, dtype=dtype, backend=jax.default_backend(),
             compile_seconds=time.time() - start)
  return out


def _line(label: str, row: dict) -> str:
  if row.get("devices", 1) > 1:
    label = f"{label} / {row['devices']} dev"
  return (f"{label:>14}: peak {row['peak_gib']:8.2f} GiB (temp {row['temp_gib']:8.2f}, "
          f"arguments {row['argument_gib']:.2f}) [{row['backend']}, compiled in "
          f"{row['compile_seconds']:.0f} s]")


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--strategy", default=",".join(STRATEGIES),
                      help=f"comma-separated, of {', '.join(STRATEGIES)}")
  parser.add_argument("--resolution", type=int, default=200)
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--patches", type=int, default=8, help="patches of the 'patches' strategy")
  parser.add_argument("--model", default="lab4d", choices=bench_csd.MODELS)
  parser.add_argument("--prior", default="mvdream", choices=bench_csd.PRIORS)
  parser.add_argument("--encode-resolution", type=int, default=256)
  parser.add_argument("--dtype", default="float32", choices=sorted(bench_csd.DTYPES),
                      help="activation dtype of the UNet and VAE")
  parser.add_argument("--groups", default="canonical", help="parameter groups CSD trains")
  parser.add_argument("--prior-part", action="store_true",
                      help="also measure the prior part alone (encoder vjp + UNet with CFG)")
  parser.add_argument("--devices", type=int, default=1,
                      help="compile the step split over this many devices (figures per device)")
  parser.add_argument("--json", default=None, help="also write the results here")
  args = parser.parse_args(argv)
  try:
    strategies = [s.strip() for s in args.strategy.split(",") if s.strip()]
    for strategy in strategies:
      if strategy not in STRATEGIES:
        raise UserError(f"--strategy: {strategy!r} unknown; use {', '.join(STRATEGIES)}")
    rows = []
    if args.prior_part:
      rows.append(prior_memory(resolution=args.resolution, prior_kind=args.prior,
                               encode_resolution=args.encode_resolution, dtype=args.dtype))
      print(_line("prior part", rows[-1]), flush=True)
    for strategy in strategies:
      rows.append(step_memory(strategy, resolution=args.resolution, num_samples=args.samples,
                              patches=args.patches, model_preset=args.model,
                              prior_kind=args.prior, encode_resolution=args.encode_resolution,
                              dtype=args.dtype, groups=args.groups, devices=args.devices))
      print(_line(strategy, rows[-1]), flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if args.json:
    files.save_json(args.json, rows, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
