"""Training batches: frame pairs (i, i + d) and random foreground/background pixels.

The whole video lives on the device as a `DeviceVideo` pytree; `sample_batch`
draws a batch from a PRNG key with fixed shapes, so it runs inside the jitted
train step (no host round trip per step).

Layout of a batch of P pairs (N = 2P frames, K pixels per frame): rows
0..P-1 are the frames i, rows P..2P-1 their partners i + d, and
`partner_index[n]` is the row of n's partner. Frame i carries the forward flow
of gap d (to i + d); frame i + d the backward flow of gap d (to i).
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class BatchSettings:
  """`data`: the rays of one reconstruction step (lab4d: 128 pairs x 2 frames x 16 px = 4096)."""
  pairs_per_batch: int = 128  # frame pairs (i, i + d) per step
  pixels_per_frame: int = 16  # rays drawn from each frame of a pair
  fg_fraction: float = 0.5  # share of those rays drawn inside the mask

  def __post_init__(self):
    if self.pairs_per_batch < 1:
      raise UserError("config.data.pairs_per_batch: must be >= 1")
    if self.pixels_per_frame < 1:
      raise UserError("config.data.pixels_per_frame: must be >= 1")
    if not 0.0 <= self.fg_fraction <= 1.0:
      raise UserError("config.data.fg_fraction: must be in [0, 1]")


@flax.struct.dataclass
class DeviceVideo:
  """A video's training data, flattened over pixels (HW = H * W).

  Attributes:
    rgb: (T, HW, 3) uint8.
    mask: (T, HW) uint8, 1 = foreground.
    depth: (T, HW) float32 camera-space z (0 on background).
    feature: (T, HW, C) float16.
    flow_fw: (G, T, HW, 3) float16 (dx, dy, valid) to frame t + gaps[g].
    flow_bw: (G, T, HW, 3) float16 (dx, dy, valid) to frame t - gaps[g].
    pixel_order: (T, HW) int32 flat pixel indices, each frame's foreground
      pixels first (their count is fg_count), then its background pixels.
    fg_count: (T,) int32 foreground pixels per frame.
    gaps: (G,) int32 frame gaps, e.g. [1, 2, 4, 8].
    height, width: image size (static).
  """
  rgb: jnp.ndarray
  mask: jnp.ndarray
  depth: jnp.ndarray
  feature: jnp.ndarray
  flow_fw: jnp.ndarray
  flow_bw: jnp.ndarray
  pixel_order: jnp.ndarray
  fg_count: jnp.ndarray
  gaps: jnp.ndarray
  height: int = flax.struct.field(pytree_node=False)
  width: int = flax.struct.field(pytree_node=False)

  @property
  def num_frames(self) -> int:
    return self.rgb.shape[0]


@flax.struct.dataclass
class Batch:
  """One training batch (N frames x K pixels).

  Attributes:
    frame_index: (N,) int32 video frame of each row.
    partner_frame: (N,) int32 video frame of each row's partner.
    partner_index: (N,) int32 row of each row's partner.
    uv: (N, K, 2) float32 pixel indices (column u, row v); the pixel's centre is
      at (u + 0.5, v + 0.5) (geometry.rays convention).
    rgb: (N, K, 3) float32 in [0, 1].
    mask: (N, K) float32 foreground.
    depth: (N, K) float32.
    feature: (N, K, C) float32.
    flow: (N, K, 2) float32 pixel displacement to the partner frame.
    flow_valid: (N, K) float32.
  """
  frame_index: jnp.ndarray
  partner_frame: jnp.ndarray
  partner_index: jnp.ndarray
  uv: jnp.ndarray
  rgb: jnp.ndarray
  mask: jnp.ndarray
  depth: jnp.ndarray
  feature: jnp.ndarray
  flow: jnp.ndarray
  flow_valid: jnp.ndarray


def pixel_order(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per frame: flat pixel indices, foreground first (stable), and the fg count.

  Args:
    mask: (T, H, W) 0/1.

  Returns:
    (order (T, H*W) int32, fg_count (T,) int32).
  """
  flat = np.asarray(mask).reshape(mask.shape[0], -1) > 0
  # argsort of "is background" puts foreground first; stable keeps raster order.
  order = np.argsort(~flat, axis=1, kind="stable").astype(np.int32)
  return order, flat.sum(axis=1).astype(np.int32)


def make_device_video(rgb: np.ndarray, mask: np.ndarray, depth: np.ndarray | None,
                      feature: np.ndarray, flow_fw: Mapping[int, np.ndarray],
                      flow_bw: Mapping[int, np.ndarray], gaps: Sequence[int] | None = None,
                      source: str = "video") -> DeviceVideo:
  """Validates host arrays and puts them on the device.

  Args:
    rgb: (T, H, W, 3) uint8.
    mask: (T, H, W) 0/1.
    depth: (T, H, W) or None (zeros).
    feature: (T, H, W, C).
    flow_fw, flow_bw: gap -> (T, H, W, 3) (dx, dy, valid).
    gaps: the gaps to use (default: all present in both flow dicts).
    source: name used in error messages (the video folder).

  Raises:
    UserError: mismatched shapes, no frame pairs, or no foreground at all.
  """
  rgb = np.asarray(rgb)
  if rgb.ndim != 4 or rgb.shape[-1] != 3:
    raise UserError(f"{source}: rgb must be (T, H, W, 3), got {rgb.shape}")
  t, h, w, _ = rgb.shape
  if t < 2:
    raise UserError(f"{source}: needs at least 2 frames to form frame pairs, got {t}")
  mask = np.asarray(mask)
  if mask.shape != (t, h, w):
    raise UserError(f"{source}: mask shape {mask.shape} does not match rgb {(t, h, w)}")
  if not np.any(mask > 0):
    raise UserError(f"{source}/mask.npy: the mask sequence is empty (no foreground pixel in any frame)")
  feature = np.asarray(feature)
  if feature.ndim != 4 or feature.shape[:3] != (t, h, w):
    raise UserError(f"{source}: feature shape {feature.shape} does not match rgb {(t, h, w)}")
  depth = np.zeros((t, h, w), np.float32) if depth is None else np.asarray(depth, np.float32)
  if depth.shape != (t, h, w):
    raise UserError(f"{source}: depth shape {depth.shape} does not match rgb {(t, h, w)}")
  if gaps is None:
    gaps = sorted(set(flow_fw) & set(flow_bw))
  gaps = [int(g) for g in gaps if int(g) < t]
  if not gaps:
    raise UserError(f"{source}: no optical-flow gap shorter than the video ({t} frames)")
  for name, flows in (("flow_fw", flow_fw), ("flow_bw", flow_bw)):
    for g in gaps:
      if g not in flows:
        raise UserError(f"{source}/{name}_{g}.npy: missing")
      if np.shape(flows[g]) != (t, h, w, 3):
        raise UserError(f"{source}/{name}_{g}.npy: shape {np.shape(flows[g])}, expected {(t, h, w, 3)}")
  order, fg_count = pixel_order(mask)
  hw = h * w
  stack = lambda flows: np.stack([np.asarray(flows[g], np.float16).reshape(t, hw, 3) for g in gaps])
  return DeviceVideo(
      rgb=jnp.asarray(rgb.reshape(t, hw, 3).astype(np.uint8)),
      mask=jnp.asarray((mask.reshape(t, hw) > 0).astype(np.uint8)),
      depth=jnp.asarray(depth.reshape(t, hw)),
      feature=jnp.asarray(feature.reshape(t, hw, -1).astype(np.float16)),
      flow_fw=jnp.asarray(stack(flow_fw)),
      flow_bw=jnp.asarray(stack(flow_bw)),
      pixel_order=jnp.asarray(order),
      fg_count=jnp.asarray(fg_count),
      gaps=jnp.asarray(np.asarray(gaps, np.int32)),
      height=h, width=w)


def from_video(video, source: str = "video") -> DeviceVideo:
  """DeviceVideo from an `animdreamer_jax.data.video.Video`."""
  return make_device_video(video.rgb, video.mask, getattr(video, "depth", None), video.feature,
                           video.flow_fw, video.flow_bw, source=source)


def sample_pairs(key: jax.Array, num_frames: int, gaps: jnp.ndarray,
                 num_pairs: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Frame pairs (i, i + gaps[g]) with i uniform and g uniform among fitting gaps.

  Args:
    key: PRNG key.
    num_frames: T (static).
    gaps: (G,) int32.
    num_pairs: P (static).

  Returns:
    (first frames (P,) int32, gap indices (P,) int32) with i + gaps[g] < T.
  """
  key_frame, key_gap = jax.random.split(key)
  # Frames that have at least the smallest gap after them.
  first = jax.random.randint(key_frame, (num_pairs,), 0, num_frames - jnp.min(gaps))
  fits = first[:, None] + gaps[None, :] < num_frames  # (P, G)
  logits = jnp.where(fits, 0.0, -jnp.inf)
  gap_index = jax.random.categorical(key_gap, logits, axis=-1).astype(jnp.int32)
  return first.astype(jnp.int32), gap_index


def sample_pixels(key: jax.Array, order: jnp.ndarray, fg_count: jnp.ndarray, num_pixels: int,
                  num_fg: int) -> jnp.ndarray:
  """Flat pixel indices per frame: num_fg foreground then the rest background.

  Sampling is uniform with replacement within each set. A frame without
  foreground (or background) draws that part from the other set.

  Args:
    key: PRNG key.
    order: (N, HW) the frames' pixel orders (foreground first).
    fg_count: (N,) foreground counts.
    num_pixels: K (static).
    num_fg: how many of the K come from the foreground (static).

  Returns:
    (N, K) int32 flat pixel indices.
  """
  n, hw = order.shape
  u = jax.random.uniform(key, (n, num_pixels))
  fg = fg_count[:, None].astype(jnp.float32)
  bg = (hw - fg_count)[:, None].astype(jnp.float32)
  want_fg = jnp.arange(num_pixels)[None, :] < num_fg
  use_fg = jnp.where(want_fg, fg > 0, bg <= 0)
  rank_fg = jnp.floor(u * fg)
  rank_bg = fg + jnp.floor(u * bg)
  rank = jnp.where(use_fg, rank_fg, rank_bg)
  rank = jnp.clip(rank, 0, hw - 1).astype(jnp.int32)
  return jnp.take_along_axis(order, rank, axis=1)


def sample_batch(video: DeviceVideo, key: jax.Array, num_pairs: int, pixels_per_frame: int,
                 fg_fraction: float = 0.5) -> Batch:
  """Draws a batch of frame pairs and pixels; jit-able, fixed shapes.

  Args:
    video: the device-resident video.
    key: PRNG key.
    num_pairs: P (static); the batch has N = 2P frames.
    pixels_per_frame: K (static).
    fg_fraction: share of the K pixels drawn from the foreground (static).

  Returns:
    Batch with N = 2 * num_pairs rows.
  """
  key_pair, key_pix = jax.random.split(key)
  first, gap_index = sample_pairs(key_pair, video.num_frames, video.gaps, num_pairs)
  second = first + video.gaps[gap_index]
  frames = jnp.concatenate([first, second])
  partners = jnp.concatenate([second, first])
  gap_rows = jnp.concatenate([gap_index, gap_index])
  rows = jnp.arange(2 * num_pairs)
  partner_index = (rows + num_pairs) % (2 * num_pairs)

  num_fg = int(round(pixels_per_frame * fg_fraction))
  order = video.pixel_order[frames]
  idx = sample_pixels(key_pix, order, video.fg_count[frames], pixels_per_frame, num_fg)

  def gather(table):  # (T, HW, ...) -> (N, K, ...)
    return table[frames[:, None], idx]

  flow_fw = video.flow_fw[gap_rows[:, None], frames[:, None], idx]
  flow_bw = video.flow_bw[gap_rows[:, None], frames[:, None], idx]
  is_first = (rows < num_pairs)[:, None, None]
  flow = jnp.where(is_first, flow_fw, flow_bw).astype(jnp.float32)
  u = (idx % video.width).astype(jnp.float32)
  v = (idx // video.width).astype(jnp.float32)
  return Batch(
      frame_index=frames,
      partner_frame=partners,
      partner_index=partner_index.astype(jnp.int32),
      uv=jnp.stack([u, v], axis=-1),
      rgb=gather(video.rgb).astype(jnp.float32) / 255.0,
      mask=gather(video.mask).astype(jnp.float32),
      depth=gather(video.depth),
      feature=gather(video.feature).astype(jnp.float32),
      flow=flow[..., :2],
      flow_valid=flow[..., 2])


def image_pixels(height: int, width: int) -> np.ndarray:
  """(H*W, 2) float32 pixel indices (u, v) in raster order, for rendering whole images."""
  v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  return np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float32)
