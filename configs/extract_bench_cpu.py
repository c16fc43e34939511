r"""Extraction benchmark on the 2-core CPU: 64 frames at 128 px, noisy cameras.

Command (orbit, 60-degree arc and fixed-camera videos of the Quaternius Fox / Deer Walk and
the Khronos Fox Run, 10 degrees of camera rotation noise; $QUATERNIUS holds the
Quaternius Fox.glb and Deer.glb, which are not bundled):

  bin/animdreamer synth --asset $QUATERNIUS/Fox.glb --clip Walk --frames 64 \
      --res 128 --camera orbit --rot-noise-deg 10 --out runs/bench/qfox_walk_orbit
  bin/animdreamer extract --config configs/extract_bench_cpu.py \
      --video runs/bench/qfox_walk_orbit --workdir runs/bench/qfox_walk_orbit.run

Runtime: 7-9 min wall on the 2-core CPU, one run at a time (6-8 min of
training, 2.1-2.8 GB peak RSS). Result (2026-12-06, commit e0238a7): every
video of the three animals with orbit, 60-degree arc and fixed cameras ends
with a surface (a round whose surface vanishes or breaks up is redone with the
root pose held); arcs F@2% 54-63 (bodies without legs), fixed 22-67. Every row:
docs/results.md, "One side" (and "Extraction benchmark" for the 2026-11-25 rows).
"""

from animdreamer_jax.stages.extraction import settings as extraction


def get_config():
  config = extraction.base_config("cpu")
  config.model.use_visibility = False  # its loss is off (weight 0); saves an MLP per sample
  config.data.pairs_per_batch = 16
  config.data.pixels_per_frame = 16
  # No density sharpness schedule (render.final_beta): with 10 degrees of camera noise it cost
  # the Khronos Fox Run 75.7 -> 62.2 F@2% (docs/results.md, "oracle ladder").
  config.render.num_samples = 32
  config.render.eval_samples = 32
  config.render.eval_importance_samples = 32
  config.train.num_rounds = 12
  config.train.iters_per_round = 100
  config.train.mc_resolution = 48
  config.extract.mc_resolution = 128
  return config
