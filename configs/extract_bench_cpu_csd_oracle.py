r"""The CPU benchmark config with CSD from the oracle prior (the CSD experiment, 2-core CPU).

The extraction benchmark (`extract_bench_cpu.py`) plus a CSD step every 4th
iteration from a quarter of training on: 4 views at 48 px around the frame-t
object, targets from the oracle prior (ground-truth renders, anti-aliased,
registered to the model every round), x0-reconstruction form with the
per-element ("mean") reduction at weight 0.1, on the canonical SDF, colour and
the density's sharpness (`logibeta`).

Command (trains with and without CSD, same config and steps, and compares the
never-seen side; videos as in extract_bench_cpu.py, `--camera arc`):

  python3 -m animdreamer_jax.csd.experiment --video runs/bench/qfox_walk_arc \
      --out runs/csd/qfox_walk_arc --config configs/extract_bench_cpu_csd_oracle.py

or one run: bin/animdreamer extract --config configs/extract_bench_cpu_csd_oracle.py ...

Expected runtime and metrics: see MEASURED below.
"""

import importlib.util
import pathlib


def _bench_config():
  path = pathlib.Path(__file__).with_name("extract_bench_cpu.py")
  spec = importlib.util.spec_from_file_location("_extract_bench_cpu", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _bench_config()
  csd = config.csd
  csd.prior = "oracle"
  csd.reduction = "mean"  # the oracle's targets are images: per-pixel scale like the RGB loss
  csd.weight = 0.1
  csd.resolution = 48
  csd.num_samples = 32
  csd.object_size = 1.0  # the normalised sequences' rest bbox diagonal
  csd.distance_range = (0.4, 0.55)  # the animal fills most of the view
  csd.every_k = 4
  csd.start_fraction = 0.25  # reconstruction warm-up: the oracle needs a surface to register
  csd.anneal_fraction = 0.8
  csd.param_groups = ("canonical/sdf_trunk,canonical/sdf_head,canonical/color_mlp,"
                      "canonical/rgb_hidden,canonical/rgb_out,logibeta")
  return config
