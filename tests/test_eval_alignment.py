"""Similarity alignment: Umeyama, candidate rotations, point-to-plane steps, sequence ICP."""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.eval import alignment as al
from animdreamer_jax.eval import metrics
from animdreamer_jax.eval import surface_sampling as ss


def blob_sequence(num_frames: int, n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
  """An asymmetric deforming blob on a UV-sphere grid: (T, V, 3), (F, 3)."""
  theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
  phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
  th, ph = np.meshgrid(theta, phi, indexing="ij")
  dirs = np.stack([np.sin(th) * np.cos(ph), np.cos(th), np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
  dirs = np.concatenate([[[0, 1, 0]], dirs, [[0, -1, 0]]])
  faces = []
  ring = lambda i, j: 1 + i * n_lon + j % n_lon  # noqa: E731
  for j in range(n_lon):
    faces.append([0, ring(0, j + 1), ring(0, j)])
    faces.append([len(dirs) - 1, ring(n_lat - 2, j), ring(n_lat - 2, j + 1)])
    for i in range(n_lat - 2):
      faces.append([ring(i, j), ring(i, j + 1), ring(i + 1, j)])
      faces.append([ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)])
  frames = []
  for t in range(num_frames):
    r = (1.0 + 0.25 * np.sin(3 * dirs[:, 0] + 0.4 * t) * np.cos(2 * dirs[:, 1])
         + 0.3 * np.maximum(dirs[:, 2], 0))
    frames.append(dirs * r[:, None] * np.array([1.0, 0.6, 0.45]))
  return np.array(frames, np.float32), np.array(faces, np.int32)


def random_similarity(seed: int, scale: float) -> al.Similarity:
  rng = np.random.default_rng(seed)
  return al.Similarity(scale, Rotation.random(random_state=seed).as_matrix(),
                       rng.normal(size=3))


def test_umeyama_recovers_similarity_and_ignores_zero_weights():
  rng = np.random.default_rng(0)
  src = rng.normal(size=(200, 3))
  truth = random_similarity(1, 1.7)
  dst = truth.apply(src)
  dst[:20] += rng.normal(size=(20, 3)) * 5  # outliers, masked out below
  weights = np.ones(200)
  weights[:20] = 0
  scale, rotation, translation = al.umeyama(jnp.asarray(src, jnp.float32),
                                            jnp.asarray(dst, jnp.float32),
                                            jnp.asarray(weights, jnp.float32))
  np.testing.assert_allclose(scale, 1.7, rtol=1e-5)
  np.testing.assert_allclose(rotation, truth.rotation, atol=1e-5)
  np.testing.assert_allclose(translation, truth.translation, atol=1e-4)
  _, rotation, _ = al.umeyama(jnp.asarray(src[20:], jnp.float32),
                              jnp.asarray(dst[20:], jnp.float32), with_scale=False)
  np.testing.assert_allclose(rotation, truth.rotation, atol=1e-5)


def test_umeyama_returns_the_best_proper_rotation_for_a_mirror_image():
  rng = np.random.default_rng(2)
  src = rng.normal(size=(100, 3)) * np.array([3.0, 2.0, 1.0])
  dst = src * np.array([1.0, 1.0, -1.0])  # a reflection: no rotation fits exactly
  scale, rotation, translation = (np.asarray(x, np.float64) for x in al.umeyama(
      jnp.asarray(src, jnp.float32), jnp.asarray(dst, jnp.float32)))
  assert np.linalg.det(rotation) == pytest.approx(1.0, abs=1e-5)
  cost = lambda s, r, t: np.sum((s * src @ r.T + t - dst) ** 2)  # noqa: E731
  best = cost(scale, rotation, translation)
  # No rotation from a dense random set (with its own optimal s, t) does better.
  for seed in range(200):
    r = Rotation.random(random_state=seed).as_matrix()
    s = np.sum((dst - dst.mean(0)) * ((src - src.mean(0)) @ r.T)) / np.sum((src - src.mean(0)) ** 2)
    s = max(s, 0.0)
    t = dst.mean(0) - s * r @ src.mean(0)
    assert best <= cost(s, r, t) * (1 + 1e-5)


def test_axis_aligned_rotations_are_the_24_proper_signed_permutations():
  rotations = al.axis_aligned_rotations()
  assert rotations.shape == (24, 3, 3)
  want = set()
  for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1, -1), repeat=3):
      m = np.zeros((3, 3), int)
      for row in range(3):
        m[row, perm[row]] = signs[row]
      if round(np.linalg.det(m)) == 1:
        want.add(m.tobytes())
  assert {r.astype(int).tobytes() for r in rotations} == want


def test_principal_axes_rotations_contain_the_true_rotation():
  rng = np.random.default_rng(3)
  src = rng.normal(size=(2000, 3)) * np.array([3.0, 1.5, 0.5])
  rotation = Rotation.random(random_state=4).as_matrix()
  candidates = al.principal_axes_rotations(src, src @ rotation.T + 2.0)
  errors = [np.abs(c - rotation).max() for c in candidates]
  assert min(errors) < 1e-6
  for c in candidates:
    np.testing.assert_allclose(c @ c.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(c) == pytest.approx(1.0)


def test_point_to_plane_steps_converge_on_exact_correspondences():
  vertices, faces = blob_sequence(3, 16, 32)
  points, face = ss.sample_surface_frames(vertices, faces, 2000, seed=0)
  index = ss.SurfaceIndex(vertices, faces)
  normals = index.face_normals(face)[0]
  targets = points[0].astype(np.float64)
  truth = al.Similarity(1.02, Rotation.from_rotvec([0.02, -0.03, 0.01]).as_matrix(),
                        np.array([0.01, 0.02, -0.015]))
  moved = truth.apply_inverse(targets)  # truth maps `moved` exactly onto `targets`
  estimate = al.Similarity.identity()
  errors = []
  for _ in range(4):
    step = al.point_to_plane_similarity_step(
        jnp.asarray(estimate.apply(moved), jnp.float32), jnp.asarray(targets, jnp.float32),
        jnp.asarray(normals))
    estimate = al.compose(al.Similarity(float(step[0]), np.asarray(step[1], np.float64),
                                        np.asarray(step[2], np.float64)), estimate)
    errors.append(np.abs(estimate.matrix() - truth.matrix()).max())
  assert errors[0] < 2e-3  # Gauss-Newton: second order after one step
  assert errors[-1] < 1e-5


def test_compose_matches_matrix_product():
  a, b = random_similarity(5, 0.7), random_similarity(6, 2.0)
  np.testing.assert_allclose(al.compose(a, b).matrix(), a.matrix() @ b.matrix(), atol=1e-12)
  x = np.random.default_rng(0).normal(size=(5, 3))
  np.testing.assert_allclose(a.apply_inverse(a.apply(x)), x, atol=1e-12)
  assert a.rotation_angle_deg() == pytest.approx(
      np.degrees(Rotation.from_matrix(a.rotation).magnitude()), abs=1e-9)


@pytest.mark.parametrize("seed", [1, 2])
def test_alignment_recovers_a_rigid_scaled_copy(seed):
  gt_vertices, faces = blob_sequence(3, 16, 32)
  truth = random_similarity(seed, 1.7)  # GT -> prediction
  pred_vertices = truth.apply(gt_vertices).astype(np.float32)
  distances = metrics.sequence_distances(pred_vertices, faces, gt_vertices, faces,
                                         num_samples=2000, align=True)
  found = distances.transform  # prediction -> GT: the inverse of `truth`
  np.testing.assert_allclose(found.scale, 1 / 1.7, rtol=1e-5)
  np.testing.assert_allclose(found.rotation, truth.rotation.T, atol=1e-5)
  np.testing.assert_allclose(found.translation, -truth.rotation.T @ truth.translation / 1.7,
                             atol=1e-5)
  assert distances.dist_pred_to_gt.mean() < 1e-5
  assert distances.dist_gt_to_pred.mean() < 1e-5


def test_alignment_across_different_tessellations():
  gt_vertices, gt_faces = blob_sequence(3, 16, 32)
  coarse_vertices, coarse_faces = blob_sequence(3, 10, 20)
  truth = random_similarity(3, 0.4)
  pred_vertices = truth.apply(coarse_vertices).astype(np.float32)
  distances = metrics.sequence_distances(pred_vertices, coarse_faces, gt_vertices, gt_faces,
                                         num_samples=2000, align=True)
  found = distances.transform
  # The coarse mesh is a slightly smaller chordal approximation: close, not exact.
  np.testing.assert_allclose(found.scale, 1 / 0.4, rtol=1.5e-2)
  angle = np.degrees(Rotation.from_matrix(found.rotation @ truth.rotation).magnitude())
  assert angle < 0.5
  assert distances.dist_pred_to_gt.mean() < 0.01


def test_alignment_on_the_bundled_fox(repo_root):
  from animdreamer_jax import assets  # pylint: disable=import-outside-toplevel
  sequence = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf",
                                  num_frames=4)
  gt_vertices = sequence.vertices / np.linalg.norm(np.ptp(sequence.vertices[0], axis=0))
  truth = random_similarity(7, 3.0)
  pred_vertices = truth.apply(gt_vertices).astype(np.float32)
  distances = metrics.sequence_distances(pred_vertices, sequence.faces,
                                         gt_vertices.astype(np.float32), sequence.faces,
                                         num_samples=2000, align=True)
  np.testing.assert_allclose(distances.transform.scale, 1 / 3.0, rtol=1e-5)
  np.testing.assert_allclose(distances.transform.rotation, truth.rotation.T, atol=1e-5)
  assert distances.dist_gt_to_pred.mean() < 1e-5


def test_alignment_ignores_a_missing_side():
  # The prediction only has the faces on one side (an unreconstructed back):
  # the trimmed final ICP must still find the exact transform.
  gt_vertices, faces = blob_sequence(3, 16, 32)
  front = faces[gt_vertices[0][faces].mean(1)[:, 0] > -0.1]
  truth = random_similarity(4, 1.3)
  pred_vertices = truth.apply(gt_vertices).astype(np.float32)
  distances = metrics.sequence_distances(pred_vertices, front, gt_vertices, faces,
                                         num_samples=2000, align=True)
  found = distances.transform
  np.testing.assert_allclose(found.scale, 1 / 1.3, rtol=1e-4)
  np.testing.assert_allclose(found.rotation, truth.rotation.T, atol=1e-4)
  assert distances.dist_pred_to_gt.mean() < 1e-5
