"""Scores of a predicted skeleton against the ground-truth rig, over a whole sequence.

Both skeletons are joint trees with positions per frame, (T, K, 3) predicted
and (T, J, 3) ground truth, in one frame (the caller aligns the prediction
first: `eval.run_scores.rig_scores_of_run`). A *bone* is the segment from a
joint to its parent. Distances are divided by L, the diagonal of the GT rest
mesh's bounding box, and reported in percent of it (keys `..._pct_diag`).

Ground truth: joints that drive no vertex (summed skin weight below
MIN_SKIN_WEIGHT: IK targets, pole vectors, an empty armature root) are
dropped first, and each kept joint's parent becomes its nearest kept ancestor
(`kept_ground_truth_joints`).

Per frame, then averaged over the frames (RigNet / MagicArticulate / UniRig):

- CD-J2J: mean over predicted joints of the distance to the nearest GT joint,
  the same from GT to predicted, and the mean of the two.
- CD-J2B: the same with the distance from a joint to the nearest *bone
  segment* of the other skeleton.
- CD-B2B: the same with points sampled every BONE_SAMPLE_SPACING * L along the
  bones of one skeleton and their distance to the nearest bone segment of the
  other (the exact segments: the limit of sampling the other side densely too).

A skeleton without bones (one joint) stands for its bones by its joints
(zero-length segments), so every score stays defined.

Joint matching and tree edges: the Hungarian assignment
(`scipy.optimize.linear_sum_assignment`) of predicted to GT joints on the mean
distance over the sequence matches min(K, J) pairs. Each tree is then
contracted to its matched joints: a matched joint's parent is its nearest
matched proper ancestor (none: it roots its contracted tree). A contracted
predicted edge is correct when its two joints' matches are the two ends of a
contracted GT edge (either direction: where the root sits is not topology).
Edge precision = correct / contracted predicted edges, edge recall = correct /
contracted GT edges (undefined, null, when there are none). Joints left
unmatched are scored by the distances, not by the edges.

Also: the share of the predicted rest joints inside the run's rest mesh (the
generalised winding number, |w| > 1/2: a parity test that tolerates small
holes and either face orientation) and both trees' depths (joints on the
longest root-to-leaf path).
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from animdreamer_jax.errors import UserError

# A GT joint whose skin weight summed over all vertices is below this drives no
# vertex (IK / pole helpers): weights are stored exactly 0 there.
MIN_SKIN_WEIGHT = 1e-6
# Spacing of the points sampled along bones for CD-B2B, in units of L: 0.5% of
# the diagonal, well below the distances the scores are read at.
BONE_SAMPLE_SPACING = 0.005
# A point is inside a mesh when its generalised winding number exceeds this in
# magnitude (1 inside a closed surface, 0 outside).
INSIDE_WINDING = 0.5
_WINDING_FACE_CHUNK = 16384  # faces per winding-number block (bounds the (P, F) temporaries)
METRICS = ("cd_j2j_pct_diag", "cd_j2b_pct_diag", "cd_b2b_pct_diag")


# ----------------------------------------------------------------------------- trees


def check_parents(parents: np.ndarray, where: str = "skeleton") -> np.ndarray:
  """(J,) int parent indices (-1 for roots, any order) that form a forest -> int64 copy.

  Raises:
    UserError: an index out of range, a joint its own parent, or a cycle.
  """
  parents = np.asarray(parents)
  if parents.ndim != 1 or parents.shape[0] < 1:
    raise UserError(f"{where}: parents must be (J,) with J >= 1, got shape {parents.shape}")
  parents = parents.astype(np.int64)
  n = parents.shape[0]
  if np.any(parents < -1) or np.any(parents >= n) or np.any(parents == np.arange(n)):
    raise UserError(f"{where}: each parent must be -1 or another joint's index")
  up = parents.copy()
  for _ in range(n):  # after J steps up, every walk of a forest has left it
    up = np.where(up >= 0, parents[np.maximum(up, 0)], -1)
  if np.any(up >= 0):
    raise UserError(f"{where}: the parents form a cycle, not a tree")
  return parents


def joint_levels(parents: np.ndarray) -> np.ndarray:
  """(J,) 1 for a root, its parent's level + 1 otherwise (parents in any order)."""
  parents = check_parents(parents)
  level = np.ones(parents.shape[0], np.int64)
  up = parents.copy()
  while np.any(up >= 0):
    level += up >= 0
    up = np.where(up >= 0, parents[np.maximum(up, 0)], -1)
  return level


def tree_depth(parents: np.ndarray) -> int:
  """Joints on the longest root-to-leaf path (a forest: its deepest tree)."""
  return int(joint_levels(parents).max())


def nearest_kept_ancestors(parents: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """(J,) each joint's nearest proper ancestor with keep True (-1: none)."""
  parents = check_parents(parents)
  keep = np.asarray(keep, bool)
  out = np.full(parents.shape[0], -1, np.int64)
  for j in range(parents.shape[0]):
    a = parents[j]
    while a >= 0 and not keep[a]:
      a = parents[a]
    out[j] = a
  return out


def kept_ground_truth_joints(parents: np.ndarray, skin_weights: Optional[np.ndarray]
                             ) -> tuple[np.ndarray, np.ndarray]:
  """Drops GT joints that drive no vertex and re-links their children.

  Args:
    parents: (J,) parent joints, -1 for roots (any order).
    skin_weights: (V, J) skin weights, or None (then every joint is kept).

  Returns:
    kept: (J',) indices of the kept joints, in their original order;
    kept_parents: (J',) each kept joint's nearest kept ancestor as an index
      into `kept` (-1: none, a root).

  Raises:
    UserError: no joint has skin weight, or the shapes disagree.
  """
  parents = check_parents(parents, "ground-truth joints")
  keep = np.ones(parents.shape[0], bool)
  if skin_weights is not None:
    skin_weights = np.asarray(skin_weights, np.float64)
    if skin_weights.ndim != 2 or skin_weights.shape[1] != parents.shape[0]:
      raise UserError(f"ground-truth skin_weights: shape {skin_weights.shape}, expected "
                      f"(V, {parents.shape[0]})")
    keep = skin_weights.sum(0) > MIN_SKIN_WEIGHT
  if not keep.any():
    raise UserError("ground-truth joints: none has skin weight")
  kept = np.flatnonzero(keep)
  index_in_kept = np.full(parents.shape[0], -1, np.int64)
  index_in_kept[kept] = np.arange(kept.shape[0])
  ancestors = nearest_kept_ancestors(parents, keep)[kept]
  return kept, np.where(ancestors >= 0, index_in_kept[np.maximum(ancestors, 0)], -1)


# ----------------------------------------------------------------------------- geometry


def bone_segments(positions: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Bones as segments (child joint -> parent joint).

  Args:
    positions: (..., K, 3) joint positions.
    parents: (K,) parents, -1 for roots.
  Returns:
    starts, ends: (..., E, 3); without bones (a lone joint per tree), the
    joints themselves as zero-length segments (E = K).
  """
  positions = np.asarray(positions, np.float64)
  parents = np.asarray(parents)
  child = np.flatnonzero(parents >= 0)
  if child.size == 0:
    return positions, positions
  return positions[..., child, :], positions[..., parents[child], :]


def point_segment_distances(points: np.ndarray, starts: np.ndarray, ends: np.ndarray
                            ) -> np.ndarray:
  """(P, 3) points, (E, 3) segments -> (P, E) Euclidean distances to the segments."""
  points = np.asarray(points, np.float64)
  starts = np.asarray(starts, np.float64)
  direction = np.asarray(ends, np.float64) - starts  # (E, 3)
  length2 = np.sum(direction ** 2, -1)
  offset = points[:, None, :] - starts[None]  # (P, E, 3)
  along = np.einsum("pej,ej->pe", offset, direction) / np.where(length2 > 0, length2, 1.0)
  along = np.clip(along, 0.0, 1.0)
  return np.linalg.norm(offset - along[..., None] * direction, axis=-1)


def sample_segments(starts: np.ndarray, ends: np.ndarray, spacing: float) -> np.ndarray:
  """Points along each segment, both ends included, at most `spacing` apart -> (N, 3).

  A segment of length l gets ceil(l / spacing) + 1 evenly spaced points (a
  zero-length one: its one point), so the points are uniform by length.
  """
  if not spacing > 0:
    raise UserError(f"bone sample spacing must be positive, got {spacing}")
  starts = np.asarray(starts, np.float64)
  direction = np.asarray(ends, np.float64) - starts
  count = np.ceil(np.linalg.norm(direction, axis=-1) / spacing).astype(np.int64) + 1
  segment = np.repeat(np.arange(starts.shape[0]), count)
  step = np.arange(segment.shape[0]) - np.repeat(np.cumsum(count) - count, count)
  fraction = step / np.maximum(count[segment] - 1, 1)
  return starts[segment] + fraction[:, None] * direction[segment]


# ----------------------------------------------------------------------------- distances


def _symmetric(forward: np.ndarray, backward: np.ndarray) -> float:
  """Mean of the two directions' mean nearest distances (inputs: (P, Q), (Q', P'))."""
  return 0.5 * (float(forward.min(1).mean()) + float(backward.min(1).mean()))


def frame_chamfers(pred: np.ndarray, pred_parents: np.ndarray, gt: np.ndarray,
                   gt_parents: np.ndarray, spacing: float) -> tuple[float, float, float]:
  """CD-J2J, CD-J2B, CD-B2B of one frame, in the inputs' units.

  Args:
    pred: (K, 3) predicted joints; pred_parents: (K,).
    gt: (J, 3) GT joints; gt_parents: (J,).
    spacing: distance between CD-B2B's samples along the bones (inputs' units).
  """
  pred_bones = bone_segments(pred, pred_parents)
  gt_bones = bone_segments(gt, gt_parents)
  j2j = _symmetric(cdist(pred, gt), cdist(gt, pred))
  j2b = _symmetric(point_segment_distances(pred, *gt_bones),
                   point_segment_distances(gt, *pred_bones))
  b2b = _symmetric(point_segment_distances(sample_segments(*pred_bones, spacing), *gt_bones),
                   point_segment_distances(sample_segments(*gt_bones, spacing), *pred_bones))
  return j2j, j2b, b2b


def _check_sequences(pred: np.ndarray, pred_parents: np.ndarray, gt: np.ndarray,
                     gt_parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  if pred.ndim != 3 or pred.shape[-1] != 3 or pred.shape[1] != np.shape(pred_parents)[0]:
    raise UserError(f"predicted joints: shape {pred.shape}, expected (T, "
                    f"{np.shape(pred_parents)[0]}, 3)")
  if gt.ndim != 3 or gt.shape[-1] != 3 or gt.shape[1] != np.shape(gt_parents)[0]:
    raise UserError(f"ground-truth joints: shape {gt.shape}, expected (T, "
                    f"{np.shape(gt_parents)[0]}, 3)")
  if pred.shape[0] < 1:
    raise UserError("joint positions: no frames")
  if pred.shape[0] != gt.shape[0]:
    raise UserError(f"predicted joints have {pred.shape[0]} frames, the ground truth "
                    f"{gt.shape[0]}")
  if not (np.all(np.isfinite(pred)) and np.all(np.isfinite(gt))):
    raise UserError("joint positions have NaN or Inf values")
  return pred, gt


def sequence_chamfers(pred: np.ndarray, pred_parents: np.ndarray, gt: np.ndarray,
                      gt_parents: np.ndarray, norm_length: float,
                      spacing: float = BONE_SAMPLE_SPACING) -> dict[str, np.ndarray]:
  """Per-frame CD-J2J / J2B / B2B in percent of `norm_length`.

  Args:
    pred: (T, K, 3), gt: (T, J, 3) joint positions in one frame.
    pred_parents (K,), gt_parents (J,): parents, -1 for roots.
    norm_length: L (the GT rest bounding-box diagonal).
    spacing: CD-B2B's sample spacing along bones, in units of L.
  Returns:
    {metric in METRICS: (T,) float64}.
  """
  pred, gt = _check_sequences(pred, pred_parents, gt, gt_parents)
  if not norm_length > 0:
    raise UserError(f"normalisation length must be positive, got {norm_length}")
  pred_parents, gt_parents = check_parents(pred_parents), check_parents(gt_parents)
  per_frame = np.array([frame_chamfers(p, pred_parents, g, gt_parents, spacing * norm_length)
                        for p, g in zip(pred, gt)]).reshape(-1, 3)
  return {name: 100.0 * per_frame[:, i] / norm_length for i, name in enumerate(METRICS)}


# ----------------------------------------------------------------------------- matching, edges


def match_joints(pred: np.ndarray, gt: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Hungarian matching of predicted to GT joints on their mean distance over the frames.

  Args:
    pred: (T, K, 3), gt: (T, J, 3).
  Returns:
    pred_index, gt_index: (M,) matched pairs, M = min(K, J), sorted by pred_index;
    distance: (M,) each pair's mean distance over the frames (inputs' units).
  """
  pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
  cost = np.linalg.norm(pred[:, :, None] - gt[:, None], axis=-1).mean(0)  # (K, J)
  pred_index, gt_index = linear_sum_assignment(cost)
  return pred_index, gt_index, cost[pred_index, gt_index]


def contracted_edges(parents: np.ndarray, matched: np.ndarray) -> set[tuple[int, int]]:
  """Edges (child, parent) of the tree contracted to the joints where `matched` is True.

  A matched joint's parent in the contracted tree is its nearest matched
  proper ancestor; a matched joint without one has no edge up.
  """
  ancestors = nearest_kept_ancestors(parents, matched)
  return {(int(j), int(ancestors[j])) for j in np.flatnonzero(matched) if ancestors[j] >= 0}


def edge_precision_recall(pred_parents: np.ndarray, gt_parents: np.ndarray,
                          pred_index: np.ndarray, gt_index: np.ndarray) -> dict[str, Any]:
  """Tree-edge precision and recall after matching (module docstring).

  Args:
    pred_parents: (K,), gt_parents: (J,) parents, -1 for roots.
    pred_index, gt_index: (M,) the matched pairs (predicted joint, GT joint).
  Returns:
    {"edge_precision", "edge_recall" (fractions, None when undefined),
     "correct_edges", "predicted_edges", "gt_edges" (contracted edge counts)}.
  """
  pred_parents, gt_parents = check_parents(pred_parents), check_parents(gt_parents)
  pred_matched = np.zeros(pred_parents.shape[0], bool)
  pred_matched[pred_index] = True
  gt_matched = np.zeros(gt_parents.shape[0], bool)
  gt_matched[gt_index] = True
  to_gt = dict(zip(np.asarray(pred_index).tolist(), np.asarray(gt_index).tolist()))
  predicted = {frozenset((to_gt[c], to_gt[p])) for c, p in
               contracted_edges(pred_parents, pred_matched)}
  truth = {frozenset(edge) for edge in contracted_edges(gt_parents, gt_matched)}
  correct = len(predicted & truth)
  return {"edge_precision": correct / len(predicted) if predicted else None,
          "edge_recall": correct / len(truth) if truth else None,
          "correct_edges": correct, "predicted_edges": len(predicted), "gt_edges": len(truth)}


# ----------------------------------------------------------------------------- inside the mesh


def winding_numbers(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """Generalised winding numbers of points w.r.t. a triangle mesh -> (P,).

  w(p) = sum over faces of the solid angle the face subtends at p, / 4 pi
  (Van Oosterom & Strackee's formula for the solid angle of a triangle): 1
  inside a closed counter-clockwise (outward) surface, -1 for the opposite
  orientation, 0 outside, and in between near holes.
  """
  points = np.asarray(points, np.float64).reshape(-1, 3)
  vertices = np.asarray(vertices, np.float64)
  faces = np.asarray(faces, np.int64)
  total = np.zeros(points.shape[0])
  for begin in range(0, faces.shape[0], _WINDING_FACE_CHUNK):
    corners = vertices[faces[begin:begin + _WINDING_FACE_CHUNK]]  # (F, 3, 3)
    a, b, c = (corners[None, :, i] - points[:, None] for i in range(3))  # (P, F, 3) each
    la, lb, lc = (np.linalg.norm(x, axis=-1) for x in (a, b, c))
    numerator = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
    denominator = (la * lb * lc + np.einsum("pfi,pfi->pf", a, b) * lc
                   + np.einsum("pfi,pfi->pf", b, c) * la + np.einsum("pfi,pfi->pf", c, a) * lb)
    total += 2.0 * np.arctan2(numerator, denominator).sum(1)
  return total / (4.0 * np.pi)


def inside_share(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> float:
  """Share (0..1) of the points inside the mesh (|winding number| > INSIDE_WINDING)."""
  return float(np.mean(np.abs(winding_numbers(points, vertices, faces)) > INSIDE_WINDING))


# ----------------------------------------------------------------------------- the report


def score_skeleton(pred_joints: np.ndarray, pred_parents: np.ndarray, gt_joints: np.ndarray,
                   gt_parents: np.ndarray, norm_length: float, *,
                   gt_skin_weights: Optional[np.ndarray] = None,
                   pred_rest_joints: Optional[np.ndarray] = None,
                   rest_vertices: Optional[np.ndarray] = None,
                   rest_faces: Optional[np.ndarray] = None,
                   spacing: float = BONE_SAMPLE_SPACING) -> dict[str, Any]:
  """All rig scores of a predicted skeleton against the ground truth (JSON-ready).

  Args:
    pred_joints: (T, K, 3) predicted joints, aligned to the ground truth's frame.
    pred_parents: (K,) their parents.
    gt_joints: (T, J, 3) GT joints (all of them: helpers are dropped here).
    gt_parents: (J,) their parents.
    norm_length: L, the GT rest bounding-box diagonal (distances in % of L).
    gt_skin_weights: (V, J) GT skin weights (None: keep every GT joint).
    pred_rest_joints, rest_vertices, rest_faces: the predicted rest joints
      (K, 3) and the rest mesh, in one frame, for the inside share (skipped when
      any is None).
    spacing: CD-B2B's sample spacing along bones, in units of L.

  Returns:
    {"mean": {metric: % of L}, "per_frame": {metric: [T values]},
     "matched_distance_pct_diag", "edge_precision", "edge_recall",
     "correct_edges", "predicted_edges", "gt_edges", "num_joints",
     "num_gt_joints", "gt_helper_joints_dropped", "matched_joints", "depth",
     "gt_depth", "inside_rest_mesh" (share, or None), "normalisation_length",
     "units"}.
  """
  gt_joints = np.asarray(gt_joints, np.float64)
  if gt_joints.ndim != 3 or gt_joints.shape[1:] != (np.shape(gt_parents)[0], 3):
    raise UserError(f"ground-truth joints: shape {gt_joints.shape}, expected (T, "
                    f"{np.shape(gt_parents)[0]}, 3)")
  kept, kept_parents = kept_ground_truth_joints(gt_parents, gt_skin_weights)
  gt_kept = gt_joints[:, kept]
  pred_parents = check_parents(pred_parents, "predicted skeleton")
  per_frame = sequence_chamfers(pred_joints, pred_parents, gt_kept, kept_parents, norm_length,
                                spacing)
  pred_index, gt_index, distance = match_joints(pred_joints, gt_kept)
  edges = edge_precision_recall(pred_parents, kept_parents, pred_index, gt_index)
  inside = None
  if pred_rest_joints is not None and rest_vertices is not None and rest_faces is not None:
    inside = inside_share(pred_rest_joints, rest_vertices, rest_faces)
  return {
      "mean": {name: float(values.mean()) for name, values in per_frame.items()},
      "per_frame": {name: values.tolist() for name, values in per_frame.items()},
      "matched_distance_pct_diag": float(100.0 * distance.mean() / norm_length),
      **edges,
      "num_joints": int(pred_parents.shape[0]), "num_gt_joints": int(kept.shape[0]),
      "gt_helper_joints_dropped": int(np.shape(gt_parents)[0] - kept.shape[0]),
      "matched_joints": int(pred_index.shape[0]),
      "depth": tree_depth(pred_parents), "gt_depth": tree_depth(kept_parents),
      "inside_rest_mesh": inside,
      "normalisation_length": float(norm_length),
      "units": "distances in percent of the GT rest bounding-box diagonal; precision, recall "
               "and inside_rest_mesh as fractions"}


def summary_line(report: dict[str, Any]) -> str:
  """One line for the command's output."""
  text = lambda x, spec: "n/a" if x is None else format(x, spec)  # noqa: E731
  mean = report["mean"]
  inside = report["inside_rest_mesh"]
  ends = report.get("num_leaf_ends", 0)
  return (f"rig: {report['num_joints']} joints{f' + {ends} leaf ends' if ends else ''} "
          f"(depth {report['depth']}) vs GT "
          f"{report['num_gt_joints']} (depth {report['gt_depth']}); CD-J2J "
          f"{mean['cd_j2j_pct_diag']:.2f} J2B {mean['cd_j2b_pct_diag']:.2f} B2B "
          f"{mean['cd_b2b_pct_diag']:.2f} (% of diagonal); edge P "
          f"{text(report['edge_precision'], '.2f')} R {text(report['edge_recall'], '.2f')}; "
          f"inside rest mesh {'n/a' if inside is None else f'{100 * inside:.0f}%'}")
