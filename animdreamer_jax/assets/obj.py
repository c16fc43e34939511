"""Wavefront OBJ for single triangle meshes (e.g. one file per frame).

Only what per-frame meshes need: `v x y z [r g b]` (vertex colours as floats
in [0, 1], the MeshLab convention) and `f` with any `v/vt/vn` form, 1-based or
negative (relative) indices; polygons are fan-triangulated. Everything else
(vt, vn, groups, materials, comments) is ignored on read and not written.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from animdreamer_jax import files
from animdreamer_jax.errors import UserError


def read_obj(path: str | os.PathLike, return_colors: bool = False):
  """Reads a triangle mesh from an OBJ file.

  Args:
    path: the .obj file.
    return_colors: also return the vertex colours.
  Returns:
    vertices: (V, 3) float32.
    faces: (F, 3) int32, counter-clockwise as stored, 0-based.
    colors (only if return_colors): (V, 3) uint8 sRGB, or None when not every
      vertex line carries a colour.
  Raises:
    UserError: missing file, malformed line (with its number), face index out
      of range, no vertices or faces.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: file not found")
  try:
    text = path.read_text(encoding="utf-8", errors="replace")
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from e
  vertices, colors, faces = [], [], []
  for number, line in enumerate(text.splitlines(), 1):
    parts = line.split()
    if not parts:
      continue
    try:
      if parts[0] == "v":
        values = [float(x) for x in parts[1:]]
        if len(values) not in (3, 4, 6, 7):
          raise ValueError("expected 3 coordinates (+ optional w or r g b)")
        vertices.append(values[:3])
        if len(values) >= 6:
          colors.append(values[-3:])
      elif parts[0] == "f":
        corners = [int(x.split("/")[0]) for x in parts[1:]]
        if len(corners) < 3 or 0 in corners:
          raise ValueError("a face needs >= 3 non-zero vertex indices")
        # Negative indices count back from the vertices read so far.
        corners = [c - 1 if c > 0 else len(vertices) + c for c in corners]
        faces.extend([corners[0], corners[i], corners[i + 1]]
                     for i in range(1, len(corners) - 1))
    except ValueError as e:
      raise UserError(f"{path}: line {number}: cannot parse {line.strip()!r} "
                      f"({e})") from e
  if not vertices or not faces:
    raise UserError(f"{path}: no vertices or no faces")
  vertices = np.asarray(vertices, np.float32)
  faces = np.asarray(faces, np.int64)
  if faces.min() < 0 or faces.max() >= len(vertices):
    raise UserError(f"{path}: face index outside 1..{len(vertices)}")
  faces = faces.astype(np.int32)
  if not return_colors:
    return vertices, faces
  rgb = None
  if len(colors) == len(vertices):
    rgb = np.asarray(colors, np.float64)
    if rgb.max() > 1.0:  # some tools write 0..255
      rgb = rgb / 255.0
    rgb = np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
  return vertices, faces, rgb


def write_obj(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray,
              colors: np.ndarray | None = None) -> None:
  """Writes a triangle mesh as OBJ, atomically (temp file + rename).

  Args:
    path: the .obj file.
    vertices: (V, 3) float; written with 9 significant digits (float32 exact).
    faces: (F, 3) int, 0-based.
    colors: optional (V, 3) uint8 sRGB, written as `v x y z r g b` in [0, 1].
  Raises:
    UserError: wrong shapes or face indices out of range.
  """
  path = pathlib.Path(path)
  vertices = np.asarray(vertices)
  faces = np.asarray(faces)
  if vertices.ndim != 2 or vertices.shape[1] != 3:
    raise UserError(f"{path}: vertices must be (V, 3), got {vertices.shape}")
  if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.kind not in "iu":
    raise UserError(f"{path}: faces must be int (F, 3), got {faces.dtype} "
                    f"{faces.shape}")
  if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
    raise UserError(f"{path}: faces index vertices outside "
                    f"0..{len(vertices) - 1}")
  columns = [vertices.astype(np.float64)]
  fmt = "v %.9g %.9g %.9g"
  if colors is not None:
    colors = np.asarray(colors)
    if colors.shape != vertices.shape or colors.dtype != np.uint8:
      raise UserError(f"{path}: colors must be uint8 {vertices.shape}, got "
                      f"{colors.dtype} {colors.shape}")
    columns.append(colors / 255.0)
    fmt += " %.6g %.6g %.6g"
  vertex_rows = np.concatenate(columns, 1)
  lines = [fmt % tuple(row) for row in vertex_rows]
  lines += ["f %d %d %d" % tuple(row) for row in faces.astype(np.int64) + 1]
  files.save_text(path, "\n".join(lines) + "\n")
