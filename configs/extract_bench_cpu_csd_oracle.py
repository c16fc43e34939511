r"""The CPU benchmark config with CSD from the oracle prior (the CSD experiment, 2-core CPU).

`extract_bench_cpu.py` plus a CSD step every 2nd iteration from the start: 4
views at the video's 128 px, 128 random pixels of each rendered, ground-truth
targets in the model's object frame, weight 0.1 on the canonical field, warp,
skinning and bones ("fg"); both arms train the same 1200 steps.

Commands (videos as in extract_bench_cpu.py with --camera fixed or arc): one
run, or both arms (with and without CSD) compared on the never-seen side:

  bin/animdreamer extract --config configs/extract_bench_cpu_csd_oracle.py \
      --video runs/bench/qfox_walk_fixed --workdir runs/bench/qfox_walk_fixed.csd.run
  python3 experiments/csd_with_and_without.py --video runs/bench/qfox_walk_fixed \
      --out runs/csd/qfox_walk_fixed --config configs/extract_bench_cpu_csd_oracle.py

Runtime: 6-10 min per run on the 2-core CPU, one run at a time (2.4 GB peak
RSS). Result (2026-12-06, commit e0238a7): on the fixed-camera videos of the
Quaternius Fox / Deer Walk and the Khronos Fox Run, F@2% 74.9 / 72.0 / 70.0
with the never-seen side within 8 points of the seen side (without CSD 66.6 /
57.9 / 21.6), whole bodies but no legs; on 60-degree arcs there is little to
fill in (2026-12-04: Fox 0.0188 -> 0.0150 and 0.0140 -> 0.0155 over two seeds).
Every row: docs/results.md, "One side" and "CSD with the oracle prior".
"""

import pathlib

from animdreamer_jax import settings


def get_config():
  config = settings.load_config_file(pathlib.Path(__file__).with_name("extract_bench_cpu.py"))
  csd = config.csd
  csd.prior = "oracle"
  csd.reduction = "mean"  # the oracle's targets are images: per-pixel scale like the RGB loss
  csd.weight = 0.1
  csd.every_k = 2
  csd.resolution = 128  # the video's: the targets are as sharp as the frames the model fits
  csd.pixels_per_view = 128  # 4 x 128 rays per CSD step, as many as a reconstruction step
  csd.num_samples = 32
  csd.object_size = 1.0  # the normalised sequences' rest bbox diagonal
  csd.distance_range = (0.4, 0.55)  # the animal fills most of the view
  csd.anneal_fraction = 0.8
  csd.param_groups = "fg"
  return config
