"""Host mesh geometry (geometry.mesh) against slow, obvious references."""

from __future__ import annotations

import chex
import jax
import numpy as np

from animdreamer_jax.geometry import mesh


# ----------------------------------------------------------------------------
# The surface sampler.


def barycentric_reference(p, a, b, c):
  """Barycentric coordinates of p in triangle (a, b, c) by least squares."""
  m = np.stack([a - c, b - c], 1).astype(np.float64)
  (u, v), *_ = np.linalg.lstsq(m, (p - c).astype(np.float64), rcond=None)
  return np.array([u, v, 1 - u - v])


def triangle_area_reference(a, b, c):
  """Heron's formula in float64 (independent of the cross product the code uses)."""
  x, y, z = (np.linalg.norm(np.subtract(p, q)) for p, q in ((a, b), (b, c), (c, a)))
  s = (x + y + z) / 2
  return np.sqrt(max(s * (s - x) * (s - y) * (s - z), 0.0))


def scattered_triangles(areas, rng):
  """Random triangles (own vertices, random planes and places) with the given areas."""
  vertices = []
  for area in areas:
    tri = rng.normal(size=(3, 3))
    tri *= np.sqrt(area / triangle_area_reference(*tri))
    vertices.append(tri + rng.uniform(-20.0, 20.0, 3))
  faces = np.arange(3 * len(areas)).reshape(-1, 3)
  return np.concatenate(vertices).astype(np.float32), faces.astype(np.int32)


def test_triangle_areas_match_heron():
  rng = np.random.default_rng(4)
  vertices = rng.normal(size=(10, 3)).astype(np.float32)
  faces = rng.integers(0, 10, size=(30, 3)).astype(np.int32)
  got = np.asarray(mesh.triangle_areas(vertices, faces))
  want = [triangle_area_reference(*vertices[f].astype(np.float64)) for f in faces]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_area_sampling_follows_area():
  # Two disjoint triangles with areas 1 and 3.
  vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [5, 0, 0], [8, 0, 0], [5, 2, 0]],
                      np.float32)
  faces = np.array([[0, 1, 2], [3, 4, 5]], np.int32)
  n = 100_000
  points, face = jax.jit(mesh.sample_surface, static_argnums=3)(
      jax.random.PRNGKey(0), vertices, faces, n)
  chex.assert_shape(points, (n, 3))
  chex.assert_shape(face, (n,))
  counts = np.bincount(np.asarray(face), minlength=2)
  # Binomial std at p = 3/4 is 0.00137; 0.006 is > 4 sigma.
  assert abs(counts[1] / n - 0.75) < 0.006


def test_face_counts_pass_chi_square_over_very_different_areas():
  areas = np.array([0.02, 0.1, 0.5, 1.0, 3.0, 12.0])
  vertices, faces = scattered_triangles(areas, np.random.default_rng(5))
  n = 200_000
  _, face = mesh.sample_surface(jax.random.PRNGKey(6), vertices, faces, n)
  counts = np.bincount(np.asarray(face), minlength=len(areas))
  expected = n * areas / areas.sum()
  chi2 = np.sum((counts - expected) ** 2 / expected)
  # 5 degrees of freedom: P(chi2 > 25) ~ 1e-4. Sampling faces uniformly (not by
  # area) gives chi2 in the hundreds of thousands.
  assert chi2 < 25.0, (counts, expected)


def test_samples_lie_on_their_face_and_are_uniform_inside():
  rng = np.random.default_rng(0)
  vertices = rng.normal(size=(3, 3)).astype(np.float32)
  faces = np.array([[0, 1, 2]], np.int32)
  n = 60_000
  points, face = mesh.sample_surface(jax.random.PRNGKey(3), vertices, faces, n)
  points = np.asarray(points)
  assert np.all(np.asarray(face) == 0)
  bary = np.stack([barycentric_reference(p, *vertices) for p in points[:3000]])
  recon = bary @ vertices.astype(np.float64)
  np.testing.assert_allclose(recon, points[:3000], atol=1e-5)
  assert bary.min() > -1e-5
  # Uniform on a triangle: P(bary_i > x) = (1 - x)^2 for each corner i.
  basis = np.stack([vertices[0] - vertices[2], vertices[1] - vertices[2]], 1).astype(np.float64)
  uv, *_ = np.linalg.lstsq(basis, (points - vertices[2]).T.astype(np.float64), rcond=None)
  all_bary = np.concatenate([uv.T, 1 - uv.sum(0)[:, None]], 1)
  for corner in range(3):
    for x in (0.2, 0.4, 0.6, 0.8):
      assert abs(np.mean(all_bary[:, corner] > x) - (1 - x) ** 2) < 0.01


def test_every_sample_lies_on_the_face_it_reports():
  vertices, faces = scattered_triangles([0.3, 2.0, 0.05, 1.0], np.random.default_rng(7))
  points, face = mesh.sample_surface(jax.random.PRNGKey(8), vertices, faces, 2000)
  points, face = np.asarray(points), np.asarray(face)
  for p, f in zip(points, face):
    a, b, c = vertices[faces[f]].astype(np.float64)
    bary = barycentric_reference(p, a, b, c)
    assert bary.min() > -1e-4, bary
    np.testing.assert_allclose(bary @ np.stack([a, b, c]), p, atol=1e-5)


def test_zero_area_faces_are_never_sampled():
  vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 0, 0]], np.float32)
  # (0,0,0) padding, a collinear face, and one real face in the middle.
  faces = np.array([[0, 0, 0], [0, 1, 3], [0, 1, 2], [0, 0, 0]], np.int32)
  _, face = mesh.sample_surface(jax.random.PRNGKey(1), vertices, faces, 5000)
  assert np.all(np.asarray(face) == 2)


def test_zero_area_faces_between_real_ones_are_skipped():
  # Degenerate faces first, last and between faces of very different areas.
  vertices, faces = scattered_triangles([0.01, 4.0, 0.5], np.random.default_rng(9))
  degenerate = np.array([[0, 0, 0], [3, 4, 3], [6, 7, 6]], np.int32)
  faces = np.concatenate([degenerate[:1], faces[:1], degenerate[1:2], faces[1:],
                          degenerate[2:]])
  _, face = mesh.sample_surface(jax.random.PRNGKey(2), vertices, faces, 50_000)
  counts = np.bincount(np.asarray(face), minlength=len(faces))
  np.testing.assert_array_equal(counts[[0, 2, 5]], 0)
  assert counts[1] > 0  # the smallest real face (expected ~110) is still drawn


def test_no_faces_draws_vertices_or_zeros():
  vertices = np.array([[0, 0, 0], [1, 2, 3], [-1, 0.5, 2], [4, 4, 4]], np.float32)
  no_faces = np.zeros((0, 3), np.int32)
  for sampler in (mesh.sample_surface, jax.jit(mesh.sample_surface, static_argnums=3)):
    points, face = sampler(jax.random.PRNGKey(0), vertices, no_faces, 1000)
    chex.assert_shape(points, (1000, 3))
    np.testing.assert_array_equal(face, -1)
    # Every point is one of the vertices, and every vertex is drawn.
    match = np.all(np.asarray(points)[:, None] == vertices[None], -1)
    assert np.all(match.sum(1) == 1)
    assert np.all(match.any(0))
    points, face = sampler(jax.random.PRNGKey(0), np.zeros((0, 3), np.float32), no_faces, 7)
    np.testing.assert_array_equal(points, np.zeros((7, 3)))
    np.testing.assert_array_equal(face, -1)


def test_same_key_same_points():
  vertices, faces = scattered_triangles([1.0, 2.0], np.random.default_rng(3))
  first, _ = mesh.sample_surface(jax.random.PRNGKey(11), vertices, faces, 64)
  again, _ = mesh.sample_surface(jax.random.PRNGKey(11), vertices, faces, 64)
  other, _ = mesh.sample_surface(jax.random.PRNGKey(12), vertices, faces, 64)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


def test_host_sampler_matches_sampler_and_reuses_its_compile():
  rng = np.random.default_rng(13)
  sizes = (1500, 1900)  # one padding bucket (2048 faces)
  before = mesh._sample_surface_jit._cache_size()  # pylint: disable=protected-access
  for num_faces in sizes:
    vertices, faces = scattered_triangles(rng.uniform(0.01, 2.0, num_faces), rng)
    got = mesh.sample_surface_host(21, vertices, faces, 500)
    assert got.dtype == np.float32 and got.shape == (500, 3)
    want, face = mesh.sample_surface(jax.random.PRNGKey(21), vertices, faces, 500)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
    # On real faces only (a padding face would put the point at vertex 0).
    for p, f in zip(got[:100], np.asarray(face)[:100]):
      assert barycentric_reference(p, *vertices[faces[f]]).min() > -1e-4
  # vertices (4500 / 5700 -> 8192) and faces (-> 2048) share buckets: one compile.
  assert mesh._sample_surface_jit._cache_size() == before + 1  # pylint: disable=protected-access


def test_host_sampler_without_faces():
  vertices = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
  got = mesh.sample_surface_host(0, vertices, np.zeros((0, 3), np.int32), 50)
  assert got.dtype == np.float32 and got.shape == (50, 3)
  assert np.all(np.all(got[:, None] == vertices[None], -1).any(1))
  np.testing.assert_array_equal(
      mesh.sample_surface_host(0, np.zeros((0, 3)), np.zeros((0, 3), np.int32), 5), 0.0)
