"""The `csd` config section, declared once: every setting with its meaning and default.

Defaults follow AnimatableDreamer's public code (zz7379/Sync4D, on top of
MVDream-threestudio) unless noted. Override any field from the command line,
e.g. `--config.csd.prior=oracle --config.csd.weight=0.05`. Fixed choices that
no measurement ever changed are constants below, not settings.

The host-side schedule lives here too: which iterations are CSD steps
(`is_csd_step`) and the scalars a CSD step takes (`scalars`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from animdreamer_jax.errors import UserError

PRIORS = ("none", "oracle", "mvdream")
MODES = ("recon", "sds")
REDUCTIONS = ("sum", "mean")
DTYPES = ("float32", "bfloat16")
NUM_VIEWS = 4  # MVDream's orthogonal views per object
BACKGROUND = 1.0  # white behind the views, as MVDream was trained (lab4d `w_bg`)
# Near/far enclose the object's bounding sphere times this (posed limbs may leave the canonical box).
RADIUS_MARGIN = 1.25

# MVDream-threestudio's default negative prompt (its uncond text in CFG).
DEFAULT_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, "
    "and unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, "
    "poorly drawn face, deformed, dehydrated, bad proportions")


@dataclasses.dataclass(frozen=True)
class OracleSettings:
  """`csd.oracle`: the ground-truth prior of synthetic videos (no weights; see csd.priors)."""
  # Targets rendered s x larger and box-averaged (anti-aliasing); 1 = point-sampled like
  # the video's own frames (the measured CSD experiment config).
  supersample: int = 1

  def __post_init__(self):
    if self.supersample < 1:
      raise UserError(f"config.csd.oracle.supersample: {self.supersample} must be >= 1")


@dataclasses.dataclass(frozen=True)
class MvdreamSettings:
  """`csd.mvdream`: the MVDream prior (converted weights, text)."""
  weights: str = ""  # folder written by `animdreamer convert-mvdream`
  prompt: str = ""  # the text the views should show
  negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # unconditional text of CFG
  encode_resolution: int = 256  # renders are resized to this before the SD VAE (MVDream)
  dtype: str = "float32"  # UNet/VAE activations; "bfloat16" on GPUs
  fused_attention: bool = False  # jax.nn.dot_product_attention in the UNet (True on GPUs)

  def __post_init__(self):
    if self.dtype not in DTYPES:
      raise UserError(f"config.csd.mvdream.dtype: {self.dtype!r} unknown; use one of {list(DTYPES)}")
    if self.encode_resolution < 8:
      raise UserError(f"config.csd.mvdream.encode_resolution: {self.encode_resolution} must be >= 8")


@dataclasses.dataclass(frozen=True)
class CsdSettings:
  """`csd`: Canonical Score Distillation steps mixed into training."""
  prior: str = "none"  # "none" (CSD off), "oracle" (synthetic videos), "mvdream"
  weight: float = 1.0  # multiplies the CSD gradient (lab4d `gen3d_wt`)
  every_k: int = 2  # iteration i is a CSD step when i % every_k == 0 (lab4d `gen3d_freq`)
  resolution: int = 64  # render size R of the 4 views (lab4d 64; the paper 200)
  num_samples: int = 0  # samples per ray in CSD renders; 0: render.num_samples
  # > 0: render only this many random pixels of each view; the gradient is an unbiased
  # estimate of the full views' for pixel-separable priors (the oracle), so CPU runs can
  # afford views at the video's resolution.
  pixels_per_view: int = 0
  patches: int = 0  # > 1: back-propagate the views in this many pixel chunks (memory)
  mode: str = "recon"  # "recon": MVDream's x0-reconstruction loss; "sds": (1 - abar_T)(eps_hat - eps)
  guidance_scale: float = 50.0  # classifier-free guidance scale
  rescale: float = 0.5  # CFG std rescale of x0_hat toward the conditional x0 ("recon"; 0 = off)
  reduction: str = "sum"  # "sum": threestudio's 0.5 sum(g^2) / views; "mean": / the latent size
  t_start: float = 0.98  # min and max diffusion-step fractions both start here
  t_min_end: float = 0.02  # ... and are annealed linearly to these
  t_max_end: float = 0.5
  anneal_fraction: float = 0.8  # over this fraction of training (lab4d `new_ts`)
  elevation_range: tuple[float, float] = (-10.0, 40.0)  # degrees, shared by the 4 views
  fov_range: tuple[float, float] = (40.0, 70.0)  # degrees, shared
  distance_range: tuple[float, float] = (0.42, 0.7)  # view half-width at the target / object size
  # > 0: a fixed object size for the framing (1.0 = the normalised sequences' rest bbox
  # diagonal); 0: the canonical box's largest side (lab4d; follows the model).
  object_size: float = 0.0
  # Parameters CSD trains: "canonical" (SDF, colour, visibility; lab4d), "fg" (also the
  # warp, skinning, bones and appearance; lab4d `gen3d_optim_new`), or comma-separated
  # parameter-path prefixes.
  param_groups: str = "canonical"
  # Coarse-to-fine fraction of the encodings on CSD steps: < 0 follows the reconstruction's
  # (CSD then never writes into bands the video steps cannot see); 1.0: all bands.
  alpha: float = -1.0
  oracle: OracleSettings = OracleSettings()
  mvdream: MvdreamSettings = MvdreamSettings()

  def __post_init__(self):
    def require(ok: bool, key: str, what: str):
      if not ok:
        raise UserError(f"config.csd.{key}: {what}")

    require(self.prior in PRIORS, "prior", f"{self.prior!r} unknown; use one of {list(PRIORS)}")
    require(self.mode in MODES, "mode", f"{self.mode!r} unknown; use one of {list(MODES)}")
    require(self.reduction in REDUCTIONS, "reduction",
            f"{self.reduction!r} unknown; use one of {list(REDUCTIONS)}")
    require(self.weight >= 0, "weight", f"{self.weight} must be >= 0")
    require(self.every_k >= 1, "every_k", f"{self.every_k} must be >= 1")
    require(self.resolution >= 2, "resolution", f"{self.resolution} must be >= 2")
    require(self.num_samples == 0 or self.num_samples >= 2, "num_samples",
            f"{self.num_samples} must be 0 (render.num_samples) or >= 2")
    require(0 <= self.pixels_per_view <= self.resolution ** 2, "pixels_per_view",
            f"{self.pixels_per_view} must be in [0, resolution^2 = {self.resolution ** 2}] "
            "(0: every pixel)")
    require(self.patches <= 1 or self.pixels_rendered % self.patches == 0, "patches",
            f"{self.patches} must divide the pixels rendered per view, {self.pixels_rendered}")
    for name in ("elevation_range", "fov_range", "distance_range"):
      lo, hi = getattr(self, name)
      require(lo <= hi, name, f"({lo}, {hi}) is not an interval")
    require(0 < self.fov_range[0] and self.fov_range[1] < 180, "fov_range",
            f"{self.fov_range} must lie in (0, 180)")
    require(self.object_size >= 0, "object_size", f"{self.object_size} must be >= 0 (0: from the box)")
    require(self.alpha < 0 or 0 < self.alpha <= 1, "alpha",
            f"{self.alpha} must be < 0 (follow the reconstruction) or in (0, 1]")
    require(self.anneal_fraction >= 0, "anneal_fraction", f"{self.anneal_fraction} must be >= 0")
    require(self.param_groups.strip() != "", "param_groups", "no parameter group given")

  @property
  def enabled(self) -> bool:
    return self.prior != "none"

  @property
  def pixels_rendered(self) -> int:
    """Pixels rendered per view: pixels_per_view, or all R^2."""
    return self.pixels_per_view or self.resolution * self.resolution

  def samples_per_ray(self, render_samples: int) -> int:
    return self.num_samples if self.num_samples > 0 else int(render_samples)


def is_csd_step(settings: CsdSettings, step: int) -> bool:
  """lab4d's alternation: iteration i is a CSD step when i % every_k == 0."""
  return settings.enabled and step % settings.every_k == 0


def timestep_fractions(settings: CsdSettings, step: int, total_steps: int) -> tuple[float, float]:
  """(min, max) diffusion-step fractions at a training step (threestudio's linear `C()`).

  Both start at `t_start` and move linearly to `t_min_end` / `t_max_end` over
  `anneal_fraction` x total_steps, then stay.
  """
  length = settings.anneal_fraction * total_steps
  progress = 1.0 if length <= 0 else min(max(step / length, 0.0), 1.0)
  start = settings.t_start
  return (start + (settings.t_min_end - start) * progress,
          start + (settings.t_max_end - start) * progress)


def scalars(settings: CsdSettings, step: int, total_steps: int) -> dict[str, np.float32]:
  """Scalars of the CSD loss term: its weight "w_csd" and the timestep range."""
  t_min, t_max = timestep_fractions(settings, step, total_steps)
  return {"w_csd": np.float32(settings.weight), "csd_t_min": np.float32(t_min),
          "csd_t_max": np.float32(t_max)}
