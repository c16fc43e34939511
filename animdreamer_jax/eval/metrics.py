"""Chamfer distance and F-score between predicted and ground-truth mesh sequences.

Definitions (per frame t; all distances divided by the normalisation length L,
the diagonal of the ground-truth rest-pose bounding box, which is 1 for the
normalised synthetic videos, so thresholds 0.01/0.02/0.05 are 1%/2%/5% of L):

  G_t: N points sampled uniformly by area on the ground-truth mesh,
  P_t: N points sampled uniformly by area on the aligned predicted mesh,
  d(x, S): distance from x to the closest point of surface S (exact against the
           candidate triangles proposed by a KD-tree, see surface_sampling).

  accuracy     = mean_{p in P_t} d(p, GT_t)       (is what was predicted right?)
  completeness = mean_{g in G_t} d(g, PRED_t)     (is the ground truth covered?)
  chamfer      = (accuracy + completeness) / 2
  precision@tau = % of p with d(p, GT_t) < tau;  recall@tau = % of g with d(g, PRED_t) < tau
  fscore@tau   = 2 precision recall / (precision + recall)   (0 if either is 0)
  (precision, recall and F-score in percent, 0..100).

Parts (sets of ground-truth faces, `eval.parts`: seen / unseen, limbs / body,
chains such as legs / tail / head): a ground-truth sample belongs to the part
of its face; a predicted point belongs to the part of the ground-truth face
that holds its closest ground-truth point. Each part's scores use only its own
points in the formulas above, e.g.
  completeness_seen = mean over seen GT samples of d(g, PRED),
  accuracy_seen     = mean over predicted points whose closest GT point is on a
                      seen face of d(p, GT),
and likewise for every other part. A part with no points in a frame gives no
value for that frame (JSON null); sequence means average the frames that have
a value. A part's area share is the fraction of GT samples on it.
Point-to-surface (not point-to-point) distances are used so the score has no
sampling floor: a mesh scored against itself gets 0 whatever the sample count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import parts as parts_lib
from animdreamer_jax.eval.alignment import AlignmentResult, Similarity, align_similarity
from animdreamer_jax.eval.surface_sampling import (SurfaceIndex, check_mesh_frames,
                                                   sample_surface_frames)

THRESHOLDS = (0.01, 0.02, 0.05)


@jax.jit
def surface_scores(dist_pred_to_gt: jnp.ndarray, dist_gt_to_pred: jnp.ndarray,
                   pred_weight: jnp.ndarray, gt_weight: jnp.ndarray,
                   thresholds: jnp.ndarray) -> dict[str, jnp.ndarray]:
  """Chamfer / F-score per frame from closest-point distances.

  Masks (weights 0/1) select which points count, so a seen/unseen split is the
  same computation with different weights. Empty selections give NaN.

  Args:
    dist_pred_to_gt: (T, Np) distance of each predicted point to the GT surface.
    dist_gt_to_pred: (T, Ng) distance of each GT point to the predicted surface.
    pred_weight: (T, Np) 0/1 mask of predicted points that count.
    gt_weight: (T, Ng) 0/1 mask of GT points that count.
    thresholds: (K,) F-score thresholds, same units as the distances.

  Returns:
    accuracy, completeness, chamfer: (T,); precision, recall, fscore: (T, K) in %.
  """
  num_pred = jnp.sum(pred_weight, -1)
  num_gt = jnp.sum(gt_weight, -1)
  nan = jnp.nan
  accuracy = jnp.where(num_pred > 0, jnp.sum(pred_weight * dist_pred_to_gt, -1)
                       / jnp.maximum(num_pred, 1), nan)
  completeness = jnp.where(num_gt > 0, jnp.sum(gt_weight * dist_gt_to_pred, -1)
                           / jnp.maximum(num_gt, 1), nan)
  def percent_within(dist, weight, count):
    hits = jnp.sum((dist[..., None] < thresholds) * weight[..., None], 1)  # (T, K)
    count = count[:, None]
    # Exactly 1 when every point is within (division may round via reciprocals).
    fraction = jnp.where(hits == count, 1.0, hits / jnp.maximum(count, 1))
    return jnp.where(count > 0, 100.0 * fraction, nan)

  precision = percent_within(dist_pred_to_gt, pred_weight, num_pred)
  recall = percent_within(dist_gt_to_pred, gt_weight, num_gt)
  total = precision + recall
  fscore = jnp.where(total > 0, 2.0 * precision * recall / jnp.where(total > 0, total, 1.0),
                     jnp.where(jnp.isnan(total), nan, 0.0))
  # The harmonic mean of equal values is that value (kept exact, e.g. 100).
  fscore = jnp.where(precision == recall, precision, fscore)
  # A part the prediction misses entirely has recall 0 and no precision (no
  # predicted point is closest to it): F is 0, the limit of 2PR/(P+R) as R -> 0,
  # so missing legs score 0 rather than "undefined" (and count in the mean).
  fscore = jnp.where((precision == 0) | (recall == 0), 0.0, fscore)
  return {"accuracy": accuracy, "completeness": completeness,
          "chamfer": 0.5 * (accuracy + completeness),
          "precision": precision, "recall": recall, "fscore": fscore}


@dataclasses.dataclass
class SequenceDistances:
  """Closest-point distances of one evaluation, before they are summarised.

  Distances are in ground-truth units (not yet divided by L).
  """
  dist_pred_to_gt: np.ndarray  # (T, N)
  dist_gt_to_pred: np.ndarray  # (T, N)
  pred_nearest_gt_face: np.ndarray  # (T, N) GT face holding each predicted point's closest point
  gt_face: np.ndarray  # (T, N) GT face of each GT sample
  alignment: AlignmentResult | None
  transform: Similarity


def sequence_distances(pred_vertices: np.ndarray, pred_faces: np.ndarray,
                       gt_vertices: np.ndarray, gt_faces: np.ndarray, *,
                       num_samples: int = 10000, align: bool = True, seed: int = 0,
                       k: int = 16) -> SequenceDistances:
  """Samples both sequences, aligns the prediction and measures distances.

  Args:
    pred_vertices: (T, V, 3) predicted vertices (any frame, any units).
    pred_faces: (F, 3) or (T, F, 3) predicted faces (padded per-frame meshes ok).
    gt_vertices: (T, V', 3) ground-truth vertices.
    gt_faces: (F', 3) or (T, F', 3).
    num_samples: surface samples per mesh and frame.
    align: find a similarity transform (else the identity).
    seed: sampling seed: the GT is sampled with seed 2 * seed and the
      prediction with 2 * seed + 1 (independent points on the two surfaces).
    k: grid points (hence candidate faces) per closest-point query.
  """
  if num_samples < 1:
    raise UserError(f"--samples: must be positive, got {num_samples}")
  if pred_vertices.shape[0] != gt_vertices.shape[0]:
    raise UserError(f"prediction has {pred_vertices.shape[0]} frames but the ground "
                    f"truth has {gt_vertices.shape[0]}")
  gt_points, gt_face = sample_surface_frames(gt_vertices, gt_faces, num_samples, 2 * seed)
  pred_points, _ = sample_surface_frames(pred_vertices, pred_faces, num_samples, 2 * seed + 1)
  gt_index = SurfaceIndex(gt_vertices, gt_faces)
  pred_index = SurfaceIndex(pred_vertices, pred_faces)
  if align:
    alignment = align_similarity(pred_index, pred_points, gt_index, gt_points, gt_face)
    transform = alignment.transform
  else:
    alignment, transform = None, Similarity.identity()
  _, dist_pred_to_gt, nearest_face = gt_index.query(transform.apply(pred_points), k)
  _, dist_gt_to_pred, _ = pred_index.query(transform.apply_inverse(gt_points), k)
  return SequenceDistances(dist_pred_to_gt, dist_gt_to_pred * transform.scale,
                           nearest_face, gt_face, alignment, transform)


def _json_number(x: float) -> float | None:
  x = float(x)
  return None if math.isnan(x) else x


def point_masks(distances: SequenceDistances, face_mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """0/1 weights (T, N) of the predicted and the GT points in a part given as a GT face mask."""
  face_mask = np.asarray(face_mask, bool)
  return (face_mask[distances.pred_nearest_gt_face].astype(np.float32),
          face_mask[distances.gt_face].astype(np.float32))


def summarise(distances: SequenceDistances, *,
              face_parts: Mapping[str, np.ndarray] | None = None, norm_length: float = 1.0,
              thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
  """Per-frame and mean scores (JSON-ready; NaN becomes None).

  Args:
    distances: output of `sequence_distances`.
    face_parts: part name -> (F',) bool mask over the GT faces (`eval.parts`);
      None: the whole surface only.
    norm_length: L; distances are divided by it and thresholds are in units of L.
    thresholds: F-score thresholds in units of L.

  Returns:
    {"per_frame": {part: {metric: [T values]}}, "mean": {part: {metric: value}},
     "area_fraction": {part: share of the GT area}, "visibility": {...}}; part
    is "all" and each of face_parts; metric names: accuracy, completeness,
    chamfer, and precision@X%, recall@X%, fscore@X% for each threshold.
  """
  face_parts = dict(face_parts or {})
  d_pred = distances.dist_pred_to_gt / norm_length
  d_gt = distances.dist_gt_to_pred / norm_length
  masks = {"all": (np.ones_like(d_pred), np.ones_like(d_gt))}
  masks.update({part: point_masks(distances, face_mask)
                for part, face_mask in face_parts.items()})
  area_fraction = {part: float(w_gt.mean()) for part, (_, w_gt) in masks.items()}
  labels = [f"{100 * tau:g}%" for tau in thresholds]
  per_frame: dict[str, dict[str, list]] = {}
  mean: dict[str, dict[str, float | None]] = {}
  for part, (w_pred, w_gt) in masks.items():
    scores = jax.tree_util.tree_map(np.asarray, surface_scores(
        jnp.asarray(d_pred), jnp.asarray(d_gt), jnp.asarray(w_pred), jnp.asarray(w_gt),
        jnp.asarray(thresholds, jnp.float32)))
    columns = {name: scores[name] for name in ("chamfer", "accuracy", "completeness")}
    for name in ("fscore", "precision", "recall"):
      for j, label in enumerate(labels):
        columns[f"{name}@{label}"] = scores[name][:, j]
    per_frame[part] = {name: [_json_number(v) for v in values]
                       for name, values in columns.items()}
    mean[part] = {}
    for name, values in columns.items():
      values = values[~np.isnan(values)].astype(np.float64)
      mean[part][name] = float(values.mean()) if values.size else None
  return {"per_frame": per_frame, "mean": mean, "area_fraction": area_fraction,
          "visibility": visibility_summary(face_parts, area_fraction)}


def visibility_summary(face_parts: Mapping[str, np.ndarray],
                       area_fraction: Mapping[str, float]) -> dict[str, Any]:
  """The report's "visibility" block (the seen / unseen split; kept as older reports had it)."""
  if "seen" not in face_parts:
    return {"recorded": False}
  return {"recorded": True, "seen_face_fraction": float(np.mean(face_parts["seen"])),
          "seen_area_fraction": area_fraction["seen"]}


def evaluate_sequence(pred_vertices: np.ndarray, pred_faces: np.ndarray,
                      gt_vertices: np.ndarray, gt_faces: np.ndarray, *,
                      parts: parts_lib.FaceParts | None = None, norm_length: float = 1.0,
                      num_samples: int = 10000, align: bool = True, seed: int = 0,
                      thresholds: tuple[float, ...] = THRESHOLDS) -> dict[str, Any]:
  """Scores a predicted mesh sequence against the ground truth.

  Args:
    pred_vertices: (T, V, 3); pred_faces: (F, 3) or (T, F, 3).
    gt_vertices: (T, V', 3); gt_faces: (F', 3) or (T, F', 3).
    parts: named GT face masks and their description (`eval.parts`, e.g.
      `ground_truth_parts(video.gt)`); None: the whole surface only.
    norm_length: L, the length that thresholds and reported distances are
      relative to (the GT rest bbox diagonal; 1 for normalised sequences).
    num_samples: surface samples per mesh and frame.
    align: fit one similarity transform (prediction -> GT) for the sequence.
    seed: sampling seed.
    thresholds: F-score thresholds in units of L.

  Returns:
    JSON-ready dict: the `summarise` fields, the parts' description (e.g.
    "limb_fraction") plus "alignment", "num_frames", "samples_per_frame",
    "normalisation_length", "thresholds".
  """
  check_mesh_frames(pred_vertices, pred_faces, "prediction")
  check_mesh_frames(gt_vertices, gt_faces, "ground truth")
  parts = parts or parts_lib.FaceParts({}, {})
  parts_lib.check_face_parts(parts.masks, np.asarray(gt_faces).shape[-2])
  if not norm_length > 0:
    raise UserError(f"normalisation length must be positive, got {norm_length}")
  distances = sequence_distances(pred_vertices, pred_faces, gt_vertices, gt_faces,
                                 num_samples=num_samples, align=align, seed=seed)
  report = summarise(distances, face_parts=parts.masks, norm_length=norm_length,
                     thresholds=thresholds)
  transform = distances.transform
  alignment: dict[str, Any] = {
      "enabled": align, "scale": transform.scale,
      "rotation": transform.rotation.tolist(),
      "translation": transform.translation.tolist(),
      "matrix": transform.matrix().tolist(),
      "rotation_angle_deg": transform.rotation_angle_deg()}
  if distances.alignment is not None:
    alignment.update(icp_iterations=distances.alignment.icp_iterations,
                     icp_cost=distances.alignment.cost / norm_length,
                     init_candidate=distances.alignment.candidate)
  return {"num_frames": int(np.shape(gt_vertices)[0]), "samples_per_frame": num_samples,
          "normalisation_length": float(norm_length), "thresholds": list(thresholds),
          "alignment": alignment, **parts.description, **report}
