"""Contact sheet of a video folder: a few frames of each modality in one PNG.

Rows: RGB, mask, forward flow of the smallest gap (colour wheel: hue =
direction, saturation = magnitude; dark grey = invalid), feature (first three
principal components over the shown foreground pixels), depth (near = bright).
"""

from __future__ import annotations

import cv2
import numpy as np

_LABEL_WIDTH = 64
_INVALID_GREY = 40


def flow_to_color(flow: np.ndarray, valid: np.ndarray, max_magnitude: float,
                  mask: np.ndarray | None = None) -> np.ndarray:
  """Colour-wheel image of a flow field.

  Args:
    flow: (H, W, 2) displacements (dx, dy) in pixels.
    valid: (H, W) bool.
    max_magnitude: magnitude shown fully saturated.
    mask: (H, W) bool foreground; background is drawn black when given.

  Returns:
    uint8 (H, W, 3) RGB; invalid pixels dark grey.
  """
  flow = np.asarray(flow, np.float32)
  angle = (np.degrees(np.arctan2(flow[..., 1], flow[..., 0])) + 360.0) % 360.0
  sat = np.clip(np.linalg.norm(flow, axis=-1) / max(max_magnitude, 1e-6), 0, 1)
  hsv = np.stack([angle, sat, np.ones_like(sat)], axis=-1).astype(np.float32)
  rgb = (cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255).round().astype(np.uint8)
  rgb[~valid] = _INVALID_GREY
  if mask is not None:
    rgb[~mask] = 0
  return rgb


def features_to_color(features: np.ndarray, masks: np.ndarray) -> np.ndarray:
  """First three principal components of features, shared over all frames.

  Args:
    features: (N, H, W, C).
    masks: (N, H, W) bool.

  Returns:
    uint8 (N, H, W, 3); background black.
  """
  x = np.asarray(features, np.float32)[masks]
  out = np.zeros(masks.shape + (3,), np.uint8)
  if len(x) < 2:
    return out
  mean = x.mean(axis=0)
  _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
  comps = np.zeros((x.shape[1], 3), np.float32)
  comps[:, :min(3, vt.shape[0])] = vt[:3].T
  y = (x - mean) @ comps
  lo, hi = np.percentile(y, 1, axis=0), np.percentile(y, 99, axis=0)
  y = np.clip((y - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
  out[masks] = (y * 255).round().astype(np.uint8)
  return out


def depth_to_color(depth: np.ndarray, mask: np.ndarray, near: float, far: float) -> np.ndarray:
  """(H, W) depth -> uint8 (H, W, 3) grey ramp, near bright, background black."""
  d = np.clip((far - np.asarray(depth, np.float32)) / max(far - near, 1e-6), 0, 1)
  v = (40 + 215 * d).round().astype(np.uint8)
  return np.where(mask[..., None], v[..., None], 0).repeat(3, axis=-1).astype(np.uint8)


def _label(image: np.ndarray, text: str) -> np.ndarray:
  """Prepends a white column with `text` to an (H, W, 3) row."""
  h = image.shape[0]
  col = np.full((h, _LABEL_WIDTH, 3), 255, np.uint8)
  scale = 0.35 if h < 96 else 0.45
  for i, line in enumerate(text.split("\n")):
    cv2.putText(col, line, (3, h // 2 - 4 + 14 * i), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (0, 0, 0), 1, cv2.LINE_AA)
  return np.concatenate([col, image], axis=1)


def make_contact_sheet(video, num_columns: int = 6) -> np.ndarray:
  """Contact sheet image of a Video (animdreamer_jax.data.video.Video).

  Args:
    video: the Video.
    num_columns: frames shown, evenly spaced over the clip (the last frame,
      which has no forward flow, is left out).

  Returns:
    uint8 (5 H, 64 + n W, 3) RGB image.
  """
  t = video.num_frames
  # Up to the second-last frame: the last one has no forward flow to show.
  last = max(t - 2, 0)
  frames = np.unique(np.linspace(0, last, min(num_columns, last + 1)).round().astype(int))
  masks = np.asarray(video.mask[frames]).astype(bool)
  gap = min(video.flow_fw)
  flows = np.asarray(video.flow_fw[gap][frames], np.float32)
  valid = flows[..., 2] > 0.5
  mags = np.linalg.norm(flows[..., :2], axis=-1)[valid]
  max_mag = float(np.percentile(mags, 99)) if mags.size else 1.0
  blank = np.full((len(frames), video.height, video.width, 3), 255, np.uint8)
  if video.depth is None:  # a real video: no depth
    depth_row = blank
  else:
    depth = np.asarray(video.depth[frames], np.float32)
    fg_depth = depth[masks]
    near, far = (float(fg_depth.min()), float(fg_depth.max())) if fg_depth.size else (0.0, 1.0)
    depth_row = np.stack([depth_to_color(d, m, near, far) for d, m in zip(depth, masks)])
  feats = (features_to_color(np.asarray(video.feature[frames]), masks) if video.feature_dim
           else blank)
  rows = {
      "RGB": np.asarray(video.rgb[frames]),
      "mask": np.repeat((masks * 255).astype(np.uint8)[..., None], 3, axis=-1),
      f"flow +{gap}": np.stack([flow_to_color(f[..., :2], v, max_mag, m)
                                for f, v, m in zip(flows, valid, masks)]),
      "feature": feats,
      "depth": depth_row,
  }
  sep = 2  # white gap between frames
  out_rows = []
  for name, imgs in rows.items():
    parts = []
    for img in imgs:
      parts += [img, np.full((img.shape[0], sep, 3), 255, np.uint8)]
    out_rows.append(_label(np.concatenate(parts[:-1], axis=1), name))
    out_rows.append(np.full((sep, out_rows[-1].shape[1], 3), 255, np.uint8))
  header = _label(np.full((14, out_rows[0].shape[1] - _LABEL_WIDTH, 3), 255, np.uint8), "")
  for i, f in enumerate(frames):
    x = _LABEL_WIDTH + i * (video.width + sep) + 2
    cv2.putText(header, f"t={f}", (x, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1,
                cv2.LINE_AA)
  return np.concatenate([header] + out_rows[:-1], axis=0)
