"""`animdreamer bench csd`: one CSD train step at paper scale, run for real.

Builds the CSD step exactly as extraction trains it: the extraction stage's
plan (`stages.extraction.plan.build_plan`) with CSD on, on a synthetic video
of 64 frames, with the prior handed in (MVDream at the official sizes with
random weights drawn on the host: nothing is downloaded). Its "csd" StepKind
(the CSD loss term of `csd.term` and the `csd.param_groups` mask) goes
through `train.step.make_train_step`: one `jax.jit` with the state donated
that draws a random frame of the articulated model (lab4d sizes by default)
and 4 orbit views of R x R pixels x S samples, renders them through the
backward warp, resizes them to 256 px, runs the SD VAE encoder and the
MVDream UNet with classifier-free guidance, pulls the image gradient back
through the render (patch by patch with --patches, AnimatableDreamer's memory
trick) and applies the one update rule (`train.update`) to the CSD groups.
It prints

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
import statistics
import time
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import parallel
from animdreamer_jax.bench import common
from animdreamer_jax.csd import priors
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.prior import unet as unet_lib
from animdreamer_jax.prior import vae as vae_lib
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction_settings
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib

MODELS = tuple(extraction_settings.PRESETS)
PRIORS = ("mvdream", "mvdream-tiny", "oracle")
DTYPES = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
NUM_FRAMES = 64
# The CSD step never reads the video's pixels: a small one keeps them off the device.
VIDEO_SIZE = 32


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model", choices=MODELS, default="lab4d", help="field sizes")
  parser.add_argument("--prior", choices=PRIORS[:2], default="mvdream",
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
                      help="parameter groups receiving CSD gradient (canonical | fg | prefixes)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up")
  parser.add_argument("--matmul-size", type=int, default=0,
                      help="side of the square matmuls timed as peaks (0: 8192 on GPU, 1024 else)")
  parser.add_argument("--count-flops", choices=("yes", "no"), default="yes",
                      help="lower the step once more without patches or field chunks for XLA's "
                           "FLOP count (no: skip it and the FLOP ratios)")
  parser.add_argument("--devices", default="0",
                      help="device counts to split the step over (each view's pixels and the "
                           "prior's batch), comma-separated, each timed (0: every device)")
  parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


# ----------------------------------------------------------------------------
# The prior: its sizes, and random weights for them.


def prior_and_shapes(kind: str, resolution: int, encode_resolution: int, *, dtype=jnp.float32,
                     fused_attention: bool = False) -> tuple[priors.DiffusionPrior, Any, Any]:
  """(prior, abstract prior params, abstract (cond, uncond) text) for a prior kind.

  kind: "mvdream" (the official sizes), "mvdream-tiny" or "oracle" (pixel space: params and
  text None; its host renderer is a placeholder, so a step with it compiles but must not run).
  resolution: the CSD view size (the oracle's); dtype / fused_attention: the MVDream UNet's
  activation dtype and attention kernel.
  """
  if kind == "oracle":
    renderer = priors.GroundTruthRenderer(np.zeros((1, 3, 3)), np.array([[0, 1, 2]]), None,
                                          np.eye(4)[None])
    return priors.oracle_prior(renderer, resolution), None, None
  if kind not in PRIORS:
    raise UserError(f"prior {kind!r}: use one of {list(PRIORS)}")
  tiny = kind == "mvdream-tiny"
  unet_config = unet_lib.UNetConfig.tiny() if tiny else unet_lib.UNetConfig()
  vae_config = vae_lib.VaeConfig.tiny() if tiny else vae_lib.VaeConfig()
  prior = priors.mvdream_prior(unet_config, vae_config, image_size=encode_resolution,
                               dtype=dtype, fused_attention=fused_attention)
  params = {"unet": unet_lib.unet_param_shapes(unet_config),
            "vae": jax.eval_shape(lambda: vae_lib.init_vae_params(vae_config, jax.random.PRNGKey(0),
                                                                  image_size=16))}
  text = (jax.ShapeDtypeStruct((77, unet_config.context_dim), jnp.float32),) * 2
  return prior, params, text


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


def random_prior(kind: str, encode_resolution: int, dtype, fused_attention: bool
                 ) -> tuple[priors.DiffusionPrior, Any, tuple[jnp.ndarray, jnp.ndarray]]:
  """(MVDream prior, random prior params, random (cond, uncond) text states)."""
  prior, shapes, text_shapes = prior_and_shapes(kind, 0, encode_resolution, dtype=dtype,
                                                fused_attention=fused_attention)
  text = tuple(jax.random.normal(k, s.shape, s.dtype)
               for k, s in zip(jax.random.split(jax.random.PRNGKey(1)), text_shapes))
  return prior, host_random_params(shapes, seed=0), text


# ----------------------------------------------------------------------------
# The step.


def bench_settings(model: str = "lab4d", prior: str = "mvdream", *, resolution: int = 200,
                   samples: int = 64, patches: int = 8, groups: str = "canonical",
                   encode_resolution: int = 256, dtype: str = "bfloat16",
                   fused_attention: bool = False) -> extraction_settings.ExtractionSettings:
  """The extraction settings of a model preset with CSD on (every other step, from step 0).

  Raises:
    UserError: a setting CsdSettings refuses, named by its config key.
  """
  base = extraction_settings.defaults(model)
  mvdream = dataclasses.replace(base.csd.mvdream, encode_resolution=encode_resolution,
                                dtype=dtype, fused_attention=fused_attention)
  csd = dataclasses.replace(
      base.csd, prior="oracle" if prior == "oracle" else "mvdream", resolution=resolution,
      num_samples=samples, patches=patches, param_groups=groups, mvdream=mvdream)
  return dataclasses.replace(base, csd=csd)


class CsdStep(NamedTuple):
  """The extraction's jitted CSD step and its inputs.

  Attributes:
    step: step(state, data, scalars) -> (state, metrics), `state` donated.
    state: a fresh train state (random init).
    data: the plan's ExtractionData (the prior's params and text inside).
    scalars: the schedule's scalars of step 0 (a CSD step).
  """
  step: Any
  state: state_lib.TrainState
  data: plan_lib.ExtractionData
  scalars: dict


def csd_step(settings: extraction_settings.ExtractionSettings, prior: priors.DiffusionPrior,
             prior_params: Any, text: Optional[tuple], num_frames: int = NUM_FRAMES,
             layout: parallel.Layout = parallel.Layout()) -> CsdStep:
  """The CSD step of the extraction plan built on a synthetic video, on `layout`'s devices.

  prior_params / text may be arrays or ShapeDtypeStructs (then the step can be
  lowered and compiled, not run).
  """
  video = common.synthetic_video(num_frames, VIDEO_SIZE, VIDEO_SIZE, settings.model.feature_dim)
  plan = plan_lib.build_plan(settings, video, source="synthetic video",
                             prior=(prior, prior_params, text))
  kind, scalars = plan.schedule(0, settings.train.total_steps)
  if kind != plan_lib.CSD:
    raise UserError(f"bench csd: step 0 of the schedule is a {kind} step, not a CSD step")
  step_lib.check_layout([plan.kinds[plan_lib.CSD]], layout)
  step = step_lib.make_train_step(plan.kinds[plan_lib.CSD], plan.tx, layout)
  return CsdStep(step, plan.initial_state(False), plan.data, scalars)


def lower(bench: CsdStep):
  """The step lowered for its inputs (compile it with `.compile()`)."""
  return bench.step.lower(bench.state, bench.data, bench.scalars)


# ----------------------------------------------------------------------------
# The benchmark.


def benchmark(args: argparse.Namespace, devices: int = 1) -> dict[str, Any]:
  """Builds, compiles, runs and times the step on `devices` devices (0: all); the figures."""
  backend = jax.default_backend()
  fused = args.fused_attention == "on" or (args.fused_attention == "auto" and backend == "gpu")
  dtype = DTYPES[args.dtype]
  settings = bench_settings(args.model, args.prior, resolution=args.resolution,
                            samples=args.samples, patches=args.patches, groups=args.groups,
                            encode_resolution=args.encode_resolution, dtype=args.dtype,
                            fused_attention=fused)
  prior, prior_params, text = random_prior(args.prior, args.encode_resolution, dtype, fused)
  layout = parallel.make_layout(parallel.ParallelSettings(devices=devices))
  bench = csd_step(settings, prior, prior_params, text, layout=layout)
  bench = bench._replace(state=layout.place(bench.state), data=layout.place(bench.data))
  model_params = am.count_params(bench.state.params)
  start = time.perf_counter()
  compiled = lower(bench).compile()
  compile_s = time.perf_counter() - start
  memory = common.memory_figures(compiled)
  print(f"  compiled in {compile_s:.1f} s; XLA memory_analysis peak "
        f"{memory['peak_gib']:.2f} GiB", flush=True)
  flops = None
  if args.count_flops != "no":
    # XLA counts a loop body once and a split program per device: count the step lowered
    # without patches or field chunks (never compiled or run), every sample once, whole.
    unlooped = dataclasses.replace(
        settings, csd=dataclasses.replace(settings.csd, patches=0),
        render=dataclasses.replace(settings.render, field_chunk=0))
    flops = common.compiled_flops(
        lower(csd_step(unlooped, prior, prior_params, text, layout=layout)), "bench csd")

  state, times, applied, metrics = bench.state, [], 0, None
  for i in range(args.steps + 1):  # the first call is the warm-up
    begin = time.perf_counter()
    state, metrics = compiled(state, bench.data, bench.scalars)
    jax.block_until_ready(metrics["loss"])
    if i:
      times.append(time.perf_counter() - begin)
      # A refused update (spike test) costs the same; counted to say so.
      applied += int(parallel.to_host(metrics["applied"]))
  loss = float(parallel.to_host(metrics["loss"]))
  if not np.isfinite(loss):
    raise UserError("bench csd: the CSD loss is not finite")
  peak_device = common.peak_device_bytes()
  size = args.matmul_size or (8192 if backend == "gpu" else 1024)
  mm_f32 = common.matmul_flops_per_second(size)[0]
  mm_dtype = common.matmul_flops_per_second(size, dtype=dtype)[0]
  best, median = min(times), statistics.median(times)
  samples_per_step = (csd_settings.NUM_VIEWS * settings.csd.pixels_rendered
                      * settings.csd.samples_per_ray(settings.render.num_samples))
  return {
      "backend": backend, "device": str(jax.devices()[0].device_kind), "model": args.model,
      "prior": args.prior, "resolution": args.resolution, "samples": args.samples,
      "patches": args.patches, "encode_resolution": args.encode_resolution, "dtype": args.dtype,
      "fused_attention": fused, "groups": args.groups,
      "samples_per_step": samples_per_step,
      "model_params": model_params,
      "prior_params": int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(prior_params))),
      "compile_s": compile_s, "step_s_best": best, "step_s_median": median,
      "step_flops": flops, "achieved_flops_per_s": flops and flops / best,
      "matmul_size": size, "matmul_f32_flops_per_s": mm_f32,
      "matmul_dtype_flops_per_s": mm_dtype,
      "ratio_f32_matmul": flops and flops / best / mm_f32,
      "ratio_dtype_matmul": flops and flops / best / mm_dtype,
      "xla_peak_bytes": memory["peak_bytes"], "device_peak_bytes": peak_device,
      "num_devices": layout.num_devices,
      "samples_per_s": samples_per_step / best,
      "samples_per_s_per_device": samples_per_step / best / layout.num_devices,
      "loss": loss, "csd_loss": float(parallel.to_host(metrics["csd_loss"])),
      "applied_steps": applied,
  }


def check_arguments(args: argparse.Namespace) -> None:
  """UserError naming the first bad flag (before anything is built)."""
  if args.resolution < 2:
    raise UserError("--resolution: must be >= 2")
  if args.samples < 2:
    raise UserError("--samples: must be >= 2")
  if args.steps < 1:
    raise UserError("--steps: must be >= 1")
  if args.encode_resolution < 8:
    raise UserError("--encode-resolution: must be >= 8")
  if args.patches < 0 or args.matmul_size < 0:
    raise UserError("--patches / --matmul-size: must be >= 0")
  pixels = args.resolution * args.resolution
  if args.patches > 1 and pixels % args.patches:
    raise UserError(f"--patches: {args.patches} must divide the pixels of a view, "
                    f"--resolution^2 = {pixels}")


def run(args: argparse.Namespace) -> int:
  check_arguments(args)
  counts = common.parse_devices(args.devices)
  print(f"bench csd: model={args.model} prior={args.prior} {args.resolution}px x {args.samples} "
        f"samples, {args.patches} patches, {args.dtype}, backend={jax.default_backend()}",
        flush=True)
  common.per_device_count(counts, lambda count: benchmark(args, count), print_figures, args.json)
  return 0


def print_figures(r: dict) -> None:
  gib = common.GIB
  device_peak = ("n/a (this backend keeps no statistics)" if r["device_peak_bytes"] is None
                 else f"{r['device_peak_bytes'] / gib:.2f} GiB")
  print(f"  device                  {r['num_devices']} x {r['device']} (fused attention: "
        f"{r['fused_attention']})")
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
  print(f"  samples per second      {r['samples_per_s'] / 1e6:.3f} M (rendered ray samples / "
        f"step time), {r['samples_per_s_per_device'] / 1e6:.3f} M per device")
  print(f"  peak memory             device {device_peak}; XLA memory_analysis "
        f"{r['xla_peak_bytes'] / gib:.2f} GiB"
        + (" (one device's)" if r["num_devices"] > 1 else ""))
