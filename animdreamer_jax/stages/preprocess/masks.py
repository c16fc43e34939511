"""The animal's masks: the user's, or bootstrapped from a box in the first frame without a network.

Any segmenter is a function `(frames (T, H, W, 3) uint8, box (x0, y0, x1, y1) in frame 0,
progress=callable(frames done) | None) -> masks (T, H, W) uint8 0/1` (`Segmenter`); a learned one (SAM,
XMem, ...) plugs in there (`stages.preprocess.run.preprocess(..., segmenter=...)`). The one built in,
`grabcut_track`: OpenCV GrabCut inside the box on frame 0; then frame by frame, the previous mask carried
over by the (DIS) flow back to the previous frame, and GrabCut again, certain inside the carried mask's
core, certain background beyond a band around it, undecided in the band; the largest connected part is
kept. It runs at a working size (the longer side `work_size` px) and is scaled back.

User masks (`read_masks`): a folder of images (non-zero = animal; PNG/JPG sorted by name), a mask
video (bright = animal), or lab4d's `Annotations` folder of `%05d.npy` label maps (> 0 = animal;
negative = not detected).
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import cv2
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.stages.preprocess import flow as flow_lib
from animdreamer_jax.stages.preprocess import frames as frames_lib

Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def read_masks(source: str | pathlib.Path, indices: Sequence[int], num_source_frames: int | None,
               height: int, width: int) -> np.ndarray:
  """The user's masks of the kept frames `indices` (positions in the source video), resized to
  (height, width) -> (T, height, width) uint8.

  num_source_frames: frames in the source video (masks must be one per source frame); None when
  unknown (only the kept indices must exist).

  Raises:
    UserError: unreadable, or a mask count that differs from the video's frame count.
  """
  source = pathlib.Path(source)
  if source.is_dir():
    npy = sorted(source.glob("*.npy"))
    if npy:  # lab4d Annotations: label maps, > 0 = the object
      try:
        raw = [np.load(path, allow_pickle=False) for path in npy]
      except (OSError, ValueError) as e:
        raise UserError(f"{source}: cannot read the label maps ({e})") from None
      loader = lambda i: raw[i] > 0  # noqa: E731
      count = len(raw)
    else:
      paths = frames_lib.image_files(source)
      if not paths:
        raise UserError(f"{source}: no mask images (.png/.jpg) or lab4d .npy label maps here")
      loader = lambda i: cv2.imread(str(paths[i]), cv2.IMREAD_GRAYSCALE) > 0  # noqa: E731
      count = len(paths)
  elif source.is_file():
    decoded = frames_lib.read_frames(source).rgb
    loader = lambda i: decoded[i].mean(axis=-1) > 127  # noqa: E731
    count = len(decoded)
  else:
    raise UserError(f"{source}: not found")
  if num_source_frames is not None and count != num_source_frames:
    raise UserError(f"{source}: {count} masks for a video of {num_source_frames} frames "
                    "(one mask per frame)")
  if max(indices) >= count:
    raise UserError(f"{source}: {count} masks, but frame {max(indices)} is used")
  masks = []
  for i in indices:
    mask = loader(int(i))
    if mask is None or np.ndim(mask) != 2:
      raise UserError(f"{source}: mask {i} is not a single-channel image or label map")
    masks.append(mask.astype(np.uint8))
  return frames_lib.resize_masks(masks, height, width)


def largest_component(mask: np.ndarray) -> np.ndarray:
  """The largest 8-connected foreground part of a 0/1 mask."""
  count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
  if count <= 1:
    return mask.astype(np.uint8)
  best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
  return (labels == best).astype(np.uint8)


def _grabcut(image: np.ndarray, init: np.ndarray, iterations: int, rect=None) -> np.ndarray:
  bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
  bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
  mode = cv2.GC_INIT_WITH_RECT if rect is not None else cv2.GC_INIT_WITH_MASK
  cv2.grabCut(bgr, init, rect, bgd, fgd, iterations, mode)
  return np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8)


def carried_mask(previous_mask: np.ndarray, backward_flow: np.ndarray) -> np.ndarray:
  """The previous frame's mask seen from this frame: this frame's pixel p takes the previous
  mask at p + backward_flow(p)."""
  h, w = previous_mask.shape
  grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
  sampled = flow_lib.sample(previous_mask.astype(np.float32)[..., None], grid + backward_flow)
  return (sampled[..., 0] > 0.5).astype(np.uint8)


def grabcut_track(frames: np.ndarray, box: np.ndarray, work_size: int = 256, band: float = 0.15,
                  iterations: int = 4, progress=None) -> np.ndarray:
  """Masks of the animal in every frame from a box around it in frame 0 (see the module docstring).

  band: how far (a share of the carried mask's box diagonal) the animal may have moved beyond the
    carried mask: undecided up to `band` outside it (and `band` / 2 inside its edge), certain
    background beyond twice that.

  Raises:
    UserError: GrabCut finds nothing in the box.
  """
  t, h, w = frames.shape[:3]
  scale = min(1.0, work_size / max(h, w))
  size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
  small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
  x0, y0, x1, y1 = (np.asarray(box, np.float64) * scale).round().astype(int)
  rect = (int(x0), int(y0), max(1, int(x1 - x0)), max(1, int(y1 - y0)))
  first = largest_component(_grabcut(small[0], np.zeros(small.shape[1:3], np.uint8), iterations,
                                     rect))
  if not first.any():
    raise UserError(f"--box {tuple(int(v) for v in box)}: GrabCut found no animal in it; draw the "
                    "box tighter around the animal or pass --masks")
  def disk(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)

  masks = [first]
  for i in range(1, t):
    carried = carried_mask(masks[-1], flow_lib.dis_flow(small[i], small[i - 1]))
    if not carried.any():
      carried = masks[-1]
    x0, y0, x1, y1 = frames_lib.mask_box(carried)
    reach = max(2, int(round(band * np.hypot(x1 - x0, y1 - y0))))
    init = np.full(carried.shape, cv2.GC_BGD, np.uint8)
    init[cv2.dilate(carried, disk(2 * reach)) > 0] = cv2.GC_PR_BGD
    init[cv2.dilate(carried, disk(reach)) > 0] = cv2.GC_PR_FGD
    init[cv2.erode(carried, disk(max(1, reach // 2))) > 0] = cv2.GC_FGD
    try:
      mask = largest_component(_grabcut(small[i], init, iterations))
    except cv2.error:  # no background (or foreground) left to model: keep the carried mask
      mask = carried
    masks.append(mask if mask.any() else carried)
    if progress is not None:
      progress(1)
  return frames_lib.resize_masks(masks, h, w)
