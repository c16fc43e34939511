r"""Extraction at paper scale with CSD from MVDream (the production path, one GPU).

`extract_paper_gpu.py` plus a CSD step every 2nd iteration: 4 views of 200 x
200 pixels x 64 samples, resized to 256 px, SD VAE encoder + MVDream UNet
(bfloat16, fused attention), CFG 50 with rescale 0.5, x0-reconstruction form,
timestep fractions annealed from 0.98 to [0.02, 0.5] over 80% of training,
8 patches, canonical field only.

Command (needs the converted MVDream weights: sd-v2.1-base-4view.pt from the
Hugging Face repository MVDream/MVDream, converted with
`animdreamer convert-mvdream`; README "MVDream weights"):

  bin/animdreamer extract --config configs/extract_paper_gpu_mvdream.py \
      --video runs/fox256 --workdir runs/fox256_mvdream \
      --config.csd.mvdream.weights=weights/mvdream --config.csd.mvdream.prompt="a fox"

Runtime: the whole run is NOT MEASURED; one CSD step takes 615 ms and 21.6 GiB
on one NVIDIA H200 (2026-12-04, random weights), so about 22 min of device
time. Result: not measured; the CSD weight (lab4d `gen3d_wt`) is a starting
point to tune. Details: docs/results.md, "GPU".
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
