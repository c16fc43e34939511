"""Frames of an ordinary video: decoding, the time window, the square crop around the animal.

`read_frames` decodes a video file (mp4/mov/avi/... through imageio's ffmpeg) or a folder of images
(png/jpg, sorted by name) into RGB uint8 frames, keeping every k-th frame for a lower frame rate and a
window [start, start + count). `square_crop` is the union of the animal's mask boxes over the clip,
padded and made square (it may reach outside the frame: that part is filled with the edge pixels);
`crop_frames` cuts and resizes it, and `crop_intrinsics` carries it into the camera.
"""

from __future__ import annotations

import pathlib
from typing import NamedTuple, Optional, Sequence

import cv2
import numpy as np

from animdreamer_jax.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class Frames(NamedTuple):
  """rgb: (T, H, W, 3) uint8; fps: frames per second after subsampling; indices: (T,) the kept
  frames' indices in the source; total: frames in the source."""
  rgb: np.ndarray
  fps: float
  indices: np.ndarray
  total: int


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: pathlib.Path) -> np.ndarray:
  image = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if image is None:
    raise UserError(f"{path}: cannot read as an image")
  return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _first_line(error: Exception) -> str:
  """ffmpeg's errors run over many lines: the first one, for a one-line message."""
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0][:200]}"


def _decode_video(path: pathlib.Path) -> tuple[list[np.ndarray], float]:
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
  try:
    reader = imageio.get_reader(str(path), format="FFMPEG")
  except Exception as e:  # pylint: disable=broad-except  (ffmpeg: any failure to open)
    raise UserError(f"{path}: cannot be read as a video ({_first_line(e)})") from None
  try:
    fps = float(reader.get_meta_data().get("fps") or 30.0)
    frames = []
    try:
      for frame in reader:
        frames.append(np.asarray(frame)[..., :3])
    except Exception as e:  # pylint: disable=broad-except  (a truncated file)
      if not frames:
        raise UserError(f"{path}: cannot be decoded ({_first_line(e)})") from None
  finally:
    reader.close()
  return frames, fps


def read_frames(source: str | pathlib.Path, fps: Optional[float] = None, start: int = 0,
                count: Optional[int] = None, folder_fps: float = 30.0) -> Frames:
  """Decodes `source` (a video file or a folder of images).

  Args:
    source: the video file or image folder.
    fps: keep about this many frames per second (every round(source_fps / fps)-th); None: all.
    start: first kept frame (after subsampling).
    count: number of frames (None: to the end).
    folder_fps: the frame rate of an image folder.

  Raises:
    UserError: unreadable, empty, or a window with fewer than 2 frames.
  """
  source = pathlib.Path(source)
  if source.is_dir():
    paths = image_files(source)
    if not paths:
      raise UserError(f"{source}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    source_fps, lazy = folder_fps, paths
  elif source.is_file():
    frames, source_fps = _decode_video(source)
    if not frames:
      raise UserError(f"{source}: the video has no frames")
    lazy = frames
  else:
    raise UserError(f"{source}: not found")
  step = 1 if not fps else max(1, int(round(source_fps / fps)))
  indices = np.arange(0, len(lazy), step)[start:]
  if count is not None:
    indices = indices[:count]
  if len(indices) < 2:
    raise UserError(f"{source}: {len(indices)} frame(s) in the chosen window (of {len(lazy)}); "
                    "extraction needs at least 2")
  images = [(_read_image(lazy[i]) if isinstance(lazy[i], pathlib.Path) else lazy[i])
            for i in indices]
  shapes = {im.shape for im in images}
  if len(shapes) != 1:
    raise UserError(f"{source}: frames of different sizes {sorted(shapes)}")
  return Frames(np.stack(images).astype(np.uint8), source_fps / step, indices, len(lazy))


def parse_box(text: str, height: int, width: int) -> np.ndarray:
  """"x0,y0,x1,y1" (pixels of the first frame) -> int array, checked against the frame.

  Raises:
    UserError: malformed, empty, or outside the frame.
  """
  try:
    box = np.array([float(v) for v in text.split(",")])
  except ValueError:
    box = np.zeros(0)
  if box.shape != (4,):
    raise UserError(f"--box {text!r}: give x0,y0,x1,y1 in pixels of the first frame")
  x0, y0, x1, y1 = box
  if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
    raise UserError(f"--box {text!r}: outside the {width} x {height} frame or empty "
                    "(need 0 <= x0 < x1 <= width, 0 <= y0 < y1 <= height)")
  return np.round(box).astype(int)


def mask_box(mask: np.ndarray) -> Optional[np.ndarray]:
  """(x0, y0, x1, y1) of a (H, W) mask's foreground (x1, y1 exclusive); None if empty."""
  ys, xs = np.nonzero(mask)
  if ys.size == 0:
    return None
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])


def square_crop(masks: np.ndarray, padding: float = 1.2) -> np.ndarray:
  """(x0, y0, side) of the square around the union of the clip's mask boxes, its side `padding`
  times the longer side of that union.

  Raises:
    UserError: every mask is empty.
  """
  boxes = [b for b in (mask_box(m) for m in masks) if b is not None]
  if not boxes:
    raise UserError("masks: empty in every frame (no animal to crop)")
  boxes = np.stack(boxes)
  x0, y0 = boxes[:, 0].min(), boxes[:, 1].min()
  x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
  side = int(np.ceil(max(x1 - x0, y1 - y0) * padding))
  cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
  return np.array([int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side])


def crop_frames(images: np.ndarray, crop: np.ndarray, size: int,
                interpolation: int = cv2.INTER_AREA) -> np.ndarray:
  """(T, H, W, ...) -> (T, size, size, ...): the square crop (edge pixels beyond the frame),
  resized."""
  x0, y0, side = (int(v) for v in crop)
  h, w = images.shape[1:3]
  pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
  out = []
  for image in images:
    if pad:
      image = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    window = image[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    out.append(cv2.resize(window, (size, size), interpolation=interpolation))
  return np.stack(out)


def crop_intrinsics(intrinsics: np.ndarray, crop: np.ndarray, size: int) -> np.ndarray:
  """(fx, fy, cx, cy) of the full frame -> of the crop resized to `size` (pixel centres kept:
  a pixel edge at x maps to (x - x0) * size / side)."""
  x0, y0, side = (float(v) for v in crop)
  scale = size / side
  fx, fy, cx, cy = (float(v) for v in intrinsics)
  return np.array([fx * scale, fy * scale, (cx - x0) * scale, (cy - y0) * scale], np.float32)


def resize_masks(masks: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
  """Masks of any size -> (T, height, width) uint8 0/1 (nearest)."""
  return np.stack([cv2.resize((np.asarray(m) > 0).astype(np.uint8), (width, height),
                              interpolation=cv2.INTER_NEAREST) for m in masks])
