r"""Extraction at paper scale with CSD from MVDream (the production path, one GPU).

`extract_paper_gpu.py` (lab4d field sizes, 4096 rays x 64 samples, 4000 steps)
plus a CSD step every 2nd iteration (lab4d `gen3d_freq`): 4 views of 200 x 200
pixels x 64 samples rendered through the backward warp, resized to 256 px, the
SD VAE encoder and the MVDream UNet (bfloat16 activations, fused attention) with
classifier-free guidance 50 and CFG-std rescale 0.5, MVDream's x0-reconstruction
form, timestep fractions annealed from 0.98 to [0.02, 0.5] over 80% of training,
the image gradient pulled back in 8 patches (AnimatableDreamer's memory trick),
into the canonical field only (lab4d's default CSD groups).

Command (needs the converted MVDream weights, README "MVDream weights": the
file sd-v2.1-base-4view.pt from the Hugging Face repository MVDream/MVDream,
converted with `animdreamer convert-mvdream`, and a prompt):

  bin/animdreamer extract --config configs/extract_paper_gpu_mvdream.py \
      --video runs/fox256 --workdir runs/fox256_mvdream \
      --config.csd.mvdream.weights=weights/mvdream --config.csd.mvdream.prompt="a fox"

Measured 2026-12-04 on one NVIDIA H200 (jax 0.11.2), random weights of the
official sizes (`animdreamer bench csd`, `animdreamer bench step --config lab4d
--rays 4096 --samples 64`): one CSD step 615 ms (median 636 ms), 21.6 GiB peak
device memory (XLA's memory_analysis estimate 21.4 GiB), compiled in 71 s; one
reconstruction step 24.8 ms. With every 2nd step a CSD step, the 4000 steps
cost about 2000 x 0.62 + 2000 x 0.025 s = 22 min of device time plus the host
work between rounds. The whole run has NOT been measured (no MVDream weights can
be downloaded where this was written); the CSD weight (lab4d `gen3d_wt`, the
paper's value unknown) is a starting point to tune.
"""

import pathlib

from animdreamer_jax import settings


def get_config():
  config = settings.load_config_file(pathlib.Path(__file__).with_name("extract_paper_gpu.py"))
  csd = config.csd
  csd.prior = "mvdream"
  csd.weight = 0.1
  csd.every_k = 2
  csd.resolution = 200
  csd.num_samples = 64
  csd.mvdream.encode_resolution = 256
  csd.guidance_scale = 50.0
  csd.rescale = 0.5
  csd.mode = "recon"
  csd.anneal_fraction = 0.8
  csd.patches = 8
  csd.mvdream.dtype = "bfloat16"
  csd.mvdream.fused_attention = True
  csd.param_groups = "canonical"
  return config
