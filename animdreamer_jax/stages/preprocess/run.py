"""An ordinary video -> the video folder `extract` reads (`camera_path: "real"`, no gt/).

Stages, each timed into video.json's `source.seconds`: decode (frames, time window, frame rate),
masks (the user's, or GrabCut tracking from a box), crop (the square around the animal over the clip,
resized to `resolution`), flow (DIS at the format's gaps), features (DINOv2 + PCA, or none), cameras
(intrinsics from the field of view, the pose guess of `cameras`). Everything the user can get wrong is
checked before the slow stages run; the folder is written atomically with its contact sheet.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Optional

import numpy as np
import tqdm

from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import dinov2
from animdreamer_jax.stages.preprocess import cameras as cameras_lib
from animdreamer_jax.stages.preprocess import features as features_lib
from animdreamer_jax.stages.preprocess import flow as flow_lib
from animdreamer_jax.stages.preprocess import frames as frames_lib
from animdreamer_jax.stages.preprocess import masks as masks_lib

FEATURE_CHOICES = ("none", "dinov2")
FEATURE_CHANNELS = 16  # lab4d's PCA width (and the model's feature field)


@dataclasses.dataclass(frozen=True)
class PreprocessOptions:
  """What `animdreamer preprocess` does (its flags)."""
  resolution: int = 128  # side of the square crop in the video folder
  fps: Optional[float] = None  # keep about this many frames per second (None: every frame)
  start: int = 0  # first kept frame
  frames: Optional[int] = None  # number of kept frames (None: to the end)
  box: Optional[str] = None  # "x0,y0,x1,y1" around the animal in the first kept frame
  masks: Optional[str] = None  # the user's masks (folder, mask video, lab4d Annotations)
  features: str = "none"  # "none" or "dinov2"
  dinov2_weights: Optional[str] = None  # a converted DINOv2 folder (`convert-dinov2`)
  keyframes: Optional[str] = None  # {frame: {"yaw", "elevation"}} JSON (cameras.py)
  yaw: float = 0.0  # constant camera yaw (degrees) without keyframes
  elevation: float = 0.0  # constant camera elevation (degrees) without keyframes
  fov_degrees: float = cameras_lib.DEFAULT_FOV_DEGREES  # horizontal, over the full frame
  crop_padding: float = 1.2  # the crop's side over the longer side of the clip's mask boxes
  # Frame gaps of the flows. DIS at gaps 4 and 8 passes its round-trip test where it is wrong
  # (fast legs): on the phone-clip benchmark, extraction F@2% 46.7 with gaps 1,2,4,8 and 63.4 with
  # 1,2 (docs/results.md, "Real videos").
  flow_gaps: tuple[int, ...] = (1, 2)

  def check(self) -> None:
    if (self.box is None) == (self.masks is None):
      raise UserError("give exactly one of --box (GrabCut from a box in the first frame) and "
                      "--masks (your own masks)")
    if self.resolution < 16:
      raise UserError(f"--res {self.resolution}: must be >= 16")
    if self.features not in FEATURE_CHOICES:
      raise UserError(f"--features {self.features!r}: use one of {list(FEATURE_CHOICES)}")
    if self.features == "dinov2" and not self.dinov2_weights:
      raise UserError("--features dinov2 needs --dinov2-weights (a folder written by "
                      "`animdreamer convert-dinov2`)")
    if self.fps is not None and self.fps <= 0:
      raise UserError(f"--fps {self.fps}: must be positive")
    if self.start < 0 or (self.frames is not None and self.frames < 2):
      raise UserError("--start must be >= 0 and --frames >= 2")
    if not self.flow_gaps or any(g < 1 for g in self.flow_gaps):
      raise UserError(f"--flow-gaps {self.flow_gaps}: positive frame gaps, e.g. 1,2")


def preprocess(source: str | pathlib.Path, out: str | pathlib.Path, options: PreprocessOptions,
               overwrite: bool = False, progress: bool = True,
               segmenter: Optional[masks_lib.Segmenter] = None) -> dict:
  """Runs every stage and writes the video folder `out`.

  segmenter: (frames, box, progress) -> masks, used with `options.box` (default: GrabCut tracking,
    `masks.grabcut_track`); a learned segmenter plugs in here.

  Returns:
    {"out", "num_frames", "crop", "seconds": {stage: s}}.

  Raises:
    UserError: bad input (one line; nothing is left at `out`).
  """
  options.check()
  out = pathlib.Path(out)
  if out.exists() and not overwrite:
    raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
  seconds: dict[str, float] = {}
  clock = [time.perf_counter()]

  def lap(stage: str) -> None:
    now = time.perf_counter()
    seconds[stage] = now - clock[0]
    clock[0] = now

  weights = None
  if options.features == "dinov2":  # before any slow stage: a bad folder fails at once
    weights = dinov2.load_dinov2(options.dinov2_weights)
  frames = frames_lib.read_frames(source, options.fps, options.start, options.frames)
  t, h, w = frames.rgb.shape[:3]
  yaw = np.full(t, options.yaw)
  elevation = np.full(t, options.elevation)
  if options.keyframes:
    yaw, elevation = cameras_lib.interpolate_angles(
        cameras_lib.read_keyframes(options.keyframes, t), t)
  box = frames_lib.parse_box(options.box, h, w) if options.box else None
  lap("decode")

  if box is not None:
    bar = tqdm.tqdm(total=t - 1, desc="preprocess: masks", unit="frame", disable=not progress)
    raw_masks = (segmenter or masks_lib.grabcut_track)(frames.rgb, box, progress=bar.update)
    bar.close()
  else:
    raw_masks = masks_lib.read_masks(options.masks, frames.indices, frames.total, h, w)
  if not raw_masks.any():
    raise UserError(f"{options.masks or '--box'}: the masks are empty in every frame")
  lap("masks")

  crop = frames_lib.square_crop(raw_masks, options.crop_padding)
  size = options.resolution
  rgb = frames_lib.crop_frames(frames.rgb, crop, size)
  soft = frames_lib.crop_frames(raw_masks.astype(np.float32)[..., None], crop, size)
  masks = (soft.reshape(t, size, size) > 0.5).astype(np.uint8)
  if not masks.any():
    raise UserError("masks: nothing left of the animal after cropping (masks too small for "
                    f"--res {size})")
  lap("crop")

  flow_fw, flow_bw = flow_lib.video_flows(rgb, masks, options.flow_gaps)
  lap("flow")

  if weights is None:
    feature = np.zeros((t, size, size, 0), np.float16)
  else:
    config, params = weights
    bar = tqdm.tqdm(total=t, desc="preprocess: DINOv2", unit="frame", disable=not progress)
    tokens = features_lib.patch_tokens(params, config, rgb, progress=bar.update)
    bar.close()
    mean, basis = features_lib.fit_pca(tokens, masks, FEATURE_CHANNELS)
    feature = features_lib.project(tokens, masks, mean, basis)
  lap("features")

  full = cameras_lib.intrinsics_from_fov(h, w, options.fov_degrees)
  intrinsics = frames_lib.crop_intrinsics(full, crop, size)
  w2c = cameras_lib.object_poses(masks, intrinsics, yaw, elevation)
  lap("cameras")

  background = np.median(rgb[masks == 0].reshape(-1, 3), axis=0) / 255.0 if (masks == 0).any() \
      else np.ones(3)
  meta = {"fps": float(frames.fps), "feature_kind": options.features,
          "background": [float(c) for c in background], "camera_path": "real",
          "normalisation": {"center": [0.0, 0.0, 0.0], "scale": 1.0},
          "source": {"video": str(pathlib.Path(source).resolve()), "frames": frames.indices.tolist(),
                     "raw_size": [int(h), int(w)], "crop": [int(v) for v in crop],
                     "fov_degrees": float(options.fov_degrees),
                     "masks": options.masks or f"grabcut from box {options.box}",
                     "pose": "keyframes " + options.keyframes if options.keyframes
                             else f"constant yaw {options.yaw}, elevation {options.elevation}",
                     "seconds": seconds}}
  video = video_lib.Video(rgb=rgb, mask=masks, depth=None, feature=feature, flow_fw=flow_fw,
                          flow_bw=flow_bw, intrinsics=np.tile(intrinsics, (t, 1)), w2c=w2c,
                          meta=meta)
  video_lib.write_video(out, video, overwrite=overwrite)
  lap("write")
  return {"out": str(out), "num_frames": t, "crop": crop.tolist(), "seconds": seconds}

