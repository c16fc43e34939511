"""From learned Gaussian bones to a joint tree (the paper's skeleton construction), on arrays.

The steps, each a pure NumPy function (`build` runs them in order):
1. `skin_mass`: each bone's share of the surface's skin weight.
2. `connection_strength`: T_jk = alpha * semantic + (1 - alpha) * morphological,
   semantic = cosine similarity (clipped at 0) of the bones' skin-weighted mean
   canonical features, morphological = sum_x min(w_j, w_k) / sum_x max(w_j, w_k)
   over surface samples (how much the two bones share the surface).
3. `prune`: a bone is dead with too little skin mass, or outside when its centre
   lies farther than a threshold outside the surface; its weight goes to the kept
   bone it overlaps most (the nearest one when it overlaps none), unless that
   merge would move the surface visibly in some frame (`merge_displacement`):
   then the bone's motion matters and it stays.
4. `maximum_spanning_tree` (Prim) on the kept bones' strengths, from the root
   (largest skin mass, or the bone nearest the body's interior centroid).
5. `place_joints`: a child joint sits where it meets its parent: the interior
   centroid weighted by w_parent * w_child, pulled onto the nearest interior
   sample when that centroid is not inside; the root at its own region's interior
   centroid. Each bone ends at its children's mean position, a leaf's at the far
   end of its own region (`bone_ends`), so chains reach the feet and the tail tip.
6. `motion_ranges`: over the video's frames, each joint's distance to its parent
   joint, its dislocation (the joint as carried by its own bone vs by the
   parent's bone) and the angle of its rotation relative to the parent's, from
   rest.
7. `role_names`: chains that end low are legs (front/back, left/right about the
   body's centroid in the object frame), the highest non-leg chain ending farthest forward is the head,
   farthest back the tail; the rest by index.

Public code (lab4d / AnimatableDreamer `generate_fg_skel`) counts mesh edges
between argmax labels and keeps a thresholded graph; it has no semantic term
and no tree, so cycles are possible. Here the tree is what an animator needs.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.skeleton.skeleton_file import Skeleton

ROOT_RULES = ("mass", "central")
# The root joint's name; not "root", which the glTF export gives the node carrying the root motion.
ROOT_NAME = "spine_root"
FORWARD_AXES = ("+z", "-z", "+x", "-x")


@dataclasses.dataclass(frozen=True)
class SkeletonSettings:
  """`skeleton`: how a run's joint tree is built from its bones (skeleton/construct.py)."""
  alpha: float = 0.5  # weight of the semantic (feature) term in the connection strength; 1 - alpha: skin overlap (0.5: best tree edges on the benchmark, docs/results.md)
  min_mass: float = 0.01  # bones with less than this share of the surface's skin weight are dead (pruned)
  max_outside: float = 0.05  # bones whose centre is farther outside the surface than this (SDF, units of the rest bbox diagonal ~1) are pruned
  # ... but only when merging the bone's weight into its neighbour moves no surface point by more than this
  # in any frame (same units): the exported rig's player then stays within ~1% of the model.
  max_merge_error: float = 0.005
  root: str = "mass"  # root joint: "mass" (the bone with the most skin weight) or "central" (nearest the interior centroid)
  interior_resolution: int = 48  # grid cells per side of the rest box sampled for interior points (joint placement)
  forward_axis: str = "+z"  # the animal's forward in the object frame (synthetic animals and glTF assets face +z)
  leg_height: float = 0.35  # chains ending in the lowest share of the rest height are legs (as eval's limb parts)

  def __post_init__(self):
    if not 0.0 <= self.alpha <= 1.0:
      raise UserError("config.skeleton.alpha: must be in [0, 1]")
    if not 0.0 <= self.min_mass < 1.0:
      raise UserError("config.skeleton.min_mass: must be in [0, 1)")
    if self.max_outside <= 0:
      raise UserError("config.skeleton.max_outside: must be > 0")
    if self.max_merge_error < 0:
      raise UserError("config.skeleton.max_merge_error: must be >= 0")
    if self.root not in ROOT_RULES:
      raise UserError(f"config.skeleton.root: unknown rule {self.root!r}; use one of {list(ROOT_RULES)}")
    if self.interior_resolution < 8:
      raise UserError("config.skeleton.interior_resolution: must be >= 8")
    if self.forward_axis not in FORWARD_AXES:
      raise UserError(f"config.skeleton.forward_axis: unknown axis {self.forward_axis!r}; use one of "
                      f"{list(FORWARD_AXES)}")
    if not 0.0 < self.leg_height < 1.0:
      raise UserError("config.skeleton.leg_height: must be in (0, 1)")


# ----------------------------------------------------------------------------
# 1-2. Mass and connection strength.


def skin_mass(weights: np.ndarray) -> np.ndarray:
  """(N, B) weights at surface samples -> (B,) each bone's share (sums to 1)."""
  total = np.asarray(weights, np.float64).sum(0)
  return total / max(total.sum(), 1e-12)


def skin_overlap(weights: np.ndarray) -> np.ndarray:
  """(N, B) -> (B, B) sum_x min(w_j, w_k) / sum_x max(w_j, w_k) (diagonal 1)."""
  w = np.asarray(weights, np.float64)
  b = w.shape[1]
  out = np.eye(b)
  for j in range(b):
    mins = np.minimum(w[:, j:j + 1], w[:, j + 1:]).sum(0)
    maxs = np.maximum(w[:, j:j + 1], w[:, j + 1:]).sum(0)
    out[j, j + 1:] = mins / np.maximum(maxs, 1e-12)
    out[j + 1:, j] = out[j, j + 1:]
  return out


def feature_similarity(weights: np.ndarray, features: np.ndarray) -> np.ndarray:
  """(N, B) weights, (N, F) features -> (B, B) cosine of skin-weighted mean features, clipped at 0."""
  w = np.asarray(weights, np.float64)
  mean = w.T @ np.asarray(features, np.float64) / np.maximum(w.sum(0), 1e-12)[:, None]
  unit = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
  return np.clip(unit @ unit.T, 0.0, 1.0)


def connection_strength(weights: np.ndarray, features: Optional[np.ndarray], alpha: float,
                        overlap: Optional[np.ndarray] = None) -> np.ndarray:
  """T = alpha * feature_similarity + (1 - alpha) * skin_overlap (no features: overlap only).

  overlap: `skin_overlap(weights)` when the caller has it already.
  """
  overlap = skin_overlap(weights) if overlap is None else overlap
  if features is None or alpha == 0.0:
    return overlap
  return alpha * feature_similarity(weights, features) + (1.0 - alpha) * overlap


# ----------------------------------------------------------------------------
# 3-4. Pruning and the tree.


@dataclasses.dataclass(frozen=True)
class Pruning:
  """kept: (K,) kept bone indices (ascending); target: (B,) the kept bone each bone's weight goes to;
  reasons: {pruned bone: "dead" | "outside"}."""
  kept: np.ndarray
  target: np.ndarray
  reasons: dict


def prune(mass: np.ndarray, centre_sdf: np.ndarray, overlap: np.ndarray, centres: np.ndarray,
          min_mass: float, max_outside: float,
          merge_error: Optional[Callable[[int, int], float]] = None,
          max_merge_error: float = np.inf) -> Pruning:
  """Drops dead and outside bones, merging each into the kept bone it overlaps most.

  Args:
    mass: (B,) skin-mass shares; centre_sdf: (B,) SDF at the rest bone centres
      (positive outside); overlap: (B, B) skin overlap; centres: (B, 3).
    merge_error: (bone, target) -> how far merging moves the surface (any frame);
      a candidate whose merge would move it more than `max_merge_error` is kept
      (its motion matters to the mesh, whatever its mass or centre).
  Candidates are considered lightest first; each merges into a bone that stays.
  """
  b = mass.shape[0]
  candidates = {}
  for i in range(b):
    if mass[i] < min_mass:
      candidates[i] = "dead"
    elif centre_sdf[i] > max_outside:
      candidates[i] = "outside"
  if len(candidates) == b:  # keep at least the heaviest bone
    candidates.pop(int(np.argmax(mass)))
  kept = [i for i in range(b) if i not in candidates]
  target = np.arange(b)
  reasons = {}
  for i in sorted(candidates, key=lambda i: mass[i]):
    scores = overlap[i, kept]
    if scores.max() > 0:
      t = kept[int(np.argmax(scores))]
    else:
      t = kept[int(np.argmin(np.linalg.norm(centres[kept] - centres[i], axis=1)))]
    if merge_error is not None and merge_error(i, t) > max_merge_error:
      kept.append(i)
      continue
    target[i] = t
    reasons[i] = candidates[i]
  return Pruning(kept=np.array(sorted(kept), np.int64), target=target, reasons=reasons)


def merge_displacement(surface: np.ndarray, weights: np.ndarray, rest_bone_to_object: np.ndarray,
                       bone_to_object: np.ndarray, bone: int, target: int) -> float:
  """Largest move of a surface point over the frames when `bone`'s weight goes to `target` (LBS).

  With linear blending a point moves by w_bone * (A_t,target - A_t,bone) x.
  """
  w = weights[:, bone]
  near = w > 1e-4
  if not np.any(near):
    return 0.0
  rel = skeleton_file.rest_to_frame(rest_bone_to_object[[bone, target]],
                                    bone_to_object[:, [bone, target]])  # (T, 2, 4, 4)
  diff = rel[:, 1] - rel[:, 0]  # (T, 4, 4)
  x = surface[near]
  moved = np.einsum("tij,nj->tni", diff[:, :3, :3], x) + diff[:, None, :3, 3]
  return float((w[near] * np.linalg.norm(moved, axis=-1)).max())


def maximum_spanning_tree(strength: np.ndarray, root: int,
                          tie_break: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
  """Prim's maximum spanning tree of a symmetric (K, K) strength matrix.

  Args:
    strength: (K, K) symmetric connection strengths.
    root: index of the root.
    tie_break: optional (K, K) small penalty subtracted from the strengths (e.g.
      distances), so that unconnected parts join at their nearest bones.
  Returns:
    (order (K,) the vertices in the order they joined, parent (K,) in the
    original indexing, -1 for the root).
  """
  k = strength.shape[0]
  key = np.asarray(strength, np.float64)
  if tie_break is not None:
    key = key - tie_break
  parent = np.full(k, -1, np.int64)
  in_tree = np.zeros(k, bool)
  in_tree[root] = True
  best = key[root].copy()
  best_from = np.full(k, root)
  order = [root]
  for _ in range(k - 1):
    cand = np.where(in_tree, -np.inf, best)
    nxt = int(np.argmax(cand))
    in_tree[nxt] = True
    parent[nxt] = best_from[nxt]
    order.append(nxt)
    better = key[nxt] > best
    best = np.where(better, key[nxt], best)
    best_from = np.where(better, nxt, best_from)
  return np.asarray(order), parent


def choose_root(rule: str, mass: np.ndarray, centres: np.ndarray,
                interior_centroid: np.ndarray) -> int:
  """The root bone (indices into `mass`): the heaviest, or the one nearest the interior centroid."""
  if rule == "mass":
    return int(np.argmax(mass))
  return int(np.argmin(np.linalg.norm(centres - interior_centroid, axis=1)))


# ----------------------------------------------------------------------------
# 5. Joints.


def weighted_centroid(points: np.ndarray, weight: np.ndarray) -> Optional[np.ndarray]:
  total = float(weight.sum())
  if total <= 1e-12:
    return None
  return (weight[:, None] * points).sum(0) / total


def place_joints(parent: np.ndarray, interior: np.ndarray, interior_weights: np.ndarray,
                 surface: np.ndarray, surface_weights: np.ndarray,
                 is_inside: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
  """Rest joint positions (K, 3) for a tree over K joints.

  Args:
    parent: (K,) parents (-1 root) in joint indexing.
    interior: (M, 3) points inside the surface, interior_weights (M, K) their
      (merged) joint weights; surface (N, 3), surface_weights (N, K) likewise.
    is_inside: (P, 3) -> (P,) bool.
  """
  k = parent.shape[0]
  out = np.zeros((k, 3))
  for j in range(k):
    p = parent[j]
    if p < 0:
      w_in, w_surf = interior_weights[:, j], surface_weights[:, j]
    else:
      w_in = interior_weights[:, j] * interior_weights[:, p]
      w_surf = surface_weights[:, j] * surface_weights[:, p]
    point = weighted_centroid(interior, w_in) if interior.shape[0] else None
    if point is None:
      point = weighted_centroid(surface, w_surf)
    if point is None:  # the two regions never meet: halfway between their centroids
      a = weighted_centroid(surface, surface_weights[:, j])
      b = weighted_centroid(surface, surface_weights[:, p]) if p >= 0 else a
      point = 0.5 * (a + b) if a is not None and b is not None else surface.mean(0)
    if interior.shape[0] and not bool(is_inside(point[None])[0]):
      point = interior[int(np.argmin(np.linalg.norm(interior - point, axis=1)))]
    out[j] = point
  return out


def bone_ends(parent: np.ndarray, rest_position: np.ndarray, surface: np.ndarray,
              surface_weights: np.ndarray, far_share: float = 0.1) -> np.ndarray:
  """(K, 3) where each joint's bone ends: its children's mean position, or for a leaf the far end
  of its own region (the mean of the `far_share` of the surface points it dominates, w > 0.5,
  farthest from the joint; its region's centroid when it dominates none)."""
  k = parent.shape[0]
  out = np.zeros((k, 3))
  for j in range(k):
    children = np.flatnonzero(parent == j)
    if children.size:
      out[j] = rest_position[children].mean(0)
      continue
    own = surface[surface_weights[:, j] > 0.5]
    if own.shape[0] == 0:
      centroid = weighted_centroid(surface, surface_weights[:, j])
      out[j] = rest_position[j] if centroid is None else centroid
      continue
    far = np.linalg.norm(own - rest_position[j], axis=1)
    out[j] = own[far >= np.quantile(far, 1.0 - far_share)].mean(0)
  return out


# ----------------------------------------------------------------------------
# 6. Motion ranges.


def rotation_angle(rot: np.ndarray) -> np.ndarray:
  """(..., 3, 3) rotations -> (...,) angle in radians."""
  cos = (np.trace(rot, axis1=-2, axis2=-1) - 1.0) / 2.0
  return np.arccos(np.clip(cos, -1.0, 1.0))


def motion_ranges(parent: np.ndarray, joint_bone: np.ndarray, rest_position: np.ndarray,
                  rest_bone_to_object: np.ndarray, bone_to_object: np.ndarray) -> dict:
  """Per joint over the frames: distance to the parent joint, dislocation, relative rotation angle.

  Args:
    parent, joint_bone: (K,); rest_position: (K, 3);
    rest_bone_to_object: (B, 4, 4); bone_to_object: (T, B, 4, 4).
  Returns:
    {"rest_length" (K,), "length_range" (K, 2), "dislocation_max" (K,),
     "angle_range_deg" (K, 2)}; zeros for the root.
  """
  rel = skeleton_file.rest_to_frame(rest_bone_to_object, bone_to_object)[:, joint_bone]
  rot, trans = rel[..., :3, :3], rel[..., :3, 3]  # (T, K, 3, 3), (T, K, 3)
  p = np.asarray(rest_position, np.float64)
  carried = np.einsum("tkij,kj->tki", rot, p) + trans  # joint k by its own bone
  k = parent.shape[0]
  out = {"rest_length": np.zeros(k), "length_range": np.zeros((k, 2)),
         "dislocation_max": np.zeros(k), "angle_range_deg": np.zeros((k, 2))}
  for j in range(k):
    q = parent[j]
    if q < 0:
      continue
    length = np.linalg.norm(carried[:, j] - carried[:, q], axis=-1)
    by_parent = np.einsum("tij,j->ti", rot[:, q], p[j]) + trans[:, q]
    angle = np.degrees(rotation_angle(np.swapaxes(rot[:, q], -1, -2) @ rot[:, j]))
    out["rest_length"][j] = np.linalg.norm(p[j] - p[q])
    out["length_range"][j] = (length.min(), length.max())
    out["dislocation_max"][j] = np.linalg.norm(carried[:, j] - by_parent, axis=-1).max()
    out["angle_range_deg"][j] = (angle.min(), angle.max())
  return out


# ----------------------------------------------------------------------------
# 7. Names.

_AXIS = {"+z": (2, 1.0), "-z": (2, -1.0), "+x": (0, 1.0), "-x": (0, -1.0)}


def role_names(parent: np.ndarray, rest_position: np.ndarray, tip: np.ndarray,
               surface: np.ndarray, forward_axis: str = "+z", leg_height: float = 0.35
               ) -> np.ndarray:
  """Joint names by role where the geometry says so (module docstring), else "joint_<k>".

  Args:
    parent: (K,); rest_position: (K, 3) joints; tip: (K, 3) where each joint's
      own region lies (its skin-weighted surface centroid: for a leaf, the end of
      the chain, beyond the joint where it meets its parent); surface: (N, 3).
  Up is +y. Left is the animal's left: with forward +z and up +y, +x.
  """
  k = parent.shape[0]
  children = [np.flatnonzero(parent == j) for j in range(k)]
  leaves = [j for j in range(k) if len(children[j]) == 0 and parent[j] >= 0]
  axis, sign = _AXIS[forward_axis]
  # Left = up x forward (right-handed): forward +z -> +x; forward +x -> -z.
  forward = np.zeros(3)
  forward[axis] = sign
  left = np.cross([0.0, 1.0, 0.0], forward)
  y_lo, y_hi = float(surface[:, 1].min()), float(surface[:, 1].max())
  leg_top = y_lo + leg_height * (y_hi - y_lo)
  centre = surface.mean(0)  # front/back and left/right are taken about the body's centroid

  def chain_of(leaf):  # from the leaf up to (not including) the last branching joint or root
    chain = [leaf]
    j = parent[leaf]
    while j >= 0 and parent[j] >= 0 and len(children[j]) == 1:
      chain.append(j)
      j = parent[j]
    return chain[::-1]  # top first

  roles = {}
  legs = [leaf for leaf in leaves if tip[leaf, 1] < leg_top]
  others = [leaf for leaf in leaves if leaf not in legs]
  for leaf in legs:
    d = tip[leaf] - centre
    front = "front" if d @ forward >= 0 else "back"
    side = "left" if d @ left >= 0 else "right"
    roles[leaf] = f"leg_{front}_{side}"
  if others:
    ahead = [float((tip[leaf] - centre) @ forward) for leaf in others]
    head = others[int(np.argmax(ahead))]
    if max(ahead) > 0:
      roles[head] = "head"
    tail = others[int(np.argmin(ahead))]
    if min(ahead) < 0 and tail != head:
      roles[tail] = "tail"
  names = [f"joint_{j:02d}" for j in range(k)]
  if k:
    names[0] = ROOT_NAME
  used = {}
  for leaf, role in roles.items():
    used[role] = used.get(role, 0) + 1
    label = role if used[role] == 1 else f"{role}{used[role]}"
    chain = chain_of(leaf)
    for i, j in enumerate(chain):
      names[j] = f"{label}_{i + 1}"
  # Joints between the root and a head / tail chain: the spine, numbered front to back.
  spine = set()
  for leaf, role in roles.items():
    if role in ("head", "tail"):
      j = parent[chain_of(leaf)[0]]
      while j > 0:
        if names[j].startswith("joint_"):
          spine.add(int(j))
        j = parent[j]
  for i, j in enumerate(sorted(spine, key=lambda j: -float(rest_position[j] @ forward))):
    names[j] = f"spine_{i + 1}"
  return np.asarray(names, dtype=str)


# ----------------------------------------------------------------------------
# The whole construction.


@dataclasses.dataclass(frozen=True)
class BoneSamples:
  """What `build` reads from a model (all in the canonical rest frame; B bones).

  Attributes:
    surface: (N, 3) surface samples (rest mesh vertices); surface_weights (N, B).
    interior: (M, 3) samples inside the surface; interior_weights (M, B).
    features: (N, F) canonical features at the surface samples, or None.
    centres: (B, 3) rest bone centres; centre_sdf (B,) the SDF there.
    rest_bone_to_object: (B, 4, 4); bone_to_object: (T, B, 4, 4).
    is_inside: (P, 3) -> (P,) bool (the model's SDF < 0).
  """
  surface: np.ndarray
  surface_weights: np.ndarray
  interior: np.ndarray
  interior_weights: np.ndarray
  features: Optional[np.ndarray]
  centres: np.ndarray
  centre_sdf: np.ndarray
  rest_bone_to_object: np.ndarray
  bone_to_object: np.ndarray
  is_inside: Callable[[np.ndarray], np.ndarray]


def build(samples: BoneSamples, settings: SkeletonSettings = SkeletonSettings()) -> Skeleton:
  """Runs steps 1-7 (module docstring) -> a validated Skeleton."""
  s = samples
  b = s.surface_weights.shape[1]
  if s.surface.shape[0] == 0:
    raise UserError("skeleton: the rest mesh has no vertices")
  mass = skin_mass(s.surface_weights)
  overlap = skin_overlap(s.surface_weights)
  strength = connection_strength(s.surface_weights, s.features, settings.alpha, overlap)
  pruning = prune(mass, s.centre_sdf, overlap, s.centres, settings.min_mass, settings.max_outside,
                  lambda i, t: merge_displacement(s.surface, s.surface_weights,
                                                  s.rest_bone_to_object, s.bone_to_object, i, t),
                  settings.max_merge_error)
  kept = pruning.kept
  interior_centroid = (s.interior.mean(0) if s.interior.shape[0] else s.surface.mean(0))
  root_local = choose_root(settings.root, mass[kept], s.centres[kept], interior_centroid)
  distance = np.linalg.norm(s.centres[kept][:, None] - s.centres[kept][None], axis=-1)
  order, parent_local = maximum_spanning_tree(strength[np.ix_(kept, kept)], root_local,
                                              tie_break=1e-3 * distance)
  # Joints in the order they joined the tree (parents before children).
  joint_of_local = np.empty(len(kept), np.int64)
  joint_of_local[order] = np.arange(len(kept))
  joint_bone = kept[order]
  parent = np.array([-1 if parent_local[i] < 0 else joint_of_local[parent_local[i]]
                     for i in order], np.int32)
  weight_target = joint_of_local[np.searchsorted(kept, pruning.target)].astype(np.int32)
  to_joint = np.eye(len(kept))[weight_target]  # (B, K)
  surface_w = s.surface_weights @ to_joint
  interior_w = s.interior_weights @ to_joint if s.interior.shape[0] else np.zeros((0, len(kept)))
  rest_position = place_joints(parent, s.interior, interior_w, s.surface, surface_w, s.is_inside)
  end_position = bone_ends(parent, rest_position, s.surface, surface_w)
  ranges = motion_ranges(parent, joint_bone, rest_position, s.rest_bone_to_object,
                         s.bone_to_object)
  tip = (surface_w.T @ s.surface) / np.maximum(surface_w.sum(0), 1e-12)[:, None]
  names = role_names(parent, rest_position, tip, s.surface, settings.forward_axis,
                     settings.leg_height)
  joint_strength = np.array([0.0 if parent[j] < 0 else
                             strength[joint_bone[j], joint_bone[parent[j]]]
                             for j in range(len(kept))])
  pruned = [{"bone": int(i), "reason": reason, "merged_into_joint": int(weight_target[i]),
             "skin_mass": round(float(mass[i]), 6),
             "centre_sdf": round(float(s.centre_sdf[i]), 6)}
            for i, reason in sorted(pruning.reasons.items())]
  skel = Skeleton(
      names=names, parent=parent, bone=joint_bone.astype(np.int32),
      rest_position=rest_position.astype(np.float32), end_position=end_position.astype(np.float32),
      weight_target=weight_target,
      skin_mass=(mass @ to_joint).astype(np.float32), strength=joint_strength.astype(np.float32),
      rest_length=ranges["rest_length"].astype(np.float32),
      length_range=ranges["length_range"].astype(np.float32),
      dislocation_max=ranges["dislocation_max"].astype(np.float32),
      angle_range_deg=ranges["angle_range_deg"].astype(np.float32),
      pruned=pruned, settings={**dataclasses.asdict(settings), "num_model_bones": int(b)})
  return skeleton_file.validate(skel, "skeleton")
