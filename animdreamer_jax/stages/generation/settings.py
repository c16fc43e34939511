"""Every setting of the generation stage: the extraction's sections (but `model` and `init`) plus `generate`.

Generation continues from a finished extraction run: its model (model.json) and
trained parameters are the starting point, so the `model` section is the run's
and never a config's, and there are no initial fits (`init`). Every other
section means what it means in extraction (`stages.extraction.settings`); a
generation config starts from `base_config()` - extraction's defaults with CSD
on, the reconstruction terms faded out and the skeleton constraints on - and
edits it. The one new section:

| section | declared in | what |
| --- | --- | --- |
| `generate` | `GenerateSettings` (here) | the starting shape, the fade of the reconstruction terms, what trains, warp or canonical CSD |

`loss.skeleton_file` empty means the source run's skeleton.json (L_skel holds
the run's own joints).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from animdreamer_jax import settings as settings_lib
from animdreamer_jax.csd.settings import CsdSettings
from animdreamer_jax.data.batching import BatchSettings
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses.reconstruction import LossSchedules, LossSettings, LossWeights
from animdreamer_jax.model import articulated_model
from animdreamer_jax.parallel import ParallelSettings
from animdreamer_jax.render.settings import RenderSettings
from animdreamer_jax.skeleton.construct import SkeletonSettings
from animdreamer_jax.stages.extraction import settings as extraction
from animdreamer_jax.train.loop import TrainSettings
from animdreamer_jax.train.optimizer import OptimSettings

STARTS = ("source", "bones")
# The data terms: they explain the source video, so generation fades them out. The
# regularisers (eikonal, cycle, skinning, bone consistency, L_bone, L_skel) keep their weights.
FADED_LOSSES = ("mask", "rgb", "depth", "flow", "feature", "feat_reproj", "vis", "gauss_mask",
                "cam_prior")


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  """`generate`: what makes generation differ from continuing the extraction."""
  # The new canonical field starts as the source's shape ("source", the public code's way)
  # or as the union of the source's Gaussian bones ("bones": the SDF is refitted to them,
  # the colour kept); docs/results.md "Generation" measures both.
  start: str = "source"
  bone_level: float = 2.0  # "bones": the surface at this many standard deviations of each bone
  start_fit_steps: int = 500  # "bones": Adam steps of the SDF fit
  # The data terms (FADED_LOSSES) are multiplied by a factor going log-linearly from 1 to
  # `recon_floor` over `recon_fade_fraction` of training (the public code's
  # all_reconloss_anneal: 1 -> 1e-6), then stay at the floor.
  recon_floor: float = 1e-6
  recon_fade_fraction: float = 0.5
  # Parameters generation trains (both kinds of step): "fg" (canonical field, appearance,
  # bones, skinning; the root pose and intrinsics stay the source's) or any csd.param_groups
  # value. csd.param_groups is not read here.
  param_groups: str = "fg"
  # True: the 4 views of frame t go through the backward warp (CSD). False: the canonical
  # model is rendered without the warp and the oracle target is the target's rest pose (plain
  # SDS in canonical space, the public code's gen_in_canonical: the paper's ablation).
  warp: bool = True

  def __post_init__(self):
    if self.start not in STARTS:
      raise UserError(f"config.generate.start: unknown start {self.start!r}; use one of {list(STARTS)}")
    if not 0 < self.recon_floor <= 1:
      raise UserError(f"config.generate.recon_floor: {self.recon_floor} must be in (0, 1]")
    if self.recon_fade_fraction < 0:
      raise UserError(f"config.generate.recon_fade_fraction: {self.recon_fade_fraction} must be >= 0")
    if self.bone_level <= 0:
      raise UserError(f"config.generate.bone_level: {self.bone_level} must be > 0")
    if self.start_fit_steps < 1:
      raise UserError("config.generate.start_fit_steps: must be >= 1")
    if not self.param_groups.strip():
      raise UserError("config.generate.param_groups: no parameter group given")


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """The whole generation config (see the module docstring)."""
  data: BatchSettings = BatchSettings()
  render: RenderSettings = RenderSettings()
  loss: LossSettings = LossSettings()
  optim: OptimSettings = OptimSettings()
  train: TrainSettings = TrainSettings()
  extract: extraction.OutputSettings = extraction.OutputSettings()
  csd: CsdSettings = CsdSettings()
  skeleton: SkeletonSettings = SkeletonSettings()
  generate: GenerateSettings = GenerateSettings()
  parallel: ParallelSettings = ParallelSettings()


def defaults() -> GenerationSettings:
  """Extraction's defaults with what generation changes: the oracle prior on every other step
  (a `--prompt` switches it to MVDream), L_skel (0.1) and L_bone (0.1, the public code's)."""
  return GenerationSettings(
      loss=LossSettings(weights=LossWeights(skeleton=0.1, bone_inside=0.1),
                        skeleton_file=SOURCE_SKELETON,
                        # The source ended with every encoding band open and the eikonal
                        # ramp at its top: generation starts there (no coarse-to-fine restart).
                        schedules=LossSchedules(eikonal_fraction=0.0, pos_alpha_start=1.0)),
      csd=CsdSettings(prior="oracle"))


# `loss.skeleton_file` value standing for the source run's skeleton.json (replaced when the
# run is known; an empty value means the same).
SOURCE_SKELETON = "<run>/skeleton.json"


def base_config() -> ml_collections.ConfigDict:
  """The ConfigDict a generation config file starts from (every field explicit)."""
  return settings_lib.to_config(defaults())


def from_config(config, ignore_unknown: bool = False) -> GenerationSettings:
  """Reads a generation config back into settings (UserError names a bad key or value)."""
  values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  for name in ("model", "init"):
    if name in values:
      raise UserError(f"config.{name}: generation continues the source run's model; remove the "
                      f"{name} section from the config")
  return settings_lib.from_config(GenerationSettings, values, "config", ignore_unknown)


def with_skeleton_file(config: ml_collections.ConfigDict, path: str) -> ml_collections.ConfigDict:
  """The config with `loss.skeleton_file` = `path` where it names the source run's skeleton."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.loss.skeleton_file in ("", SOURCE_SKELETON) and config.loss.weights.skeleton > 0:
    config.loss.skeleton_file = str(path)
  elif config.loss.weights.skeleton == 0 and config.loss.skeleton_file == SOURCE_SKELETON:
    config.loss.skeleton_file = ""
  return config


def as_extraction(settings: GenerationSettings, model: articulated_model.ModelConfig
                  ) -> extraction.ExtractionSettings:
  """The extraction view of the settings (the run's model, no fits): what the shared plan
  pieces and the run-folder writers read."""
  return extraction.ExtractionSettings(
      model=model, data=settings.data, render=settings.render, loss=settings.loss,
      optim=settings.optim, train=settings.train,
      init=extraction.InitSettings(root_steps=0, sdf_steps=0), extract=settings.extract,
      csd=settings.csd, skeleton=settings.skeleton, parallel=settings.parallel)
