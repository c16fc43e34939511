"""Exact, deterministic CPU z-buffer rasteriser (vectorised NumPy, no OpenGL).

Host-side tool for making synthetic videos: it returns, for every pixel centre,
the id of the nearest triangle, the perspective-correct barycentric coordinates
of the surface point seen there and its camera-space depth. Everything else
(colour, normals, rest-pose positions, flow) is interpolated from those.

Conventions (README): OpenCV camera (x right, y down, z forward), intrinsics
(fx, fy, cx, cy) in pixels, the centre of pixel (u, v) is at (u + 0.5, v + 0.5).
Triangles are two-sided (no back-face culling), so open meshes (eyes, ears,
hooves) never show holes. Ties in depth go to the smaller face id, so the
result does not depend on the order in which candidates are visited.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

# Candidate (triangle, pixel) pairs handled at once; bounds peak memory when a
# triangle comes close to the camera and covers much of the image.
_MAX_CANDIDATES_PER_CHUNK = 1 << 21


@dataclasses.dataclass(frozen=True)
class Raster:
  """Per-pixel result of `rasterize`.

  Attributes:
    face_id: int32 (H, W): index of the visible triangle, -1 on background.
    barycentric: float32 (H, W, 3): perspective-correct barycentric coordinates
      of the visible surface point w.r.t. the triangle's vertices (sum to 1);
      0 on background.
    depth: float32 (H, W): camera-space z of the visible point, 0 on background.
  """
  face_id: np.ndarray
  barycentric: np.ndarray
  depth: np.ndarray

  @property
  def mask(self) -> np.ndarray:
    """bool (H, W): True where a triangle is visible."""
    return self.face_id >= 0


def project_points(points_cam: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
  """Pinhole projection of camera-space points to continuous pixel coordinates.

  Args:
    points_cam: (..., 3) camera-space points (z > 0 in front of the camera).
    intrinsics: (4,) fx, fy, cx, cy.

  Returns:
    (..., 2) (x, y) pixel coordinates; pixel (u, v) spans [u, u+1) x [v, v+1).
  """
  fx, fy, cx, cy = np.asarray(intrinsics, dtype=np.float64)
  points_cam = np.asarray(points_cam, dtype=np.float64)
  z = points_cam[..., 2]
  return np.stack([fx * points_cam[..., 0] / z + cx,
                   fy * points_cam[..., 1] / z + cy], axis=-1)


def _edge(a: np.ndarray, b: np.ndarray, p: np.ndarray) -> np.ndarray:
  """Twice the signed area of (a, b, p); (..., 2) inputs -> (...)."""
  return ((b[..., 0] - a[..., 0]) * (p[..., 1] - a[..., 1])
          - (b[..., 1] - a[..., 1]) * (p[..., 0] - a[..., 0]))


def rasterize(vertices_cam: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray,
              height: int, width: int, near: float = 1e-4) -> Raster:
  """Z-buffer rasterisation of a triangle mesh given in camera space.

  A pixel is covered by a triangle when its centre lies inside or on the edge of
  the projected triangle. Triangles with a vertex at z <= `near` are dropped
  (the synthetic cameras always stay outside the object, so no clipping is
  needed). All arithmetic is float64; outputs are float32.

  Args:
    vertices_cam: (V, 3) camera-space vertex positions.
    faces: (F, 3) int vertex indices.
    intrinsics: (4,) fx, fy, cx, cy in pixels.
    height: image height H.
    width: image width W.
    near: minimum camera-space z of a rasterised vertex.

  Returns:
    Raster with face_id (H, W), barycentric (H, W, 3), depth (H, W).
  """
  vertices_cam = np.asarray(vertices_cam, dtype=np.float64)
  faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
  face_id = np.full(height * width, -1, dtype=np.int32)
  bary_out = np.zeros((height * width, 3), dtype=np.float32)
  depth_out = np.zeros(height * width, dtype=np.float32)

  tris = _screen_triangles(vertices_cam, faces, intrinsics, height, width, near)
  counts = tris.extent[:, 0] * tris.extent[:, 1]
  candidate_faces = np.nonzero(counts)[0]
  if candidate_faces.size == 0:
    return _finish(face_id, bary_out, depth_out, height, width)

  # Split the faces into chunks whose candidate count stays bounded.
  cum = np.cumsum(counts[candidate_faces])
  chunk_of = cum // _MAX_CANDIDATES_PER_CHUNK
  best_key = np.full(height * width, np.inf)
  best_face = np.full(height * width, -1, dtype=np.int64)
  for chunk in np.unique(chunk_of):
    f, pid, bary, depth = _fragments(tris, candidate_faces[chunk_of == chunk], width)
    win = _nearest_fragments(f, pid, depth)
    pid_w, depth_w, f_w = pid[win], depth[win], f[win]
    # Merge with earlier chunks (same rule: nearer, then smaller face id).
    better = (depth_w < best_key[pid_w]) | (
        (depth_w == best_key[pid_w]) & (f_w < best_face[pid_w]))
    pid_w, win = pid_w[better], win[better]
    best_key[pid_w] = depth[win]
    best_face[pid_w] = f[win]
    face_id[pid_w] = f[win]
    bary_out[pid_w] = bary[win]
    depth_out[pid_w] = depth[win]
  return _finish(face_id, bary_out, depth_out, height, width)


class _ScreenTriangles(NamedTuple):
  """The projected triangles and the pixel box each one may cover."""
  xy: np.ndarray  # (F, 3, 2) pixel coordinates of the corners
  z: np.ndarray  # (F, 3) camera-space depths of the corners
  area: np.ndarray  # (F,) twice the signed screen area
  lo: np.ndarray  # (F, 2) first candidate pixel (u, v)
  extent: np.ndarray  # (F, 2) int64 candidate box width, height; 0 when not rasterised


def _screen_triangles(vertices_cam: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray,
                      height: int, width: int, near: float) -> _ScreenTriangles:
  """Projects the faces; those behind `near`, degenerate or off-image get an empty box."""
  xy = project_points(vertices_cam, intrinsics)
  tri_xy = xy[faces]                      # (F, 3, 2)
  tri_z = vertices_cam[faces, 2]          # (F, 3)
  area = _edge(tri_xy[:, 0], tri_xy[:, 1], tri_xy[:, 2])
  usable = (np.all(tri_z > near, axis=1) & np.all(np.isfinite(tri_xy), axis=(1, 2))
            & (np.abs(area) > 1e-12))
  # Pixel u is a candidate when its centre u + 0.5 is within the triangle's
  # x-range, i.e. ceil(min - 0.5) <= u <= floor(max - 0.5).
  lo = np.ceil(tri_xy.min(axis=1) - 0.5)
  hi = np.floor(tri_xy.max(axis=1) - 0.5)
  lo = np.clip(lo, 0, [width, height])
  hi = np.clip(hi, -1, [width - 1, height - 1])
  extent = np.where(usable[:, None], np.maximum(hi - lo + 1, 0), 0).astype(np.int64)
  return _ScreenTriangles(tri_xy, tri_z, area, lo, extent)


def _fragments(tris: _ScreenTriangles, sel: np.ndarray, width: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """The pixels whose centre lies in one of the faces `sel` (every box pixel is tested).

  Returns:
    Per fragment: face (N,), pixel index v * width + u (N,), perspective-correct
    barycentrics (N, 3) and camera-space depth (N,).
  """
  n = tris.extent[sel, 0] * tris.extent[sel, 1]
  f = np.repeat(sel, n)
  # Index of each candidate inside its face's bounding box.
  k = np.arange(f.size) - np.repeat(np.cumsum(n) - n, n)
  w = tris.extent[f, 0]
  px = tris.lo[f, 0].astype(np.int64) + k % w
  py = tris.lo[f, 1].astype(np.int64) + k // w
  p = np.stack([px + 0.5, py + 0.5], axis=-1)
  a, b, c = tris.xy[f, 0], tris.xy[f, 1], tris.xy[f, 2]
  area_f = tris.area[f]
  # Screen-space barycentrics; dividing by the signed area makes both
  # windings positive inside.
  l0 = _edge(b, c, p) / area_f
  l1 = _edge(c, a, p) / area_f
  l2 = _edge(a, b, p) / area_f
  inside = (l0 >= 0) & (l1 >= 0) & (l2 >= 0)
  f, px, py = f[inside], px[inside], py[inside]
  lam = np.stack([l0[inside], l1[inside], l2[inside]], axis=-1)
  # Perspective correction: 1/z is affine in screen space.
  q = lam / tris.z[f]
  inv_z = q.sum(axis=-1)
  return f, py * width + px, q / inv_z[:, None], 1.0 / inv_z


def _nearest_fragments(f: np.ndarray, pid: np.ndarray, depth: np.ndarray) -> np.ndarray:
  """Indices of the fragment kept at each pixel: nearest first, then the smaller face id.

  The tie-break makes the result independent of the order of the candidates.
  """
  order = np.lexsort((f, depth, pid))
  pid_s = pid[order]
  first = np.ones(pid_s.size, dtype=bool)
  first[1:] = pid_s[1:] != pid_s[:-1]
  return order[first]


def _finish(face_id, bary, depth, height, width) -> Raster:
  return Raster(face_id=face_id.reshape(height, width),
                barycentric=bary.reshape(height, width, 3),
                depth=depth.reshape(height, width))


def interpolate(raster: Raster, faces: np.ndarray, vertex_values: np.ndarray) -> np.ndarray:
  """Barycentric interpolation of per-vertex values at every pixel.

  Args:
    raster: output of `rasterize`.
    faces: (F, 3) the faces that were rasterised.
    vertex_values: (V, C) values per vertex.

  Returns:
    float64 (H, W, C) interpolated values, 0 on background.
  """
  faces = np.asarray(faces)
  vertex_values = np.asarray(vertex_values, dtype=np.float64)
  fid = raster.face_id
  fg = fid >= 0
  out = np.zeros(fid.shape + vertex_values.shape[1:], np.float64)
  tri = vertex_values[faces[fid[fg]]]                        # (N, 3, C)
  out[fg] = np.einsum("nk,nkc->nc", raster.barycentric[fg].astype(np.float64), tri)
  return out
