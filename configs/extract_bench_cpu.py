r"""Extraction benchmark on the 2-core CPU: 64 frames at 128 px, noisy cameras.

Videos (Quaternius Fox Walk, Deer Walk, Khronos Fox Run; orbit and 60-degree
arc cameras, ground-truth cameras with 10 degrees of rotation noise):

  bin/animdreamer synth --asset ../shared/assets/quaternius_animals/Fox.glb --clip Walk \
      --frames 64 --res 128 --camera orbit --rot-noise-deg 10 --out runs/bench/qfox_walk_orbit
  (Deer.glb Walk -> qdeer_walk_*, khronos_fox/Fox.gltf Run -> kfox_run_*; --camera arc)

Command:

  bin/animdreamer extract --config configs/extract_bench_cpu.py \
      --video runs/bench/qfox_walk_orbit --workdir runs/bench/qfox_walk_orbit.run

Expected runtime and metrics: MEASURED values are in the table below (filled
in by whoever ran them, with the load of the machine at the time).
  runtime: TO BE MEASURED
  metrics: TO BE MEASURED
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
