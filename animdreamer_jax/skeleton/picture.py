"""skeleton.png: the joint tree drawn over the canonical rest mesh, from the front, the side and the top.

The mesh is drawn pale so that the bones (drawn on top, never hidden) read at a
glance: legs orange, tail green, head red, spine and root blue, other joints grey;
each joint a dot, each bone a line from the parent joint to the child joint, and
each leaf bone a line to its end.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from animdreamer_jax.assets import shading
from animdreamer_jax.geometry import rays as rays_lib
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.skeleton.skeleton_file import Skeleton

MESH_COLOR = np.array([0.88, 0.88, 0.9])
BACKGROUND = np.array([1.0, 1.0, 1.0])
FOV_DEGREES = 30.0
HEADER_HEIGHT = 18
# (prefix of the joint name, RGB colour 0-255)
ROLE_COLORS = (("leg", (240, 120, 20)), ("tail", (40, 160, 60)), ("head", (220, 30, 30)),
               ("spine", (40, 80, 220)))
OTHER_COLOR = (110, 110, 110)
# View name -> direction from the mesh centre to the camera, and the camera's up.
VIEWS = (("front (+z)", (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)),
         ("side (+x)", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
         ("top (+y)", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)))


def role_color(name: str) -> tuple[int, int, int]:
  for prefix, color in ROLE_COLORS:
    if name.startswith(prefix):
      return color
  return OTHER_COLOR


def _camera(points: np.ndarray, direction, up, size: int) -> tuple[np.ndarray, np.ndarray]:
  centre = 0.5 * (points.min(0) + points.max(0))
  radius = float(np.max(np.linalg.norm(points - centre, axis=-1)))
  half = math.radians(FOV_DEGREES) / 2
  distance = 1.1 * radius / math.sin(half)
  w2c = rays_lib.look_at(centre + distance * np.asarray(direction), centre, up=up)
  focal = (size / 2) / math.tan(half)
  return w2c, np.array([focal, focal, size / 2, size / 2])


def skeleton_picture(vertices: np.ndarray, faces: np.ndarray, skel: Skeleton,
                     size: int = 256) -> np.ndarray:
  """(size + 2 * header, 3 * size, 3) uint8: the three views and a legend (module docstring)."""
  vertices = np.asarray(vertices, np.float64)
  leaf = skeleton_file.leaves(skel)
  joints = np.concatenate([np.asarray(skel.rest_position, np.float64),
                           np.asarray(skel.end_position, np.float64)[leaf]])
  points = np.concatenate([vertices, joints])
  panels = []
  for _, direction, up in VIEWS:
    w2c, k = _camera(points, direction, up, size)
    cam_v = transforms_np.to_camera(vertices, w2c)
    image = shading.to_uint8(shading.over_background(
        shading.shade(cam_v, faces, np.tile(MESH_COLOR, (len(vertices), 1)), k, size, size),
        BACKGROUND))
    image = np.ascontiguousarray(image)
    cam_j = transforms_np.to_camera(joints, w2c)
    uv = np.stack([k[0] * cam_j[:, 0] / cam_j[:, 2] + k[2],
                   k[1] * cam_j[:, 1] / cam_j[:, 2] + k[3]], axis=-1)
    pix = np.round(uv).astype(int)
    for i, j in enumerate(leaf):  # leaf bones to their ends
      cv2.line(image, tuple(pix[j]), tuple(pix[skel.num_joints + i]),
               role_color(str(skel.names[j])), 2, cv2.LINE_AA)
    for j in range(skel.num_joints):
      p = skel.parent[j]
      if p >= 0:
        cv2.line(image, tuple(pix[p]), tuple(pix[j]), role_color(str(skel.names[j])), 2,
                 cv2.LINE_AA)
    for j in range(skel.num_joints):
      cv2.circle(image, tuple(pix[j]), 4 if j == 0 else 3, role_color(str(skel.names[j])), -1,
                 cv2.LINE_AA)
    panels.append(image)
  header = np.full((HEADER_HEIGHT, 3 * size, 3), 255, np.uint8)
  for i, (name, _, _) in enumerate(VIEWS):
    cv2.putText(header, name, (i * size + 4, HEADER_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
  footer = np.full((HEADER_HEIGHT, 3 * size, 3), 255, np.uint8)
  pruned = len(skel.pruned)
  legend = (f"{skel.num_joints} joints, tree depth {skel.depth()}, {pruned} "
            f"bone{'' if pruned == 1 else 's'} pruned; "
            "legs orange, tail green, head red, spine blue")
  cv2.putText(footer, legend, (4, HEADER_HEIGHT - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1,
              cv2.LINE_AA)
  return np.concatenate([header, np.concatenate(panels, axis=1), footer], axis=0)
