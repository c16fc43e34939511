"""Named parts of the ground-truth surface, as face masks, for part-wise scores.

A whole-surface F-score hides missing legs (they are a small share of the
area), so evaluation also scores parts. Every part is a set of ground-truth
faces; since the vertex indices are fixed through a sequence, a part is
tracked through the frames by index. `metrics.summarise` turns masks into
scores (a GT sample belongs to its face's part; a predicted point to the part
of the GT face holding its closest GT point). Three splits:

- seen / unseen: `gt/face_visible.npy` (was the face seen in any frame);
- limbs / body (name-free, any standing animal): a vertex is a limb vertex when
  its rest-pose height (+y, the up axis of the normalised sequences) lies in
  the lowest `limb_fraction` of the rest pose's height range. The split is by
  height only, so whatever hangs low (e.g. the Khronos Fox's tail tip) counts
  as "limbs" too;
- chains from joint names (`gt/joints.npz`, when the asset has named joints):
  legs, tail, ears, head, and torso for the rest (see `chain_of_name`).

A face belongs to the part that holds at least two of its three vertices; a
face whose three vertices lie in three different chains goes to the first of
them in CHAINS order (the more specific part).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np

from animdreamer_jax.errors import UserError

LIMB_FRACTION = 0.35  # limbs = the lowest 35% of the rest pose's height range
UP_AXIS = 1  # +y is up in the normalised sequences (glTF convention; docs/formats.md)

# Chain keywords, matched against whole name tokens (see `name_tokens`), in order
# of precedence: a name with keywords of several chains takes the first chain.
# Front legs are often named like arms (b_LeftForeArm, UpperArm, Hand).
CHAIN_KEYWORDS: dict[str, frozenset[str]] = {
    "legs": frozenset({
        "leg", "legs", "foreleg", "hindleg", "upperleg", "lowerleg", "thigh", "shin", "calf",
        "knee", "ankle", "foot", "feet", "toe", "toes", "heel", "paw", "paws", "hoof", "hooves",
        "claw", "claws", "hock", "fetlock", "pastern", "arm", "arms", "forearm", "upperarm",
        "lowerarm", "elbow", "wrist", "hand", "hands", "finger", "fingers"}),
    "tail": frozenset({"tail", "tails"}),
    "ears": frozenset({"ear", "ears"}),
    "head": frozenset({
        "head", "neck", "jaw", "eye", "eyes", "eyelid", "nose", "mouth", "tongue", "lip", "lips",
        "teeth", "tooth", "chin", "brow", "snout", "muzzle", "beak", "horn", "horns", "antler",
        "antlers", "skull", "cheek", "face"}),
}
TORSO = "torso"  # the chain of joints that match no keyword and have no matching ancestor
CHAINS = (*CHAIN_KEYWORDS, TORSO)
# "body" (the complement of "limbs") is a height part; the name-based rest is "torso".
HEIGHT_PARTS = ("limbs", "body")
VISIBILITY_PARTS = ("seen", "unseen")


@dataclasses.dataclass(frozen=True)
class FaceParts:
  """Named sets of ground-truth faces and how they were chosen.

  Attributes:
    masks: part name -> bool (F,) mask over the GT faces (at most one part of
      each split per face; splits overlap each other).
    description: JSON-ready settings of the splits, copied into the report.
  """
  masks: dict[str, np.ndarray]
  description: dict[str, Any]


# ----------------------------------------------------------------------------- faces from vertices


def majority_labels(vertex_labels: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """(F,) label of each face: the one held by at least two of its vertices, else the smallest."""
  a, b, c = (np.asarray(vertex_labels)[np.asarray(faces)[:, k]] for k in range(3))
  return np.where((a == b) | (a == c), a, np.where(b == c, b, np.minimum(np.minimum(a, b), c)))


def masks_from_labels(face_labels: np.ndarray, names: Sequence[str],
                      keep_empty: bool) -> dict[str, np.ndarray]:
  """{names[k]: face_labels == k}; parts without faces are dropped unless keep_empty."""
  masks = {name: face_labels == k for k, name in enumerate(names)}
  return {name: mask for name, mask in masks.items() if keep_empty or mask.any()}


# ----------------------------------------------------------------------------- the splits


def visibility_parts(face_visible: np.ndarray) -> dict[str, np.ndarray]:
  """seen / unseen face masks from gt/face_visible.npy."""
  face_visible = np.asarray(face_visible, bool)
  return {"seen": face_visible, "unseen": ~face_visible}


def check_limb_fraction(limb_fraction: float) -> float:
  if not 0 < limb_fraction < 1:
    raise UserError(f"--limb-fraction: must be between 0 and 1 (exclusive), got {limb_fraction}")
  return float(limb_fraction)


def limb_vertices(rest_vertices: np.ndarray, limb_fraction: float) -> np.ndarray:
  """(V,) bool: rest-pose height within the lowest `limb_fraction` of the height range."""
  height = np.asarray(rest_vertices, np.float64)[:, UP_AXIS]
  lowest = height.min()
  return height - lowest <= check_limb_fraction(limb_fraction) * (height.max() - lowest)


def height_parts(rest_vertices: np.ndarray, faces: np.ndarray,
                 limb_fraction: float) -> dict[str, np.ndarray]:
  """limbs / body face masks (both always present, so reports have stable keys)."""
  vertex_labels = np.where(limb_vertices(rest_vertices, limb_fraction), 0, 1)
  return masks_from_labels(majority_labels(vertex_labels, faces), HEIGHT_PARTS, keep_empty=True)


def name_tokens(name: str) -> list[str]:
  """Lower-case words of a joint name, split at non-letters and camelCase.

  "b_LeftForeArm_010" -> [b, left, fore, arm]; "IKBackLeg.L" -> [ik, back, leg, l];
  "Ear1.L" -> [ear, l]; "forearm.L" -> [forearm, l].
  """
  return [word.lower() for word in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", name)]


def chain_of_name(name: str) -> str | None:
  """The chain a joint's own name says (first in CHAIN_KEYWORDS order), or None."""
  tokens = set(name_tokens(name))
  for chain, keywords in CHAIN_KEYWORDS.items():
    if tokens & keywords:
      return chain
  return None


def joint_chains(names: Sequence[str], parents: Sequence[int]) -> list[str]:
  """Each joint's chain: its name's, else its nearest named ancestor's, else TORSO.

  An unnamed joint under a leg (e.g. "FFB.L" under "IKBackLeg.L") is part of
  that leg.
  """
  own = [chain_of_name(str(name)) for name in names]
  chains = []
  for joint in range(len(own)):
    ancestor, steps = joint, 0
    while own[ancestor] is None and parents[ancestor] >= 0:
      ancestor, steps = int(parents[ancestor]), steps + 1
      if steps > len(own):
        raise UserError("joint parents form a cycle, not a tree")
    chains.append(own[ancestor] or TORSO)
  return chains


def chain_parts(chains: Sequence[str], vertex_joint: np.ndarray,
                faces: np.ndarray) -> dict[str, np.ndarray]:
  """Face masks of the chains that hold any face (each vertex follows its dominant joint).

  chains: each joint's chain (`joint_chains`).
  """
  chain_index = np.array([CHAINS.index(chain) for chain in chains])
  vertex_labels = chain_index[np.asarray(vertex_joint)]
  return masks_from_labels(majority_labels(vertex_labels, faces), CHAINS, keep_empty=False)


def chain_joint_names(names: Sequence[str], chains: Sequence[str]) -> dict[str, list[str]]:
  """{chain: its joints' names} for the report (chains without joints left out)."""
  grouped: dict[str, list[str]] = {}
  for name, chain in zip(names, chains):
    grouped.setdefault(chain, []).append(str(name))
  return grouped


# ----------------------------------------------------------------------------- ground truth


def ground_truth_parts(gt: Any, limb_fraction: float = LIMB_FRACTION) -> FaceParts:
  """Every split a video's ground truth supports.

  Args:
    gt: data.video.GroundTruth (face_visible, rest pose, optional joints).
    limb_fraction: share of the rest pose's height range, from the lowest
      point up, whose vertices are limbs.

  Returns:
    FaceParts: seen/unseen, limbs/body and, when gt.joints is recorded, the
    chains that hold faces; description: limb_fraction, up_axis and, with
    joints, the joint names of each chain.
  """
  faces = np.asarray(gt.rest_faces)
  masks = {**visibility_parts(gt.face_visible),
           **height_parts(gt.rest_vertices, faces, limb_fraction)}
  description: dict[str, Any] = {"limb_fraction": float(limb_fraction),
                                 "up_axis": "+" + "xyz"[UP_AXIS],
                                 "chains_recorded": gt.joints is not None}
  if gt.joints is not None:
    joints = gt.joints
    chains = joint_chains(joints.names, joints.parents)
    masks.update(chain_parts(chains, joints.vertex_joint, faces))
    description["chain_joints"] = chain_joint_names(joints.names, chains)
  return FaceParts(masks, description)


def check_face_parts(masks: Mapping[str, np.ndarray], num_faces: int) -> None:
  """Every mask is (F,) over the GT faces; "all" is reserved for the whole surface."""
  for name, mask in masks.items():
    if name == "all":
      raise UserError("face part 'all': reserved for the whole surface")
    if np.shape(mask) != (num_faces,):
      raise UserError(f"face part '{name}': expected shape ({num_faces},), got {np.shape(mask)}")
