"""`animdreamer bench step`: FLOP/s of the jitted render + losses + grad + AdamW step.

Builds the full training step on a synthetic batch shaped like lab4d's (frame
pairs, R rays per frame, S uniform samples per ray): warp-composed rendering
(`render.warp_render.render_rays`, DQS skinning with delta MLP, flow to the
partner frame, cycle, eikonal on 1/16 of the rays, bone mask), the lab4d
losses rgb, mask, flow, feature, eikonal, cycle, skin entropy, delta skin,
visibility and bone mask (`train.losses`), value_and_grad, and the AdamW
update with 10x explicit-parameter rate (`train.optimizer`), all in one
`jax.jit` with donated state.

It reads the step's FLOP count from XLA's `cost_analysis()` of the compiled
step, times the step (warm-up excluded; best and median of --steps runs),
times a dense fp32 matmul in the same process, and prints

  achieved FLOP/s = step FLOPs / step time,  ratio = achieved / matmul FLOP/s.

Examples:
  animdreamer bench step --config cpu                 # 1024 rays x 32 samples
  animdreamer bench step --config lab4d --rays 1024 --samples 64
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.render import warp_render
from animdreamer_jax.train import losses
from animdreamer_jax.train import optimizer as optimizer_lib

CONFIGS = {"cpu": am.cpu_config, "lab4d": am.lab4d_config}
DEFAULT_SAMPLES = {"cpu": 32, "lab4d": 64}
# lab4d loss weights (config.py) for the terms benchmarked here.
LOSS_WEIGHTS = {"rgb": 0.1, "mask": 0.1, "flow": 0.5, "feature": 0.01, "vis": 0.01,
                "eikonal": 1e-3, "cycle": 0.01, "skin_entropy": 5e-4, "delta_skin": 5e-3,
                "gauss_mask": 0.01}
IMAGE_SIZE = (256, 256)
NUM_FRAMES = 64


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", choices=sorted(CONFIGS), default="cpu",
                      help="model sizes: 'cpu' (small) or 'lab4d' (8x256 trunk, 5x256 time MLPs)")
  parser.add_argument("--rays", type=int, default=1024, help="rays per step (default 1024)")
  parser.add_argument("--samples", type=int, default=None,
                      help="samples per ray (default: 32 for cpu, 64 for lab4d)")
  parser.add_argument("--rays-per-frame", type=int, default=16,
                      help="rays per frame (lab4d: 16); rays / this frames, in pairs")
  parser.add_argument("--eikonal-fraction", type=float, default=1.0 / 16.0,
                      help="fraction of each frame's rays with the eikonal term (lab4d 1/16)")
  parser.add_argument("--bones", type=int, default=25, help="number of bones (lab4d 25)")
  parser.add_argument("--blend", choices=("dqs", "lbs"), default="dqs")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
  parser.add_argument("--matmul-size", type=int, default=2048,
                      help="side of the square fp32 matmul used as the peak")
  parser.add_argument("--json", default=None, help="also write the figures to this JSON file")


def synthetic_batch(key: jax.Array, num_frames: int, rays_per_frame: int,
                    feature_dim: int) -> dict[str, jnp.ndarray]:
  """Random batch shaped like `data.batching.Batch` (pairs of rows 2i, 2i + 1)."""
  ks = jax.random.split(key, 8)
  h, w = IMAGE_SIZE
  frames = jax.random.randint(ks[0], (num_frames,), 0, NUM_FRAMES)
  partners = frames.reshape(-1, 2)[:, ::-1].reshape(-1)  # lab4d flip_pair
  feature = jax.random.normal(ks[1], (num_frames, rays_per_frame, feature_dim))
  return {
      "frame_index": frames,
      "partner_frame": partners,
      "uv": jax.random.uniform(ks[2], (num_frames, rays_per_frame, 2)) * jnp.array([w, h]),
      "rgb": jax.random.uniform(ks[3], (num_frames, rays_per_frame, 3)),
      "mask": (jax.random.uniform(ks[4], (num_frames, rays_per_frame)) < 0.5).astype(jnp.float32),
      "flow": jax.random.normal(ks[5], (num_frames, rays_per_frame, 2)) * 3.0,
      "flow_valid": jnp.ones((num_frames, rays_per_frame)),
      "feature": feature / jnp.linalg.norm(feature, axis=-1, keepdims=True),
  }


def make_step(model: am.ArticulatedModel, tx: optax.GradientTransformation, *,
              num_samples: int, eikonal_rays: int, blend: str, learning_rate: float = 5e-4):
  """The jitted (params, opt_state, batch) -> (params, opt_state, loss) step."""
  options = warp_render.RenderOptions(num_samples=num_samples, eikonal_rays=eikonal_rays,
                                      warp=warp_render.SkinningWarp(blend=blend))

  def loss_fn(params, batch):
    out = warp_render.render_rays(
        model, params, batch["uv"], batch["frame_index"], batch["partner_frame"],
        near_far=jnp.array([1.5, 3.5]), options=options, alpha=0.8)
    fg = batch["mask"]
    terms = {
        "rgb": losses.rgb_loss(out["rgb"], batch["rgb"], fg),
        "mask": losses.silhouette_loss(out["opacity"], batch["mask"]),
        "flow": losses.flow_loss(out["flow"], batch["flow"], batch["flow_valid"], fg,
                                 IMAGE_SIZE[0]),
        "feature": losses.feature_loss(out["feature"], batch["feature"], fg),
        "vis": losses.mean_over_positive(out["vis"] * fg),
        "eikonal": losses.eikonal_loss(out["eikonal"].reshape(-1),
                                       out["eikonal_mask"].reshape(-1)),
        "cycle": losses.mean_over_positive(out["cyc_dist"]),
        "skin_entropy": losses.skin_entropy_loss(out["skin_entropy"]),
        "delta_skin": losses.delta_skin_loss(out["delta_skin"]),
        "gauss_mask": losses.gauss_mask_loss(out["gauss_mask"], out["opacity"]),
    }
    return sum(LOSS_WEIGHTS[k] * v for k, v in terms.items())

  def step(params, opt_state, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree_util.tree_map(lambda u: learning_rate * u, updates)
    return optax.apply_updates(params, updates), opt_state, loss

  return jax.jit(step, donate_argnums=(0, 1))


def compiled_flops(compiled) -> float:
  """Total FLOPs of a compiled executable from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  if flops <= 0:
    raise UserError("bench step: XLA's cost_analysis() reported no FLOP count on this backend")
  return flops


def _time_calls(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def _matmul_setup(size: int, dtype=jnp.float32):
  """A jitted dense (size x size) @ (size x size) matmul in `dtype` and its operands, warmed up."""
  ka, kb = jax.random.split(jax.random.PRNGKey(1))
  a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  return mm, (a, b)


def matmul_flops_per_second(size: int, repeats: int = 5, dtype=jnp.float32
                            ) -> tuple[float, float]:
  """(best, median) FLOP/s of a dense (size x size) @ (size x size) matmul in `dtype`."""
  mm, (a, b) = _matmul_setup(size, dtype)
  times = _time_calls(lambda: mm(a, b), repeats)
  flops = 2.0 * size**3
  return flops / min(times), flops / statistics.median(times)


def benchmark(config_name: str, rays: int, samples: int, rays_per_frame: int,
              eikonal_fraction: float, bones: int, blend: str, steps: int,
              matmul_size: int) -> dict[str, Any]:
  """Builds, compiles and times the step; returns the figures."""
  if rays % (2 * rays_per_frame):
    raise UserError(f"--rays: {rays} is not a multiple of 2 x --rays-per-frame ({rays_per_frame})")
  config = CONFIGS[config_name](video_lengths=(NUM_FRAMES,), image_size=IMAGE_SIZE,
                                num_bones=bones)
  model = am.ArticulatedModel(config)
  variables = init_lib.init_variables(model, 0)
  tx = optimizer_lib.make_optimizer(variables)
  opt_state = tx.init(variables)
  num_frames = rays // rays_per_frame
  eik_rays = int(round(rays_per_frame * eikonal_fraction))
  if eikonal_fraction > 0:
    eik_rays = max(1, eik_rays)
  step = make_step(model, tx, num_samples=samples, eikonal_rays=eik_rays, blend=blend)
  batch = synthetic_batch(jax.random.PRNGKey(0), num_frames, rays_per_frame, config.feature_dim)

  start = time.perf_counter()
  compiled = step.lower(variables, opt_state, batch).compile()
  compile_s = time.perf_counter() - start
  flops = compiled_flops(compiled)

  # Step and matmul timings are interleaved so both see the same machine load
  # (other processes share the cores); the best of each is the unloaded figure.
  mm, (a, b) = _matmul_setup(matmul_size)
  variables, opt_state, loss = compiled(variables, opt_state, batch)  # warm-up
  jax.block_until_ready(loss)
  times, mm_times = [], _time_calls(lambda: mm(a, b), 2)
  for _ in range(steps):
    start = time.perf_counter()
    variables, opt_state, loss = compiled(variables, opt_state, batch)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
    mm_times += _time_calls(lambda: mm(a, b), 2)
  if not np.isfinite(float(loss)):
    raise UserError("bench step: the loss is not finite")
  mm_flops = 2.0 * matmul_size**3
  peak, peak_median = mm_flops / min(mm_times), mm_flops / statistics.median(mm_times)
  best, median = min(times), statistics.median(times)
  return {
      "config": config_name, "rays": rays, "samples": samples, "frames": num_frames,
      "bones": bones, "blend": blend, "eikonal_rays_per_frame": eik_rays,
      "params": am.count_params(variables), "compile_s": compile_s,
      "step_flops": flops, "step_s_best": best, "step_s_median": median,
      "achieved_flops_per_s": flops / best, "achieved_flops_per_s_median": flops / median,
      "matmul_size": matmul_size, "matmul_flops_per_s": peak,
      "matmul_flops_per_s_median": peak_median,
      "ratio": flops / best / peak, "ratio_median": flops / median / peak_median,
      "devices": str(jax.devices()[0].platform), "loss": float(loss),
  }


def run(args: argparse.Namespace) -> int:
  samples = args.samples or DEFAULT_SAMPLES[args.config]
  for name in ("rays", "steps", "rays_per_frame", "bones", "matmul_size"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')}: must be >= 1")
  if samples < 2:
    raise UserError("--samples: must be >= 2")
  if args.rays % (2 * args.rays_per_frame):
    raise UserError(f"--rays: {args.rays} is not a multiple of 2 x --rays-per-frame "
                    f"({args.rays_per_frame}); frames come in pairs")
  if not 0.0 <= args.eikonal_fraction <= 1.0:
    raise UserError("--eikonal-fraction: must be in [0, 1]")
  print(f"bench step: config={args.config} rays={args.rays} samples={samples} "
        f"bones={args.bones} blend={args.blend} backend={jax.devices()[0].platform}", flush=True)
  r = benchmark(args.config, args.rays, samples, args.rays_per_frame, args.eikonal_fraction,
                args.bones, args.blend, args.steps, args.matmul_size)
  g = 1e9
  print(f"  model parameters        {r['params']:,}")
  print(f"  compile                 {r['compile_s']:.1f} s")
  print(f"  step FLOPs (XLA)        {r['step_flops'] / g:.2f} GFLOP")
  print(f"  step time best/median   {r['step_s_best'] * 1e3:.1f} / {r['step_s_median'] * 1e3:.1f} ms")
  print(f"  achieved                {r['achieved_flops_per_s'] / g:.1f} GFLOP/s "
        f"(median {r['achieved_flops_per_s_median'] / g:.1f})")
  print(f"  matmul {r['matmul_size']}^2 fp32      {r['matmul_flops_per_s'] / g:.1f} GFLOP/s "
        f"(median {r['matmul_flops_per_s_median'] / g:.1f})")
  print(f"  ratio achieved/matmul   {r['ratio']:.2f} (median {r['ratio_median']:.2f})")
  if args.json:
    import os
    import tempfile
    directory = os.path.dirname(os.path.abspath(args.json))
    fd, tmp = tempfile.mkstemp(prefix=".bench-", dir=directory)
    with os.fdopen(fd, "w") as f:
      json.dump(r, f, indent=2)
    os.replace(tmp, args.json)
  return 0
