"""Rig scores (eval.rig_metrics) against brute-force references, and their wiring into eval."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax import assets
from animdreamer_jax import cli
from animdreamer_jax import files
from animdreamer_jax import settings as settings_lib
from animdreamer_jax.data import video as video_io
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.eval import run_scores
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages.extraction import settings as extraction

# ----------------------------------------------------------------------------- references


def ref_point_segment(p, a, b, steps=20000):
  """Distance from p to segment ab by trying `steps` + 1 evenly spaced points on it."""
  u = np.linspace(0.0, 1.0, steps + 1)[:, None]
  return float(np.min(np.linalg.norm(a + u * (b - a) - p, axis=1)))


def ref_bones(points, parents):
  """[(start, end)] child -> parent; a tree without bones: its joints as zero-length bones."""
  bones = [(points[j], points[parents[j]]) for j in range(len(parents)) if parents[j] >= 0]
  return bones or [(p, p) for p in points]


def ref_to_bones(p, bones):
  return min(ref_point_segment(p, a, b) for a, b in bones)


def ref_samples(bones, spacing):
  out = []
  for a, b in bones:
    n = math.ceil(np.linalg.norm(b - a) / spacing) + 1
    for i in range(n):
      out.append(a + (i / max(n - 1, 1)) * (b - a))
  return out


def ref_frame_chamfers(pred, pred_parents, gt, gt_parents, spacing):
  """CD-J2J, J2B, B2B of one frame with loops over points and bones."""
  def sym(xs, to_x, ys, to_y):
    return 0.5 * (np.mean([to_x(x) for x in xs]) + np.mean([to_y(y) for y in ys]))

  pb, gb = ref_bones(pred, pred_parents), ref_bones(gt, gt_parents)
  nearest = lambda p, qs: min(math.dist(p, q) for q in qs)  # noqa: E731
  j2j = sym(pred, lambda p: nearest(p, gt), gt, lambda g: nearest(g, pred))
  j2b = sym(pred, lambda p: ref_to_bones(p, gb), gt, lambda g: ref_to_bones(g, pb))
  b2b = sym(ref_samples(pb, spacing), lambda p: ref_to_bones(p, gb),
            ref_samples(gb, spacing), lambda g: ref_to_bones(g, pb))
  return j2j, j2b, b2b


def ref_path_to_root(j, parents):
  path = []
  while parents[j] >= 0:
    j = parents[j]
    path.append(j)
  return path


def ref_contracted_edges(parents, matched):
  """Unordered pairs {u, v} of matched joints, v an ancestor of u, no matched joint between."""
  edges = set()
  for u in matched:
    for v in matched:
      path = ref_path_to_root(u, parents)
      if v in path and not any(w in matched for w in path[:path.index(v)]):
        edges.add(frozenset((u, v)))
  return edges


def ref_ray_parity(point, vertices, faces, direction):
  """Inside a closed mesh: an odd number of faces crossed by a ray (Moller-Trumbore, loops)."""
  crossings = 0
  for f in faces:
    a, b, c = vertices[f]
    e1, e2 = b - a, c - a
    h = np.cross(direction, e2)
    det = e1 @ h
    if abs(det) < 1e-12:
      continue
    s = point - a
    u = (s @ h) / det
    q = np.cross(s, e1)
    v = (direction @ q) / det
    t = (e2 @ q) / det
    if u >= 0 and v >= 0 and u + v <= 1 and t > 0:
      crossings += 1
  return crossings % 2 == 1


def bumpy_sphere(n_lat=12, n_lon=18, bump=0.4):
  """A closed, non-convex, counter-clockwise (outward) triangle mesh: (V, 3), (F, 3)."""
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
  radius = 1.0 + bump * np.sin(3 * np.arctan2(dirs[:, 2], dirs[:, 0])) * (1 - dirs[:, 1] ** 2)
  return dirs * radius[:, None], np.array(faces, np.int64)


def random_tree(rng, n):
  """Parents of a random tree in index order (joint 0 the root)."""
  return np.array([-1] + [int(rng.integers(0, k)) for k in range(1, n)])


# ----------------------------------------------------------------------------- pieces


def test_point_segment_distances_match_the_reference():
  rng = np.random.default_rng(0)
  points, starts, ends = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
  ends[2] = starts[2]  # a zero-length segment
  got = rig_metrics.point_segment_distances(points, starts, ends)
  want = [[ref_point_segment(p, a, b) for a, b in zip(starts, ends)] for p in points]
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_segment_samples_are_evenly_spaced_with_both_ends():
  starts = np.array([[0.0, 0, 0], [1, 1, 1]])
  ends = np.array([[1.0, 0, 0], [1, 1, 1]])
  got = rig_metrics.sample_segments(starts, ends, 0.3)
  want = ref_samples(list(zip(starts, ends)), 0.3)
  np.testing.assert_allclose(got, want)
  assert len(got) == 6  # ceil(1 / 0.3) + 1 = 5 on the first, 1 on the zero-length one
  with pytest.raises(UserError, match="spacing"):
    rig_metrics.sample_segments(starts, ends, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_frame_chamfers_match_the_reference(seed):
  rng = np.random.default_rng(seed)
  pred, gt = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.3
  pred_parents, gt_parents = random_tree(rng, 6), random_tree(rng, 5)
  got = rig_metrics.frame_chamfers(pred, pred_parents, gt, gt_parents, 0.1)
  want = ref_frame_chamfers(pred, pred_parents, gt, gt_parents, 0.1)
  np.testing.assert_allclose(got, want, atol=2e-4)


def test_a_skeleton_without_bones_scores_by_its_joints():
  gt = np.array([[0.0, 0, 0], [1, 0, 0]])
  pred = np.array([[0.5, 0.2, 0]])
  got = rig_metrics.frame_chamfers(pred, np.array([-1]), gt, np.array([-1, 0]), 0.05)
  want = ref_frame_chamfers(pred, [-1], gt, [-1, 0], 0.05)
  np.testing.assert_allclose(got, want, atol=1e-4)
  assert got[1] == pytest.approx(0.5 * (0.2 + math.hypot(0.5, 0.2)))


def test_sequence_chamfers_average_per_frame_in_percent_of_the_diagonal():
  rng = np.random.default_rng(3)
  pred, gt = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 5, 3))
  pp, gp = random_tree(rng, 4), random_tree(rng, 5)
  got = rig_metrics.sequence_chamfers(pred, pp, gt, gp, norm_length=2.0, spacing=0.05)
  for t in range(3):
    want = ref_frame_chamfers(pred[t], pp, gt[t], gp, 0.1)
    for name, value in zip(rig_metrics.METRICS, want):
      assert got[name][t] == pytest.approx(100 * value / 2.0, abs=1e-2)
  with pytest.raises(UserError, match="frames"):
    rig_metrics.sequence_chamfers(pred[:2], pp, gt, gp, 1.0)
  with pytest.raises(UserError, match="shape"):
    rig_metrics.score_skeleton(pred, pp, gt[:, :4], gp, 1.0)


def test_hungarian_matching_finds_the_cheapest_assignment():
  rng = np.random.default_rng(4)
  pred, gt = rng.normal(size=(3, 4, 3)), rng.normal(size=(3, 5, 3))
  pred_index, gt_index, distance = rig_metrics.match_joints(pred, gt)
  cost = [[np.mean([math.dist(pred[t, i], gt[t, j]) for t in range(3)]) for j in range(5)]
          for i in range(4)]
  best = min(itertools.permutations(range(5), 4),
             key=lambda js: sum(cost[i][j] for i, j in enumerate(js)))
  assert pred_index.tolist() == [0, 1, 2, 3] and gt_index.tolist() == list(best)
  np.testing.assert_allclose(distance, [cost[i][j] for i, j in enumerate(best)])
  # More predicted than GT joints: every GT joint matched once.
  pred_index, gt_index, _ = rig_metrics.match_joints(gt, pred)
  assert sorted(gt_index.tolist()) == [0, 1, 2, 3] and len(set(pred_index.tolist())) == 4


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_contracted_edges_match_the_reference(seed):
  rng = np.random.default_rng(seed)
  parents = random_tree(rng, 9)
  matched = rng.random(9) < 0.6
  got = {frozenset(e) for e in rig_metrics.contracted_edges(parents, matched)}
  assert got == ref_contracted_edges(parents, set(np.flatnonzero(matched).tolist()))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_edge_precision_recall_match_the_reference(seed):
  rng = np.random.default_rng(seed)
  pred_parents, gt_parents = random_tree(rng, 7), random_tree(rng, 6)
  pred_index = np.sort(rng.choice(7, 5, replace=False))
  gt_index = rng.choice(6, 5, replace=False)
  got = rig_metrics.edge_precision_recall(pred_parents, gt_parents, pred_index, gt_index)
  to_gt = dict(zip(pred_index.tolist(), gt_index.tolist()))
  pred_edges = {frozenset(to_gt[v] for v in e)
                for e in ref_contracted_edges(pred_parents, set(to_gt))}
  gt_edges = ref_contracted_edges(gt_parents, set(gt_index.tolist()))
  correct = len(pred_edges & gt_edges)
  share = lambda edges: correct / len(edges) if edges else None  # noqa: E731
  assert got["correct_edges"] == correct
  assert got["edge_precision"] == pytest.approx(share(pred_edges))
  assert got["edge_recall"] == pytest.approx(share(gt_edges))


def test_edge_scores_by_hand():
  # GT chain 0-1-2-3; the prediction hangs 3 on 1 instead of 2 (one wrong edge of three).
  gt_parents = np.array([-1, 0, 1, 2])
  pred_parents = np.array([-1, 0, 1, 1])
  identity = np.arange(4)
  got = rig_metrics.edge_precision_recall(pred_parents, gt_parents, identity, identity)
  assert got["edge_precision"] == pytest.approx(2 / 3)
  assert got["edge_recall"] == pytest.approx(2 / 3)
  # Only 0, 1, 3 matched: GT contracts to 0-1-3, the prediction too.
  got = rig_metrics.edge_precision_recall(pred_parents, gt_parents, np.array([0, 1, 3]),
                                          np.array([0, 1, 3]))
  assert got["edge_precision"] == 1.0 and got["edge_recall"] == 1.0 and got["gt_edges"] == 2
  # One joint each: no edges, undefined.
  got = rig_metrics.edge_precision_recall(np.array([-1]), gt_parents, np.array([0]), np.array([2]))
  assert got["edge_precision"] is None and got["edge_recall"] is None


def test_helper_joints_are_dropped_and_their_children_relinked():
  # 0 armature root (helper) -> 1 hip -> 2 (helper) -> 3 spine; 1 -> 4 leg -> 5 IK target
  # (helper, a leaf); 6 a pole helper on its own. Parents in no particular order: 7 -> 4.
  parents = np.array([-1, 0, 1, 2, 1, 4, -1, 4])
  weights = np.zeros((10, 8))
  weights[:, [1, 3, 4, 7]] = 0.25
  kept, kept_parents = rig_metrics.kept_ground_truth_joints(parents, weights)
  assert kept.tolist() == [1, 3, 4, 7]
  assert kept_parents.tolist() == [-1, 0, 0, 2]
  kept, kept_parents = rig_metrics.kept_ground_truth_joints(parents, None)
  assert kept.tolist() == list(range(8)) and kept_parents.tolist() == parents.tolist()
  with pytest.raises(UserError, match="skin weight"):
    rig_metrics.kept_ground_truth_joints(parents, np.zeros((10, 8)))
  with pytest.raises(UserError, match="cycle"):
    rig_metrics.kept_ground_truth_joints(np.array([2, 0, 1]), None)


def test_tree_depth_of_a_forest_in_any_order():
  assert rig_metrics.tree_depth(np.array([-1])) == 1
  assert rig_metrics.tree_depth(np.array([3, -1, 1, 1, -1])) == 3  # 1 -> 3 -> 0
  rng = np.random.default_rng(0)
  parents = random_tree(rng, 12)
  assert rig_metrics.tree_depth(parents) == max(len(ref_path_to_root(j, parents)) + 1
                                                for j in range(12))


def test_winding_numbers_agree_with_ray_parity():
  vertices, faces = bumpy_sphere()
  rng = np.random.default_rng(0)
  points = rng.uniform(-1.1, 1.1, size=(100, 3))
  winding = rig_metrics.winding_numbers(points, vertices, faces)
  direction = np.array([0.3017, 0.8412, 0.4487])  # a generic ray direction
  inside = np.array([ref_ray_parity(p, vertices, faces, direction) for p in points])
  assert 20 < inside.sum() < 80  # both kinds present
  np.testing.assert_array_equal(winding > 0.5, inside)
  np.testing.assert_allclose(winding, inside.astype(float), atol=1e-6)
  # Either orientation counts as inside; the share is over the points.
  flipped = rig_metrics.winding_numbers(points, vertices, faces[:, ::-1])
  np.testing.assert_allclose(flipped, -winding, atol=1e-9)
  assert rig_metrics.inside_share(points, vertices, faces[:, ::-1]) == pytest.approx(inside.mean())


# ----------------------------------------------------------------------------- whole report


def planar_skeleton(num_frames=3):
  """Joints in the z = 0 plane, at least 0.3 apart, moving in the plane: (T, 5, 3), parents."""
  rest = np.array([[0.0, 0, 0], [0.4, 0, 0], [0.8, 0.1, 0], [-0.4, 0.05, 0], [0.0, 0.45, 0]])
  frames = [rest + 0.03 * t * np.array([1.0, -0.5, 0.0]) for t in range(num_frames)]
  return np.array(frames), np.array([-1, 0, 1, 0, 0])


def test_identical_skeletons_score_zero_and_perfect_edges():
  joints, parents = planar_skeleton()
  report = rig_metrics.score_skeleton(joints, parents, joints, parents, 1.0)
  for name in rig_metrics.METRICS:
    assert report["mean"][name] == pytest.approx(0.0, abs=1e-12)
  assert report["edge_precision"] == 1.0 and report["edge_recall"] == 1.0
  assert report["matched_joints"] == 5 and report["matched_distance_pct_diag"] == 0.0
  assert report["depth"] == report["gt_depth"] == 3 and report["inside_rest_mesh"] is None
  json.dumps(report)  # JSON-ready


def test_a_known_shift_gives_the_known_distance():
  joints, parents = planar_skeleton()
  shift = 0.05  # across the plane: every joint and bone point is 0.05 from its own copy
  moved = joints + np.array([0.0, 0.0, shift])
  for norm_length in (1.0, 2.0):
    report = rig_metrics.score_skeleton(moved, parents, joints, parents, norm_length)
    for name in rig_metrics.METRICS:
      assert report["mean"][name] == pytest.approx(100 * shift / norm_length, rel=1e-9)
      np.testing.assert_allclose(report["per_frame"][name], 100 * shift / norm_length)
    assert report["matched_distance_pct_diag"] == pytest.approx(100 * shift / norm_length)
    assert report["edge_precision"] == 1.0 and report["edge_recall"] == 1.0


def test_ground_truth_helpers_do_not_count():
  joints, parents = planar_skeleton()
  # GT = the same skeleton under an empty armature root far away, with an IK target off the foot.
  gt = np.concatenate([np.full((3, 1, 3), 5.0), joints, joints[:, 2:3] + 3.0], axis=1)
  gt_parents = np.concatenate([[-1], np.where(parents >= 0, parents + 1, 0), [3]])
  weights = np.concatenate([np.zeros((8, 1)), np.full((8, 5), 0.2), np.zeros((8, 1))], 1)
  order = np.array([0, 3, 1, 2, 4])  # the prediction lists its joints in another order
  inverse = np.argsort(order)
  pred_parents = np.where(parents[order] >= 0, inverse[np.maximum(parents[order], 0)], -1)
  report = rig_metrics.score_skeleton(joints[:, order], pred_parents, gt, gt_parents, 1.0,
                                      gt_skin_weights=weights)
  assert report["gt_helper_joints_dropped"] == 2 and report["num_gt_joints"] == 5
  for name in rig_metrics.METRICS:
    assert report["mean"][name] == pytest.approx(0.0, abs=1e-12)
  assert report["edge_precision"] == 1.0 and report["edge_recall"] == 1.0
  # Kept, the helpers cost distance (not edges: left unmatched, they are contracted away).
  report = rig_metrics.score_skeleton(joints[:, order], pred_parents, gt, gt_parents, 1.0)
  assert report["mean"]["cd_j2j_pct_diag"] > 10 and report["num_gt_joints"] == 7
  assert report["edge_recall"] == 1.0


def test_inside_share_in_the_report():
  vertices, faces = bumpy_sphere()
  joints, parents = planar_skeleton()
  rest = joints[0] * np.array([1.0, 1.0, 1.0])
  rest[2] = [3.0, 0.0, 0.0]  # one joint outside
  report = rig_metrics.score_skeleton(joints, parents, joints, parents, 1.0,
                                      pred_rest_joints=rest, rest_vertices=vertices,
                                      rest_faces=faces)
  assert report["inside_rest_mesh"] == pytest.approx(0.8)
  line = rig_metrics.summary_line(report)
  assert line.startswith("rig: 5 joints (depth 3) vs GT 5 (depth 3); CD-J2J 0.00")
  assert "edge P 1.00 R 1.00" in line and "inside rest mesh 80%" in line


# ----------------------------------------------------------------------------- eval wiring

NUM_FRAMES = 3
# GT joints: 0 armature root (helper), 1 hip, 2 spine, 3 head, 4 leg, 5 IK target (helper).
GT_PARENTS = np.array([-1, 0, 1, 2, 1, 4], np.int32)
GT_REST_JOINTS = np.array([[0, 0, 0], [0.05, 0, 0], [0.15, 0.03, 0], [0.3, 0.06, 0],
                           [0.05, -0.1, 0.02], [0.05, -0.4, 0.02]])
# The predicted skeleton lists the kept GT joints hip, leg, spine, head (GT 1, 4, 2, 3).
PRED_TO_GT = np.array([1, 4, 2, 3])
PRED_PARENTS = np.array([-1, 0, 0, 2], np.int32)


def ground_truth():
  """A deforming ellipsoid (rest bbox diagonal 1) with joints: vertices, faces, joints, weights."""
  dirs, faces = bumpy_sphere(8, 14, bump=0.0)
  # Asymmetric (a bulge at +z, a twist in x-y), so the alignment has one answer.
  bulge = 1.0 + 0.3 * np.maximum(dirs[:, 2], 0) + 0.2 * dirs[:, 0] * dirs[:, 1]
  rest = dirs * bulge[:, None] * np.array([0.45, 0.25, 0.2])
  rest /= np.linalg.norm(np.ptp(rest, axis=0))
  t = np.arange(NUM_FRAMES)[:, None, None]
  vertices = rest + 0.03 * np.sin(4 * rest[:, :1] + t) * np.array([0, 1.0, 0.5])
  joints = GT_REST_JOINTS + 0.02 * np.sin(t + np.arange(6)[:, None]) * np.array([1.0, 0.5, -1])
  distance = np.linalg.norm(rest[:, None] - GT_REST_JOINTS[None], axis=-1)
  weights = np.exp(-10 * distance)
  weights[:, [0, 5]] = 0.0
  weights /= weights.sum(1, keepdims=True)
  return (vertices.astype(np.float32), faces.astype(np.int32), joints.astype(np.float32),
          weights.astype(np.float32))


def write_video(path, with_joints=True):
  """A tiny video folder whose gt/ holds `ground_truth()` and cameras that turn about y."""
  vertices, faces, joints, weights = ground_truth()
  size = 4
  w2c = np.tile(np.eye(4, dtype=np.float32), (NUM_FRAMES, 1, 1))
  turns = 20.0 * np.arange(NUM_FRAMES)[:, None]
  w2c[:, :3, :3] = Rotation.from_euler("y", turns, degrees=True).as_matrix()
  w2c[:, 2, 3] = 2.0
  extra = dict(skin_weights=weights, joint_positions=joints, joint_parents=GT_PARENTS) \
      if with_joints else {}
  gt = video_io.GroundTruth(
      meshes=assets.MeshSequence(vertices=vertices, faces=faces, fps=10.0, **extra),
      rest_vertices=vertices[0], rest_faces=faces,
      intrinsics=np.tile(np.float32([8, 8, 2, 2]), (NUM_FRAMES, 1)), w2c=w2c,
      face_visible=np.ones(faces.shape[0], bool))
  zeros = lambda *shape, dtype: np.zeros(shape, dtype)  # noqa: E731
  flows = {1: zeros(NUM_FRAMES, size, size, 3, dtype=np.float16)}
  video = video_io.Video(
      rgb=zeros(NUM_FRAMES, size, size, 3, dtype=np.uint8),
      mask=zeros(NUM_FRAMES, size, size, dtype=np.uint8),
      depth=zeros(NUM_FRAMES, size, size, dtype=np.float32),
      feature=zeros(NUM_FRAMES, size, size, 4, dtype=np.float16), flow_fw=flows,
      flow_bw=dict(flows), intrinsics=gt.intrinsics, w2c=w2c,
      meta={"fps": 10.0, "feature_kind": "oracle", "background": [0, 0, 0],
            "camera_path": "fixed", "source": {}, "normalisation": {"center": [0, 0, 0],
                                                                    "scale": 1.0}},
      gt=gt)
  video_io.write_video(path, video, contact_sheet=False)
  return path


def matrix(scale=1.0, rotation=np.eye(3), translation=np.zeros(3)):
  m = np.eye(4)
  m[:3, :3] = scale * rotation
  m[:3, 3] = translation
  return m


def apply(m, points):
  return np.asarray(points, np.float64) @ m[:3, :3].T + m[:3, 3]


def write_run(folder, mesh_frame, w2c, with_skeleton=True):
  """A finished-looking run folder whose meshes and skeleton are the ground truth's, moved.

  The object frame is the GT world through a similarity (the alignment must
  undo it); per frame, each joint's bone is a random rigid motion that carries
  the joint's rest position onto the moved GT joint, so only a correct
  bone * rest^-1 posing puts it there. Frames: "object" (meshes as they are),
  "camera" (through object_to_camera, a per-frame rotation, translation and
  scale, as the model's root pose is, up to the scale).
  """
  folder.mkdir(parents=True)
  vertices, faces, joints, _ = ground_truth()
  world_to_object = matrix(1.3, Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix(),
                           np.array([0.2, -0.1, 0.4]))
  object_to_world = np.linalg.inv(world_to_object)
  # object -> camera = w2c * object_to_world (the GT camera), scaled by 0.8: one similarity
  # for the sequence maps the camera-frame meshes onto the GT's camera-frame meshes.
  object_to_camera = matrix(0.8) @ np.asarray(w2c, np.float64) @ object_to_world
  posed = apply(world_to_object, vertices)
  rest_vertices = posed[0]
  if mesh_frame == "camera":
    posed = np.einsum("tij,tvj->tvi", object_to_camera[:, :3, :3], posed) + \
        object_to_camera[:, None, :3, 3]
  rng = np.random.default_rng(0)
  num_bones = 5
  rest_bones = np.stack([matrix(1.0, Rotation.random(random_state=b).as_matrix(),
                                rng.normal(size=3)) for b in range(num_bones)])
  joint_bone = np.array([2, 0, 3, 4])  # model bone of each predicted joint; bone 1 pruned
  rest_joints = apply(world_to_object, joints[0, PRED_TO_GT])
  bones = np.tile(rest_bones, (NUM_FRAMES, 1, 1, 1))
  for t in range(NUM_FRAMES):
    targets = apply(world_to_object, joints[t, PRED_TO_GT])
    for k, b in enumerate(joint_bone):
      turn = Rotation.random(random_state=10 * t + k).as_matrix()
      # x -> turn (x - rest_k) + target_k, after the rest bone: bone = that * rest.
      move = matrix(1.0, turn, targets[k] - turn @ rest_joints[k])
      bones[t, b] = move @ rest_bones[b]

  def quat(m):  # (x, y, z, w), as motion.npz stores them
    return Rotation.from_matrix(m[..., :3, :3].reshape(-1, 3, 3)).as_quat().reshape(
        m.shape[:-2] + (4,))

  files.save_npz(folder / "motion.npz", object_to_camera=object_to_camera.astype(np.float32),
                 mesh_frame=np.array(mesh_frame), bone_quat=quat(bones).astype(np.float32),
                 bone_trans=bones[..., :3, 3].astype(np.float32),
                 rest_bone_quat=quat(rest_bones).astype(np.float32),
                 rest_bone_trans=rest_bones[:, :3, 3].astype(np.float32),
                 bone_log_scale=np.zeros((num_bones, 3), np.float32),
                 w2c=np.asarray(w2c, np.float32))
  assets.save_sequence_npz(folder / "meshes.npz", assets.MeshSequence(
      vertices=posed.astype(np.float32), faces=faces, fps=10.0))
  files.save_npz(folder / "rest.npz", vertices=rest_vertices.astype(np.float32), faces=faces)
  settings = extraction.defaults("tiny")
  settings = dataclasses.replace(settings, extract=dataclasses.replace(
      settings.extract, mesh_frame=mesh_frame, eval_samples=2000))
  settings_lib.save_config(extraction.to_config(settings), folder / "config.json")
  (folder / "model.json").write_text("{}")  # present as in a finished run; not read here
  if with_skeleton:
    k = len(PRED_TO_GT)
    skeleton_file.save(folder / skeleton_file.FILE_NAME, skeleton_file.Skeleton(
        names=np.array(["hip", "leg", "spine", "head"]), parent=PRED_PARENTS, bone=joint_bone,
        rest_position=rest_joints, weight_target=np.array([1, 0, 0, 2, 3]),
        skin_mass=np.full(k, 0.25), strength=np.ones(k), rest_length=np.zeros(k),
        length_range=np.zeros((k, 2)), dislocation_max=np.zeros(k),
        angle_range_deg=np.zeros((k, 2))))
  return folder


@pytest.fixture(name="video_dir", scope="module")
def fixture_video_dir(tmp_path_factory):
  return write_video(tmp_path_factory.mktemp("rig_eval") / "video")


def gt_w2c(video_dir):
  return video_io.load_video(video_dir).gt.w2c


def run_eval(capsys, *args):
  code = cli.main(["eval", *map(str, args)])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_eval_command_scores_the_run_skeleton(video_dir, tmp_path, capsys):
  run = write_run(tmp_path / "run", "object", gt_w2c(video_dir))
  for pred in (run, run / "meshes.npz"):
    out = tmp_path / "eval.json"
    code, stdout, stderr = run_eval(capsys, "--pred", pred, "--gt", video_dir, "--out", out,
                                    "--samples", 2000)
    assert code == 0, stderr
    report = json.loads(out.read_text())
    assert report["alignment"]["scale"] == pytest.approx(1 / 1.3, rel=1e-3)
    rig = report["rig"]
    for name in rig_metrics.METRICS:
      assert rig["mean"][name] < 0.1  # % of the diagonal: the alignment's residual only
    assert rig["edge_precision"] == 1.0 and rig["edge_recall"] == 1.0
    assert rig["num_joints"] == 4 and rig["num_gt_joints"] == 4
    assert rig["gt_helper_joints_dropped"] == 2 and rig["inside_rest_mesh"] == 1.0
    assert rig["normalisation_length"] == pytest.approx(report["normalisation_length"])
    assert [line for line in stdout.splitlines() if line.startswith("rig: 4 joints (depth 3)")]


def test_metrics_json_of_a_camera_frame_run_has_the_rig(video_dir, tmp_path):
  video = video_io.load_video(video_dir)
  run = write_run(tmp_path / "run", "camera", video.gt.w2c)
  result = run_scores.score_run(run, video)
  assert json.loads((run / "metrics.json").read_text())["rig"] == result["rig"]
  rig = result["rig"]
  assert result["alignment"]["scale"] == pytest.approx(1 / 0.8, rel=1e-3)
  for name in rig_metrics.METRICS:
    assert rig["mean"][name] < 0.1
  assert rig["edge_precision"] == 1.0 and rig["edge_recall"] == 1.0


def test_runs_without_skeleton_or_gt_joints_are_unchanged(video_dir, tmp_path, capsys):
  video = video_io.load_video(video_dir)
  run = write_run(tmp_path / "plain", "object", video.gt.w2c, with_skeleton=False)
  out = tmp_path / "eval.json"
  code, stdout, _ = run_eval(capsys, "--pred", run, "--gt", video_dir, "--out", out,
                             "--samples", 1000)
  assert code == 0 and "rig" not in json.loads(out.read_text()) and "rig:" not in stdout
  assert run_scores.rig_scores_of_run(run, video.gt, np.eye(4)) is None
  # A skeleton, but a ground truth without joints: said, not scored.
  no_joints = write_video(tmp_path / "no_joints", with_joints=False)
  skeletal = write_run(tmp_path / "skeletal", "object", video.gt.w2c)
  code, stdout, _ = run_eval(capsys, "--pred", skeletal, "--gt", no_joints, "--out", out,
                             "--samples", 1000)
  assert code == 0 and "rig" not in json.loads(out.read_text())
  assert "rig: not scored" in stdout


def test_a_skeleton_of_another_model_is_one_error_line(video_dir, tmp_path, capsys):
  video = video_io.load_video(video_dir)
  run = write_run(tmp_path / "run", "object", video.gt.w2c)
  data = json.loads((run / skeleton_file.FILE_NAME).read_text())
  data["weight_target"] = data["weight_target"] + [0]  # 6 model bones, motion.npz has 5
  (run / skeleton_file.FILE_NAME).write_text(json.dumps(data))
  code, _, stderr = run_eval(capsys, "--pred", run, "--gt", video_dir, "--samples", 500)
  assert code == 2 and stderr.count("\n") == 1 and "5" in stderr and "model bones" in stderr


def test_leaf_bone_ends_are_scored_with_the_joints(video_dir, tmp_path):
  video = video_io.load_video(video_dir)
  run = write_run(tmp_path / "run", "object", video.gt.w2c)
  result = run_scores.score_run(run, video)
  skel = skeleton_file.load(run / skeleton_file.FILE_NAME)
  leaves = skeleton_file.leaves(skel)
  ends = skel.end_position.copy()
  ends[leaves] += 0.05  # each leaf bone gets a length
  with_ends = dataclasses.replace(skel, end_position=ends)
  rig = run_scores.rig_scores_of_run(run, video.gt, result["alignment"]["matrix"], skel=with_ends)
  assert rig["num_joints"] == skel.num_joints and rig["num_leaf_ends"] == len(leaves) > 0
  assert f"+ {len(leaves)} leaf ends" in rig_metrics.summary_line(rig)
  # The ends are extra points near nothing in the ground truth: the distances grow.
  assert rig["mean"]["cd_j2j_pct_diag"] > result["rig"]["mean"]["cd_j2j_pct_diag"]
