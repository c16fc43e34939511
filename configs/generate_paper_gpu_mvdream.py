r"""Generation at paper scale with MVDream from a text prompt (the production path, one GPU).

The paper's CSD settings (`extract_paper_gpu_mvdream.py`'s): 4 views of
200 x 200 pixels x 64 samples through the source's motion, resized to 256 px
for the SD VAE encoder, MVDream UNet in bfloat16 with fused attention, CFG 50
with rescale 0.5 in the x0-reconstruction form, timestep fractions annealed
from 0.98 to [0.02, 0.5] over 80% of training, patch-wise back-propagation in
8 chunks; every 2nd step, L_skel and L_bone on, the source video's data terms
faded x1 -> x1e-6 over half of training; lab4d sizes (the source run must be
an `extract_paper_gpu*.py` run), 20 rounds x 200 steps.

Command (needs the converted MVDream weights: sd-v2.1-base-4view.pt from the
Hugging Face repository MVDream/MVDream, converted with
`animdreamer convert-mvdream`; README "MVDream weights"):

  bin/animdreamer generate --config configs/generate_paper_gpu_mvdream.py \
      --run runs/fox256_extract --workdir runs/fox256_to_wolf --prompt "a grey wolf" \
      --config.csd.mvdream.weights=weights/mvdream

Runtime: NOT MEASURED (no GPU and no weights here). Memory of its CSD step by
XLA's `memory_analysis()`, compiled for the 2-core CPU with abstract MVDream
weights (`python3 experiments/csd_memory.py --strategy patches --dtype bfloat16
--groups fg`, 2026-12-06): 40.2 GiB peak (36.9 temporaries); the extraction's
CSD step ("canonical" groups) reads 37.4 GiB the same way, and 21.4 GiB on an
H200 (21.6 measured, 615 ms a step; 2026-12-04). Training the bones and
skinning through the warp ("fg") thus costs about 8% more: roughly 23 GiB on
an H200 (an estimate, not measured), an 80 GB card. Result: not measured.
"""

import pathlib

from animdreamer_jax import settings
from animdreamer_jax.stages.generation import settings as generation


def get_config():
  config = generation.base_config()
  paper = settings.load_config_file(
      pathlib.Path(__file__).with_name("extract_paper_gpu_mvdream.py"))
  for section in ("data", "render", "train", "extract"):
    config[section] = paper[section]
  csd = paper.csd
  csd.prior = "mvdream"
  config.csd = csd
  return config
