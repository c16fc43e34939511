"""Pictures of an exported rig: turntable with bones, animation, reference vs reconstruction.

All rendering goes through the project's CPU rasteriser and its flat Lambert
shader (`animdreamer_jax.assets.shading`), OpenCV cameras (x right, y down, z
forward; world-to-camera `w2c`), world +Y up. Images are float RGB in [0, 1]
until `shading.to_uint8`; videos are written as H.264 MP4 through imageio-ffmpeg,
atomically.

- `turntable_frames`: the rest shape turning about +Y; left its vertex
  colours, right its skinning (each bone a colour, vertices coloured by their
  weights) with every Gaussian bone drawn as its half-sigma ellipsoid (1 sigma
  hides the body early in training), seen through the half-transparent skin.
- `animation_frames`: the posed meshes from one fixed camera that frames the
  whole motion.
- `reference_frames`: the input video's frames next to the posed mesh
  rendered from each frame's camera.
"""

from __future__ import annotations

import colorsys
import os
import pathlib
import warnings
from typing import Iterable, Optional

import imageio.v2 as imageio
import numpy as np

from animdreamer_jax import files
from animdreamer_jax.assets import shading
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import rays
from animdreamer_jax.geometry import transforms_np

BACKGROUND = np.array([1.0, 1.0, 1.0])
_SKIN_OPACITY = 0.45  # how much of the skin covers a bone seen through it


# ----------------------------------------------------------------------------
# Cameras.


def orbit_camera(center: np.ndarray, radius: float, azimuth_deg: float, elevation_deg: float,
                 height: int, width: int, fov_deg: float = 35.0, margin: float = 1.15
                 ) -> tuple[np.ndarray, np.ndarray]:
  """A camera on a sphere around `center` that frames a ball of `radius`.

  Azimuth 0 looks from +Z towards -Z; positive elevation looks down from above.

  Returns:
    (w2c (4, 4), intrinsics (4,) fx, fy, cx, cy).
  """
  half_fov = np.radians(fov_deg) / 2
  distance = margin * radius / np.sin(half_fov)
  az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
  direction = np.array([np.cos(el) * np.sin(az), np.sin(el), np.cos(el) * np.cos(az)])
  eye = np.asarray(center, np.float64) + distance * direction
  focal = 0.5 * min(height, width) / np.tan(half_fov)
  return rays.look_at(eye, center), np.array([focal, focal, width / 2.0, height / 2.0])


def bounding_ball(points: np.ndarray) -> tuple[np.ndarray, float]:
  """Centre of the bounding box of (..., 3) points and the radius around it."""
  flat = np.asarray(points, np.float64).reshape(-1, 3)
  center = (flat.min(0) + flat.max(0)) / 2
  return center, float(max(np.linalg.norm(flat - center, axis=1).max(), 1e-6))


# ----------------------------------------------------------------------------
# Meshes to draw.


def bone_palette(num_bones: int) -> np.ndarray:
  """(B, 3) distinct saturated colours (golden-ratio hues)."""
  hues = (np.arange(num_bones) * 0.618033988749895) % 1.0
  return np.array([colorsys.hsv_to_rgb(h, 0.75, 0.95) for h in hues]).reshape(num_bones, 3)


def skinning_colors(weights: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """(V, B) weights x (B, 3) bone colours -> (V, 3) weight-blended colours."""
  weights = np.asarray(weights, np.float64)
  return weights @ palette / np.maximum(weights.sum(1, keepdims=True), 1e-12)


def unit_sphere(rings: int = 8, segments: int = 12) -> tuple[np.ndarray, np.ndarray]:
  """A UV sphere of radius 1: (rings - 1) * segments + 2 vertices, outward CCW faces."""
  theta = np.pi * np.arange(1, rings) / rings  # polar angle, poles excluded
  phi = 2 * np.pi * np.arange(segments) / segments
  st, ct = np.sin(theta)[:, None], np.cos(theta)[:, None]
  ring_pts = np.stack([st * np.cos(phi), np.broadcast_to(ct, (rings - 1, segments)),
                       st * np.sin(phi)], -1).reshape(-1, 3)
  vertices = np.concatenate([[[0.0, 1.0, 0.0]], ring_pts, [[0.0, -1.0, 0.0]]])
  top, bottom = 0, vertices.shape[0] - 1

  def idx(r, s):
    return 1 + r * segments + (s % segments)

  faces = []
  for s in range(segments):
    faces.append([top, idx(0, s + 1), idx(0, s)])
    faces.append([bottom, idx(rings - 2, s), idx(rings - 2, s + 1)])
    for r in range(rings - 2):
      a, b, c, d = idx(r, s), idx(r, s + 1), idx(r + 1, s), idx(r + 1, s + 1)
      faces += [[a, b, d], [a, d, c]]
  return vertices, np.asarray(faces, np.int64)


def ellipsoid_meshes(bone_to_object: np.ndarray, log_scale: np.ndarray, n_sigma: float = 1.0,
                     rings: int = 8, segments: int = 12
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every Gaussian bone as its n-sigma ellipsoid.

  Args:
    bone_to_object: (B, 4, 4) bone frames (rotation = the Gaussian's axes).
    log_scale: (B, 3) log standard deviations along the bone axes.
    n_sigma: ellipsoid radius in standard deviations.
  Returns:
    vertices (B * S, 3), faces (B * Fs, 3), bone index of each vertex (B * S,).
  """
  sphere_v, sphere_f = unit_sphere(rings, segments)
  num_bones = bone_to_object.shape[0]
  local = sphere_v[None] * (n_sigma * np.exp(np.asarray(log_scale, np.float64)))[:, None, :]
  verts = (np.einsum("bij,bvj->bvi", bone_to_object[:, :3, :3], local)
           + bone_to_object[:, None, :3, 3])
  faces = sphere_f[None] + sphere_v.shape[0] * np.arange(num_bones)[:, None, None]
  owner = np.repeat(np.arange(num_bones), sphere_v.shape[0])
  return verts.reshape(-1, 3), faces.reshape(-1, 3), owner


# ----------------------------------------------------------------------------
# Rendering.


def composite_xray(skin: tuple, bones: tuple, background: np.ndarray = BACKGROUND) -> np.ndarray:
  """Bones drawn over the skin, seen through it where they are behind it.

  Args:
    skin, bones: (image, depth, mask) from `shading.shade`.
  Returns:
    (H, W, 3) float image.
  """
  skin_img, skin_depth, skin_mask = skin
  bone_img, bone_depth, bone_mask = bones
  out = np.where(skin_mask[..., None], skin_img, background)
  front = bone_mask & (~skin_mask | (bone_depth <= skin_depth))
  behind = bone_mask & skin_mask & (bone_depth > skin_depth)
  out[front] = bone_img[front]
  out[behind] = _SKIN_OPACITY * skin_img[behind] + (1 - _SKIN_OPACITY) * bone_img[behind]
  return out


def colors_float(vertex_colors: Optional[np.ndarray], num_vertices: int) -> np.ndarray:
  """uint8 sRGB (V, 3) -> float [0, 1]; light grey when None."""
  if vertex_colors is None:
    return np.full((num_vertices, 3), 0.78)
  return np.asarray(vertex_colors, np.float64) / 255.0


def turntable_frames(rest_vertices: np.ndarray, faces: np.ndarray,
                     vertex_colors: Optional[np.ndarray], skin_weights: np.ndarray,
                     rest_bone_to_object: np.ndarray, log_scale: np.ndarray,
                     num_frames: int = 48, size: int = 256, elevation_deg: float = 20.0,
                     n_sigma: float = 0.5, progress: Optional[callable] = None) -> np.ndarray:
  """The rest shape turning once about +Y: colours | skinning with bone ellipsoids.

  Returns:
    (N, size, 2 * size, 3) uint8.
  """
  center, radius = bounding_ball(rest_vertices)
  palette = bone_palette(skin_weights.shape[1])
  skin_colors = skinning_colors(skin_weights, palette)
  colors = colors_float(vertex_colors, rest_vertices.shape[0])
  bone_v, bone_f, owner = ellipsoid_meshes(rest_bone_to_object, log_scale, n_sigma)
  frames = []
  for i in range(num_frames):
    w2c, intr = orbit_camera(center, radius, 360.0 * i / num_frames, elevation_deg, size, size)
    v_cam = transforms_np.to_camera(rest_vertices, w2c)
    left = shading.over_background(shading.shade(v_cam, faces, colors, intr, size, size),
                                   BACKGROUND)
    skin = shading.shade(v_cam, faces, skin_colors, intr, size, size)
    bones = shading.shade(transforms_np.to_camera(bone_v, w2c), bone_f, palette[owner], intr,
                          size, size)
    right = composite_xray(skin, bones)
    frames.append(shading.to_uint8(np.concatenate([left, right], axis=1)))
    if progress is not None:
      progress()
  return np.stack(frames)


def animation_frames(posed_vertices: np.ndarray, faces: np.ndarray,
                     vertex_colors: Optional[np.ndarray], size: int = 256,
                     azimuth_deg: float = 35.0, elevation_deg: float = 20.0,
                     progress: Optional[callable] = None) -> np.ndarray:
  """(T, V, 3) posed meshes seen by one fixed camera framing all frames. -> (T, S, S, 3) uint8."""
  center, radius = bounding_ball(posed_vertices)
  w2c, intr = orbit_camera(center, radius, azimuth_deg, elevation_deg, size, size)
  colors = colors_float(vertex_colors, posed_vertices.shape[1])
  frames = []
  for verts in posed_vertices:
    v_cam = transforms_np.to_camera(verts, w2c)
    render = shading.shade(v_cam, faces, colors, intr, size, size)
    frames.append(shading.to_uint8(shading.over_background(render, BACKGROUND)))
    if progress is not None:
      progress()
  return np.stack(frames)


def reference_frames(reference_rgb: np.ndarray, posed_camera: np.ndarray, faces: np.ndarray,
                     vertex_colors: Optional[np.ndarray], intrinsics: np.ndarray,
                     progress: Optional[callable] = None) -> np.ndarray:
  """Input frames | the posed mesh rendered from each frame's camera.

  Args:
    reference_rgb: (T, H, W, 3) uint8 video frames.
    posed_camera: (T, V, 3) posed vertices in each frame's camera space.
    intrinsics: (T, 4) per-frame intrinsics.
  Returns:
    (T, H, 2W, 3) uint8.
  """
  num, height, width = reference_rgb.shape[:3]
  if posed_camera.shape[0] != num or intrinsics.shape[0] != num:
    raise UserError(f"reference video: {num} frames but {posed_camera.shape[0]} posed meshes "
                    f"and {intrinsics.shape[0]} cameras")
  colors = colors_float(vertex_colors, posed_camera.shape[1])
  frames = []
  for t in range(num):
    render = shading.shade(posed_camera[t], faces, colors, intrinsics[t], height, width)
    frames.append(np.concatenate(
        [reference_rgb[t], shading.to_uint8(shading.over_background(render, BACKGROUND))], axis=1))
    if progress is not None:
      progress()
  return np.stack(frames)


def upscale(frames: np.ndarray, min_height: int = 256) -> np.ndarray:
  """Nearest-neighbour integer upscaling so tiny videos stay watchable (and codec friendly)."""
  factor = max(1, int(np.ceil(min_height / frames.shape[1])))
  if factor == 1:
    return frames
  return frames.repeat(factor, axis=1).repeat(factor, axis=2)


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray] | np.ndarray,
              fps: float) -> None:
  """H.264 MP4 (yuv420p, even sizes padded) via imageio-ffmpeg, written atomically.

  Raises:
    UserError: no frames, or the encoder is missing.
  """
  path = pathlib.Path(path)
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[0] == 0 or frames.shape[-1] != 3:
    raise UserError(f"{path}: need (N, H, W, 3) frames, got {frames.shape}")
  # yuv420p needs even sizes: pad with the last row/column.
  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  if pad_h or pad_w:
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  try:
    # ffmpeg writes to a file name, not a file object.
    with files.atomic_path(path) as tmp, warnings.catch_warnings():
      # ffmpeg is exec'd at once, so JAX's "fork with threads" warning does not apply.
      warnings.simplefilter("ignore", RuntimeWarning)
      imageio.mimwrite(tmp, list(frames.astype(np.uint8)), fps=float(fps), codec="libx264",
                       pixelformat="yuv420p", macro_block_size=1)
  except (RuntimeError, OSError) as e:
    raise UserError(f"{path}: cannot encode the video ({e})") from e
