"""Host mesh geometry (geometry.mesh) against slow, obvious references."""

from __future__ import annotations

import collections
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy.spatial.transform import Rotation

from animdreamer_jax.geometry import mesh

# A box that is not a cube, so a mixed-up axis or spacing shows.
BOX = np.array([[-0.8, -0.5, -0.3], [0.9, 0.6, 0.4]], np.float32)


# ----------------------------------------------------------------------------
# The grid and the SDF on it.


def grid_reference(aabb, resolution):
  """Grid points by a triple loop, 'ij' order (x slowest), in float64."""
  points = []
  for i in range(resolution):
    for j in range(resolution):
      for k in range(resolution):
        points.append([aabb[0][a] + n * (aabb[1][a] - aabb[0][a]) / (resolution - 1)
                       for a, n in enumerate((i, j, k))])
  return np.array(points)


def wavy_sdf(x):
  """A sphere with a ripple: values differ at every grid point, so misplaced ones show."""
  r = jnp.linalg.norm(x - jnp.array([0.1, -0.05, 0.02]), axis=-1)
  return r - 0.3 + 0.05 * jnp.sin(7.0 * x[:, 0]) * x[:, 2]


def wavy_sdf_reference(p):
  return (math.dist(p, (0.1, -0.05, 0.02)) - 0.3 + 0.05 * math.sin(7.0 * p[0]) * p[2])


def test_grid_points_match_triple_loop():
  for resolution in (2, 5):
    got = mesh.grid_points(BOX, resolution)
    assert got.dtype == np.float32
    chex.assert_shape(got, (resolution ** 3, 3))
    np.testing.assert_allclose(got, grid_reference(BOX, resolution), atol=1e-6)
    np.testing.assert_array_equal(got[[0, -1]], BOX)  # the corners exactly


def test_sdf_on_grid_matches_loop_for_any_chunk():
  resolution = 7  # 343 points
  want = np.array([wavy_sdf_reference(p) for p in grid_reference(BOX, resolution)])
  want = want.reshape(resolution, resolution, resolution)
  results = []
  # 50 does not divide 343 (the last chunk is padded); 343 is one chunk; 1000 pads one.
  for chunk in (50, 343, 1000):
    traced = []

    def sdf(x, traced=traced):
      traced.append(x.shape)  # runs at trace time only
      return wavy_sdf(x)

    got = mesh.sdf_on_grid(sdf, BOX, resolution, chunk=chunk)
    assert got.dtype == np.float32
    chex.assert_shape(got, (resolution,) * 3)
    assert set(traced) == {(chunk, 3)}  # every call, the padded last one too, has one shape
    np.testing.assert_allclose(got, want, atol=1e-5)
    results.append(got)
  for got in results[1:]:
    np.testing.assert_allclose(got, results[0], atol=1e-6)


# ----------------------------------------------------------------------------
# Marching cubes.


def sphere_volume(aabb, shape, center, radius):
  """Exact sphere SDF sampled on a grid over aabb with `shape` samples per axis."""
  axes = [np.linspace(aabb[0][a], aabb[1][a], n) for a, n in enumerate(shape)]
  grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
  return np.linalg.norm(grid - center, axis=-1) - radius


def check_sphere_mesh(vertices, faces, center, radius, tolerance):
  """Vertices on the sphere, reaching it in every axis direction, faces CCW from outside."""
  assert vertices.dtype == np.float32 and faces.dtype == np.int32
  assert faces.shape[0] > 100
  offset = vertices.astype(np.float64) - center
  assert np.abs(np.linalg.norm(offset, axis=-1) - radius).max() < tolerance
  for axis in range(3):
    assert abs(offset[:, axis].max() - radius) < tolerance
    assert abs(offset[:, axis].min() + radius) < tolerance
  a, b, c = (offset[faces[:, i]] for i in range(3))
  normal = np.cross(b - a, c - a)
  assert np.all(np.sum(normal * (a + b + c), -1) > 0)  # away from the centre
  # Divergence theorem: > 0 if outward; a few % short on coarse grids, while a
  # wrong spacing on one axis scales it by the ratio of the spacings.
  volume = np.sum(a * np.cross(b, c)) / 6
  np.testing.assert_allclose(volume, 4 / 3 * np.pi * radius ** 3, rtol=0.05)


def test_marching_cubes_of_a_sphere():
  aabb = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
  resolution = 40
  center, radius = np.array([0.12, -0.07, 0.05]), 0.55
  volume = sphere_volume(aabb, (resolution,) * 3, center, radius)
  vertices, faces = mesh.marching_cubes(volume, aabb)
  check_sphere_mesh(vertices, faces, center, radius, tolerance=0.5 * 2 / (resolution - 1))
  # A level other than 0 is the sphere of radius + level.
  vertices, faces = mesh.marching_cubes(volume, aabb, level=0.1)
  check_sphere_mesh(vertices, faces, center, radius + 0.1, tolerance=0.5 * 2 / (resolution - 1))


def test_marching_cubes_respects_offset_and_spacing_of_a_non_cubic_box():
  shape = (34, 22, 15)  # different samples per axis too
  spacing = (BOX[1] - BOX[0]) / (np.array(shape) - 1)
  center, radius = np.array([0.05, 0.02, 0.04]), 0.25
  vertices, faces = mesh.marching_cubes(sphere_volume(BOX, shape, center, radius), BOX)
  check_sphere_mesh(vertices, faces, center, radius, tolerance=0.5 * spacing.max())


def test_marching_cubes_is_empty_when_the_level_is_not_crossed():
  aabb = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
  volume = sphere_volume(aabb, (12, 12, 12), np.zeros(3), 0.5)
  for vol, level in ((volume, volume.min() - 0.1), (volume, volume.max() + 0.1),
                     (np.full((8, 8, 8), 0.3), 0.3), (np.full((8, 8, 8), -1.0), 0.0)):
    vertices, faces = mesh.marching_cubes(vol, aabb, level=level)
    assert vertices.shape == (0, 3) and vertices.dtype == np.float32
    assert faces.shape == (0, 3) and faces.dtype == np.int32


def test_extract_mesh_keeps_the_larger_of_two_spheres():
  big, small = (np.array([-0.4, 0.0, 0.1]), 0.4), (np.array([0.55, 0.1, 0.0]), 0.2)

  def two_spheres(x):
    return jnp.minimum(jnp.linalg.norm(x - big[0], axis=-1) - big[1],
                       jnp.linalg.norm(x - small[0], axis=-1) - small[1])

  aabb = np.array([[-1.0] * 3, [1.0] * 3], np.float32)
  tolerance = 0.5 * 2 / 47
  vertices, faces = mesh.extract_mesh(two_spheres, aabb, 48, largest=False)
  near_small = np.linalg.norm(vertices - small[0], axis=-1) < small[1] + tolerance
  assert 0 < near_small.sum() < len(vertices)
  vertices, faces = mesh.extract_mesh(two_spheres, aabb, 48)
  check_sphere_mesh(vertices, faces, *big, tolerance=tolerance)
  vertices, faces = mesh.extract_mesh(lambda x: jnp.linalg.norm(x, axis=-1) + 0.1, aabb, 16)
  assert vertices.shape == (0, 3) and faces.shape == (0, 3)


# ----------------------------------------------------------------------------
# Largest connected component.


def largest_component_reference(vertices, faces):
  """BFS over the vertex graph; keeps the faces of the component with the most faces."""
  neighbours = collections.defaultdict(set)
  for face in faces.tolist():
    for i in face:
      neighbours[i].update(face)
  label = {}
  for start in sorted(neighbours):
    if start in label:
      continue
    label[start] = start
    queue = collections.deque([start])
    while queue:
      for j in neighbours[queue.popleft()]:
        if j not in label:
          label[j] = start
          queue.append(j)
  face_label = [label[face[0]] for face in faces.tolist()]
  counts = collections.Counter(face_label)
  best = max(counts, key=counts.get)
  kept = [face for face, lab in zip(faces.tolist(), face_label) if lab == best]
  used = sorted({i for face in kept for i in face})
  new_index = {old: new for new, old in enumerate(used)}
  return vertices[used], np.array([[new_index[i] for i in face] for face in kept])


def octahedron():
  vertices = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]],
                      np.float32)
  faces = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5],
                    [3, 1, 5], [0, 3, 5]])
  return vertices, faces


def tetrahedra_chain(count, shared):
  """`count` tetrahedra, each sharing one vertex with the next if `shared` (a bow-tie chain)."""
  vertices, faces = [], []
  for i in range(count):
    base = len(vertices) - (1 if shared and i else 0)  # reuse the previous apex
    corners = [[2.0 * i, 0, 0], [2.0 * i + 1, 0, 0], [2.0 * i + 0.5, 1, 0],
               [2.0 * i + 0.5, 0.5, 1]]
    vertices += corners[1:] if shared and i else corners
    faces += (np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]]) + base).tolist()
  return np.array(vertices, np.float32), np.array(faces)


def scramble(pieces, rng, unused=5):
  """Pieces in one mesh: offset apart, plus unused vertices, vertex and face order shuffled."""
  vertices, faces, start = [], [], 0
  for i, (v, f) in enumerate(pieces):
    vertices.append(v + [0.0, 0.0, 5.0 * i])
    faces.append(f + start)
    start += len(v)
  vertices.append(rng.normal(size=(unused, 3)))
  vertices, faces = np.concatenate(vertices).astype(np.float32), np.concatenate(faces)
  order = rng.permutation(len(vertices))
  new_index = np.argsort(order)
  return vertices[order], new_index[faces][rng.permutation(len(faces))].astype(np.int32)


def test_largest_component_matches_bfs_reference():
  rng = np.random.default_rng(10)
  triangle = (np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]))
  cases = [
      # Three tetrahedra joined at single vertices (12 faces) beat the octahedron
      # (8): sharing one vertex connects.
      ([octahedron(), tetrahedra_chain(3, shared=True), triangle], 12, 10),
      # Apart, each tetrahedron (4) loses to the octahedron.
      ([tetrahedra_chain(3, shared=False), octahedron(), triangle], 8, 6),
      ([triangle, octahedron()], 8, 6),
  ]
  for pieces, num_faces, num_vertices in cases:
    vertices, faces = scramble(pieces, rng)
    got_vertices, got_faces = mesh.largest_component(vertices, faces)
    want_vertices, want_faces = largest_component_reference(vertices, faces)
    assert got_faces.dtype == np.int32
    assert got_faces.shape == (num_faces, 3) and got_vertices.shape == (num_vertices, 3)
    np.testing.assert_array_equal(got_vertices, want_vertices)
    np.testing.assert_array_equal(got_faces, want_faces)
    # Same triangles (as point triples) as in the input: indices remapped, not reordered.
    kept = {tuple(map(tuple, vertices[f])) for f in faces}
    assert all(tuple(map(tuple, got_vertices[f])) in kept for f in got_faces)


def test_largest_component_without_faces_returns_the_input():
  vertices = np.ones((4, 3), np.float32)
  faces = np.zeros((0, 3), np.int32)
  got_vertices, got_faces = mesh.largest_component(vertices, faces)
  assert got_vertices is vertices and got_faces is faces


# ----------------------------------------------------------------------------
# Box and near/far.


def test_extend_aabb_hand_values():
  box = np.array([[0, 0, 0], [2, 4, 6]])
  np.testing.assert_allclose(mesh.extend_aabb(box, 0.5), [[-0.5, -1, -1.5], [2.5, 5, 7.5]])
  np.testing.assert_allclose(mesh.extend_aabb(box, 0.0), box)
  np.testing.assert_allclose(mesh.extend_aabb(box, -0.5), [[0.5, 1, 1.5], [1.5, 3, 4.5]])
  np.testing.assert_allclose(mesh.extend_aabb([[-1, 1, 2], [1, 2, 2]], 1.0),
                             [[-2, 0.5, 2], [2, 2.5, 2]])
  assert mesh.extend_aabb(box, 0.5).dtype == np.float32


def near_far_reference(points, poses, tolerance, min_near):
  """Per frame: camera depths by a loop, centre +- tolerance x half range, clamped."""
  rows = []
  for pose in poses:
    depths = [float(pose[2, :3] @ p + pose[2, 3]) for p in points]
    mid, half = (min(depths) + max(depths)) / 2, (max(depths) - min(depths)) / 2
    near = max(mid - tolerance * half, min_near)
    rows.append((near, max(mid + tolerance * half, near + 1e-3)))
  return np.array(rows)


def test_near_far_matches_per_frame_loop():
  rng = np.random.default_rng(12)
  points = rng.normal(size=(50, 3)) * [0.3, 0.2, 0.4]
  poses = np.tile(np.eye(4), (5, 1, 1))
  poses[:, :3, :3] = Rotation.random(5, random_state=13).as_matrix()
  poses[:, :3, 3] = [[0.1, 0.0, 3.0], [0.0, 0.2, 2.5], [-0.2, 0.1, 4.0], [0.0, 0.0, 0.2],
                     [0.0, 0.0, -5.0]]  # frame 3 straddles the camera, frame 4 is behind it
  depth = np.einsum("tij,pj->tpi", poses[:, :3, :3], points)[..., 2] + poses[:, None, 2, 3]
  for tolerance in (1.0, 1.5):
    got = mesh.near_far_from_points(points, poses, tolerance=tolerance, min_near=0.05)
    assert got.dtype == np.float32 and got.shape == (5, 2)
    np.testing.assert_allclose(got, near_far_reference(points, poses, tolerance, 0.05),
                               atol=1e-5)
    assert np.all(got[:, 1] > got[:, 0])
    # Widening: the range grows by `tolerance` about its centre (frames in front).
    np.testing.assert_allclose(got[:3, 1] - got[:3, 0], tolerance * np.ptp(depth[:3], 1),
                               rtol=1e-5)
    np.testing.assert_allclose(got[3:, 0], 0.05)  # the min_near clamp
  np.testing.assert_allclose(mesh.near_far_from_points(points, poses, tolerance=1.0)[:3],
                             np.stack([depth[:3].min(1), depth[:3].max(1)], 1), atol=1e-5)
  np.testing.assert_allclose(got[4], [0.05, 0.05 + 1e-3], atol=1e-6)  # behind: far = near + 1e-3


def test_near_far_of_points_at_one_depth_keeps_far_above_near():
  points = np.array([[0.1, 0.2, 0.0], [-0.3, 0.1, 0.0], [0.2, -0.2, 0.0]])
  poses = np.eye(4)[None].repeat(2, 0)
  poses[:, 2, 3] = [2.0, 3.0]
  got = mesh.near_far_from_points(points, poses)
  np.testing.assert_allclose(got, [[2.0, 2.001], [3.0, 3.001]], atol=1e-6)


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


def test_find_surface_follows_a_surface_out_of_the_box():
  """A sphere outside the extended box is found in a grown box; none when nothing crosses."""
  centre, radius = np.array([0.7, 0.0, 0.0]), 0.25
  sphere = lambda x: jnp.linalg.norm(x - centre, axis=-1) - radius  # noqa: E731
  aabb = np.array([[-0.25] * 3, [0.25] * 3], np.float32)
  vertices, faces, first, found_in = mesh.find_surface(sphere, aabb, 0.5, 48)
  assert found_in == 1 and first.min() > 0
  box_half = 0.25 * 1.5 * mesh.SEARCH_GROWTH[1]
  check_sphere_mesh(vertices, faces, centre, radius, tolerance=2 * box_half / 47)
  inside = lambda x: jnp.linalg.norm(x, axis=-1) - 0.2  # noqa: E731
  vertices, faces, first, found_in = mesh.find_surface(inside, aabb, 0.5, 32)
  assert found_in == 0 and first.min() < 0 and len(faces)
  far = lambda x: jnp.linalg.norm(x - 50.0, axis=-1) - 0.1  # noqa: E731
  vertices, faces, first, found_in = mesh.find_surface(far, aabb, 0.5, 16)
  assert found_in == -1 and faces.shape == (0, 3) and first.shape == (16, 16, 16)
