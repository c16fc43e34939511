"""`animdreamer bench csd`: one CSD train step at paper scale, run for real.

Builds what a CSD step of extraction runs, in one `jax.jit` with donated
state: a random frame of the articulated model (lab4d sizes by default, host
initialisation) rendered from 4 orbit views of R x R pixels x S samples
through the backward warp, resized to 256 px, the SD VAE encoder and the
MVDream UNet (the official sizes with random weights: nothing is downloaded)
with classifier-free guidance, the image gradient pulled back through the
render (patch by patch with --patches, AnimatableDreamer's memory trick), and
an AdamW update of the canonical field. It prints

  compile time and step time (best / median of --steps after a warm-up);
  XLA's FLOP count of the step -> achieved FLOP/s, and its ratio to a dense
  float32 matmul and to a dense matmul in the UNet's dtype, both timed in
  the same run;
  the device's peak memory (`memory_stats()`, GPU) beside XLA's
  `memory_analysis()` of the step.

XLA counts a loop body once, so with --patches the FLOPs come from the same
step compiled without patches (compiled, never run).

Examples:
  animdreamer bench csd                       # paper scale: lab4d model, 200 px, 64 samples, MVDream
  animdreamer bench csd --model tiny --prior mvdream-tiny --resolution 16 --samples 8 --patches 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from animdreamer_jax.csd import csd_step
from animdreamer_jax.csd import memory as memory_lib
from animdreamer_jax.csd import prior_interface
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.train import bench_step

MODELS = {"lab4d": am.lab4d_config, "cpu": am.cpu_config, "tiny": am.tiny_config}
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
NUM_FRAMES = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", choices=sorted(MODELS), default="lab4d", help="field sizes")
  parser.add_argument("--prior", choices=("mvdream", "mvdream-tiny"), default="mvdream",
                      help="MVDream at the official sizes, or tiny (CPU smoke runs)")
  parser.add_argument("--resolution", type=int, default=200, help="view side R (paper: 200)")
  parser.add_argument("--samples", type=int, default=64, help="samples per ray (paper: 64)")
  parser.add_argument("--patches", type=int, default=8,
                      help="patch-wise pull-back in this many patches (0: one vjp of the whole "
                           "render; paper: 8)")
  parser.add_argument("--encode-resolution", type=int, default=256,
                      help="renders are resized to this before the VAE (MVDream: 256)")
  parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16",
                      help="activation dtype of the UNet and VAE")
  parser.add_argument("--fused-attention", choices=("auto", "on", "off"), default="auto",
                      help="jax.nn.dot_product_attention in the UNet (auto: on a GPU)")
  parser.add_argument("--groups", default="canonical",
                      help="parameter groups receiving CSD gradient (canonical | fg)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
  parser.add_argument("--matmul-size", type=int, default=0,
                      help="side of the square matmuls timed as peaks (0: 8192 on GPU, 1024 else)")
  parser.add_argument("--count-flops", choices=("yes", "no"), default="yes",
                      help="with --patches: compile the unpatched step once more for XLA's FLOP "
                           "count (no: skip it and the FLOP ratios)")
  parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def _prior(kind: str, encode_resolution: int, dtype, fused: bool):
  """(prior, random prior params, random (cond, uncond) text states)."""
  prior, shapes, text_shapes = memory_lib.prior_and_shapes(
      kind, 0, encode_resolution, dtype=dtype, fused_attention=fused)
  text = tuple(jax.random.normal(k, s.shape, s.dtype)
               for k, s in zip(jax.random.split(jax.random.PRNGKey(1)), text_shapes))
  return prior, host_random_params(shapes, seed=0), text


def host_random_params(shapes: Any, seed: int = 0) -> Any:
  """Random arrays for a tree of ShapeDtypeStructs, drawn with NumPy on the host.

  Kernels ~ N(0, 1 / fan_in) (fan_in = all but the last axis), 1-D "scale"
  leaves (norms) 1, other 1-D leaves (biases) 0. Compiling the full UNet's
  `init` takes minutes on a GPU; this takes seconds, and any weights time the same.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if len(leaf.shape) <= 1:
      value = np.ones(leaf.shape) if name == "scale" else np.zeros(leaf.shape)
    else:
      fan_in = int(np.prod(leaf.shape[:-1]))
      value = rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _peak_device_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def benchmark(args: argparse.Namespace) -> dict[str, Any]:
  """Builds, compiles, runs and times the step; returns the figures."""
  backend = jax.default_backend()
  fused = args.fused_attention == "on" or (args.fused_attention == "auto" and backend == "gpu")
  dtype = DTYPES[args.dtype]
  settings = csd_step.CsdSettings(resolution=args.resolution, num_samples=args.samples,
                                  patches=args.patches, mode="recon", guidance_scale=50.0)
  model = am.ArticulatedModel(MODELS[args.model](video_lengths=(NUM_FRAMES,)))
  params = init_lib.init_variables(model, 0)
  prior, prior_params, text = _prior(args.prior, args.encode_resolution, dtype, fused)
  gradient = memory_lib.gradient_function(model, params, prior, settings, NUM_FRAMES, args.groups)
  tx = optax.adamw(1e-4)
  opt_state = tx.init(params)

  def step(params, opt_state, prior_params, text, key):
    grads, loss = gradient(params, prior_params, text, key)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  key = jax.random.PRNGKey(0)
  start = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
      params, opt_state, prior_params, text, key).compile()
  compile_s = time.perf_counter() - start
  memory = memory_lib.memory_figures(compiled)
  print(f"  compiled in {compile_s:.1f} s; XLA memory_analysis peak "
        f"{memory['peak_bytes'] / float(1 << 30):.2f} GiB", flush=True)
  if args.count_flops == "no":
    counted = None
  elif args.patches > 1:  # loop bodies count once: count the unpatched step instead (never run)
    unpatched = memory_lib.gradient_function(
        model, params, prior, dataclasses.replace(settings, patches=0), NUM_FRAMES, args.groups)
    counted = jax.jit(unpatched).lower(params, prior_params, text, key).compile()
  else:
    counted = compiled
  flops = None if counted is None else bench_step.compiled_flops(counted)

  times, loss = [], None
  for i in range(args.steps + 1):  # the first call is the warm-up
    begin = time.perf_counter()
    params, opt_state, loss = compiled(params, opt_state, prior_params, text,
                                       jax.random.fold_in(key, i))
    jax.block_until_ready(loss)
    if i:
      times.append(time.perf_counter() - begin)
  if not np.isfinite(float(loss)):
    raise UserError("bench csd: the CSD loss is not finite")
  peak_device = _peak_device_bytes()
  size = args.matmul_size or (8192 if backend == "gpu" else 1024)
  mm_f32 = bench_step.matmul_flops_per_second(size)[0]
  mm_dtype = bench_step.matmul_flops_per_second(size, dtype=dtype)[0]
  best, median = min(times), statistics.median(times)
  return {
      "backend": backend, "device": str(jax.devices()[0].device_kind), "model": args.model,
      "prior": args.prior, "resolution": args.resolution, "samples": args.samples,
      "patches": args.patches, "encode_resolution": args.encode_resolution, "dtype": args.dtype,
      "fused_attention": fused, "groups": args.groups,
      "samples_per_step": settings.num_views * settings.pixels_rendered * args.samples,
      "model_params": am.count_params(params),
      "prior_params": int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(prior_params))),
      "compile_s": compile_s, "step_s_best": best, "step_s_median": median,
      "step_flops": flops, "achieved_flops_per_s": flops and flops / best,
      "matmul_size": size, "matmul_f32_flops_per_s": mm_f32,
      "matmul_dtype_flops_per_s": mm_dtype,
      "ratio_f32_matmul": flops and flops / best / mm_f32,
      "ratio_dtype_matmul": flops and flops / best / mm_dtype,
      "xla_peak_bytes": memory["peak_bytes"], "device_peak_bytes": peak_device,
      "loss": float(loss),
  }


def run(args: argparse.Namespace) -> int:
  for name in ("resolution", "samples", "steps", "encode_resolution"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')}: must be >= 1")
  if args.patches < 0 or args.matmul_size < 0:
    raise UserError("--patches / --matmul-size: must be >= 0")
  print(f"bench csd: model={args.model} prior={args.prior} {args.resolution}px x {args.samples} "
        f"samples, {args.patches} patches, {args.dtype}, backend={jax.default_backend()}",
        flush=True)
  r = benchmark(args)
  gib = float(1 << 30)
  device_peak = ("n/a (this backend keeps no statistics)" if r["device_peak_bytes"] is None
                 else f"{r['device_peak_bytes'] / gib:.2f} GiB")
  print(f"  device                  {r['device']} (fused attention: {r['fused_attention']})")
  print(f"  parameters              model {r['model_params']:,}, prior {r['prior_params']:,}")
  print(f"  step time best/median   {r['step_s_best'] * 1e3:.1f} / {r['step_s_median'] * 1e3:.1f} ms")
  print(f"  dense matmul {r['matmul_size']}^3     float32 {r['matmul_f32_flops_per_s'] / 1e12:.2f} "
        f"TFLOP/s, {r['dtype']} {r['matmul_dtype_flops_per_s'] / 1e12:.2f} TFLOP/s")
  if r["step_flops"] is None:
    print("  step FLOPs              not counted (--count-flops no)")
  else:
    print(f"  step FLOPs (XLA)        {r['step_flops'] / 1e12:.3f} TFLOP "
          f"({r['samples_per_step']:,} samples rendered)")
    print(f"  achieved                {r['achieved_flops_per_s'] / 1e12:.2f} TFLOP/s")
    print(f"  ratio achieved/matmul   {r['ratio_f32_matmul']:.3f} of float32, "
          f"{r['ratio_dtype_matmul']:.3f} of {r['dtype']}")
  print(f"  peak memory             device {device_peak}; XLA memory_analysis "
        f"{r['xla_peak_bytes'] / gib:.2f} GiB")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(r, f, indent=2)
  return 0
