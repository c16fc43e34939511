"""Cameras of an ordinary video: intrinsics from a field of view, an initial guess of the animal's pose.

Intrinsics: a centred pinhole whose horizontal field of view is `fov_degrees` over the full frame
(default 53.13 deg: lab4d's focal length = max(H, W)), carried into the crop.

Pose (the object frame's world-to-camera, which the root-pose MLP starts from and the camera prior pulls
towards early on): the animal's rotation comes from user keyframes - a JSON object mapping frame
numbers (of the kept frames) to {"yaw": degrees, "elevation": degrees}, the camera's direction around
the animal as `animdreamer synth` measures it (yaw 0 = the camera in front of the head, 90 = on the
animal's +X side; elevation up) - interpolated linearly between keyframes and held beyond them; without
keyframes, a constant yaw / elevation (lab4d's viewpoint network has no counterpart here). Its
translation puts the object centre on the ray through the mask box's centre, at the distance where a
unit-size object (the normalised units) spans the box (the median box over the clip: lab4d's rule).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import rays
from animdreamer_jax.stages.preprocess import frames as frames_lib

DEFAULT_FOV_DEGREES = 2 * math.degrees(math.atan(0.5))  # focal length = image width (lab4d)


def intrinsics_from_fov(height: int, width: int, fov_degrees: float) -> np.ndarray:
  """(fx, fy, cx, cy) of a centred square-pixel camera with this horizontal field of view."""
  if not 0 < fov_degrees < 180:
    raise UserError(f"--fov {fov_degrees}: must be in (0, 180) degrees")
  focal = (width / 2.0) / math.tan(math.radians(fov_degrees) / 2.0)
  return np.array([focal, focal, width / 2.0, height / 2.0], np.float32)


def read_keyframes(path: str | pathlib.Path, num_frames: int) -> dict[int, tuple[float, float]]:
  """{frame: (yaw, elevation)} from a keyframe JSON (module docstring).

  Raises:
    UserError: unreadable, malformed, or a frame outside the clip.
  """
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read as JSON ({e})") from None
  if not isinstance(data, dict) or not data:
    raise UserError(f'{path}: expected {{"frame": {{"yaw": deg, "elevation": deg}}, ...}}')
  keyframes = {}
  for key, value in data.items():
    try:
      frame = int(key)
      yaw, elevation = float(value["yaw"]), float(value.get("elevation", 0.0))
    except (TypeError, ValueError, KeyError, AttributeError):
      raise UserError(f'{path}: entry {key!r}: expected "frame": {{"yaw": deg, "elevation": deg}}'
                      ) from None
    if not 0 <= frame < num_frames:
      raise UserError(f"{path}: frame {frame} is outside the clip's {num_frames} frames")
    keyframes[frame] = (yaw, elevation)
  return keyframes


def interpolate_angles(keyframes: dict[int, tuple[float, float]], num_frames: int
                       ) -> tuple[np.ndarray, np.ndarray]:
  """(yaw (T,), elevation (T,)) in degrees: linear between keyframes (yaw along the shorter way
  round), held before the first and after the last."""
  frames = np.array(sorted(keyframes))
  yaw = np.array([keyframes[f][0] for f in frames])
  yaw = np.degrees(np.unwrap(np.radians(yaw)))
  elevation = np.array([keyframes[f][1] for f in frames])
  t = np.arange(num_frames)
  return np.interp(t, frames, yaw), np.interp(t, frames, elevation)


def object_poses(masks: np.ndarray, intrinsics: np.ndarray, yaw_degrees: np.ndarray,
                 elevation_degrees: np.ndarray, object_size: float = 1.0) -> np.ndarray:
  """(T, 4, 4) float32 world(object)-to-camera poses (module docstring).

  masks: (T, H, W) of the frames the intrinsics (fx, fy, cx, cy) belong to.
  """
  fx, fy, cx, cy = (float(v) for v in intrinsics)
  boxes = [frames_lib.mask_box(m) for m in masks]
  sizes = [math.hypot(b[2] - b[0], b[3] - b[1]) for b in boxes if b is not None]
  if not sizes:
    raise UserError("masks: empty in every frame (no animal to place)")
  depth = fx * object_size / float(np.median(sizes))
  poses = []
  last_centre = None
  for box, yaw, elevation in zip(boxes, yaw_degrees, elevation_degrees):
    if box is not None:
      last_centre = ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)
    u, v = last_centre if last_centre is not None else (cx, cy)
    yaw_r, el_r = math.radians(yaw), math.radians(elevation)
    eye = np.array([math.cos(el_r) * math.sin(yaw_r), math.sin(el_r),
                    math.cos(el_r) * math.cos(yaw_r)])
    w2c = rays.look_at(eye, np.zeros(3))
    # The object centre at (x, y, depth) in the camera: on the ray through the box centre.
    w2c[:3, 3] = [(u - cx) * depth / fx, (v - cy) * depth / fy, depth]
    poses.append(w2c)
  return np.stack(poses).astype(np.float32)
