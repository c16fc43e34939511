"""comparison.png: ground truth and reconstruction side by side, judged at a glance.

One row per picked frame; columns: ground truth and reconstruction from the
video's camera, then both from the animal's side (a camera on the x axis of the
normalised world, where the synthetic animals stand along +y and face along z): the
-x side when every video camera sits on the +x side (and the reverse), i.e. the side
a one-sided video never saw, else +x.
Pictures are rendered at `size` pixels whatever the video's resolution, so thin
legs stay visible. The ground truth's limb vertices (`eval.parts.limb_vertices`: the lowest
share of the rest height) are drawn orange, the rest of it sand; the reconstruction blue-grey.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

from animdreamer_jax.assets import shading
from animdreamer_jax.geometry import rays as rays_lib
from animdreamer_jax.geometry import transforms_np

GT_COLOR = np.array([0.85, 0.78, 0.62])  # ground-truth body: sand
LIMB_COLOR = np.array([0.95, 0.5, 0.1])  # ground-truth limbs: orange
PRED_COLOR = np.array([0.6, 0.68, 0.85])  # reconstruction: blue-grey
BACKGROUND = np.array([1.0, 1.0, 1.0])
SIDE_FOV_DEGREES = 30.0
COLUMNS = ("ground truth", "reconstruction", "ground truth, side", "reconstruction, side")
UNSEEN_COLUMNS = COLUMNS[:2] + ("ground truth, unseen side", "reconstruction, unseen side")
HEADER_HEIGHT = 18
FRAMES = 3  # rows (frames, evenly spaced) of a run's comparison.png


def unseen_side(w2c: np.ndarray) -> int:
  """-1 when every camera centre has x > 0, +1 when every one has x < 0, else 0 (both seen)."""
  w2c = np.asarray(w2c, np.float64)
  centres_x = -np.einsum("tji,tj->ti", w2c[:, :3, :3], w2c[:, :3, 3])[:, 0]
  if np.all(centres_x > 0):
    return -1
  if np.all(centres_x < 0):
    return 1
  return 0


def side_camera(points: np.ndarray, size: int, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """(w2c (4, 4), intrinsics (4,)) of a camera on the x axis (+x, or -x for sign < 0) looking at
  `points`' centre, all in view."""
  centre = 0.5 * (points.min(0) + points.max(0))
  radius = float(np.max(np.linalg.norm(points - centre, axis=-1)))
  half = math.radians(SIDE_FOV_DEGREES) / 2
  distance = 1.1 * radius / math.sin(half)
  w2c = rays_lib.look_at(centre + np.array([math.copysign(distance, sign), 0.0, 0.0]), centre)
  focal = (size / 2) / math.tan(half)
  return w2c, np.array([focal, focal, size / 2, size / 2])


def _shade(vertices_cam: np.ndarray, faces: np.ndarray, colors: np.ndarray,
           intrinsics: np.ndarray, size: int) -> np.ndarray:
  return shading.to_uint8(shading.over_background(
      shading.shade(vertices_cam, faces, colors, intrinsics, size, size), BACKGROUND))


def comparison_picture(pred_vertices: np.ndarray, pred_faces: np.ndarray,
                       gt_vertices: np.ndarray, gt_faces: np.ndarray, w2c: np.ndarray,
                       intrinsics: np.ndarray, image_size: tuple[int, int],
                       frames: Sequence[int], limb_vertices: Optional[np.ndarray] = None,
                       size: int = 256) -> np.ndarray:
  """The comparison picture (module docstring) -> (rows * size + header, 4 * size, 3) uint8.

  Args:
    pred_vertices: (T, V, 3) reconstruction per frame, already in the ground truth's world frame.
    pred_faces: (F, 3).
    gt_vertices: (T, Vg, 3) ground truth per frame (world frame).
    gt_faces: (Fg, 3).
    w2c: (T, 4, 4) the video's noise-free world-to-camera poses.
    intrinsics: (T, 4) the video's intrinsics at `image_size`.
    image_size: (H, W) of the video.
    frames: frames to show, one row each.
    limb_vertices: (Vg,) bool, ground-truth vertices drawn in the limb colour.
    size: pixels of each (square) picture.
  """
  gt_colors = np.tile(GT_COLOR, (gt_vertices.shape[1], 1))
  if limb_vertices is not None:
    gt_colors[np.asarray(limb_vertices, bool)] = LIMB_COLOR
  pred_colors = np.tile(PRED_COLOR, (pred_vertices.shape[1], 1))
  height, width = image_size
  # The video's camera at `size` pixels: scale the intrinsics of its longer side to `size`
  # and centre the picture.
  scale = size / max(height, width)
  unseen = unseen_side(w2c)
  rows = []
  for t in frames:
    fx, fy, cx, cy = np.asarray(intrinsics[t], np.float64)
    video_k = np.array([fx * scale, fy * scale, size / 2 + (cx - width / 2) * scale,
                        size / 2 + (cy - height / 2) * scale])
    side_w2c, side_k = side_camera(np.asarray(gt_vertices[t], np.float64), size,
                                   -1.0 if unseen < 0 else 1.0)
    pictures = []
    for cam, k in ((w2c[t], video_k), (side_w2c, side_k)):
      for verts, faces, colors in ((gt_vertices[t], gt_faces, gt_colors),
                                   (pred_vertices[t], pred_faces, pred_colors)):
        pictures.append(_shade(transforms_np.to_camera(np.asarray(verts, np.float64), cam), faces,
                               colors, k, size))
    rows.append(np.concatenate(pictures, axis=1))
  header = np.full((HEADER_HEIGHT, 4 * size, 3), 255, np.uint8)
  for i, name in enumerate(UNSEEN_COLUMNS if unseen else COLUMNS):
    cv2.putText(header, f"{name}", (i * size + 4, HEADER_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (0, 0, 0), 1, cv2.LINE_AA)
  for r, t in enumerate(frames):
    cv2.putText(rows[r], f"t={t}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1,
                cv2.LINE_AA)
  return np.concatenate([header] + rows, axis=0)
