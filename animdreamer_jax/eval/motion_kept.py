"""Whether a generated model kept its source's motion: joint drift and bone-length variation.

Generation may adapt the bones (within L_skel), so "the same motion" is
measured on the source's own joints: each joint of the source skeleton is
carried through the frames by the source's bones and by the generated model's
bones (placed at rest by the similarity between the two sets of rest bones). After one similarity
(`eval.alignment.umeyama` over all frames' joints: the generated animal may be
larger or placed differently), the joint drift is the mean distance between
the two (normalised units: the rest bbox diagonal is 1). Bone-length variation
is, per skeleton edge, the standard deviation of the parent-child joint
distance over the frames divided by its mean, averaged over the edges: 0 for a
rigid skeleton, whatever its proportions.
"""

from __future__ import annotations

import numpy as np

from animdreamer_jax.eval import alignment
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.skeleton import skeleton_file


def bone_matrices(motion: dict) -> tuple[np.ndarray, np.ndarray]:
  """(rest (B, 4, 4), per frame (T, B, 4, 4)) bone-to-object matrices of a motion.npz."""
  return (transforms_np.rigid_matrix(motion["rest_bone_quat"], motion["rest_bone_trans"]),
          transforms_np.rigid_matrix(motion["bone_quat"], motion["bone_trans"]))


def similarity(src: np.ndarray, dst: np.ndarray) -> alignment.Similarity:
  """The least-squares similarity mapping points src (N, 3) onto dst (N, 3)."""
  scale, rotation, translation = alignment.umeyama(np.asarray(src, np.float32),
                                                  np.asarray(dst, np.float32))
  return alignment.Similarity(float(scale), np.asarray(rotation, np.float64),
                              np.asarray(translation, np.float64))


def carried_joints(skel: skeleton_file.Skeleton, source_rest: np.ndarray, rest: np.ndarray,
                   posed: np.ndarray) -> np.ndarray:
  """(T, K, 3) the source skeleton's joints carried by the bones `rest` (B, 4, 4) -> `posed`
  (T, B, 4, 4). At rest they are placed by the similarity that maps the source's rest bone
  centres onto these (the identity for the source itself): a model that is the source scaled,
  turned and moved carries its joints exactly as the source does, up to that similarity."""
  place = similarity(source_rest[:, :3, 3], rest[:, :3, 3])
  return skeleton_file.points_positions(skel.bone, place.apply(skel.rest_position), rest, posed)


def bone_length_variation(joints: np.ndarray, parent: np.ndarray) -> float:
  """Mean over edges of std / mean of the edge length over the frames; joints (T, K, 3)."""
  child = np.nonzero(np.asarray(parent) >= 0)[0]
  if child.size == 0:
    return 0.0
  lengths = np.linalg.norm(joints[:, child] - joints[:, parent[child]], axis=-1)  # (T, E)
  return float(np.mean(lengths.std(axis=0) / np.maximum(lengths.mean(axis=0), 1e-9)))


def motion_kept(skel: skeleton_file.Skeleton, source_motion: dict, generated_motion: dict) -> dict:
  """{"joint_drift", "joint_drift_max", "bone_length_variation", "source_bone_length_variation",
  "similarity_scale"} of a generated run against its source (module docstring)."""
  source_rest, source_posed = bone_matrices(source_motion)
  rest, posed = bone_matrices(generated_motion)
  source = carried_joints(skel, source_rest, source_rest, source_posed)
  generated = carried_joints(skel, source_rest, rest, posed)
  sim = similarity(generated.reshape(-1, 3), source.reshape(-1, 3))
  aligned = sim.apply(generated)
  drift = np.linalg.norm(aligned - source, axis=-1)
  return {"joint_drift": float(drift.mean()), "joint_drift_max": float(drift.max()),
          "bone_length_variation": bone_length_variation(generated, skel.parent),
          "source_bone_length_variation": bone_length_variation(source, skel.parent),
          "similarity_scale": float(sim.scale)}
