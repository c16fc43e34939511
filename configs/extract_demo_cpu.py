r"""Extraction on the 2-core CPU demo: small model, 128-px video, a few minutes.

Command (the `demo` subcommand runs the same thing on the bundled Khronos Fox):

  bin/animdreamer synth --asset third_party/khronos_fox/Fox.gltf --clip Walk \
      --frames 32 --res 128 --out runs/demo/video
  bin/animdreamer extract --config configs/extract_demo_cpu.py \
      --video runs/demo/video --workdir runs/demo/extract

Runtime: 600 steps; the whole `demo` (synth + extract + export + scores) 163 s
wall on an idle 2-core CPU (2026-12-06; 334 s on 2026-12-05). Result (2026-12-06,
fc57909, canonical fields in rematerialised chunks): Chamfer 0.0147, F@2% 77.9,
limb recall@2% 45.3 (2026-12-05: 0.0156, 75.6, 44.9; legs and ears show, stubby;
before the sharpness schedule and 128 px: 34.4 and no legs in the mesh).
Details: docs/results.md, "Demo", "oracle ladder" and "Memory and speed".
"""

from animdreamer_jax.stages.extraction import settings as extraction


def get_config():
  config = extraction.base_config("cpu")
  config.data.pairs_per_batch = 8
  config.data.pixels_per_frame = 32
  # Thin parts (legs, ears) become surface instead of soft fog (docs/results.md, "oracle ladder").
  config.render.final_beta = 0.005
  config.render.num_samples = 32
  config.render.eval_samples = 24
  config.render.eval_importance_samples = 24
  config.train.num_rounds = 10
  config.train.iters_per_round = 60
  config.train.mc_resolution = 40
  config.extract.mc_resolution = 96
  return config
