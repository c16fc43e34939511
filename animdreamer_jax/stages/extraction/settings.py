"""Every setting of the extraction stage: one dataclass per config section, composed here.

Sections and where each is declared (its meaning beside each default):

| section | declared in | what |
| --- | --- | --- |
| `model` | `model.articulated_model.ModelConfig` | sizes and initial values (frame count, image size and feature width follow the video) |
| `data` | `data.batching.BatchSettings` | rays per reconstruction step |
| `render` | `render.settings.RenderSettings` | sampling, density, blending |
| `loss` | `losses.reconstruction.LossSettings` | base weights and schedule lengths |
| `optim` | `train.optimizer.OptimSettings` | AdamW and its one-cycle rate |
| `train` | `train.loop.TrainSettings` | the host loop: rounds, rollback, proxy mesh, logs, checkpoints |
| `init` | `InitSettings` (here) | the fits before training |
| `extract` | `OutputSettings` (here) | the files a finished run writes |
| `csd` | `csd.settings.CsdSettings` | Canonical Score Distillation (off by default) |
| `skeleton` | `skeleton.construct.SkeletonSettings` | the joint tree built from the bones when training ends |
| `parallel` | `parallel.ParallelSettings` | the devices a train step is split over (default: all) |

A config file starts from `base_config(preset)` (a ConfigDict with every
field), edits it, and is read back with `from_config`, which names any unknown
key or mistyped value.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from animdreamer_jax import settings as settings_lib
from animdreamer_jax.csd.settings import CsdSettings
from animdreamer_jax.parallel import ParallelSettings
from animdreamer_jax.data.batching import BatchSettings
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses.reconstruction import LossSettings
from animdreamer_jax.model import articulated_model
from animdreamer_jax.render.settings import RenderSettings
from animdreamer_jax.skeleton.construct import SkeletonSettings
from animdreamer_jax.train.loop import TrainSettings
from animdreamer_jax.train.optimizer import OptimSettings

# Lengths of the model in lab4d's field units (object ~0.2-0.4 across) scaled to the
# normalised sequences here (rest bbox diagonal 1): x2.5.
LENGTH_SCALE = 2.5
PRESETS = {"lab4d": articulated_model.lab4d_config, "cpu": articulated_model.cpu_config,
           "tiny": articulated_model.tiny_config}
# The lab4d-sized preset (the GPU configs) multiplies in bfloat16 (float32 parameters and
# accumulation, channels-first MLPs): its 4096 x 64 step 4.6-4.8 s against 7.7-9.1 s in float32
# on a CPU with bf16 dot instructions (docs/results.md, "Memory and speed").
PRESET_MATMUL_DTYPES = {"lab4d": "bfloat16"}
# ModelConfig fields that come from the video, not from the config.
VIDEO_FIELDS = ("video_lengths", "image_size")
MESH_FRAMES = ("object", "camera", "world")
BONE_STARTS = ("origin", "ground_truth")


@dataclasses.dataclass(frozen=True)
class InitSettings:
  """`init`: the initial state (lab4d's mlp_init fits, model/init.py)."""
  aabb_half: float = 0.6  # half-size of the canonical box before the first proxy mesh
  root_steps: int = 500  # at most this many Adam steps fit the root pose to the video's cameras
  sdf_steps: int = 500  # Adam steps fitting the SDF to a sphere of model.sphere_radius
  lr: float = 1e-3  # learning rate of both fits
  # Where the bones start: "origin" (lab4d's bag of bones, all near the centre) or
  # "ground_truth" (an oracle that needs gt/ with skin weights: at the skin-weighted
  # centroids of the rig's model.num_bones most influential joints; ladder rung (ii)).
  bones: str = "origin"

  def __post_init__(self):
    if self.bones not in BONE_STARTS:
      raise UserError(f"config.init.bones: unknown start {self.bones!r}; use one of "
                      f"{list(BONE_STARTS)}")


@dataclasses.dataclass(frozen=True)
class OutputSettings:
  """`extract`: what a finished extraction run writes."""
  mc_resolution: int = 128  # marching-cubes grid of the final rest mesh
  # Frame of the per-frame meshes: "object" (the model's object frame = the cameras' world
  # frame up to root-pose drift), "camera" (each frame's camera; lab4d's export), "world"
  # (camera frame mapped back with the video's cameras).
  mesh_frame: str = "object"
  eval_samples: int = 10000  # surface samples per mesh and frame for metrics.json
  camera_frame_metrics: bool = True  # also score in each frame's camera (lab4d's protocol)
  contact_frames: int = 6  # frames on contact_sheet.png
  video_fps: float = 0.0  # reconstruction.mp4 frame rate; 0: the video's
  render_stride: int = 1  # every n-th frame in reconstruction.mp4

  def __post_init__(self):
    if self.mesh_frame not in MESH_FRAMES:
      raise UserError(f"config.extract.mesh_frame: unknown frame {self.mesh_frame!r}; use one of "
                      f"{', '.join(MESH_FRAMES)}")
    if self.mc_resolution < 2:
      raise UserError("config.extract.mc_resolution: must be >= 2")


@dataclasses.dataclass(frozen=True)
class ExtractionSettings:
  """The whole extraction config (see the module docstring)."""
  model: articulated_model.ModelConfig = articulated_model.ModelConfig()
  data: BatchSettings = BatchSettings()
  render: RenderSettings = RenderSettings()
  loss: LossSettings = LossSettings()
  optim: OptimSettings = OptimSettings()
  train: TrainSettings = TrainSettings()
  init: InitSettings = InitSettings()
  extract: OutputSettings = OutputSettings()
  csd: CsdSettings = CsdSettings()
  skeleton: SkeletonSettings = SkeletonSettings()
  parallel: ParallelSettings = ParallelSettings()


def default_model(preset: str) -> articulated_model.ModelConfig:
  """A preset's model sizes ("lab4d": 8x256 trunk, "cpu": 6x128, "tiny": tests), lengths x2.5.

  The video-given fields keep ModelConfig's placeholders (the stage sets them from the video).
  """
  if preset not in PRESETS:
    raise UserError(f"model_preset: unknown preset {preset!r}; use one of {sorted(PRESETS)}")
  placeholder = articulated_model.ModelConfig()
  return PRESETS[preset](
      video_lengths=placeholder.video_lengths, image_size=placeholder.image_size,
      sphere_radius=0.1 * LENGTH_SCALE, init_gauss_scale=0.03 * LENGTH_SCALE,
      bone_trans_scale=0.1 * LENGTH_SCALE, bone_density_radius=0.01 * LENGTH_SCALE,
      init_bone_beta=0.01 * LENGTH_SCALE,
      matmul_dtype=PRESET_MATMUL_DTYPES.get(preset, placeholder.matmul_dtype))


def defaults(preset: str = "cpu") -> ExtractionSettings:
  """Every setting at its declared default, with the preset's model."""
  return ExtractionSettings(model=default_model(preset))


def to_config(settings: ExtractionSettings) -> ml_collections.ConfigDict:
  """The settings as the ConfigDict a config file edits (video-given model fields left out)."""
  config = settings_lib.to_config(settings)
  for name in VIDEO_FIELDS:
    del config.model[name]
  return config


def base_config(preset: str = "cpu") -> ml_collections.ConfigDict:
  """The ConfigDict a config file starts from: `defaults(preset)`, every field explicit."""
  return to_config(defaults(preset))


def from_config(config, ignore_unknown: bool = False) -> ExtractionSettings:
  """Reads a config (ConfigDict or the dict of a saved config.json) back into settings.

  ignore_unknown: skip keys no section declares (a run written by an earlier version).

  Raises:
    UserError: an unknown key or a mistyped value, named by its dotted key.
  """
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  model = dict(values.get("model", {}))
  for name in VIDEO_FIELDS:
    if name in model:
      raise UserError(f"config.model.{name}: comes from the video; remove it from the config")
  return settings_lib.from_config(ExtractionSettings, values, "config", ignore_unknown)
