"""The skeleton of a run: a tree of joints over the model's Gaussian bones (skeleton.json).

A run's skeleton is built from its learned bones (`skeleton.construct`) and
written next to its other outputs as `skeleton.json` (docs/formats.md,
"Skeleton"). Every position is in the model's canonical (object, rest) frame,
normalised units, +y up. One joint per kept model bone:

  joint k moves rigidly with model bone `bone[k]`; its rest position
  `rest_position[k]` is where it meets its parent (inside the surface), the
  root's is its bone's region centre pushed inside; `end_position[k]` where its
  bone ends; `parent[k]` is the parent joint (-1 for the root; parents come
  before children).

So at frame t joint k sits at  P_t,b (rest_position[k]),  P_t,b = bone_t,b *
rest_b^-1  the model's own rest -> frame transform of bone b = bone[k]
(`joint_positions`). Pruned bones (dead or outside the body) keep moving the
model but their skin weight goes to `weight_target[b]`, the joint whose bone
overlapped them most (`merged_weights`).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import numpy as np

from animdreamer_jax import files
from animdreamer_jax.errors import UserError

FORMAT = "animdreamer-skeleton"
VERSION = 1
FILE_NAME = "skeleton.json"


@dataclasses.dataclass(frozen=True)
class Skeleton:
  """A joint tree over a model's bones (NumPy arrays; K joints, B model bones).

  Attributes:
    names: (K,) str joint names (by role where the geometry says so, else "joint_07").
    parent: (K,) int32 parent joint, -1 for the root; parent[k] < k.
    bone: (K,) int32 the model bone each joint moves with.
    rest_position: (K, 3) float32 joint positions in the rest pose (canonical frame).
    end_position: (K, 3) float32 where each joint's bone ends at rest: the mean of
      its children's positions, or for a leaf the far end of its own skin region
      (so the chains reach the feet, the tail tip, the head). None: the
      children's mean, a leaf's own position (`validate` fills it in).
    weight_target: (B,) int32 for each model bone, the joint that receives its
      skin weight (its own joint when kept, the merge target when pruned).
    skin_mass: (K,) float32 share of the surface's skin weight per joint (merged).
    strength: (K,) float32 connection strength of each joint to its parent (root: 0).
    rest_length: (K,) float32 rest distance to the parent joint (root: 0).
    length_range: (K, 2) float32 min/max distance to the parent joint over the
      video's frames (root: 0, 0).
    dislocation_max: (K,) float32 largest distance over the frames between the
      joint carried by its own bone and carried by its parent's bone (how far the
      unlinked model bones pull the joint apart; root: 0).
    angle_range_deg: (K, 2) float32 min/max angle of the rotation relative to the
      parent's, measured from its rest value, over the video's frames (root: 0, 0).
    pruned: list of dicts {"bone", "reason", "merged_into", "skin_mass", ...} for
      the bones without a joint.
    settings: dict of the construction settings (alpha, thresholds, root rule).
  """
  names: np.ndarray
  parent: np.ndarray
  bone: np.ndarray
  rest_position: np.ndarray
  weight_target: np.ndarray
  skin_mass: np.ndarray
  strength: np.ndarray
  rest_length: np.ndarray
  length_range: np.ndarray
  dislocation_max: np.ndarray
  angle_range_deg: np.ndarray
  end_position: Optional[np.ndarray] = None
  pruned: list = dataclasses.field(default_factory=list)
  settings: dict = dataclasses.field(default_factory=dict)

  @property
  def num_joints(self) -> int:
    return int(self.parent.shape[0])

  @property
  def num_model_bones(self) -> int:
    return int(self.weight_target.shape[0])

  def depth(self) -> int:
    """Number of joints on the longest root-to-leaf path."""
    level = np.zeros(self.num_joints, np.int64)
    for k in range(self.num_joints):
      level[k] = 1 if self.parent[k] < 0 else level[self.parent[k]] + 1
    return int(level.max())

  def children(self, k: int) -> np.ndarray:
    return np.flatnonzero(self.parent == k)


def default_ends(parent: np.ndarray, rest_position: np.ndarray) -> np.ndarray:
  """(K, 3) each joint's children's mean position; a leaf's own position."""
  out = np.array(rest_position, np.float64).reshape(-1, 3)
  for k in range(out.shape[0]):
    children = np.flatnonzero(np.asarray(parent) == k)
    if children.size:
      out[k] = np.asarray(rest_position, np.float64)[children].mean(0)
  return out


def validate(skel: Skeleton, where: str = "skeleton") -> Skeleton:
  """Checks shapes and the tree; returns the skeleton with canonical dtypes. UserError on problems."""
  def fail(message):
    raise UserError(f"{where}: {message}")

  parent = np.asarray(skel.parent)
  k = parent.shape[0] if parent.ndim == 1 else -1
  if k < 1:
    fail(f"parent must be (K,) with K >= 1, got shape {parent.shape}")
  arrays = dict(names=np.asarray(skel.names, dtype=str), parent=parent.astype(np.int32),
                bone=np.asarray(skel.bone, np.int32),
                rest_position=np.asarray(skel.rest_position, np.float32),
                end_position=np.asarray(default_ends(parent, np.asarray(skel.rest_position))
                                        if skel.end_position is None else skel.end_position,
                                        np.float32),
                weight_target=np.asarray(skel.weight_target, np.int32),
                skin_mass=np.asarray(skel.skin_mass, np.float32),
                strength=np.asarray(skel.strength, np.float32),
                rest_length=np.asarray(skel.rest_length, np.float32),
                length_range=np.asarray(skel.length_range, np.float32),
                dislocation_max=np.asarray(skel.dislocation_max, np.float32),
                angle_range_deg=np.asarray(skel.angle_range_deg, np.float32))
  shapes = dict(names=(k,), parent=(k,), bone=(k,), rest_position=(k, 3), end_position=(k, 3),
                skin_mass=(k,),
                strength=(k,), rest_length=(k,), length_range=(k, 2), dislocation_max=(k,),
                angle_range_deg=(k, 2))
  for key, shape in shapes.items():
    if arrays[key].shape != shape:
      fail(f"{key} must have shape {shape}, got {arrays[key].shape}")
  if arrays["weight_target"].ndim != 1:
    fail(f"weight_target must be (B,), got {arrays['weight_target'].shape}")
  p = arrays["parent"]
  if p[0] != -1 or np.sum(p == -1) != 1:
    fail("joint 0 must be the one root (parent -1)")
  if np.any(p[1:] < 0) or np.any(p[1:] >= np.arange(1, k)):
    fail("each joint's parent must come before it")
  b = arrays["weight_target"].shape[0]
  if np.any(arrays["bone"] < 0) or np.any(arrays["bone"] >= b) or \
      len(set(arrays["bone"].tolist())) != k:
    fail(f"bone must hold {k} distinct model bones in 0..{b - 1}")
  if np.any(arrays["weight_target"] < 0) or np.any(arrays["weight_target"] >= k):
    fail(f"weight_target must index joints 0..{k - 1}")
  if np.any(arrays["weight_target"][arrays["bone"]] != np.arange(k)):
    fail("a kept bone's weight must go to its own joint")
  for key in ("rest_position", "end_position", "skin_mass", "strength", "rest_length", "length_range",
              "dislocation_max", "angle_range_deg"):
    if not np.all(np.isfinite(arrays[key])):
      fail(f"{key} has NaN or Inf values")
  return dataclasses.replace(skel, **arrays, pruned=list(skel.pruned),
                             settings=dict(skel.settings))


def to_json(skel: Skeleton) -> dict[str, Any]:
  """The documented JSON layout (one entry per joint, readable without NumPy)."""
  skel = validate(skel)
  joints = []
  for k in range(skel.num_joints):
    joints.append({
        "name": str(skel.names[k]),
        "parent": int(skel.parent[k]),
        "bone": int(skel.bone[k]),
        "rest_position": [round(float(v), 6) for v in skel.rest_position[k]],
        "end_position": [round(float(v), 6) for v in skel.end_position[k]],
        "skin_mass": round(float(skel.skin_mass[k]), 6),
        "strength": round(float(skel.strength[k]), 6),
        "rest_length": round(float(skel.rest_length[k]), 6),
        "length_range": [round(float(v), 6) for v in skel.length_range[k]],
        "dislocation_max": round(float(skel.dislocation_max[k]), 6),
        "angle_range_deg": [round(float(v), 4) for v in skel.angle_range_deg[k]],
    })
  return {"format": FORMAT, "version": VERSION,
          "frame": "canonical rest pose (object frame), normalised units, +y up",
          "num_model_bones": skel.num_model_bones,
          "weight_target": [int(v) for v in skel.weight_target],
          "joints": joints, "pruned": skel.pruned, "settings": skel.settings}


def from_json(data: dict[str, Any], where: str = FILE_NAME) -> Skeleton:
  """Inverse of `to_json` (UserError on a malformed file)."""
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    raise UserError(f"{where}: not a skeleton file (format must be '{FORMAT}')")
  if data.get("version") != VERSION:
    raise UserError(f"{where}: skeleton version {data.get('version')} is not {VERSION}")
  try:
    joints = data["joints"]
    skel = Skeleton(
        names=np.asarray([j["name"] for j in joints], dtype=str),
        parent=np.asarray([j["parent"] for j in joints], np.int32),
        bone=np.asarray([j["bone"] for j in joints], np.int32),
        rest_position=np.asarray([j["rest_position"] for j in joints], np.float32).reshape(-1, 3),
        end_position=np.asarray([j["end_position"] for j in joints], np.float32).reshape(-1, 3),
        weight_target=np.asarray(data["weight_target"], np.int32),
        skin_mass=np.asarray([j["skin_mass"] for j in joints], np.float32),
        strength=np.asarray([j["strength"] for j in joints], np.float32),
        rest_length=np.asarray([j["rest_length"] for j in joints], np.float32),
        length_range=np.asarray([j["length_range"] for j in joints], np.float32).reshape(-1, 2),
        dislocation_max=np.asarray([j["dislocation_max"] for j in joints], np.float32),
        angle_range_deg=np.asarray([j["angle_range_deg"] for j in joints],
                                   np.float32).reshape(-1, 2),
        pruned=list(data.get("pruned", [])), settings=dict(data.get("settings", {})))
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{where}: malformed skeleton ({type(e).__name__}: {e})") from e
  return validate(skel, where)


def save(path: str | pathlib.Path, skel: Skeleton) -> None:
  """Writes skeleton.json atomically."""
  files.save_json(path, to_json(skel))


def load(path: str | pathlib.Path) -> Skeleton:
  """Reads a skeleton.json (UserError if missing or malformed)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: skeleton file not found (build it with `animdreamer skeleton`)")
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read ({e})") from e
  return from_json(data, str(path))


def load_of_run(run_dir: str | pathlib.Path) -> Optional[Skeleton]:
  """The run folder's skeleton.json, or None when the run has none."""
  path = pathlib.Path(run_dir) / FILE_NAME
  return load(path) if path.is_file() else None


def rest_to_frame(rest_bone_to_object: np.ndarray, bone_to_object: np.ndarray) -> np.ndarray:
  """(..., B, 4, 4) each bone's rest -> frame transform  bone_t,b * rest_b^-1."""
  return np.asarray(bone_to_object, np.float64) @ np.linalg.inv(
      np.asarray(rest_bone_to_object, np.float64))


def joint_positions(skel: Skeleton, rest_bone_to_object: np.ndarray,
                    bone_to_object: np.ndarray) -> np.ndarray:
  """Joint positions per frame in the object frame.

  Args:
    skel: the skeleton.
    rest_bone_to_object: (B, 4, 4) rest bone transforms.
    bone_to_object: (T, B, 4, 4) bone transforms per frame.
  Returns:
    (T, K, 3) float64: joint k at frame t = P_t,bone[k] (rest_position[k]).
  """
  return points_positions(skel.bone, skel.rest_position, rest_bone_to_object, bone_to_object)


def leaves(skel: Skeleton) -> np.ndarray:
  """Indices of the joints without children."""
  return np.array([k for k in range(skel.num_joints) if not np.any(skel.parent == k)], np.int64)


def joints_and_leaf_ends(skel: Skeleton) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The skeleton's points as a rig scorer sees them: every joint, plus each leaf bone's end.

  A bone has a head and a tail; the tails of inner bones are their children's
  heads, a leaf's is its own end point (the foot, the tail tip); a leaf whose end
  is its joint (no length) adds nothing.
  Returns:
    (bone (K + L,), rest point (K + L, 3), parent (K + L,)): ends are children of their leaf.
  """
  leaf = leaves(skel)
  leaf = leaf[np.linalg.norm(skel.end_position[leaf] - skel.rest_position[leaf], axis=-1) > 1e-6]
  bone = np.concatenate([skel.bone, skel.bone[leaf]])
  points = np.concatenate([skel.rest_position, skel.end_position[leaf]])
  parent = np.concatenate([skel.parent, leaf]).astype(np.int64)
  return bone, points, parent


def points_positions(bone: np.ndarray, rest_points: np.ndarray, rest_bone_to_object: np.ndarray,
                     bone_to_object: np.ndarray) -> np.ndarray:
  """(T, P, 3) rest points carried by model bones `bone` (P,) through the frames (object frame)."""
  rel = rest_to_frame(rest_bone_to_object, bone_to_object)[:, bone]  # (T, P, 4, 4)
  p = np.asarray(rest_points, np.float64)
  return np.einsum("tkij,kj->tki", rel[..., :3, :3], p) + rel[..., :3, 3]


def merged_weights(skel: Skeleton, weights: np.ndarray) -> np.ndarray:
  """(V, B) model skin weights -> (V, K) joint weights (pruned bones' weight added to their target)."""
  weights = np.asarray(weights)
  to_joint = np.eye(skel.num_joints, dtype=weights.dtype)[skel.weight_target]  # (B, K)
  return weights @ to_joint
