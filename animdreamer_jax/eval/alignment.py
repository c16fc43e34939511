"""One similarity transform (scale, rotation, translation) for a whole sequence.

A reconstruction lives in its own frame and units, so before scoring it is
moved onto the ground truth by a single transform x -> s R x + t shared by all
frames (a per-frame transform would hide errors in the recovered motion).

  1. Coarse init: centroids and RMS radii of the area-uniform surface samples
     of all frames give the translation and the scale; the rotation is tried
     from 28 candidates (the 24 axis-aligned rotations, which cover meshes
     exported in another axis convention, and the 4 proper rotations that map
     the prediction's principal axes onto the ground truth's), ranked by their
     cost on a few frames; the best 6 get 3 point-to-point (Umeyama) ICP
     iterations on a small subsample.
  2. ICP with scale over all frames jointly, started from the best of the 3
     best coarse results after a short run of this same ICP on the coarse
     subsample: symmetric correspondences (each
     prediction sample -> closest point on the ground-truth surface of the
     same frame, and each ground-truth sample -> closest point on the
     prediction), point-to-plane Gauss-Newton updates of the similarity,
     repeated until the cost stalls. Pairs
     farther apart than 3x the median distance of their direction are left
     out, so a missing or wild part (an unreconstructed side, floaters) does
     not drag the transform.

The symmetric pairing matters: prediction -> ground truth pairs alone are
minimised by shrinking the prediction onto a patch of the ground truth.
This follows the structure of the lab4d/DASR evaluation (coarse scale, then
ICP with scale over the time series) but works on surface samples.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.eval.surface_sampling import SurfaceIndex


@dataclasses.dataclass(frozen=True)
class Similarity:
  """x -> scale * rotation @ x + translation (maps prediction onto ground truth)."""
  scale: float
  rotation: np.ndarray  # (3, 3), det +1
  translation: np.ndarray  # (3,)

  @classmethod
  def identity(cls) -> Similarity:
    return cls(1.0, np.eye(3), np.zeros(3))

  def apply(self, points: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3)."""
    return self.scale * np.asarray(points, np.float64) @ self.rotation.T + self.translation

  def apply_inverse(self, points: np.ndarray) -> np.ndarray:
    """(..., 3) -> (..., 3), the inverse map."""
    return ((np.asarray(points, np.float64) - self.translation) @ self.rotation
            / self.scale)

  def matrix(self) -> np.ndarray:
    """(4, 4) homogeneous matrix acting on column vectors."""
    m = np.eye(4)
    m[:3, :3] = self.scale * self.rotation
    m[:3, 3] = self.translation
    return m

  def rotation_angle_deg(self) -> float:
    # atan2 of the skew and symmetric parts stays accurate near 0 and 180 deg,
    # where arccos of the trace alone loses half the digits.
    r = self.rotation
    sin = 0.5 * np.linalg.norm([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    cos = (np.trace(r) - 1.0) / 2.0
    return float(np.degrees(np.arctan2(sin, cos)))


def umeyama(src: jnp.ndarray, dst: jnp.ndarray, weights: jnp.ndarray | None = None,
            with_scale: bool = True) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Weighted least-squares similarity mapping src onto dst (Umeyama 1991).

  Minimises sum_i w_i |s R src_i + t - dst_i|^2 over s > 0, R in SO(3), t.

  Args:
    src: (M, 3) points.
    dst: (M, 3) corresponding points.
    weights: (M,) non-negative weights (masks); uniform if None.
    with_scale: if False, s is fixed to 1 (rigid).

  Returns:
    scale (), rotation (3, 3), translation (3,).
  """
  if weights is None:
    weights = jnp.ones(src.shape[:1], src.dtype)
  w = weights / jnp.sum(weights)
  mu_src = w @ src
  mu_dst = w @ dst
  xs = src - mu_src
  xd = dst - mu_dst
  cov = (xd * w[:, None]).T @ xs  # sum_i w_i xd_i xs_i^T
  u, sigma, vt = jnp.linalg.svd(cov)
  # Flip the weakest axis if needed so that R is a rotation, not a reflection.
  sign = jnp.sign(jnp.linalg.det(u) * jnp.linalg.det(vt))
  sign = jnp.where(sign == 0, 1.0, sign)
  d = jnp.array([1.0, 1.0, 0.0]) + jnp.array([0.0, 0.0, 1.0]) * sign
  rotation = (u * d) @ vt
  if with_scale:
    var_src = jnp.sum(w * jnp.sum(xs * xs, -1))
    scale = jnp.sum(sigma * d) / var_src
  else:
    scale = jnp.ones((), src.dtype)
  translation = mu_dst - scale * rotation @ mu_src
  return scale, rotation, translation


_umeyama_jit = jax.jit(umeyama, static_argnames=("with_scale",))


def point_to_plane_similarity_step(points: jnp.ndarray, targets: jnp.ndarray,
                                   normals: jnp.ndarray, weights: jnp.ndarray | None = None
                                   ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """One Gauss-Newton step of point-to-plane alignment with scale.

  Finds the small similarity x -> (1 + ds) R(w) (x - m) + m + dt (m: weighted
  centroid of `points`) that minimises sum_i w_i (n_i . (x_i' - y_i))^2 after linearising
  R(w) ~ I + [w]x, i.e. each point may slide along its target's tangent plane.
  This converges in a few iterations where point-to-point ICP crawls.

  Args:
    points: (M, 3) currently aligned points x_i.
    targets: (M, 3) their corresponding points y_i.
    normals: (M, 3) unit normals of the target surface at y_i (sign irrelevant).
    weights: (M,) non-negative pair weights (masks); uniform if None.

  Returns:
    The update as scale (), rotation (3, 3), translation (3,), to be applied
    after the current transform: x -> scale * rotation @ x + translation.
  """
  if weights is None:
    weights = jnp.ones(points.shape[:1], points.dtype)
  weights = weights / jnp.sum(weights)
  center = weights @ points
  arm = points - center
  # Residual r_i + J_i . [w, dt, ds] with J_i = [(a_i x n_i), n_i, n_i . a_i].
  jac = jnp.concatenate([jnp.cross(arm, normals), normals,
                         jnp.sum(normals * arm, -1, keepdims=True)], -1)  # (M, 7)
  residual = jnp.sum(normals * (points - targets), -1)
  weighted_jac = jac * weights[:, None]
  hessian = weighted_jac.T @ jac
  # Tiny damping keeps directions the surface cannot constrain (e.g. spinning
  # a sphere) at zero instead of letting them blow up.
  hessian = hessian + 1e-9 * jnp.trace(hessian) * jnp.eye(7)
  delta = -jnp.linalg.solve(hessian, weighted_jac.T @ residual)
  w, dt, ds = delta[:3], delta[3:6], delta[6]
  angle = jnp.linalg.norm(w)
  axis = w / jnp.maximum(angle, 1e-12)
  k = jnp.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]],
                 [-axis[1], axis[0], 0.0]])
  rotation = jnp.eye(3) + jnp.sin(angle) * k + (1.0 - jnp.cos(angle)) * k @ k
  scale = 1.0 + ds
  translation = center + dt - scale * rotation @ center
  return scale, rotation, translation


_point_to_plane_jit = jax.jit(point_to_plane_similarity_step)


def axis_aligned_rotations() -> np.ndarray:
  """The 24 rotations that map coordinate axes to coordinate axes.

  Returns:
    (24, 3, 3) signed permutation matrices with determinant +1.
  """
  out = []
  for perm in itertools.permutations(range(3)):
    for signs in itertools.product((1.0, -1.0), repeat=3):
      m = np.zeros((3, 3))
      m[np.arange(3), perm] = signs
      if np.linalg.det(m) > 0:
        out.append(m)
  return np.stack(out)


def principal_axes_rotations(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
  """Rotations mapping src's principal axes onto dst's (4 sign choices).

  Args:
    src: (M, 3) points; dst: (K, 3) points.

  Returns:
    (4, 3, 3) rotations R with R @ (src axes) = (dst axes) up to axis signs.
  """
  def axes(x):
    x = x - x.mean(0)
    _, vecs = np.linalg.eigh(x.T @ x)
    vecs = vecs[:, ::-1]  # largest variance first
    if np.linalg.det(vecs) < 0:
      vecs[:, 2] *= -1
    return vecs

  a_src, a_dst = axes(np.asarray(src, np.float64)), axes(np.asarray(dst, np.float64))
  flips = [np.diag(s) for s in ((1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1))]
  return np.stack([a_dst @ f @ a_src.T for f in flips])


def compose(outer: Similarity, inner: Similarity) -> Similarity:
  """The similarity x -> outer(inner(x))."""
  # Re-orthonormalise: float32 updates would otherwise drift off SO(3).
  u, _, vt = np.linalg.svd(outer.rotation @ inner.rotation)
  rotation = u @ np.diag([1.0, 1.0, np.linalg.det(u @ vt)]) @ vt
  return Similarity(outer.scale * inner.scale, rotation,
                    outer.scale * outer.rotation @ inner.translation + outer.translation)


@dataclasses.dataclass(frozen=True)
class AlignmentResult:
  transform: Similarity
  cost: float  # symmetric mean closest-point distance on the ICP subsample, GT units
  icp_iterations: int
  candidate: int  # which coarse rotation candidate won (0-23 axis-aligned, 24-27 PCA)
  candidate_costs: np.ndarray  # (28,) each candidate's cost (after coarse ICP if refined)


def _symmetric_costs(transforms: list[Similarity], pred_index: SurfaceIndex,
                     pred_points: np.ndarray, gt_index: SurfaceIndex, gt_points: np.ndarray,
                     frames: np.ndarray, k: int) -> np.ndarray:
  """The ICP cost of many transforms at once (one query per frame and side).

  Args:
    transforms: C candidate transforms.
    pred_points: (T', m, 3) prediction samples of `frames`.
    gt_points: (T', m', 3) ground-truth samples of `frames`.

  Returns:
    (C,) symmetric mean closest-point distance, ground-truth units.
  """
  # (T', C * m, 3): each frame's queries for all candidates side by side.
  aligned = np.concatenate([t.apply(pred_points) for t in transforms], axis=1)
  pulled_back = np.concatenate([t.apply_inverse(gt_points) for t in transforms], axis=1)
  _, dist_to_gt, _ = gt_index.query(aligned, k, frames)
  _, dist_to_pred, _ = pred_index.query(pulled_back, k, frames)
  count = len(transforms)
  scales = np.array([t.scale for t in transforms])
  return 0.5 * (dist_to_gt.reshape(len(frames), count, -1).mean(axis=(0, 2))
                + scales * dist_to_pred.reshape(len(frames), count, -1).mean(axis=(0, 2)))


def _icp(transform: Similarity, pred_index: SurfaceIndex, pred_points: np.ndarray,
         gt_index: SurfaceIndex, gt_points: np.ndarray, gt_faces: np.ndarray | None,
         frames: np.ndarray, iterations: int, k: int, tolerance: float,
         trim: float | None = None) -> tuple[Similarity, float, int]:
  """Symmetric ICP with scale; returns the best transform seen and its cost.

  Args:
    transform: initial transform (prediction -> ground truth).
    pred_index, gt_index: closest-point indices of the full sequences.
    pred_points: (T', m, 3) prediction samples of `frames` (prediction frame).
    gt_points: (T', m', 3) ground-truth samples of `frames`.
    gt_faces: (T', m') GT face of each sample in `gt_points` for point-to-plane
      updates (tangent planes of the GT surface); None: point-to-point
      (Umeyama) updates, slower to converge but with a wider basin.
    frames: (T',) frame indices.
    iterations: maximum number of Umeyama updates.
    k: grid points (hence candidate faces) per closest-point query.
    tolerance: stop once an update lowers the cost by less than this fraction.
    trim: if set, pairs farther apart than `trim` times the median distance of
      their direction are left out of the update and of the cost, so parts
      that one surface lacks (an unreconstructed side, floaters) do not drag
      the transform.
  """
  src_pred = pred_points.reshape(-1, 3)
  dst_gt = gt_points.reshape(-1, 3)
  best, best_cost, used = transform, np.inf, 0
  previous = np.inf
  if gt_faces is not None:
    gt_normals = gt_index.face_normals(gt_faces, frames).reshape(-1, 3)
  for it in range(iterations + 1):
    aligned = transform.apply(pred_points)
    on_gt, dist_to_gt, face_on_gt = gt_index.query(aligned, k, frames)
    on_pred, dist_to_pred, _ = pred_index.query(
        transform.apply_inverse(gt_points), k, frames)
    # Both directions in ground-truth units (a similarity scales distances by s).
    dist_to_gt = dist_to_gt.reshape(-1)
    dist_to_pred = transform.scale * dist_to_pred.reshape(-1)
    if trim is None:
      keep_pred = np.ones(dist_to_gt.shape, bool)
      keep_gt = np.ones(dist_to_pred.shape, bool)
    else:
      keep_pred = dist_to_gt <= trim * np.median(dist_to_gt)
      keep_gt = dist_to_pred <= trim * np.median(dist_to_pred)
    cost = 0.5 * (dist_to_gt[keep_pred].mean() + dist_to_pred[keep_gt].mean())
    if cost < best_cost:
      best, best_cost, used = transform, cost, it
    converged = it > 0 and previous - cost <= tolerance * previous
    if it == iterations or converged or cost < 1e-9:
      break
    previous = cost
    src = np.concatenate([src_pred, on_pred.reshape(-1, 3)])
    dst = np.concatenate([on_gt.reshape(-1, 3), dst_gt])
    weights = jnp.asarray(np.concatenate([keep_pred, keep_gt]), jnp.float32)
    if gt_faces is None:
      scale, rotation, translation = _umeyama_jit(jnp.asarray(src, jnp.float32),
                                                  jnp.asarray(dst, jnp.float32), weights)
      update = Similarity(float(scale), np.asarray(rotation, np.float64),
                          np.asarray(translation, np.float64))
      transform = update
    else:
      normals = np.concatenate([
          gt_index.face_normals(face_on_gt, frames).reshape(-1, 3), gt_normals])
      scale, rotation, translation = _point_to_plane_jit(
          jnp.asarray(transform.apply(src), jnp.float32), jnp.asarray(dst, jnp.float32),
          jnp.asarray(normals), weights)
      transform = compose(Similarity(float(scale), np.asarray(rotation, np.float64),
                                     np.asarray(translation, np.float64)), transform)
  return best, float(best_cost), used


def align_similarity(pred_index: SurfaceIndex, pred_samples: np.ndarray,
                     gt_index: SurfaceIndex, gt_samples: np.ndarray,
                     gt_sample_faces: np.ndarray, *,
                     coarse_frames: int = 8, coarse_points: int = 256,
                     coarse_keep: int = 6, coarse_iterations: int = 3, final_starts: int = 3,
                     screen_iterations: int = 10,
                     icp_points: int = 16384,
                     icp_iterations: int = 50, k: int = 16, trim: float | None = 3.0,
                     tolerance: float = 1e-4) -> AlignmentResult:
  """Finds the similarity that best maps the prediction onto the ground truth.

  Args:
    pred_index: `SurfaceIndex` of the predicted meshes (T frames).
    pred_samples: (T, N, 3) area-uniform samples of the prediction.
    gt_index: `SurfaceIndex` of the ground-truth meshes (T frames).
    gt_samples: (T, N', 3) area-uniform samples of the ground truth.
    gt_sample_faces: (T, N') GT face of each sample (for the tangent planes).
    coarse_frames: frames (evenly spaced) used to rank the rotation candidates.
    coarse_points: samples per frame and side when ranking candidates.
    coarse_keep: how many of the best-ranked candidates get coarse ICP.
    coarse_iterations: ICP updates per refined candidate.
    final_starts: how many of the best coarse results get a short trimmed ICP
      on the coarse subsample (the lowest cost then starts the final ICP).
    screen_iterations: maximum updates of that short ICP.
    icp_points: samples per side, over all frames, for the final ICP.
    icp_iterations: maximum final ICP updates.
    k: grid points (hence candidate faces) per closest-point query.
    tolerance: relative cost decrease below which ICP stops.
    trim: in the final ICP, pairs farther apart than `trim` x the median of
      their direction are ignored (robust to missing parts); None: keep all.

  Returns:
    AlignmentResult.
  """
  num_frames = pred_samples.shape[0]
  # Samples are i.i.d., so the first m of each frame are a random subsample.
  pred_all = np.asarray(pred_samples, np.float64)
  gt_all = np.asarray(gt_samples, np.float64)
  center_pred = pred_all.reshape(-1, 3).mean(0)
  center_gt = gt_all.reshape(-1, 3).mean(0)
  radius_pred = np.sqrt(np.mean(np.sum((pred_all - center_pred) ** 2, -1)))
  radius_gt = np.sqrt(np.mean(np.sum((gt_all - center_gt) ** 2, -1)))
  scale0 = radius_gt / radius_pred

  rotations = np.concatenate([
      axis_aligned_rotations(),
      principal_axes_rotations(pred_all[:, :1024].reshape(-1, 3),
                               gt_all[:, :1024].reshape(-1, 3))])
  coarse = np.unique(np.linspace(0, num_frames - 1, min(coarse_frames, num_frames))
                     .round().astype(int))
  pred_coarse = pred_all[coarse, :coarse_points]
  gt_coarse = gt_all[coarse, :coarse_points]
  inits = [Similarity(scale0, r, center_gt - scale0 * r @ center_pred) for r in rotations]
  # Rank all candidates by their initial cost, refine only the most promising.
  costs = _symmetric_costs(inits, pred_index, pred_coarse, gt_index, gt_coarse, coarse, k)
  refined = list(inits)
  for i in np.argsort(costs)[:coarse_keep]:
    refined[i], costs[i], _ = _icp(inits[i], pred_index, pred_coarse, gt_index, gt_coarse,
                                   None, coarse, coarse_iterations, k, 0.0)

  # The untrimmed coarse ranking can prefer a wrong pose when a part is
  # missing, so the best few coarse results each get a short trimmed
  # point-to-plane ICP on the coarse subsample; the best of those starts the
  # final ICP on all frames.
  gt_faces = np.asarray(gt_sample_faces)
  screened = []
  for i in np.argsort(costs)[:final_starts]:
    transform, cost, _ = _icp(refined[i], pred_index, pred_coarse, gt_index, gt_coarse,
                              gt_faces[coarse, :coarse_points], coarse, screen_iterations,
                              k, tolerance, trim)
    screened.append((cost, int(i), transform))
  _, winner, start = min(screened, key=lambda item: item[0])
  per_frame = max(1, min(pred_all.shape[1], gt_all.shape[1], icp_points // num_frames))
  transform, cost, used = _icp(start, pred_index, pred_all[:, :per_frame], gt_index,
                               gt_all[:, :per_frame], gt_faces[:, :per_frame],
                               np.arange(num_frames), icp_iterations, k, tolerance, trim)
  return AlignmentResult(transform, cost, used, winner, np.asarray(costs))
