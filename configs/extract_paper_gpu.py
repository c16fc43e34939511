r"""Extraction at the paper / lab4d scale, for one GPU.

lab4d's foreground field sizes (8x256 SDF trunk with a skip, 5x256 time MLPs,
25 Gaussian bones, delta skinning), 128 frame pairs x 16 pixels = 4096 rays x
64 samples per step, 20 rounds x 200 steps = 4000 steps (lab4d's default;
its tutorials use 120 rounds for cleaner meshes: --config.train.num_rounds=120),
AdamW 5e-4 one-cycle, 256-px videos.

Command:

  bin/animdreamer synth --asset third_party/khronos_fox/Fox.gltf --clip Walk \
      --frames 64 --res 256 --rot-noise-deg 10 --out runs/fox256
  bin/animdreamer extract --config configs/extract_paper_gpu.py \
      --video runs/fox256 --workdir runs/fox256_extract

Runtime: the whole run is NOT MEASURED; its train step takes 24.8 ms on one
NVIDIA H200 (2026-12-04), so the 4000 steps take under 2 min of device time
plus the host work between rounds. Result: not measured. Details:
docs/results.md, "GPU".
"""

from animdreamer_jax.stages.extraction import settings as extraction


def get_config():
  config = extraction.base_config("lab4d")
  config.data.pairs_per_batch = 128
  config.data.pixels_per_frame = 16
  config.render.num_samples = 64
  config.render.eval_chunk = 8192
  config.train.num_rounds = 20
  config.train.iters_per_round = 200
  config.train.checkpoint_every_rounds = 2
  config.train.mc_resolution = 64
  config.extract.mc_resolution = 128
  return config
