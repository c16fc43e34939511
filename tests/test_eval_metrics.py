"""Chamfer distance / F-score (and the part-wise scores) vs brute-force loop references."""

from __future__ import annotations

import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import metrics
from animdreamer_jax.eval import parts
from animdreamer_jax.eval import surface_sampling as ss


def uv_sphere(n_lat: int, n_lon: int) -> tuple[np.ndarray, np.ndarray]:
  """Unit UV sphere: vertices (V, 3) float64, faces (F, 3) int32 (outward CCW)."""
  theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
  phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
  th, ph = np.meshgrid(theta, phi, indexing="ij")
  dirs = np.stack([np.sin(th) * np.cos(ph), np.cos(th), np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
  dirs = np.concatenate([[[0, 1, 0]], dirs, [[0, -1, 0]]])
  ring = lambda i, j: 1 + i * n_lon + j % n_lon  # noqa: E731
  faces = []
  for j in range(n_lon):
    faces.append([0, ring(0, j + 1), ring(0, j)])
    faces.append([len(dirs) - 1, ring(n_lat - 2, j), ring(n_lat - 2, j + 1)])
    for i in range(n_lat - 2):
      faces.append([ring(i, j), ring(i, j + 1), ring(i + 1, j)])
      faces.append([ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)])
  return dirs, np.array(faces, np.int32)


def blob_sequence(num_frames: int, n_lat: int, n_lon: int, phase: float = 0.0):
  """A deforming asymmetric blob: vertices (T, V, 3) float32, faces (F, 3)."""
  dirs, faces = uv_sphere(n_lat, n_lon)
  frames = []
  for t in range(num_frames):
    r = (1.0 + 0.25 * np.sin(3 * dirs[:, 0] + 0.4 * t + phase) * np.cos(2 * dirs[:, 1])
         + 0.3 * np.maximum(dirs[:, 2], 0))
    frames.append(dirs * r[:, None] * np.array([1.0, 0.6, 0.45]))
  return np.array(frames, np.float32), faces


def closest_point_reference(p, a, b, c):
  """Minimiser of |x - p| over triangle (a, b, c): try every active set (float64)."""
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


def distances_to_every_face(points, vertices, faces):
  """(M, F) distance of each point to each face, by brute force."""
  return np.array([[np.sqrt(np.sum((closest_point_reference(p, *vertices[f]) - p) ** 2))
                    for f in faces] for p in points])


def scores_reference(d_pred, d_gt, pred_in, gt_in, tau):
  """One frame's scores by plain loops; None where a part has no points."""
  acc = [d for d, keep in zip(d_pred, pred_in) if keep]
  comp = [d for d, keep in zip(d_gt, gt_in) if keep]
  out = {}
  out["accuracy"] = sum(acc) / len(acc) if acc else None
  out["completeness"] = sum(comp) / len(comp) if comp else None
  out["chamfer"] = (None if not acc or not comp
                    else 0.5 * (out["accuracy"] + out["completeness"]))
  for t in tau:
    label = f"{100 * t:g}%"
    p = 100.0 * sum(1 for d in acc if d < t) / len(acc) if acc else None
    r = 100.0 * sum(1 for d in comp if d < t) / len(comp) if comp else None
    out[f"precision@{label}"] = p
    out[f"recall@{label}"] = r
    if p == 0 or r == 0:  # even when the other is undefined: nothing of the part was found
      out[f"fscore@{label}"] = 0.0
    elif p is None or r is None:
      out[f"fscore@{label}"] = None
    else:
      out[f"fscore@{label}"] = 2 * p * r / (p + r)
  return out


def limb_faces_reference(rest_vertices, faces, limb_fraction):
  """Faces with at least two vertices in the lowest `limb_fraction` of the +y range (loops)."""
  heights = [float(v[1]) for v in rest_vertices]
  cut = min(heights) + limb_fraction * (max(heights) - min(heights))
  return np.array([sum(heights[i] <= cut for i in face) >= 2 for face in faces])


def assert_scores_close(got, want, atol):
  assert set(got) == set(want)
  for name in want:
    if want[name] is None:
      assert got[name] is None, name
    else:
      assert got[name] == pytest.approx(want[name], abs=atol), name


def test_surface_scores_match_loops():
  rng = np.random.default_rng(0)
  t, n = 4, 40
  d_pred = rng.uniform(0, 0.1, (t, n)).astype(np.float32)
  d_gt = rng.uniform(0, 0.1, (t, n)).astype(np.float32)
  w_pred = (rng.uniform(size=(t, n)) < 0.5).astype(np.float32)
  w_gt = (rng.uniform(size=(t, n)) < 0.5).astype(np.float32)
  w_pred[1] = 0  # a frame where no predicted point falls in this part
  d_pred[2] = 0.5  # nothing within any threshold: F = 0, not NaN
  d_gt[2] = 0.5
  w_pred[3] = 0  # a part the prediction misses: recall 0, no precision, F = 0
  d_gt[3] = 0.5
  tau = (0.01, 0.02, 0.05)
  got = metrics.surface_scores(d_pred, d_gt, w_pred, w_gt, np.asarray(tau, np.float32))
  for frame in range(t):
    want = scores_reference(d_pred[frame], d_gt[frame], w_pred[frame] > 0, w_gt[frame] > 0, tau)
    flat = {"accuracy": got["accuracy"][frame], "completeness": got["completeness"][frame],
            "chamfer": got["chamfer"][frame]}
    for j, x in enumerate(tau):
      for name in ("precision", "recall", "fscore"):
        flat[f"{name}@{100 * x:g}%"] = got[name][frame, j]
    flat = {k: None if np.isnan(v) else float(v) for k, v in flat.items()}
    assert_scores_close(flat, want, atol=1e-4)


def test_metrics_match_brute_force_reference():
  gt_vertices, gt_faces = blob_sequence(2, 6, 10)
  pred_vertices, pred_faces = blob_sequence(2, 5, 8, phase=0.7)
  pred_vertices = pred_vertices * 1.03 + np.float32(0.02)
  # Seen = one contiguous side, as a camera arc would give.
  centroids = gt_vertices[0][gt_faces].mean(1)
  face_visible = centroids[:, 0] + 0.3 * centroids[:, 2] > 0
  limb_faces = limb_faces_reference(gt_vertices[0], gt_faces, 0.3)
  assert 0.1 < limb_faces.mean() < 0.5
  face_parts = {**parts.visibility_parts(face_visible),
                **parts.height_parts(gt_vertices[0], gt_faces, 0.3)}
  np.testing.assert_array_equal(face_parts["limbs"], limb_faces)
  np.testing.assert_array_equal(face_parts["body"], ~limb_faces)
  num_samples, seed, tau = 80, 3, (0.02, 0.05, 0.1)
  distances = metrics.sequence_distances(pred_vertices, pred_faces, gt_vertices, gt_faces,
                                         num_samples=num_samples, align=False, seed=seed)
  report = metrics.summarise(distances, face_parts=face_parts, norm_length=1.0,
                             thresholds=tau)
  # The documented sampling: GT with seed 2 * seed, the prediction with 2 * seed + 1.
  gt_points, gt_face = ss.sample_surface_frames(gt_vertices, gt_faces, num_samples, 2 * seed)
  pred_points, _ = ss.sample_surface_frames(pred_vertices, pred_faces, num_samples, 2 * seed + 1)
  np.testing.assert_array_equal(distances.gt_face, gt_face)
  for t in range(2):
    to_gt = distances_to_every_face(pred_points[t], gt_vertices[t], gt_faces)  # (N, F')
    to_pred = distances_to_every_face(gt_points[t], pred_vertices[t], pred_faces)
    d_pred, d_gt = to_gt.min(1), to_pred.min(1)
    np.testing.assert_allclose(distances.dist_pred_to_gt[t], d_pred, atol=2e-6)
    np.testing.assert_allclose(distances.dist_gt_to_pred[t], d_gt, atol=2e-6)
    # Which GT face holds a predicted point's closest point is ambiguous only
    # when several faces tie (closest point on a shared edge); the chosen face
    # must be one of the tied ones, and it decides the point's part.
    chosen = distances.pred_nearest_gt_face[t]
    tied = to_gt <= d_pred[:, None] + 1e-6
    assert np.all(tied[np.arange(num_samples), chosen])
    pred_seen = face_visible[chosen]
    gt_seen = face_visible[gt_face[t]]
    pred_limb = np.array([limb_faces[f] for f in chosen])
    gt_limb = np.array([limb_faces[f] for f in gt_face[t]])
    point_parts = {"all": (np.ones(num_samples, bool), np.ones(num_samples, bool)),
                   "seen": (pred_seen, gt_seen), "unseen": (~pred_seen, ~gt_seen),
                   "limbs": (pred_limb, gt_limb), "body": (~pred_limb, ~gt_limb)}
    for part, (pred_in, gt_in) in point_parts.items():
      want = scores_reference(d_pred, d_gt, pred_in, gt_in, tau)
      got = {name: values[t] for name, values in report["per_frame"][part].items()}
      assert_scores_close(got, want, atol=2e-5)
  # Sequence means average the frames.
  assert set(report["mean"]) == {"all", "seen", "unseen", "limbs", "body"}
  for part in report["mean"]:
    for name, values in report["per_frame"][part].items():
      assert report["mean"][part][name] == pytest.approx(np.mean(values), abs=1e-9)
  assert report["visibility"]["seen_area_fraction"] == pytest.approx(
      face_visible[gt_face].mean())
  assert report["area_fraction"]["limbs"] == pytest.approx(limb_faces[gt_face].mean())
  assert report["area_fraction"]["all"] == 1.0


@pytest.mark.parametrize("align", [False, True])
def test_ground_truth_against_itself_is_perfect(align):
  vertices, faces = blob_sequence(3, 16, 32)
  face_visible = vertices[0][faces].mean(1)[:, 0] > 0
  face_parts = parts.FaceParts({**parts.visibility_parts(face_visible),
                                **parts.height_parts(vertices[0], faces, 0.35)},
                               {"limb_fraction": 0.35})
  report = metrics.evaluate_sequence(vertices, faces, vertices, faces,
                                     parts=face_parts, num_samples=2000, align=align)
  assert report["limb_fraction"] == 0.35
  for part in ("all", "seen", "unseen", "limbs", "body"):
    mean = report["mean"][part]
    assert mean["chamfer"] < 1e-6
    for label in ("1%", "2%", "5%"):
      assert mean[f"fscore@{label}"] == 100.0
  if align:
    assert report["alignment"]["scale"] == pytest.approx(1.0, abs=1e-5)
    assert report["alignment"]["rotation_angle_deg"] < 1e-3


def test_sphere_against_a_bigger_sphere_gives_the_radius_difference():
  dirs, faces = uv_sphere(32, 64)
  unit = dirs[None].astype(np.float32)
  big = (1.05 * dirs[None]).astype(np.float32)
  report = metrics.evaluate_sequence(big, faces, unit, faces, num_samples=4000, align=False,
                                     thresholds=(0.01, 0.02, 0.06))
  mean = report["mean"]["all"]
  # Both directions are 0.05 up to the polyhedral approximation (~1e-4 here).
  assert mean["accuracy"] == pytest.approx(0.05, abs=3e-4)
  assert mean["completeness"] == pytest.approx(0.05, abs=3e-4)
  assert mean["chamfer"] == pytest.approx(0.05, abs=3e-4)
  assert mean["fscore@1%"] == 0.0 and mean["fscore@2%"] == 0.0
  assert mean["fscore@6%"] == 100.0
  assert report["visibility"] == {"recorded": False}
  assert set(report["mean"]) == {"all"}


def test_normalisation_length_scales_distances_and_thresholds():
  vertices, faces = blob_sequence(1, 8, 16)
  shifted = vertices + np.float32(0.01)
  base = metrics.evaluate_sequence(shifted, faces, vertices, faces, num_samples=500,
                                   align=False)
  scaled = metrics.evaluate_sequence(10 * shifted, faces, 10 * vertices, faces,
                                     num_samples=500, align=False, norm_length=10.0)
  for name, value in base["mean"]["all"].items():
    assert scaled["mean"]["all"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name


def test_bad_input_raises_user_error():
  vertices, faces = blob_sequence(2, 6, 10)
  with pytest.raises(UserError, match="frames"):
    metrics.evaluate_sequence(vertices[:1], faces, vertices, faces, num_samples=10)
  with pytest.raises(UserError, match="face part 'seen': expected shape"):
    metrics.evaluate_sequence(vertices, faces, vertices, faces, num_samples=10,
                              parts=parts.FaceParts(parts.visibility_parts(np.ones(3, bool)), {}))
  bad = vertices.copy()
  bad[1, 0, 0] = np.nan
  with pytest.raises(UserError, match="prediction: vertices contain NaN"):
    metrics.evaluate_sequence(bad, faces, vertices, faces, num_samples=10)
  with pytest.raises(UserError, match="zero surface area"):
    metrics.evaluate_sequence(np.zeros_like(vertices), faces, vertices, faces, num_samples=10)
  with pytest.raises(UserError, match="out of range"):
    metrics.evaluate_sequence(vertices, faces + 1000, vertices, faces, num_samples=10)
  with pytest.raises(UserError, match="samples"):
    metrics.evaluate_sequence(vertices, faces, vertices, faces, num_samples=0)
