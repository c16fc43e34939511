"""`animdreamer bench step`: FLOP/s of the extraction's reconstruction train step.

Builds the step exactly as extraction trains it: the extraction stage's plan
(`stages.extraction.plan.build_plan`) on a synthetic 64-frame 256 x 256 video,
and its "reconstruction" StepKind through `train.step.make_train_step`, one
`jax.jit` with the state donated: the batch drawn on the device (frame pairs,
R rays per step, S uniform samples per ray), warp-composed rendering (DQS
skinning with delta MLP, flow to the partner frame, cycle, eikonal on a share
of the rays, bone mask, feature matching), lab4d's losses with the stage's
scheduled weights, value_and_grad, and the one update rule (`train.update`:
global-norm clip, AdamW with the explicit parameters at x10).

It reads the step's FLOP count from XLA's `cost_analysis()` of the compiled
step, times the step (warm-up excluded; best and median of --steps runs),
times a dense fp32 matmul in the same process, and prints

  achieved FLOP/s = step FLOPs / step time,  ratio = achieved / matmul FLOP/s,
  samples per second = rays x samples per ray / step time (and per device),
  peak memory = XLA's memory_analysis() of the compiled step and the process's peak RSS.

With `--devices 1,2` the same step is built and timed on 1 and on 2 devices
(`parallel.Layout`, the batch's frame rows split over them) in this process,
and the speed-up of each against the first is printed.

Examples:
  animdreamer bench step --config cpu                 # 1024 rays x 32 samples
  animdreamer bench step --config lab4d --rays 1024 --samples 64
  XLA_FLAGS=--xla_force_host_platform_device_count=2 animdreamer bench step --devices 1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import statistics
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import allocator
from animdreamer_jax import parallel
from animdreamer_jax.bench import common
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model.mlp import MATMUL_DTYPES
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction_settings
from animdreamer_jax.train import step as step_lib

PRESETS = ("cpu", "lab4d", "tiny")
DEFAULT_SAMPLES = {"cpu": 32, "lab4d": 64, "tiny": 8}
IMAGE_SIZE = (256, 256)
NUM_FRAMES = 64
NEAR_FAR = (1.5, 3.5)  # the synthetic cameras stand 2.5 from the origin


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", choices=PRESETS, default="cpu",
                      help="model sizes: 'cpu' (small), 'lab4d' (8x256 trunk, 5x256 time MLPs) "
                           "or 'tiny' (smoke runs)")
  parser.add_argument("--rays", type=int, default=1024, help="rays per step (default 1024)")
  parser.add_argument("--samples", type=int, default=None,
                      help="samples per ray (default: 32 for cpu, 64 for lab4d, 8 for tiny)")
  parser.add_argument("--rays-per-frame", type=int, default=16,
                      help="rays per frame (lab4d: 16); rays / this frames, in pairs")
  parser.add_argument("--eikonal-fraction", type=float, default=1.0 / 16.0,
                      help="fraction of each frame's rays with the eikonal term (lab4d 1/16)")
  parser.add_argument("--bones", type=int, default=None,
                      help="number of bones (default: the preset's, 25 for cpu and lab4d)")
  parser.add_argument("--blend", choices=("dqs", "lbs"), default="dqs")
  parser.add_argument("--field-chunk", type=int, default=None,
                      help="samples per rematerialised canonical-field piece (default: "
                           "config.render.field_chunk's; 0: none, every activation kept)")
  parser.add_argument("--matmul-dtype", choices=MATMUL_DTYPES, default=None,
                      help="operands of the canonical field's products (default: the "
                           "preset's: bfloat16 for lab4d, float32 otherwise)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
  parser.add_argument("--matmul-size", type=int, default=2048,
                      help="side of the square fp32 matmul used as the peak")
  parser.add_argument("--devices", default="0",
                      help="device counts to time the step on, comma-separated (0: every "
                           "device; default 0)")
  parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def bench_settings(preset: str, rays: int, samples: int, rays_per_frame: int,
                   eikonal_fraction: float, bones: int | None, blend: str,
                   field_chunk: int | None = None, matmul_dtype: str | None = None
                   ) -> extraction_settings.ExtractionSettings:
  """The extraction settings of the preset with the benchmark's batch, sampling and bones
  (field_chunk / matmul_dtype None: the declared defaults)."""
  base = extraction_settings.defaults(preset)
  model = base.model if bones is None else dataclasses.replace(base.model, num_bones=bones)
  if matmul_dtype is not None:
    model = dataclasses.replace(model, matmul_dtype=matmul_dtype)
  render = dataclasses.replace(base.render, num_samples=samples,
                               eikonal_ray_fraction=eikonal_fraction, blend=blend)
  if field_chunk is not None:
    render = dataclasses.replace(render, field_chunk=field_chunk)
  return dataclasses.replace(
      base, model=model, render=render,
      data=dataclasses.replace(base.data, pairs_per_batch=rays // (2 * rays_per_frame),
                               pixels_per_frame=rays_per_frame))


class BuiltStep(NamedTuple):
  """The extraction's reconstruction step compiled at a benchmark's sizes, with its inputs."""
  compiled: Any  # the jitted step, lowered and compiled (state donated)
  state: Any
  data: Any
  scalars: Any
  layout: parallel.Layout
  settings: extraction_settings.ExtractionSettings
  compile_s: float
  flops: float  # the step's FLOPs, rematerialisation not counted (`model_flops`)


def build_step(preset: str, rays: int, samples: int, rays_per_frame: int = 16,
               eikonal_fraction: float = 1.0 / 16.0, bones: int | None = None,
               blend: str = "dqs", devices: int = 1, field_chunk: int | None = None,
               matmul_dtype: str | None = None) -> BuiltStep:
  """The trainer's reconstruction step (`plan.kinds`, `make_train_step`) on the synthetic video."""
  settings = bench_settings(preset, rays, samples, rays_per_frame, eikonal_fraction, bones, blend,
                            field_chunk, matmul_dtype)
  layout = parallel.make_layout(parallel.ParallelSettings(devices=devices))
  video = common.synthetic_video(NUM_FRAMES, *IMAGE_SIZE, settings.model.feature_dim)
  plan = plan_lib.build_plan(settings, video, source="synthetic video")
  kind, scalars = plan.schedule(0, settings.train.total_steps)
  step_lib.check_layout(plan.kinds.values(), layout)
  step = step_lib.make_train_step(plan.kinds[kind], plan.tx, layout)
  state = plan.initial_state(False)  # random init: the mlp_init fits change no shape
  near_far = np.tile(np.asarray([NEAR_FAR], np.float32), (NUM_FRAMES, 1))
  state = layout.place(state.replace(aux={**state.aux, "near_far": jnp.asarray(near_far)}))
  data = layout.place(plan.data)
  flops = model_flops(settings, video, state, data, scalars, layout)
  start = time.perf_counter()
  compiled = step.lower(state, data, scalars).compile()
  return BuiltStep(compiled, state, data, scalars, layout, settings,
                   time.perf_counter() - start, flops)


def model_flops(settings, video, state, data, scalars, layout: parallel.Layout) -> float:
  """FLOPs of one step without field chunks, from XLA's cost analysis of the lowered step.

  XLA counts a loop's body once, so the compiled chunked step (a `lax.map` over
  `render.field_chunk` pieces) under-reports; the same step lowered without chunks counts
  every sample once, and not the chunks' recomputation: the work the model needs.
  """
  whole = dataclasses.replace(settings, render=dataclasses.replace(settings.render,
                                                                   field_chunk=0))
  plan = plan_lib.build_plan(whole, video, source="synthetic video")
  kind, _ = plan.schedule(0, whole.train.total_steps)
  step = step_lib.make_train_step(plan.kinds[kind], plan.tx, layout)
  # The same video and settings give the same data: the placed copy is reused.
  return common.compiled_flops(step.lower(state, data, scalars), "bench step")


def benchmark(preset: str, rays: int, samples: int, rays_per_frame: int,
              eikonal_fraction: float, bones: int | None, blend: str, steps: int,
              matmul_size: int, devices: int = 1, field_chunk: int | None = None,
              matmul_dtype: str | None = None) -> dict[str, Any]:
  """Builds, compiles and times the step on `devices` devices (0: all); returns the figures."""
  built = build_step(preset, rays, samples, rays_per_frame, eikonal_fraction, bones, blend,
                     devices, field_chunk, matmul_dtype)
  compiled, state, data, scalars = built.compiled, built.state, built.data, built.scalars
  layout, settings, compile_s = built.layout, built.settings, built.compile_s
  num_params = am.count_params(state.params)
  memory = common.memory_figures(compiled)  # XLA's buffer assignment (one device's share)
  flops = built.flops  # counted before the program is split: the whole step's

  # Step and matmul timings are interleaved so both see the same machine load
  # (other processes share the cores); the best of each is the unloaded figure.
  mm, (a, b) = common.matmul_setup(matmul_size)
  state, metrics = compiled(state, data, scalars)  # warm-up
  jax.block_until_ready(metrics["loss"])
  times, mm_times, applied = [], common.time_calls(lambda: mm(a, b), 2), 0
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, data, scalars)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
    applied += int(parallel.to_host(metrics["applied"]))  # a refused update costs the same
    mm_times += common.time_calls(lambda: mm(a, b), 2)
  loss = float(parallel.to_host(metrics["loss"]))
  if not np.isfinite(loss):
    raise UserError("bench step: the loss is not finite")
  mm_flops = common.matmul_flops(matmul_size)
  peak, peak_median = mm_flops / min(mm_times), mm_flops / statistics.median(mm_times)
  best, median = min(times), statistics.median(times)
  return {
      "config": preset, "rays": rays, "samples": samples, "frames": rays // rays_per_frame,
      "bones": settings.model.num_bones, "blend": blend,
      "field_chunk": settings.render.field_chunk, "matmul_dtype": settings.model.matmul_dtype,
      "eikonal_rays_per_frame": max(1, int(round(rays_per_frame * eikonal_fraction))),
      "losses": sorted(settings.loss.enabled()),
      "params": num_params, "compile_s": compile_s,
      "step_flops": flops, "step_s_best": best, "step_s_median": median,
      "achieved_flops_per_s": flops / best, "achieved_flops_per_s_median": flops / median,
      "matmul_size": matmul_size, "matmul_flops_per_s": peak,
      "matmul_flops_per_s_median": peak_median,
      "ratio": flops / best / peak, "ratio_median": flops / median / peak_median,
      # Ray samples through the whole step (render, losses, backward, update) per second.
      "samples_per_s": rays * samples / best, "samples_per_s_median": rays * samples / median,
      "samples_per_s_per_device": rays * samples / best / layout.num_devices,
      "backend": str(jax.devices()[0].platform), "num_devices": layout.num_devices,
      "xla_peak_bytes": memory["peak_bytes"],
      # Peak resident memory of this process so far (Linux reports KiB): with --devices 1,2 it
      # covers every count timed before too.
      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
      "loss": loss, "applied_steps": applied,
  }


def run(args: argparse.Namespace) -> int:
  samples = args.samples or DEFAULT_SAMPLES[args.config]
  for name in ("rays", "steps", "rays_per_frame", "matmul_size"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')}: must be >= 1")
  if args.field_chunk is not None and args.field_chunk < 0:
    raise UserError("--field-chunk: must be >= 0 (0: no chunks)")
  if args.bones is not None and args.bones < 1:
    raise UserError("--bones: must be >= 1")
  if samples < 2:
    raise UserError("--samples: must be >= 2")
  if args.rays % (2 * args.rays_per_frame):
    raise UserError(f"--rays: {args.rays} is not a multiple of 2 x --rays-per-frame "
                    f"({args.rays_per_frame}); frames come in pairs")
  if not 0.0 <= args.eikonal_fraction <= 1.0:
    raise UserError("--eikonal-fraction: must be in [0, 1]")
  counts = common.parse_devices(args.devices)
  print(f"bench step: config={args.config} rays={args.rays} samples={samples} "
        f"bones={args.bones or 'preset'} blend={args.blend} "
        f"backend={jax.devices()[0].platform} ({jax.device_count()} devices), allocator: "
        f"{allocator.current()}", flush=True)
  common.per_device_count(
      counts, lambda count: benchmark(args.config, args.rays, samples, args.rays_per_frame,
                                      args.eikonal_fraction, args.bones, args.blend, args.steps,
                                      args.matmul_size, count, args.field_chunk,
                                      args.matmul_dtype),
      print_figures, args.json)
  return 0


def print_figures(r: dict) -> None:
  g = 1e9
  print(f"  devices                 {r['num_devices']} x {r['backend']}")
  print(f"  model parameters        {r['params']:,} ({r['bones']} bones); field chunk "
        f"{r['field_chunk'] or 'none'}, {r['matmul_dtype']} products")
  print(f"  losses                  {', '.join(r['losses'])}")
  print(f"  compile                 {r['compile_s']:.1f} s")
  print(f"  step FLOPs (XLA)        {r['step_flops'] / g:.2f} GFLOP (every sample once; the "
        f"field chunks' recomputation not counted)")
  print(f"  step time best/median   {r['step_s_best'] * 1e3:.1f} / {r['step_s_median'] * 1e3:.1f} ms")
  print(f"  achieved                {r['achieved_flops_per_s'] / g:.1f} GFLOP/s "
        f"(median {r['achieved_flops_per_s_median'] / g:.1f})")
  print(f"  matmul {r['matmul_size']}^2 fp32      {r['matmul_flops_per_s'] / g:.1f} GFLOP/s "
        f"(median {r['matmul_flops_per_s_median'] / g:.1f})")
  print(f"  ratio achieved/matmul   {r['ratio']:.2f} (median {r['ratio_median']:.2f})")
  print(f"  samples per second      {r['samples_per_s'] / 1e6:.3f} M "
        f"(median {r['samples_per_s_median'] / 1e6:.3f} M; rays x samples / step time), "
        f"{r['samples_per_s_per_device'] / 1e6:.3f} M per device")
  print(f"  peak memory             XLA memory_analysis {r['xla_peak_bytes'] / common.GIB:.2f} GiB"
        f"{' per device' if r['num_devices'] > 1 else ''}; process peak RSS "
        f"{r['peak_rss_bytes'] / common.GIB:.2f} GiB")
