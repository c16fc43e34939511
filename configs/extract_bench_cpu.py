r"""Extraction benchmark on the 2-core CPU: 64 frames at 128 px, noisy cameras.

Videos (Quaternius Fox Walk, Deer Walk, Khronos Fox Run; orbit and 60-degree
arc cameras, ground-truth cameras with 10 degrees of rotation noise):

  bin/animdreamer synth --asset ../shared/assets/quaternius_animals/Fox.glb --clip Walk \
      --frames 64 --res 128 --camera orbit --rot-noise-deg 10 --out runs/bench/qfox_walk_orbit
  (Deer.glb Walk -> qdeer_walk_*, khronos_fox/Fox.gltf Run -> kfox_run_*; --camera arc)

Command:

  bin/animdreamer extract --config configs/extract_bench_cpu.py \
      --video runs/bench/qfox_walk_orbit --workdir runs/bench/qfox_walk_orbit.run

Expected runtime and metrics, measured 2026-11-25 (with a development version
of this config, on a machine shared with other jobs):
  runtime: Quaternius Fox Walk, orbit, 64 frames @128 px, 10 deg rotation noise:
           51 min wall on a shared 2-core machine (load ~11), 3.7 GB peak RSS
  metrics: that run: Chamfer 0.0127, F@2% 81.9 (never-seen side 0.0150 / 74.3);
           Deer Walk, Khronos Fox Run and the arc runs: not measured yet
"""

from animdreamer_jax.train import config as config_lib


def get_config():
  config = config_lib.extract_base_config("cpu")
  config.model.use_visibility = False  # its loss is off (weight 0); saves an MLP per sample
  config.data.pairs_per_batch = 16
  config.data.pixels_per_frame = 16
  config.render.num_samples = 32
  config.render.eval_samples = 32
  config.render.eval_importance_samples = 32
  config.train.num_rounds = 12
  config.train.iters_per_round = 100
  config.train.mc_resolution = 48
  config.extract.mc_resolution = 128
  return config
