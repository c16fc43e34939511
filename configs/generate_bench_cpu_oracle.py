r"""Generation benchmark on the 2-core CPU: a wolf that walks like the extracted fox (oracle prior).

From a finished `extract_bench_cpu.py` run of the Quaternius Fox Walk orbit
video, training continues with CSD from the oracle prior of the Quaternius
Wolf Walk video (same rig, same clip, same camera path: its ground truth is
the exact answer): every 2nd step 4 views of a random frame at 128 px, 128
random pixels each, rendered through the fox's motion; L_skel and L_bone on;
the fox video's data terms faded x1 -> x1e-6 over the first half.

Commands ($QUATERNIUS holds the Quaternius Fox.glb and Wolf.glb, not bundled):

  bin/animdreamer synth --asset $QUATERNIUS/Fox.glb --clip Walk --frames 64 \
      --res 128 --camera orbit --rot-noise-deg 10 --out runs/bench/qfox_walk_orbit
  bin/animdreamer synth --asset $QUATERNIUS/Wolf.glb --clip Walk --frames 64 \
      --res 128 --camera orbit --rot-noise-deg 10 --out runs/bench/qwolf_walk_orbit
  bin/animdreamer extract --config configs/extract_bench_cpu.py \
      --video runs/bench/qfox_walk_orbit --workdir runs/bench/qfox.run
  bin/animdreamer generate --config configs/generate_bench_cpu_oracle.py \
      --run runs/bench/qfox.run --target runs/bench/qwolf_walk_orbit --workdir runs/bench/fox2wolf

The ablations (same budget): --config.loss.weights.skeleton=0 (no L_skel),
--config.loss.weights.bone_inside=0 (no L_bone), both, --config.generate.warp=false
(plain SDS on the canonical model); --config.generate.start=bones (start from the bones).

Runtime: 4-6 min per generation on the 2-core CPU, one run at a time (the fox
extraction before it: 7-9 min). Result (2026-12-06, commit e6798c4): against the
Wolf's ground truth F@2% 73.8, Chamfer 0.0163, limb recall@2% 52.2 (the fox as it
was: 64.9 / 23.3; the Wolf extracted from its own video: 59.2 / 29.1), but the legs
are plates (each side's pair fused); joint drift 0.028, bone-length variation
0.054. Ablations: no L_bone limb recall 40.8, no L_skel bone-length variation
0.082, canonical SDS F@2% 63.5, start from the bones limb recall 6.1. Every row:
docs/results.md, "Generation".
"""

from animdreamer_jax.stages.generation import settings as generation


def get_config():
  config = generation.base_config()
  # The sampling of extract_bench_cpu.py (the source run's).
  config.data.pairs_per_batch = 16
  config.data.pixels_per_frame = 16
  config.render.num_samples = 32
  config.render.eval_samples = 32
  config.render.eval_importance_samples = 32
  # The density sharpness schedule (extraction's render.final_beta, off in extract_bench_cpu.py
  # for its noisy cameras): generation's cameras are exact, and the new animal's thin legs must
  # become surface, not fog. Without it (2026-12-06): F@2% 71.0, limb recall 35.4; with it
  # 73.8 / 52.2 (docs/results.md, "Generation").
  config.render.final_beta = 0.005
  config.train.num_rounds = 8
  config.train.iters_per_round = 100
  config.train.mc_resolution = 48
  config.extract.mc_resolution = 128
  csd = config.csd
  csd.prior = "oracle"
  csd.reduction = "mean"  # the oracle's targets are images: per-pixel scale like the RGB loss
  csd.weight = 0.1
  csd.every_k = 2
  csd.resolution = 128  # the videos': targets as sharp as the frames the source was fitted to
  csd.pixels_per_view = 128  # 4 x 128 rays per CSD step, as many as a reconstruction step
  csd.num_samples = 32
  csd.object_size = 1.0  # the normalised sequences' rest bbox diagonal
  csd.distance_range = (0.4, 0.55)  # the animal fills most of the view
  csd.anneal_fraction = 0.8
  return config
