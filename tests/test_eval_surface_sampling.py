"""Area-uniform surface sampling and closest-point queries vs NumPy loop references."""

from __future__ import annotations

import chex
import numpy as np
import pytest

from animdreamer_jax.eval import surface_sampling as ss


def icosphere(subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
  """Unit icosphere (vertices (V, 3) float32, faces (F, 3) int32, outward CCW)."""
  t = (1.0 + 5.0 ** 0.5) / 2.0
  verts = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
           [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
  faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4],
           [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8],
           [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]]
  verts = [np.array(v, float) / np.linalg.norm(v) for v in verts]
  for _ in range(subdivisions):
    midpoint = {}

    def mid(i, j):
      key = (min(i, j), max(i, j))
      if key not in midpoint:
        m = verts[i] + verts[j]
        verts.append(m / np.linalg.norm(m))
        midpoint[key] = len(verts) - 1
      return midpoint[key]

    new_faces = []
    for a, b, c in faces:
      ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
      new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
    faces = new_faces
  return np.array(verts, np.float32), np.array(faces, np.int32)


def bumpy_sequence(num_frames: int, subdivisions: int) -> tuple[np.ndarray, np.ndarray]:
  """An asymmetric, deforming blob: vertices (T, V, 3), faces (F, 3)."""
  v, f = icosphere(subdivisions)
  frames = []
  for t in range(num_frames):
    r = (1.0 + 0.25 * np.sin(3 * v[:, 0] + 0.4 * t) * np.cos(2 * v[:, 1])
         + 0.3 * np.maximum(v[:, 2], 0))
    frames.append(v * r[:, None] * np.array([1.0, 0.6, 0.45]))
  return np.array(frames, np.float32), f


def closest_point_reference(p, a, b, c):
  """Slow reference: the minimiser of |x - p| over the triangle, by trying every
  active set of the constraints (interior, each edge, each vertex) in float64."""
  p, a, b, c = (np.asarray(x, np.float64) for x in (p, a, b, c))
  candidates = [a, b, c]
  e1, e2, ap = b - a, c - a, p - a
  g11, g12, g22 = e1 @ e1, e1 @ e2, e2 @ e2
  det = g11 * g22 - g12 * g12
  if det > 1e-14 * g11 * g22:  # interior stationary point (2x2 normal equations)
    r1, r2 = e1 @ ap, e2 @ ap
    u, v = (g22 * r1 - g12 * r2) / det, (g11 * r2 - g12 * r1) / det
    if u >= 0 and v >= 0 and u + v <= 1:
      candidates.append(a + u * e1 + v * e2)
  for x, y in ((a, b), (b, c), (c, a)):
    e = y - x
    if e @ e > 0:
      s = (p - x) @ e / (e @ e)
      if 0 <= s <= 1:
        candidates.append(x + s * e)
  return min(candidates, key=lambda q: (q - p) @ (q - p))


def test_frame_samples_do_not_depend_on_sequence_length():
  vertices, faces = bumpy_sequence(4, 1)
  full_points, full_face = ss.sample_surface_frames(vertices, faces, 500, seed=7)
  part_points, part_face = ss.sample_surface_frames(vertices[:2], faces, 500, seed=7)
  chex.assert_shape(full_points, (4, 500, 3))
  np.testing.assert_array_equal(full_points[:2], part_points)
  np.testing.assert_array_equal(full_face[:2], part_face)
  other, _ = ss.sample_surface_frames(vertices, faces, 500, seed=8)
  assert not np.allclose(other, full_points)


def test_closest_point_on_triangles_matches_active_set_reference():
  rng = np.random.default_rng(1)
  n = 400
  tri = rng.normal(size=(n, 3, 3))
  tri[:20, 2] = tri[:20, 0] + 0.3 * (tri[:20, 1] - tri[:20, 0])  # degenerate (collinear)
  tri[20:40, 2] = tri[20:40, 0] + 1e-3 * rng.normal(size=(20, 3))  # slivers
  points = rng.normal(size=(n, 3)) * 1.5
  points[40:80] = (tri[40:80] * rng.dirichlet([1, 1, 1], 40)[..., None]).sum(1)  # on the face
  got = np.asarray(ss.closest_point_on_triangles(
      points.astype(np.float32), *(tri[:, i].astype(np.float32) for i in range(3))))
  want = np.stack([closest_point_reference(p, *t) for p, t in zip(points, tri)])
  d_got = np.linalg.norm(got - points, axis=-1)
  d_want = np.linalg.norm(want - points, axis=-1)
  np.testing.assert_allclose(d_got, d_want, atol=2e-6)
  np.testing.assert_allclose(got[20:], want[20:], atol=5e-5)


def test_subtriangle_centroids_match_loop_construction():
  for n in range(1, 6):
    got = ss.subtriangle_centroids(n)
    want = []
    for i in range(n):
      for j in range(n - i):
        corners = [(i, j), (i + 1, j), (i, j + 1)]
        want.append(np.mean(corners, 0) / n)
        if i + j < n - 1:
          corners = [(i + 1, j), (i, j + 1), (i + 1, j + 1)]
          want.append(np.mean(corners, 0) / n)
    want = np.array(want)
    assert got.shape == (n * n, 3)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    order = lambda x: x[np.lexsort(x.T)]  # noqa: E731
    np.testing.assert_allclose(order(got[:, 1:]), order(want), atol=1e-12)


def brute_force_distance(points, vertices, faces):
  """Reference point-to-mesh distance (and face) by testing every face."""
  dist = np.empty(len(points))
  face = np.empty(len(points), int)
  for i, p in enumerate(points):
    d = [np.linalg.norm(closest_point_reference(p, *vertices[f]) - p) for f in faces]
    face[i] = int(np.argmin(d))
    dist[i] = d[face[i]]
  return dist, face


@pytest.mark.parametrize("per_frame_topology", [False, True])
def test_surface_index_matches_brute_force(per_frame_topology):
  vertices, faces = bumpy_sequence(2, 1)  # 80 faces
  if per_frame_topology:
    # Frame 1 drops 10 faces: padded to a common shape with zero-area faces.
    vertices, faces = ss.pad_mesh_frames([vertices[0], vertices[1]], [faces, faces[10:]])
    chex.assert_shape(faces, (2, 80, 3))
  index = ss.SurfaceIndex(vertices, faces)
  rng = np.random.default_rng(2)
  on_surface, _ = ss.sample_surface_frames(vertices, faces, 60, seed=3)
  queries = np.concatenate([on_surface, on_surface + 0.05 * rng.normal(size=on_surface.shape),
                            rng.normal(size=(2, 30, 3))], 1).astype(np.float32)
  closest, dist, face = index.query(queries)
  chex.assert_shape(closest, (2, 150, 3))
  for t in range(2):
    faces_t = faces[t] if faces.ndim == 3 else faces
    real = np.flatnonzero(np.ptp(faces_t, axis=1) > 0)
    want, _ = brute_force_distance(queries[t], vertices[t].astype(np.float64), faces_t[real])
    # Returned points really are on the returned (real) faces...
    assert np.all(np.isin(face[t], real))
    for i in range(0, 150, 5):
      ref = closest_point_reference(queries[t, i], *vertices[t][faces_t[face[t, i]]])
      np.testing.assert_allclose(closest[t, i], ref, atol=1e-5)
    # ...so the distance is never below the true one, and here it is exact.
    assert np.all(dist[t] >= want - 1e-6)
    np.testing.assert_allclose(dist[t], want, atol=1e-5)


def test_face_normals_are_unit_and_perpendicular():
  vertices, faces = bumpy_sequence(2, 1)
  index = ss.SurfaceIndex(vertices, faces)
  face = np.array([[0, 5, 7], [1, 2, 79]])
  normals = index.face_normals(face)
  np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-6)
  for t in range(2):
    for j, f in enumerate(face[t]):
      a, b, c = vertices[t][faces[f]]
      assert abs(normals[t, j] @ (b - a)) < 1e-5 and abs(normals[t, j] @ (c - a)) < 1e-5


def test_pad_mesh_frames_shapes_and_zero_area_padding():
  v0, f0 = icosphere(0)
  v1, f1 = icosphere(1)
  vertices, faces = ss.pad_mesh_frames([v0, v1], [f0, f1])
  chex.assert_shape(vertices, (2, len(v1), 3))
  chex.assert_shape(faces, (2, len(f1), 3))
  np.testing.assert_array_equal(faces[0, len(f0):], 0)
  np.testing.assert_array_equal(vertices[0, :len(v0)], v0)
