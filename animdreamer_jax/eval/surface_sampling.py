"""Surface points of triangle meshes: area-uniform sampling and closest-point queries.

Evaluation measures distances between *surfaces*, not vertex sets, so that the
score does not depend on how a mesh is tessellated:
  - `sample_surface_frames` draws points uniformly by area on every frame
    (geometry.mesh.sample_surface: faces picked in proportion to their area,
    then a uniform point inside the face) and returns the face each point lies
    on (used to split ground truth into seen / never-seen);
  - `SurfaceIndex` answers "closest point on this mesh" for many query points:
    a KD-tree over dense surface samples proposes the faces of the k nearest
    samples, and the exact closest point on each of those triangles is taken.
    The result is an upper bound on the true point-to-surface distance, never
    larger than the distance to the nearest sample, and equal to the true
    distance whenever the closest face is among the candidates (in practice
    almost always, see the tests).

Meshes whose topology changes from frame to frame are padded to common shapes
(`pad_mesh_frames`): padded faces have zero area, so they are never sampled
and never proposed as candidates.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial import cKDTree

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib


@functools.partial(jax.jit, static_argnames=("num_samples",))
def _sample_frames(seed, vertices, faces, num_samples):
  base = jax.random.PRNGKey(seed)
  keys = jax.vmap(lambda t: jax.random.fold_in(base, t))(jnp.arange(vertices.shape[0]))
  if faces.ndim == 2:
    return jax.vmap(mesh_lib.sample_surface, in_axes=(0, 0, None, None))(
        keys, vertices, faces, num_samples)
  return jax.vmap(mesh_lib.sample_surface, in_axes=(0, 0, 0, None))(
      keys, vertices, faces, num_samples)


def sample_surface_frames(vertices: np.ndarray, faces: np.ndarray, num_samples: int,
                          seed: int) -> tuple[np.ndarray, np.ndarray]:
  """`geometry.mesh.sample_surface` on every frame of a sequence, with a fixed seed.

  Frame t uses key fold_in(PRNGKey(seed), t), so a frame's samples do not
  depend on how many frames the sequence has.

  Args:
    vertices: (T, V, 3) positions.
    faces: (F, 3) shared topology, or (T, F, 3) per frame.
    num_samples: N per frame.
    seed: integer seed.

  Returns:
    points (T, N, 3) float32 and face_index (T, N) int32, as NumPy arrays.
  """
  points, face_index = _sample_frames(np.int32(seed), np.asarray(vertices, np.float32),
                                      np.asarray(faces, np.int32), num_samples=num_samples)
  return np.asarray(points), np.asarray(face_index)


def closest_point_on_triangles(points: jnp.ndarray, a: jnp.ndarray, b: jnp.ndarray,
                               c: jnp.ndarray) -> jnp.ndarray:
  """Closest point on each triangle (a, b, c) to each point (broadcasting).

  If the orthogonal projection onto the triangle's plane falls inside the
  triangle it is the answer; otherwise the answer lies on the boundary, so it
  is the nearest of the three edge-segment projections. Degenerate (zero-area)
  triangles fall through to the edge case.

  Args:
    points: (..., 3) query points.
    a, b, c: (..., 3) triangle corners, broadcastable against `points`.

  Returns:
    (..., 3) closest points.
  """
  # Component-major (3, ...) arrays: elementwise ops on long axes vectorise and
  # fuse far better on CPU than ops over a trailing axis of length 3.
  p, a, b, c = (jnp.moveaxis(x, -1, 0) for x in (points, a, b, c))

  def dot(x, y):
    return x[0] * y[0] + x[1] * y[1] + x[2] * y[2]

  def cross(x, y):
    return jnp.stack([x[1] * y[2] - x[2] * y[1], x[2] * y[0] - x[0] * y[2],
                      x[0] * y[1] - x[1] * y[0]])

  ab, ac, ap = b - a, c - a, p - a
  # Barycentrics of the projection from cross products with the normal n:
  # unlike the Gram-determinant form, |n|^2 has no cancellation for slivers.
  n = cross(ab, ac)
  nn = dot(n, n)
  ok = nn > 1e-12 * dot(ab, ab) * dot(ac, ac)
  safe = jnp.where(ok, nn, 1.0)
  v = dot(cross(ap, ac), n) / safe
  w = dot(cross(ab, ap), n) / safe
  inside = ok & (v >= 0) & (w >= 0) & (v + w <= 1)
  projected = a + v * ab + w * ac

  def on_segment(p0, p1):
    e = p1 - p0
    t = jnp.clip(dot(p - p0, e) / jnp.maximum(dot(e, e), 1e-30), 0.0, 1.0)
    q = p0 + t * e
    return q, dot(q - p, q - p)

  q_ab, e_ab = on_segment(a, b)
  q_bc, e_bc = on_segment(b, c)
  q_ca, e_ca = on_segment(c, a)
  q_edge = jnp.where(e_bc < e_ab, q_bc, q_ab)
  q_edge = jnp.where(e_ca < jnp.minimum(e_ab, e_bc), q_ca, q_edge)
  return jnp.moveaxis(jnp.where(inside, projected, q_edge), 0, -1)


# Queries go through the kernel in fixed-size chunks so that it compiles once
# per mesh, whatever the number of frames or points.
_CHUNK = 4096


@jax.jit
def _closest_on_candidates(points, frame, vertices, faces, candidate_faces):
  """Closest point among candidate faces, for queries from any frames.

  Args:
    points: (C, 3) queries.
    frame: (C,) int32 frame of each query.
    vertices: (T, V, 3) positions of every frame.
    faces: (F, 3) shared, or (T, F, 3) per frame.
    candidate_faces: (C, K) face indices to test.

  Returns:
    closest (C, 3), distance (C,), face (C,) int32.
  """
  if faces.ndim == 2:
    corner_ids = faces[candidate_faces]  # (C, K, 3)
  else:
    corner_ids = faces[frame[:, None], candidate_faces]
  tri = vertices[frame[:, None, None], corner_ids]  # (C, K, 3, 3)
  q = closest_point_on_triangles(points[:, None, :], tri[..., 0, :], tri[..., 1, :],
                                 tri[..., 2, :])  # (C, K, 3)
  d2 = jnp.sum((q - points[:, None, :]) ** 2, -1)
  best = jnp.argmin(d2, axis=-1)
  closest = jnp.take_along_axis(q, best[:, None, None], axis=1)[:, 0]
  face = jnp.take_along_axis(candidate_faces, best[:, None], axis=1)[:, 0]
  return closest, jnp.sqrt(jnp.take_along_axis(d2, best[:, None], 1)[:, 0]), face


def subtriangle_centroids(n: int) -> np.ndarray:
  """Barycentric coordinates of the centroids of a triangle's n x n subdivision.

  Splitting every edge into n parts cuts a triangle into n^2 similar triangles
  (n(n+1)/2 pointing up, n(n-1)/2 down); their centroids cover the triangle
  evenly, each point of it within one sub-triangle of a centroid.

  Returns:
    (n^2, 3) barycentrics (weights of corners a, b, c), rows summing to 1.
  """
  up = [(i + 1 / 3, j + 1 / 3) for i in range(n) for j in range(n - i)]
  down = [(i + 2 / 3, j + 2 / 3) for i in range(n - 1) for j in range(n - 1 - i)]
  bc = np.asarray(up + down, np.float64).reshape(-1, 2) / n
  return np.concatenate([1.0 - bc.sum(1, keepdims=True), bc], 1)


class SurfaceIndex:
  """Closest-point queries against one triangle mesh per frame (host side).

  Every face is covered by an even grid of points (centroids of its n x n
  subdivision, n chosen per face so that the grid spacing is about
  sqrt(area / num_cells), at most `max_subdivision`), each labelled with its
  face. A query takes the k nearest grid points of its frame and returns the
  exact closest point over their faces. Because each face's grid has no gaps
  (unlike random samples) and several faces are tried, the true closest face
  is almost always among them; if not, the answer is still a surface point,
  so the distance is an upper bound that stays close (see the tests).
  """

  def __init__(self, vertices: np.ndarray, faces: np.ndarray, num_cells: int = 2048,
               max_subdivision: int = 16):
    """Args:
      vertices: (T, V, 3) positions.
      faces: (F, 3) shared topology, or (T, F, 3) per frame; zero-area faces
        (padding) are never returned.
      num_cells: sets the grid spacing, sqrt(mean surface area / num_cells);
        every face gets at least one grid point.
      max_subdivision: cap on n (bounds the grid of long sliver faces).
    """
    self.vertices = np.asarray(vertices, np.float32)
    self.faces = np.asarray(faces, np.int32)
    num_frames = self.vertices.shape[0]
    frame = np.arange(num_frames)[:, None, None]
    faces_t = self.faces if self.faces.ndim == 3 else self.faces[None]
    corners = self.vertices.astype(np.float64)[frame, faces_t]  # (T, F, 3, 3)
    edges = np.linalg.norm(corners[..., [1, 2, 0], :] - corners, axis=-1)  # (T, F, 3)
    areas = 0.5 * np.linalg.norm(np.cross(corners[..., 1, :] - corners[..., 0, :],
                                          corners[..., 2, :] - corners[..., 0, :]), axis=-1)
    spacing = np.sqrt(areas.sum(-1).mean() / num_cells)
    # One subdivision per face for the whole sequence (its longest edge over
    # all frames), so the grid points of a frame come from a few einsums.
    subdivision = np.clip(np.ceil(edges.max(axis=(0, 2)) / max(spacing, 1e-30)),
                          1, max_subdivision).astype(np.int64)
    groups = [(np.flatnonzero(subdivision == n), subtriangle_centroids(int(n)))
              for n in np.unique(subdivision)]
    point_faces = np.concatenate([np.repeat(ids, len(bary)) for ids, bary in groups]
                                 ).astype(np.int32)
    self.point_faces = []
    self.trees = []
    for t in range(num_frames):
      points = np.concatenate([
          np.einsum("bk,fkd->fbd", bary, corners[t, ids]).reshape(-1, 3)
          for ids, bary in groups])
      keep = areas[t][point_faces] > 0
      self.point_faces.append(point_faces[keep])
      # Sliding-midpoint (unbalanced) trees build faster and query as fast here.
      self.trees.append(cKDTree(points[keep], balanced_tree=False))

  @property
  def num_frames(self) -> int:
    return len(self.trees)

  def _faces_of(self, t: int) -> np.ndarray:
    return self.faces[t] if self.faces.ndim == 3 else self.faces

  def query(self, points: np.ndarray, k: int = 16, frames: Sequence[int] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closest points on the surface of each frame.

    Args:
      points: (T', M, 3) one query set per frame.
      k: number of nearest grid points whose faces are tested exactly.
      frames: which frames the T' query sets belong to (default: all, in order).

    Returns:
      closest (T', M, 3) float32, distance (T', M) float32, face index (T', M)
      int32, NumPy arrays.
    """
    frames = list(range(self.num_frames) if frames is None else frames)
    points = np.asarray(points, np.float32)
    rows, per_row = points.shape[:2]
    k = min(k, min(len(self.point_faces[t]) for t in frames))
    # Worker threads only pay off for large query sets.
    workers = -1 if per_row >= 4096 else 1
    candidates = np.empty((rows, per_row, k), np.int32)
    for row, t in enumerate(frames):
      _, idx = self.trees[t].query(points[row], k=k, workers=workers)
      candidates[row] = self.point_faces[t][np.reshape(idx, (-1, k))]
    # Flatten all frames, pad to whole chunks, run the kernel chunk by chunk.
    total = rows * per_row
    padded = -(-total // _CHUNK) * _CHUNK
    flat_points = np.zeros((padded, 3), np.float32)
    flat_points[:total] = points.reshape(-1, 3)
    flat_frame = np.zeros((padded,), np.int32)
    flat_frame[:total] = np.repeat(np.asarray(frames, np.int32), per_row)
    flat_candidates = np.zeros((padded, k), np.int32)
    flat_candidates[:total] = candidates.reshape(-1, k)
    chunks = [_closest_on_candidates(flat_points[i:i + _CHUNK], flat_frame[i:i + _CHUNK],
                                     self.vertices, self.faces,
                                     flat_candidates[i:i + _CHUNK])
              for i in range(0, padded, _CHUNK)]
    closest, distance, face = (
        np.concatenate([np.asarray(c[i]) for c in chunks])[:total].reshape(
            (rows, per_row) + ((3,) if i == 0 else ()))
        for i in range(3))
    return closest, distance, face

  def face_normals(self, face: np.ndarray, frames: Sequence[int] | None = None
                   ) -> np.ndarray:
    """Unit normals of the given faces (zero for degenerate faces).

    Args:
      face: (T', M) face indices, one row per frame in `frames`.
      frames: frames of the rows (default: all, in order).

    Returns:
      (T', M, 3) float32.
    """
    frames = range(self.num_frames) if frames is None else frames
    out = np.empty(np.shape(face) + (3,), np.float32)
    for row, t in enumerate(frames):
      a, b, c = np.moveaxis(self.vertices[t][self._faces_of(t)[face[row]]], -2, 0)
      normal = np.cross(b - a, c - a)
      length = np.linalg.norm(normal, axis=-1, keepdims=True)
      out[row] = np.where(length > 0, normal / np.where(length > 0, length, 1.0), 0.0)
    return out


def pad_mesh_frames(vertices: Sequence[np.ndarray], faces: Sequence[np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Stacks per-frame meshes of different sizes into fixed-shape arrays.

  Padded vertices are zeros; padded faces are (0, 0, 0), which have zero area
  and so are never sampled.

  Args:
    vertices: T arrays (V_t, 3).
    faces: T arrays (F_t, 3).

  Returns:
    vertices (T, max V_t, 3) float32 and faces (T, max F_t, 3) int32.
  """
  num_v = max(v.shape[0] for v in vertices)
  num_f = max(f.shape[0] for f in faces)
  out_v = np.zeros((len(vertices), num_v, 3), np.float32)
  out_f = np.zeros((len(faces), num_f, 3), np.int32)
  for t, (v, f) in enumerate(zip(vertices, faces)):
    out_v[t, :v.shape[0]] = v
    out_f[t, :f.shape[0]] = f
  return out_v, out_f


def check_mesh_frames(vertices: np.ndarray, faces: np.ndarray, what: str) -> None:
  """Raises UserError unless every frame is a finite mesh with positive area.

  Args:
    vertices: (T, V, 3).
    faces: (T, F, 3) or (F, 3).
    what: name used in the message (a file path).
  """
  vertices = np.asarray(vertices)
  faces = np.asarray(faces)
  if vertices.ndim != 3 or vertices.shape[-1] != 3:
    raise UserError(f"{what}: vertices must be (T, V, 3), got {vertices.shape}")
  if faces.ndim not in (2, 3) or faces.shape[-1] != 3 or faces.shape[-2] == 0:
    raise UserError(f"{what}: faces must be a non-empty (F, 3) array, got {faces.shape}")
  if not np.all(np.isfinite(vertices)):
    raise UserError(f"{what}: vertices contain NaN or inf")
  if faces.min() < 0 or faces.max() >= vertices.shape[1]:
    raise UserError(f"{what}: face indices out of range [0, {vertices.shape[1]})")
  faces_t = np.broadcast_to(faces, (vertices.shape[0],) + faces.shape[-2:])
  frame = np.arange(vertices.shape[0])[:, None]
  a, b, c = (vertices[frame, faces_t[..., i]] for i in range(3))  # (T, F, 3)
  area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=-1).sum(-1)
  bad = np.flatnonzero(~(area > 0))
  if bad.size:
    raise UserError(f"{what}: frame {bad[0]} has zero surface area")
