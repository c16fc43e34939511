"""What the step and CSD benchmarks share: the dense-matmul peak, XLA's FLOP and memory figures,
timing, and a synthetic video for the extraction stage to build its training plan on.

The benchmarks time the extraction stage's own train steps (`stages.extraction.plan.build_plan`
-> `train.step.make_train_step`), so what they measure is what `animdreamer extract` runs; the
video only has to have the right shapes.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import files
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError

GIB = float(1 << 30)


def time_calls(fn: Callable[[], Any], repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of fn (each waited for)."""
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def matmul_setup(size: int, dtype=jnp.float32) -> tuple[Callable, tuple[jnp.ndarray, jnp.ndarray]]:
  """A jitted dense (size x size) @ (size x size) matmul in `dtype` and its operands, warmed up."""
  ka, kb = jax.random.split(jax.random.PRNGKey(1))
  a = jax.random.normal(ka, (size, size), jnp.float32).astype(dtype)
  b = jax.random.normal(kb, (size, size), jnp.float32).astype(dtype)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  return mm, (a, b)


def matmul_flops(size: int) -> float:
  return 2.0 * size**3


def matmul_flops_per_second(size: int, repeats: int = 5, dtype=jnp.float32) -> tuple[float, float]:
  """(best, median) FLOP/s of a dense (size x size) @ (size x size) matmul in `dtype`."""
  mm, (a, b) = matmul_setup(size, dtype)
  times = time_calls(lambda: mm(a, b), repeats)
  return matmul_flops(size) / min(times), matmul_flops(size) / statistics.median(times)


def compiled_flops(compiled, what: str) -> float:
  """Total FLOPs of a compiled (or lowered) step from XLA's cost analysis (UserError if none)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  if flops <= 0:
    raise UserError(f"{what}: XLA's cost_analysis() reported no FLOP count on this backend")
  return flops


def memory_figures(compiled) -> dict[str, Any]:
  """XLA's buffer sizes of a compiled executable (bytes, and peak / temp / arguments in GiB)."""
  analysis = compiled.memory_analysis()
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  out: dict[str, Any] = {name: int(getattr(analysis, name, 0) or 0) for name in fields}
  # Donated arguments alias outputs: counted once.
  peak = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
          - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
  out.update(peak_bytes=peak, peak_gib=peak / GIB, temp_gib=out["temp_size_in_bytes"] / GIB,
             argument_gib=out["argument_size_in_bytes"] / GIB)
  return out


def peak_device_bytes() -> int | None:
  """The device's peak memory in use so far (GPU), or None where the backend keeps no statistics."""
  stats = jax.devices()[0].memory_stats()
  return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def synthetic_video(num_frames: int, height: int, width: int, feature_dim: int,
                    seed: int = 0) -> video_lib.Video:
  """A random video with the shapes and invariants of a real one (flow gap 1).

  Half the pixels are foreground; features are unit-norm there and 0 on the
  background, and flow is valid on foreground pixels whose partner frame
  exists. The cameras look at the origin from 2.5 units. Nothing else about
  the content matters to a benchmark.
  """
  rng = np.random.default_rng(seed)
  shape = (num_frames, height, width)
  mask = (rng.random(shape) < 0.5).astype(np.uint8)
  feature = rng.standard_normal(shape + (feature_dim,), np.float32)
  feature *= mask[..., None] / np.linalg.norm(feature, axis=-1, keepdims=True)

  def flow(valid_frames: slice) -> np.ndarray:
    valid = np.zeros(shape + (1,), np.float16)
    valid[valid_frames] = mask[valid_frames, ..., None]
    return np.concatenate([rng.normal(0.0, 3.0, shape + (2,)).astype(np.float16), valid], -1)

  w2c = np.tile(np.eye(4, dtype=np.float32), (num_frames, 1, 1))
  w2c[:, 2, 3] = 2.5
  focal = float(max(height, width))
  return video_lib.Video(
      rgb=rng.integers(0, 256, shape + (3,), np.uint8), mask=mask,
      depth=np.zeros(shape, np.float32), feature=feature.astype(np.float16),
      flow_fw={1: flow(slice(0, num_frames - 1))}, flow_bw={1: flow(slice(1, num_frames))},
      intrinsics=np.tile(np.array([[focal, focal, width / 2, height / 2]], np.float32),
                         (num_frames, 1)),
      w2c=w2c, meta={"fps": 24.0, "background": [1.0, 1.0, 1.0]})


def parse_devices(text: str) -> list[int]:
  """--devices "1,2" -> [1, 2] (0: every device)."""
  try:
    counts = [int(part) for part in text.split(",") if part.strip()]
  except ValueError:
    counts = []
  if not counts or any(c < 0 for c in counts):
    raise UserError(f"--devices {text!r}: give device counts like 1,2 (0: every device)")
  return counts


def per_device_count(counts: list[int], measure: Callable[[int], dict],
                     show: Callable[[dict], None], json_path: str | None) -> list[dict]:
  """Measures and shows a benchmark on each device count in turn (one process, so the speed-ups
  printed against the first are ratios of one run); the figures go to `json_path` (one dict for
  one count, else a list)."""
  results = []
  for count in counts:
    r = measure(count)
    show(r)
    if results:
      print(f"  speed-up vs {results[0]['num_devices']} device(s)  "
            f"{results[0]['step_s_best'] / r['step_s_best']:.2f}x (best step times)")
    results.append(r)
  if json_path:
    files.save_json(json_path, results[0] if len(results) == 1 else results, indent=2)
  return results
