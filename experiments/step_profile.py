r"""Where the reconstruction step's time goes: XLA:CPU's per-op trace, grouped by kind.

  python3 experiments/step_profile.py [--config lab4d] [--rays 1024] [--samples 64] [--steps 2]
      [--field-chunk N] [--matmul-dtype float32|bfloat16] [--top 25] [--json OUT]

Builds `animdreamer bench step`'s step (the trainer's own reconstruction step,
`bench.step.build_step`), runs it once to warm up, then --steps times under
`jax.profiler` (a Perfetto trace), and sums the duration of every XLA op the
CPU runtime executed, by kind:

  matmul        dots: XLA's `dot` and the XNNPACK `ynn_fusion`s built around them
  elementwise   loop / input fusions (activations, skinning, compositing glue, ...)
  reduce        reductions and reduce-windows outside fusions
  sort/gather   sort, gather, scatter, dynamic slices (batch sampling, feature matching)
  copy/layout   copies, transposes, concatenates, pads, broadcasts (data movement)
  other         the rest (rng, custom calls, ...)

Loops (`while`, `call`, `conditional`) are containers: their bodies' ops are
counted, the loop itself is not. The wall time of the traced steps is printed
beside the sum; with 2 cores the ops can overlap, so the sum may exceed it.
It also prints the dense matmul's FLOP/s measured in the same run and the
time the step's dot FLOPs would take at that rate (the matmul limit).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import pathlib
import re
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from animdreamer_jax import files  # noqa: E402
from animdreamer_jax.bench import common  # noqa: E402
from animdreamer_jax.bench import step as bench_step  # noqa: E402

CONTAINERS = ("while", "call", "conditional")
KINDS = ("matmul", "elementwise", "reduce", "sort/gather", "copy/layout", "other")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(\S+)\s+([\w\-]+)\(")


def op_kinds(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> the kind its time is counted under (see the module doc)."""
  kinds = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(3)
    if opcode in CONTAINERS:
      kinds[name] = "container"
    elif opcode in ("dot", "convolution") or "__ynn_fusion" in line or "onednn" in line:
      kinds[name] = "matmul"
    elif opcode == "fusion":
      kinds[name] = "elementwise"
    elif opcode in ("reduce", "reduce-window"):
      kinds[name] = "reduce"
    elif opcode in ("sort", "gather", "scatter", "dynamic-slice", "dynamic-update-slice"):
      kinds[name] = "sort/gather"
    elif opcode in ("copy", "transpose", "concatenate", "pad", "broadcast", "slice",
                    "reshape", "bitcast"):
      kinds[name] = "copy/layout"
    else:
      kinds[name] = "other"
  return kinds




def op_sources(hlo_text: str) -> dict[str, str]:
  """HLO instruction name -> "fwd|bwd <layer>/<op> <shape> [dot operand shapes]"."""
  bodies = dict(re.findall(r"\n%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}", hlo_text, re.S))
  out = {}
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    src = re.search(r'op_name="([^"]+)"', line)
    if not (m and src):
      continue
    parts = src.group(1).split("/")
    label = ("bwd " if "transpose(" in src.group(1) else "fwd ") + "/".join(parts[-2:])[-40:]
    called = re.search(r"calls=%?([\w.\-]+)", line)
    body = bodies.get(called.group(1), "") if called else ""
    dot = re.search(r"= (\S+) dot\(.*?(lhs_contracting_dims=\{[\d,]*\})", body + "\n" + line)
    if dot:
      operands = re.findall(r"(\S+\[[\d,]*\])\S* parameter", body)
      label += f" {dot.group(1)} <- {' '.join(operands[:2])} {dot.group(2)}"
    out[m.group(1)] = label
  return out


def trace_events(log_dir: str) -> list[dict]:
  paths = sorted(glob.glob(f"{log_dir}/**/*.trace.json.gz", recursive=True))
  if not paths:
    raise SystemExit(f"step_profile: no Perfetto trace written under {log_dir}")
  data = json.load(gzip.open(paths[-1]))
  return data["traceEvents"] if isinstance(data, dict) else data


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="lab4d", choices=bench_step.PRESETS)
  parser.add_argument("--rays", type=int, default=1024)
  parser.add_argument("--samples", type=int, default=64)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--field-chunk", type=int, default=None,
                      help="override config.render.field_chunk (0: no chunks)")
  parser.add_argument("--matmul-dtype", default=None, choices=("float32", "bfloat16"),
                      help="override config.model.matmul_dtype")
  parser.add_argument("--top", type=int, default=25, help="slowest single ops to list")
  parser.add_argument("--json", default=None)
  args = parser.parse_args(argv)

  built = bench_step.build_step(args.config, args.rays, args.samples,
                                field_chunk=args.field_chunk, matmul_dtype=args.matmul_dtype)
  hlo = built.compiled.as_text()
  kinds, where = op_kinds(hlo), op_sources(hlo)
  flops = built.flops
  state, metrics = built.compiled(built.state, built.data, built.scalars)
  jax.block_until_ready(metrics["loss"])
  mm_rate, _ = common.matmul_flops_per_second(2048)

  with tempfile.TemporaryDirectory(prefix="step_profile_") as log_dir:
    jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = built.compiled(state, built.data, built.scalars)
      jax.block_until_ready(metrics["loss"])
    wall = (time.perf_counter() - start) / args.steps
    jax.profiler.stop_trace()
    events = trace_events(log_dir)

  by_kind: dict[str, float] = collections.defaultdict(float)
  by_op: dict[str, float] = collections.defaultdict(float)
  for event in events:
    if event.get("ph") != "X":
      continue
    kind = kinds.get(event["name"])
    if kind is None or kind == "container":
      continue
    seconds = event.get("dur", 0.0) * 1e-6 / args.steps
    by_kind[kind] += seconds
    by_op[event["name"]] += seconds
  total = sum(by_kind.values())
  print(f"step_profile: {args.config} {args.rays} rays x {args.samples} samples, "
        f"field_chunk={built.settings.render.field_chunk} "
        f"matmul_dtype={built.settings.model.matmul_dtype}")
  print(f"  step wall time {wall:.3f} s; ops' summed time {total:.3f} s")
  for kind in KINDS:
    print(f"  {kind:<12} {by_kind.get(kind, 0.0):7.3f} s  {by_kind.get(kind, 0.0) / total:6.1%}")
  print(f"  step FLOPs (XLA) {flops / 1e9:.1f} GFLOP; dense matmul {mm_rate / 1e9:.0f} GFLOP/s: "
        f"matmul limit {flops / mm_rate:.3f} s = {flops / mm_rate / wall:.2f} of the step")
  families: dict[str, float] = collections.defaultdict(float)
  for name, seconds in by_op.items():
    families[re.sub(r"[.\d]+$", "", name)] += seconds
  print("  by op family (s per step): " + ", ".join(
      f"{name} {seconds:.3f}" for name, seconds in sorted(families.items(),
                                                          key=lambda kv: -kv[1])[:10]))
  print(f"  slowest ops (s per step):")
  for name, seconds in sorted(by_op.items(), key=lambda kv: -kv[1])[:args.top]:
    print(f"    {seconds:7.3f}  {kinds[name]:<12} {name:<32} {where.get(name, '')[:110]}")
  if args.json:
    files.save_json(args.json, {"wall_s": wall, "ops_s": total, "by_kind": by_kind,
                                "flops": flops, "matmul_flops_per_s": mm_rate,
                                "slowest": sorted(by_op.items(), key=lambda kv: -kv[1])[:100]},
                    indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
