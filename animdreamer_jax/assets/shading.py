"""Flat two-sided Lambert renders of meshes on the CPU rasteriser, for pictures people look at.

One shader for the export videos (`export.videos`) and the run folder's
reconstruction video and contact sheet (`stages.extraction.outputs`): the
colour times (ambient + diffuse |n . l|) with the face normal n and a light
fixed in camera space, so every face is lit whichever way it winds.

The synthetic benchmark videos keep their own smooth shading
(`data.synthetic.shade`, interpolated vertex normals): their pixels are part of
the benchmark.
"""

from __future__ import annotations

import numpy as np

from animdreamer_jax.assets import rasterize as rasterize_lib

# Towards the light in camera coordinates (OpenCV): above, left of and behind
# the camera, so surfaces facing the camera are lit.
LIGHT_DIRECTION_CAM = np.array([-0.35, -0.55, -0.75]) / np.linalg.norm([-0.35, -0.55, -0.75])
AMBIENT = 0.3
DIFFUSE = 0.7


def shade(vertices_cam: np.ndarray, faces: np.ndarray, colors: np.ndarray,
          intrinsics: np.ndarray, height: int, width: int,
          light_direction: np.ndarray = LIGHT_DIRECTION_CAM
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Lambert-shaded render of a coloured mesh in camera space (two-sided, flat).

  Args:
    vertices_cam: (V, 3) camera-space positions.
    faces: (F, 3).
    colors: (V, 3) float colours in [0, 1].
    intrinsics: (4,) fx, fy, cx, cy.
    height: image height H.
    width: image width W.
    light_direction: (3,) unit vector towards the light, camera space.
  Returns:
    image (H, W, 3) float (0 on background), depth (H, W) (inf on background),
    mask (H, W) bool.
  """
  faces = np.asarray(faces, np.int64)
  raster = rasterize_lib.rasterize(vertices_cam, faces, intrinsics, height, width)
  mask = raster.mask
  tri = np.asarray(vertices_cam, np.float64)[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-20)
  light = AMBIENT + DIFFUSE * np.abs(normal @ light_direction)  # two-sided: |n . l|
  albedo = rasterize_lib.interpolate(raster, faces, colors)
  image = np.zeros((height, width, 3))
  image[mask] = albedo[mask] * light[raster.face_id[mask], None]
  depth = np.where(mask, raster.depth, np.inf)
  return image, depth, mask


def over_background(render: tuple[np.ndarray, np.ndarray, np.ndarray],
                    background: np.ndarray) -> np.ndarray:
  """(H, W, 3) image of a `shade` render (image, depth, mask) over a background colour."""
  image, _, mask = render
  return np.where(mask[..., None], image, background)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """Float [0, 1] -> uint8, rounded to nearest and clipped."""
  return np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8)
