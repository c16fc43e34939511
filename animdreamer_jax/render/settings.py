"""The `render` config section, and whole images rendered chunk by chunk.

`RenderSettings` is declared once here; the training step renders rays with
`num_samples` uniform samples, whole images (TensorBoard, contact sheets,
novel views) use the evaluation sampling `eval_samples` +
`eval_importance_samples` (lab4d's 32 + 32).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import schedules
from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError
from animdreamer_jax.render import density as density_lib
from animdreamer_jax.render import reference_warp
from animdreamer_jax.render import warp_render

DENSITY_FNS = {"volsdf": density_lib.volsdf_density, "neus": density_lib.neus_density}
BLENDS = ("dqs", "lbs")
WARPS = ("skinning", "ground_truth")


@dataclasses.dataclass(frozen=True)
class RenderSettings:
  """`render`: how rays are rendered through the warp."""
  num_samples: int = 64  # uniform samples per training ray (lab4d)
  density: str = "volsdf"  # SDF -> density: "volsdf" (lab4d) or "neus"
  blend: str = "dqs"  # skinning blend of bone transforms: "dqs" (lab4d) or "lbs"
  # "skinning": the learned Gaussian bones (lab4d); "ground_truth": the synthetic video's own
  # mesh deformation (an oracle that needs gt/: rung (i) of docs/results.md's oracle ladder).
  warp: str = "skinning"
  eikonal_ray_fraction: float = 1.0 / 16  # share of each frame's rays that get the eikonal term
  match_candidates: int = 1024  # canonical samples a pixel's feature is matched against
  # Training rays' canonical fields are evaluated this many samples at a time, each piece
  # rematerialised in the backward pass (0: all at once, every activation kept). lab4d sizes,
  # 4096 rays x 64: XLA's peak 10.4 -> 2.1 GiB, step time +4% (docs/results.md, "Memory").
  field_chunk: int = 8192
  # Rays use the video's intrinsics (its cameras are calibrated); False: the model's learned ones.
  use_video_intrinsics: bool = True
  # Sharpness schedule of the SDF density (0: off; lab4d only learns beta). The density's beta
  # is capped by a log-linear ramp from model.init_beta down to final_beta, reached at
  # sharpen_fraction of training: a thin part (leg, ear) must then become surface (negative
  # SDF) instead of half-transparent fog at positive SDF, which meshing at level 0 drops.
  final_beta: float = 0.0
  sharpen_fraction: float = 0.7
  eval_samples: int = 32  # uniform samples per ray of whole images
  eval_importance_samples: int = 32  # ... plus these importance samples (lab4d's evaluation)
  eval_chunk: int = 4096  # rays per jitted call when rendering whole images

  def __post_init__(self):
    def require(ok: bool, key: str, what: str):
      if not ok:
        raise UserError(f"config.render.{key}: {what}")

    require(self.density in DENSITY_FNS, "density",
            f"unknown density {self.density!r}; use one of {sorted(DENSITY_FNS)}")
    require(self.blend in BLENDS, "blend", f"unknown blending {self.blend!r}; use 'dqs' or 'lbs'")
    require(self.warp in WARPS, "warp", f"unknown warp {self.warp!r}; use one of {list(WARPS)}")
    require(self.num_samples >= 2, "num_samples", "must be >= 2")
    require(0.0 <= self.eikonal_ray_fraction <= 1.0, "eikonal_ray_fraction", "must be in [0, 1]")
    require(self.final_beta >= 0.0, "final_beta", "must be >= 0 (0: off)")
    require(0.0 < self.sharpen_fraction <= 1.0, "sharpen_fraction", "must be in (0, 1]")
    require(self.eval_samples >= 2, "eval_samples", "must be >= 2")
    require(self.eval_chunk >= 1, "eval_chunk", "must be >= 1")
    require(self.field_chunk >= 0, "field_chunk", "must be >= 0 (0: no chunks)")

  def max_beta(self, init_beta: float, step: int, total_steps: int) -> np.float32:
    """The cap on the density's beta at `step` (`final_beta`'s schedule; inf when off)."""
    if self.final_beta <= 0:
      return np.float32(np.inf)
    end = max(1, int(round(self.sharpen_fraction * total_steps)))
    return np.float32(schedules.log_anneal(step, 0, end, init_beta, self.final_beta))

  def density_fn(self) -> density_lib.DensityFn:
    return DENSITY_FNS[self.density]

  def make_warp(self, ground_truth=None) -> warp_render.Warp:
    """The warp of `self.warp`; "ground_truth" needs the video's `gt` (data.video.GroundTruth)."""
    if self.warp == "ground_truth":
      if ground_truth is None:
        raise UserError("config.render.warp=ground_truth: needs a video with ground truth (gt/)")
      return reference_warp.MeshCorrespondenceWarp.from_sequence(
          ground_truth.rest_vertices, ground_truth.meshes.vertices)
    return warp_render.SkinningWarp(blend=self.blend)

  def options(self, warp: Optional[warp_render.Warp] = None, **overrides
              ) -> warp_render.RenderOptions:
    """RenderOptions of training rays (density, warp, samples), fields overridable.

    warp: a warp built once by `make_warp` (None: built here, without ground truth).
    """
    values = dict(num_samples=self.num_samples, density_fn=self.density_fn(),
                  warp=warp if warp is not None else self.make_warp(),
                  match_candidates=self.match_candidates, field_chunk=self.field_chunk or None)
    values.update(overrides)
    return warp_render.RenderOptions(**values)

  def image_options(self, warp: Optional[warp_render.Warp] = None) -> warp_render.RenderOptions:
    """RenderOptions of whole images: the evaluation sampling, no training-only terms."""
    return self.options(warp=warp, num_samples=self.eval_samples,
                        importance_samples=self.eval_importance_samples, eikonal_rays=0,
                        gauss_mask=False, field_chunk=None)  # no backward pass: no remat


def make_image_renderer(model, settings: RenderSettings, height: int, width: int,
                        intrinsics: Optional[np.ndarray] = None,
                        background=(1.0, 1.0, 1.0),
                        warp: Optional[warp_render.Warp] = None) -> Callable:
  """render(params, near_far (2,), frame) -> {"rgb" (H, W, 3) over the background, "mask", "depth"}.

  Renders in fixed-size chunks of rays (one compile) with the evaluation
  sampling. intrinsics: (T, 4) per-frame intrinsics (the video's), or None:
  the model's learned ones.
  """
  uv_all = batching.image_pixels(height, width)
  chunk = int(settings.eval_chunk)
  pad = (-uv_all.shape[0]) % chunk
  uv_all = np.concatenate([uv_all, np.zeros((pad, 2), np.float32)])
  options = settings.image_options(warp)

  @jax.jit
  def render_chunk(params, near_far, frame_intrinsics, frame, uv):
    out = warp_render.render_rays(
        model, params, uv, frame, None, near_far=near_far, options=options,
        cameras=warp_render.CameraOverride(intrinsics=frame_intrinsics))
    return {"rgb": out["rgb"], "mask": out["opacity"], "depth": out["depth"]}

  background = np.asarray(background, np.float32)

  def render(params, near_far, frame: int) -> dict[str, np.ndarray]:
    frame = int(frame)
    if intrinsics is not None:
      frame_intrinsics = jnp.asarray(intrinsics[frame], jnp.float32)
    else:
      frame_intrinsics = model.apply(params, jnp.int32(frame), method="intrinsics")
    near_far = jnp.asarray(near_far, jnp.float32)
    pieces = [render_chunk(params, near_far, frame_intrinsics, jnp.int32(frame),
                           jnp.asarray(uv_all[i:i + chunk]))
              for i in range(0, uv_all.shape[0], chunk)]
    out = {k: np.concatenate([np.asarray(p[k]) for p in pieces])[:height * width] for k in pieces[0]}
    mask = out["mask"].reshape(height, width)
    rgb = out["rgb"].reshape(height, width, 3) * mask[..., None] + background * (1 - mask[..., None])
    return {"rgb": rgb, "mask": mask, "depth": out["depth"].reshape(height, width)}

  return render
