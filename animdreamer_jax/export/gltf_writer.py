"""Rigged, animated glTF 2.0 binary (.glb) from plain arrays.

What the file holds (one scene, everything in the model's object frame, +Y up,
normalised units):
  * one triangle mesh: POSITION, NORMAL (area-weighted), COLOR_0 (linear RGB
    from the sRGB vertex colours), JOINTS_0 / WEIGHTS_0 (the 4 largest skinning
    weights of each vertex, renormalised to sum 1);
  * node "root" (skin joint 0) carrying the root motion, object -> world, and
    under it the joints, in one of two layouts:
      flat (no `Rig.tree`): one child joint per Gaussian bone ("bone_000",
        ...), whose local transform is the bone-to-object transform; inverse
        bind = rest_b^-1;
      tree (`Rig.tree`, a skeleton's joint tree): joint k in its parent's
        frame (the skeleton root under "root"), named as the skeleton names
        it. Joint k has a rest frame J_k (its rest position, +Y along its bone,
        see `joint_rest_frames`) and moves with model bone b = bone[k]: its
        global transform at frame t is  G_t,k = root_t * A_t,b * J_k  with
        A_t,b = bone_t,b * rest_b^-1, its local transform G_t,parent^-1 * G_t,k
        (rigid, so plain TRS), its inverse bind J_k^-1;
    so in both layouts the skin matrix of a joint is  root_t * A_t,b,  the
    model's per-bone rest -> frame transform followed by the root. The tree's
    skin weights are the model's with pruned bones' weight merged into their
    target joints (`skeleton_file.merged_weights`). The skinned mesh node sits
    at the scene root with no transform, so players that apply it (and those
    that do not) agree;
  * one animation clip, LINEAR, one key per video frame at t / fps seconds
    (the first at 0): rotation + translation of every joint and (with root
    motion) of the root. Without root motion the root stays at the identity
    (the animal articulates in place in its object frame).

The model's bones are not linked, so in the tree a child's local translation
varies slightly over the frames (it is stored as it is: the player stays
exact); `joint_stretch` measures how much.

A glTF player blends the skin matrices linearly (LBS); the model may blend
dual quaternions (DQS). The difference is measured by the export command
(`animdreamer_jax.commands.export`), not here.

Everything is NumPy on the host; the file is written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import struct
import subprocess
import warnings
from typing import Optional

import numpy as np

from animdreamer_jax import files
from animdreamer_jax.assets import gltf as gltf_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion_np
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.skeleton import skeleton_file

NUM_INFLUENCES = 4  # glTF players (three.js, engines) read one set of 4
_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_TRIANGLES = 4
ROOT_NODE_NAME = "root"
CLIP_NAME = "motion"
RIG_KINDS = ("flat", "tree")
# Shorter joint-to-child offsets (normalised units, rest bbox diagonal ~1) give
# no direction for the joint's +Y axis.
MIN_BONE_LENGTH = 1e-6


@dataclasses.dataclass(frozen=True)
class JointTree:
  """A joint hierarchy over a rig's bones (the glb's tree layout; K joints).

  Attributes:
    names: (K,) str joint names (unique; the glTF node and Blender bone names).
    parent: (K,) int parent joint, -1 for the root (joint 0); parent[k] < k.
    bone: (K,) int the model bone each joint moves with (distinct).
    rest_frame: (K, 4, 4) rigid rest frame J_k of each joint in the object
      frame (`joint_rest_frames`).
    skin_weights: (V, K) skinning weights of the joints (rows sum to 1; the
      writer keeps the 4 largest).
  """
  names: np.ndarray
  parent: np.ndarray
  bone: np.ndarray
  rest_frame: np.ndarray
  skin_weights: np.ndarray

  @property
  def num_joints(self) -> int:
    return int(np.shape(self.parent)[0])


@dataclasses.dataclass(frozen=True)
class Rig:
  """A skinned mesh and its per-frame bone motion (arrays; NumPy or jnp).

  Attributes:
    rest_vertices: (V, 3) rest-pose positions in the object frame.
    faces: (F, 3) int counter-clockwise triangles.
    skin_weights: (V, B) skinning weights (rows sum to 1; all B bones, the
      writer keeps the 4 largest).
    rest_bone_quat: (B, 4) rest bone-to-object rotations (x, y, z, w).
    rest_bone_trans: (B, 3) rest bone centres.
    bone_quat: (T, B, 4) bone-to-object rotations per frame.
    bone_trans: (T, B, 3) bone centres per frame.
    fps: frames per second of the animation clip.
    root_to_world: (T, 4, 4) rigid object -> world transform per frame (the
      root motion), or None for none.
    vertex_colors: (V, 3) uint8 sRGB, or None (white).
    name: asset name (scene, mesh and clip names derive from it).
    tree: the joint tree (tree layout), or None (flat layout: one joint per
      bone, skinned with skin_weights).
  """
  rest_vertices: np.ndarray
  faces: np.ndarray
  skin_weights: np.ndarray
  rest_bone_quat: np.ndarray
  rest_bone_trans: np.ndarray
  bone_quat: np.ndarray
  bone_trans: np.ndarray
  fps: float
  root_to_world: Optional[np.ndarray] = None
  vertex_colors: Optional[np.ndarray] = None
  name: str = "animal"
  tree: Optional[JointTree] = None

  @property
  def num_frames(self) -> int:
    return int(np.shape(self.bone_quat)[0])

  @property
  def num_bones(self) -> int:
    return int(np.shape(self.rest_bone_quat)[0])

  @property
  def kind(self) -> str:
    """"tree" or "flat": the glb's joint layout."""
    return "flat" if self.tree is None else "tree"

  @property
  def num_joints(self) -> int:
    """Joints under the root node (bones when flat, tree joints otherwise)."""
    return self.num_bones if self.tree is None else self.tree.num_joints

  @property
  def joint_skin_weights(self) -> np.ndarray:
    """(V, num_joints) the weights the glb skins with."""
    return self.skin_weights if self.tree is None else self.tree.skin_weights


def _check(cond: bool, where: str, message: str) -> None:
  if not cond:
    raise UserError(f"{where}: {message}")


def validate_rig(rig: Rig, where: str = "rig") -> Rig:
  """Checks shapes, dtypes and values; returns a Rig of NumPy arrays.

  Raises:
    UserError naming `where` and the offending field.
  """
  a = {f.name: getattr(rig, f.name) for f in dataclasses.fields(rig)}
  for key in ("rest_vertices", "faces", "skin_weights", "rest_bone_quat",
              "rest_bone_trans", "bone_quat", "bone_trans"):
    a[key] = np.asarray(a[key])
  v = a["rest_vertices"].shape[0] if a["rest_vertices"].ndim == 2 else -1
  _check(a["rest_vertices"].ndim == 2 and a["rest_vertices"].shape[1] == 3 and v > 0,
         where, f"rest_vertices must be (V, 3) with V > 0, got {a['rest_vertices'].shape}")
  _check(a["faces"].ndim == 2 and a["faces"].shape[1] == 3 and a["faces"].shape[0] > 0
         and a["faces"].dtype.kind in "iu", where,
         f"faces must be int (F, 3) with F > 0, got {a['faces'].dtype} {a['faces'].shape}")
  _check(a["faces"].min() >= 0 and a["faces"].max() < v, where,
         f"faces index vertices outside 0..{v - 1}")
  b = a["rest_bone_quat"].shape[0] if a["rest_bone_quat"].ndim == 2 else -1
  _check(a["rest_bone_quat"].shape == (b, 4) and b > 0, where,
         f"rest_bone_quat must be (B, 4), got {a['rest_bone_quat'].shape}")
  _check(a["rest_bone_trans"].shape == (b, 3), where,
         f"rest_bone_trans must be ({b}, 3), got {a['rest_bone_trans'].shape}")
  _check(b + 1 <= 65536, where, f"{b} bones is more than glTF's 16-bit joint indices allow")
  t = a["bone_quat"].shape[0] if a["bone_quat"].ndim == 3 else -1
  _check(a["bone_quat"].shape == (t, b, 4) and t > 0, where,
         f"bone_quat must be (T, {b}, 4) with T > 0, got {a['bone_quat'].shape}")
  _check(a["bone_trans"].shape == (t, b, 3), where,
         f"bone_trans must be ({t}, {b}, 3), got {a['bone_trans'].shape}")
  _check(a["skin_weights"].shape == (v, b), where,
         f"skin_weights must be ({v}, {b}), got {a['skin_weights'].shape}")
  _check(np.all(a["skin_weights"] >= 0) and np.all(a["skin_weights"].sum(1) > 0), where,
         "skin_weights must be non-negative with a positive sum per vertex")
  _check(np.isfinite(float(a["fps"])) and float(a["fps"]) > 0, where,
         f"fps must be positive, got {a['fps']}")
  for key in ("rest_vertices", "skin_weights", "rest_bone_quat", "rest_bone_trans",
              "bone_quat", "bone_trans"):
    _check(bool(np.all(np.isfinite(a[key]))), where, f"{key} has NaN or Inf values")
  for key in ("rest_bone_quat", "bone_quat"):
    norm = np.linalg.norm(a[key].astype(np.float64), axis=-1)
    _check(bool(np.all(np.abs(norm - 1) < 1e-3)), where, f"{key} are not unit quaternions")
  if a["root_to_world"] is not None:
    r = np.asarray(a["root_to_world"], np.float64)
    _check(r.shape == (t, 4, 4), where, f"root_to_world must be ({t}, 4, 4), got {r.shape}")
    _check(bool(np.all(np.isfinite(r))), where, "root_to_world has NaN or Inf values")
    rot = r[:, :3, :3]
    orthonormal = np.abs(rot @ np.swapaxes(rot, 1, 2) - np.eye(3)).max() < 1e-3
    _check(bool(orthonormal and np.all(np.linalg.det(rot) > 0)
                and np.allclose(r[:, 3], [0, 0, 0, 1], atol=1e-6)), where,
           "root_to_world must be rigid transforms (rotation + translation)")
    a["root_to_world"] = r
  if a["vertex_colors"] is not None:
    c = np.asarray(a["vertex_colors"])
    _check(c.shape == (v, 3) and c.dtype == np.uint8, where,
           f"vertex_colors must be uint8 ({v}, 3), got {c.dtype} {c.shape}")
    a["vertex_colors"] = c
  a["fps"] = float(a["fps"])
  a["name"] = str(a["name"])
  if a["tree"] is not None:
    a["tree"] = validate_tree(a["tree"], v, b, where)
  return Rig(**a)


def _is_rigid(m: np.ndarray, tol: float = 1e-3) -> bool:
  """(..., 4, 4) rotation + translation (orthonormal, det > 0, last row 0 0 0 1)."""
  rot = m[..., :3, :3]
  return bool(np.all(np.isfinite(m))
              and np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max(initial=0.0) < tol
              and np.all(np.linalg.det(rot) > 0)
              and np.allclose(m[..., 3, :], [0, 0, 0, 1], atol=1e-6))


def validate_tree(tree: JointTree, num_vertices: int, num_bones: int,
                  where: str = "rig") -> JointTree:
  """Checks a joint tree against a rig of `num_vertices` and `num_bones`; NumPy arrays out.

  Raises:
    UserError naming `where` and the offending field.
  """
  where = f"{where}: joint tree"
  parent = np.asarray(tree.parent)
  k = parent.shape[0] if parent.ndim == 1 else -1
  _check(k >= 1 and parent.dtype.kind in "iu", where,
         f"parent must be int (K,) with K >= 1, got {parent.dtype} {parent.shape}")
  _check(k + 1 <= 65536, where, f"{k} joints is more than glTF's 16-bit joint indices allow")
  parent = parent.astype(np.int64)
  _check(parent[0] == -1 and bool(np.all(parent[1:] >= 0))
         and bool(np.all(parent[1:] < np.arange(1, k))), where,
         "joint 0 must be the one root (parent -1) and each parent must come before its child")
  names = np.asarray(tree.names, dtype=str)
  _check(names.shape == (k,), where, f"names must be ({k},), got {names.shape}")
  _check(all(names) and len(set(names.tolist())) == k, where,
         "joint names must be non-empty and distinct")
  _check(ROOT_NODE_NAME not in names.tolist(), where,
         f"no joint may be called {ROOT_NODE_NAME!r} (the root-motion node's name)")
  bone = np.asarray(tree.bone)
  _check(bone.shape == (k,) and bone.dtype.kind in "iu", where,
         f"bone must be int ({k},), got {bone.dtype} {bone.shape}")
  bone = bone.astype(np.int64)
  _check(bool(np.all((bone >= 0) & (bone < num_bones))) and len(set(bone.tolist())) == k,
         where, f"bone must hold {k} distinct model bones in 0..{num_bones - 1}")
  rest_frame = np.asarray(tree.rest_frame, np.float64)
  _check(rest_frame.shape == (k, 4, 4), where,
         f"rest_frame must be ({k}, 4, 4), got {rest_frame.shape}")
  _check(_is_rigid(rest_frame), where, "rest_frame must be rigid transforms (rotation + "
         "translation)")
  weights = np.asarray(tree.skin_weights)
  _check(weights.shape == (num_vertices, k), where,
         f"skin_weights must be ({num_vertices}, {k}), got {weights.shape}")
  _check(bool(np.all(np.isfinite(weights))), where, "skin_weights has NaN or Inf values")
  _check(bool(np.all(weights >= 0) and np.all(weights.sum(1) > 0)), where,
         "skin_weights must be non-negative with a positive sum per vertex")
  return JointTree(names=names, parent=parent, bone=bone, rest_frame=rest_frame,
                   skin_weights=weights)


# ----------------------------------------------------------------------------
# Pure helpers (NumPy).


def top_k_influences(weights: np.ndarray, k: int = NUM_INFLUENCES
                     ) -> tuple[np.ndarray, np.ndarray]:
  """The k largest weights per vertex, renormalised to sum 1.

  Ties go to the smaller bone index (stable sort). With fewer than k bones the
  extra slots get weight 0 and bone index -1.

  Args:
    weights: (V, B) non-negative weights.
    k: influences per vertex.
  Returns:
    bones (V, k) int64 in decreasing weight order, weights (V, k) float64.
  """
  weights = np.asarray(weights, np.float64)
  num_bones = weights.shape[1]
  order = np.argsort(-weights, axis=1, kind="stable")[:, :k]
  top = np.take_along_axis(weights, order, axis=1)
  top = top / top.sum(1, keepdims=True)
  if num_bones < k:
    pad = k - num_bones
    order = np.concatenate([order, np.full((order.shape[0], pad), -1)], 1)
    top = np.concatenate([top, np.zeros((top.shape[0], pad))], 1)
  return order.astype(np.int64), top


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
  """(V, 3) unit area-weighted vertex normals; +Y for vertices without area."""
  vertices = np.asarray(vertices, np.float64)
  tri = vertices[faces]
  face_normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # |n| = 2 area
  normals = np.zeros_like(vertices)
  for corner in range(3):
    np.add.at(normals, faces[:, corner], face_normal)
  length = np.linalg.norm(normals, axis=1, keepdims=True)
  return np.where(length > 1e-20, normals / np.where(length > 1e-20, length, 1.0),
                  np.array([0.0, 1.0, 0.0]))


def matrix_to_quat_trans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(..., 4, 4) rigid transforms -> unit quaternions (..., 4) (x, y, z, w), (..., 3)."""
  matrix = np.asarray(matrix, np.float64)
  return quaternion_np.matrix_to_quaternion(matrix[..., :3, :3]), matrix[..., :3, 3].copy()


def _rotation_from_y(direction: np.ndarray) -> np.ndarray:
  """(3, 3) the shortest rotation taking +Y to the unit vector `direction`."""
  y = np.array([0.0, 1.0, 0.0])
  half = y + direction
  length = np.linalg.norm(half)
  if length < 1e-9:  # exactly -Y: half a turn about +X
    return np.diag([1.0, -1.0, -1.0])
  half = half / length
  # The rotation about y x half by twice their angle: q = (y x half, y . half).
  quat = np.append(np.cross(y, half), np.dot(y, half))
  return quaternion_np.quaternion_to_matrix(quaternion_np.normalize(quat))


def joint_rest_frames(parent: np.ndarray, rest_position: np.ndarray,
                      end_position: Optional[np.ndarray] = None) -> np.ndarray:
  """Rest frames J_k of a joint tree, with +Y along each joint's bone (Blender's bone axis).

  The bone of joint k runs from its rest position to `end_position[k]` when
  given (the skeleton's bone ends), else to the mean rest position of its
  children; a leaf's continues its parent's, parent -> joint. The frame is
  the shortest rotation taking +Y there (no roll added); a joint without a
  direction (a lone root, or offsets under MIN_BONE_LENGTH) falls back to the
  leaf rule, then to the identity rotation.

  Args:
    parent: (K,) parent joints, -1 for the root, parents before children.
    rest_position: (K, 3) rest joint positions.
    end_position: optional (K, 3) where each joint's bone ends.
  Returns:
    (K, 4, 4) float64 rigid transforms, translation = rest_position.
  """
  parent = np.asarray(parent, np.int64)
  position = np.asarray(rest_position, np.float64)
  frames = np.tile(np.eye(4), (parent.shape[0], 1, 1))
  frames[:, :3, 3] = position
  for k in range(parent.shape[0]):
    children = np.flatnonzero(parent == k)
    candidates = []
    if end_position is not None:
      candidates.append(np.asarray(end_position[k], np.float64) - position[k])
    if children.size:
      candidates.append(position[children].mean(0) - position[k])
    if parent[k] >= 0:
      candidates.append(position[k] - position[parent[k]])
    for direction in candidates:
      length = np.linalg.norm(direction)
      if length >= MIN_BONE_LENGTH:
        frames[k, :3, :3] = _rotation_from_y(direction / length)
        break
  return frames


def tree_from_skeleton(skel: skeleton_file.Skeleton, skin_weights: np.ndarray,
                       where: str = skeleton_file.FILE_NAME) -> JointTree:
  """The glb's joint tree of a skeleton, skinned with the model's merged weights.

  Args:
    skel: the run's skeleton (skeleton_file).
    skin_weights: (V, B) the model's skinning weights.
    where: names the skeleton in errors.
  Raises:
    UserError: the skeleton is invalid or made for another bone count.
  """
  skel = skeleton_file.validate(skel, where)
  skin_weights = np.asarray(skin_weights)
  if skin_weights.ndim != 2 or skin_weights.shape[1] != skel.num_model_bones:
    raise UserError(f"{where}: the skeleton is made for {skel.num_model_bones} model bones but "
                    f"the model has {skin_weights.shape[-1]}")
  return JointTree(names=skel.names, parent=skel.parent.astype(np.int64),
                   bone=skel.bone.astype(np.int64),
                   rest_frame=joint_rest_frames(skel.parent, skel.rest_position,
                                                skel.end_position),
                   skin_weights=skeleton_file.merged_weights(skel, skin_weights))


def joint_parents(rig: Rig) -> np.ndarray:
  """(num_joints,) parent of each joint among the joints; -1: directly under the root node."""
  if rig.tree is None:
    return np.full(rig.num_bones, -1, np.int64)
  return np.asarray(rig.tree.parent, np.int64)


def rest_joint_transforms(rig: Rig) -> np.ndarray:
  """(num_joints, 4, 4) joint-to-object transforms in the bind pose (rest_b, or J_k)."""
  rest = transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans)
  return rest if rig.tree is None else np.asarray(rig.tree.rest_frame, np.float64)


def object_joint_transforms(rig: Rig) -> np.ndarray:
  """(T, num_joints, 4, 4) joint-to-object transforms per frame, before the root motion.

  Flat: bone_t,b. Tree: A_t,bone[k] * J_k, A_t,b = bone_t,b * rest_b^-1.
  """
  bones = transforms_np.rigid_matrix(rig.bone_quat, rig.bone_trans)  # (T, B, 4, 4)
  if rig.tree is None:
    return bones
  rel = skeleton_file.rest_to_frame(transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans),
                                    bones)
  return rel[:, rig.tree.bone] @ np.asarray(rig.tree.rest_frame, np.float64)[None]


def _rigid_inverse(m: np.ndarray) -> np.ndarray:
  """(..., 4, 4) inverses of rigid transforms (transposed rotation: exact to rounding)."""
  out = np.zeros_like(m)
  rot_t = np.swapaxes(m[..., :3, :3], -1, -2)
  out[..., :3, :3] = rot_t
  out[..., :3, 3] = -np.einsum("...ij,...j->...i", rot_t, m[..., :3, 3])
  out[..., 3, 3] = 1.0
  return out


def local_transforms(globals_: np.ndarray, parent: np.ndarray) -> np.ndarray:
  """(..., K, 4, 4) each joint in its parent's frame, G_parent^-1 * G_k (a root: G_k).

  Args:
    globals_: (..., K, 4, 4) rigid joint transforms, all in one frame.
    parent: (K,) parents, -1 for joints whose parent carries that frame.
  """
  globals_ = np.asarray(globals_, np.float64)
  parent = np.asarray(parent, np.int64)
  parent_globals = np.where((parent >= 0)[:, None, None], globals_[..., np.maximum(parent, 0),
                                                                   :, :], np.eye(4))
  return _rigid_inverse(parent_globals) @ globals_


def joint_globals(rig: Rig, root_motion: bool = True) -> np.ndarray:
  """(T, 1 + num_joints, 4, 4) global transforms of the joints (root first) per frame."""
  root = _root_matrices(rig, root_motion)  # (T, 4, 4)
  return np.concatenate([root[:, None], root[:, None] @ object_joint_transforms(rig)], axis=1)


def inverse_bind_matrices(rig: Rig) -> np.ndarray:
  """(1 + num_joints, 4, 4): identity for the root, then rest_b^-1 (flat) or J_k^-1 (tree)."""
  return np.concatenate([np.eye(4)[None], _rigid_inverse(rest_joint_transforms(rig))], axis=0)


def joint_stretch(rig: Rig) -> np.ndarray:
  """(num_joints,) largest change over the frames of each joint's local translation.

  The distance, in the object's units, between a child joint's offset from its
  parent at a frame and at rest: how far the parent's bone and the child's own
  bone disagree on where the joint is (0 for rigidly linked bones). Joints
  directly under the root node (the skeleton root; every flat joint) get 0:
  their translation is the motion itself.
  """
  parent = joint_parents(rig)
  local = local_transforms(object_joint_transforms(rig), parent)[..., :3, 3]  # (T, K, 3)
  rest = local_transforms(rest_joint_transforms(rig), parent)[:, :3, 3]  # (K, 3)
  change = np.linalg.norm(local - rest[None], axis=-1).max(0)
  return np.where(parent >= 0, change, 0.0)


def _root_matrices(rig: Rig, root_motion: bool) -> np.ndarray:
  if root_motion and rig.root_to_world is not None:
    return np.asarray(rig.root_to_world, np.float64)
  return np.tile(np.eye(4), (rig.num_frames, 1, 1))


# ----------------------------------------------------------------------------
# The glTF document.


class _BinaryBuilder:
  """Accumulates buffer views and accessors in one 4-byte aligned buffer."""

  def __init__(self):
    self.chunks: list[bytes] = []
    self.length = 0
    self.buffer_views: list[dict] = []
    self.accessors: list[dict] = []

  def add(self, array: np.ndarray, component: int, kind: str, target: Optional[int] = None,
          with_bounds: bool = False, normalized: bool = False) -> int:
    data = np.ascontiguousarray(array).tobytes()
    view = {"buffer": 0, "byteOffset": self.length, "byteLength": len(data)}
    if target is not None:
      view["target"] = target
    self.buffer_views.append(view)
    self.chunks.append(data)
    self.length += len(data)
    pad = (-self.length) % 4
    if pad:
      self.chunks.append(b"\x00" * pad)
      self.length += pad
    count = array.shape[0]
    accessor = {"bufferView": len(self.buffer_views) - 1, "componentType": component,
                "count": int(count), "type": kind}
    if normalized:
      accessor["normalized"] = True
    if with_bounds:
      flat = array.reshape(count, -1)
      if component == _FLOAT:
        accessor["min"] = [float(x) for x in flat.min(0)]
        accessor["max"] = [float(x) for x in flat.max(0)]
      else:
        accessor["min"] = [int(x) for x in flat.min(0)]
        accessor["max"] = [int(x) for x in flat.max(0)]
    self.accessors.append(accessor)
    return len(self.accessors) - 1

  def data(self) -> bytes:
    return b"".join(self.chunks)


@dataclasses.dataclass(frozen=True)
class _Joints:
  """The joints under the root node as the file stores them (either layout; K joints).

  names (K,); parent (K,) among the joints, -1 under the root node; rest_quat
  (K, 4) / rest_trans (K, 3) the nodes' static TRS; quat (T, K, 4) / trans
  (T, K, 3) their keys; ibm (1 + K, 4, 4) root first; weights (V, K).
  """
  names: list
  parent: np.ndarray
  rest_quat: np.ndarray
  rest_trans: np.ndarray
  quat: np.ndarray
  trans: np.ndarray
  ibm: np.ndarray
  weights: np.ndarray


def _joints(rig: Rig) -> _Joints:
  if rig.tree is None:
    # The bones' own quaternions, as given (no round trip through matrices).
    return _Joints(
        names=[f"bone_{b:03d}" for b in range(rig.num_bones)], parent=joint_parents(rig),
        rest_quat=quaternion_np.continuous_quaternions(np.asarray(rig.rest_bone_quat)[None])[0],
        rest_trans=np.asarray(rig.rest_bone_trans, np.float64),
        quat=quaternion_np.continuous_quaternions(rig.bone_quat),
        trans=np.asarray(rig.bone_trans, np.float64), ibm=inverse_bind_matrices(rig),
        weights=np.asarray(rig.skin_weights))
  parent = joint_parents(rig)
  rest_quat, rest_trans = matrix_to_quat_trans(local_transforms(rest_joint_transforms(rig),
                                                                parent))
  quat, trans = matrix_to_quat_trans(local_transforms(object_joint_transforms(rig), parent))
  return _Joints(names=[str(n) for n in rig.tree.names], parent=parent, rest_quat=rest_quat,
                 rest_trans=rest_trans, quat=quaternion_np.continuous_quaternions(quat),
                 trans=trans, ibm=inverse_bind_matrices(rig),
                 weights=np.asarray(rig.tree.skin_weights))


def build_gltf(rig: Rig, root_motion: bool = True,
               extras: Optional[dict] = None) -> tuple[dict, bytes]:
  """The glTF JSON document and its binary buffer.

  Args:
    rig: a validated Rig (see `validate_rig`); its `tree` picks the layout.
    root_motion: animate the root joint with `rig.root_to_world` (when given);
      otherwise the root stays at the identity.
    extras: JSON-able provenance stored in `asset.extras`.
  Returns:
    (document dict, binary buffer bytes).
  """
  joints = _joints(rig)
  num_joints = len(joints.names)
  # The order of the `builder.add` calls fixes the accessor indices and byte layout.
  builder = _BinaryBuilder()
  attributes, indices = _add_mesh(builder, rig, joints.weights)
  # glTF matrices are column-major: the transpose's row-major bytes.
  ibm_accessor = builder.add(np.transpose(joints.ibm, (0, 2, 1)).reshape(num_joints + 1, 16)
                             .astype(np.float32), _FLOAT, "MAT4")
  animation = _add_animation(builder, rig, joints, root_motion)

  asset = {"version": "2.0", "generator": "animdreamer_jax export"}
  if extras:
    asset["extras"] = extras
  doc = {
      "asset": asset,
      "scene": 0,
      "scenes": [{"name": rig.name, "nodes": [0, 1]}],
      "nodes": _nodes(rig, joints),
      "meshes": [{"name": rig.name, "primitives": [{
          "attributes": attributes, "indices": indices, "material": 0,
          "mode": _TRIANGLES}]}],
      "materials": [{"name": f"{rig.name}_vertex_color", "pbrMetallicRoughness": {
          "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
          "roughnessFactor": 0.85}}],
      "skins": [{"name": f"{rig.name}_bones", "joints": list(range(1, 2 + num_joints)),
                 "skeleton": 1, "inverseBindMatrices": ibm_accessor}],
      "animations": [animation],
      "accessors": builder.accessors,
      "bufferViews": builder.buffer_views,
      "buffers": [{"byteLength": builder.length}],
  }
  return doc, builder.data()


def _add_mesh(builder: _BinaryBuilder, rig: Rig, joint_weights: np.ndarray
              ) -> tuple[dict, int]:
  """The mesh's vertex attributes (accessor per name) and its index accessor."""
  positions = np.asarray(rig.rest_vertices, np.float32)
  faces = np.asarray(rig.faces, np.int64)
  attributes = {
      "POSITION": builder.add(positions, _FLOAT, "VEC3", _ARRAY_BUFFER, with_bounds=True),
      "NORMAL": builder.add(vertex_normals(positions, faces).astype(np.float32), _FLOAT,
                            "VEC3", _ARRAY_BUFFER),
  }
  if rig.vertex_colors is not None:
    # COLOR_0 is linear; the rig's colours are uint8 sRGB.
    linear = gltf_lib.srgb_to_linear(np.asarray(rig.vertex_colors, np.float64) / 255.0)
    attributes["COLOR_0"] = builder.add(linear.astype(np.float32), _FLOAT, "VEC3", _ARRAY_BUFFER)
  bones, weights = top_k_influences(joint_weights)
  # Skin joint 0 is the root; joint k is skin joint k + 1. Empty slots (fewer
  # than 4 joints) point at the root with weight 0.
  joints = np.where(bones >= 0, bones + 1, 0)
  num_joints = joint_weights.shape[1]
  joint_dtype, joint_component = ((np.uint8, _UBYTE) if num_joints + 1 <= 256
                                  else (np.uint16, _USHORT))
  attributes["JOINTS_0"] = builder.add(joints.astype(joint_dtype), joint_component, "VEC4",
                                       _ARRAY_BUFFER)
  attributes["WEIGHTS_0"] = builder.add(weights.astype(np.float32), _FLOAT, "VEC4",
                                        _ARRAY_BUFFER)
  index_dtype, index_component = ((np.uint16, _USHORT) if positions.shape[0] <= 65535
                                  else (np.uint32, _UINT))
  indices = builder.add(faces.reshape(-1).astype(index_dtype), index_component, "SCALAR",
                        _ELEMENT_ARRAY_BUFFER)
  return attributes, indices


def _nodes(rig: Rig, joints: _Joints) -> list[dict]:
  """Nodes: 0 mesh, 1 root joint, 2 + k joint k (rest pose as its static TRS)."""
  num_joints = len(joints.names)
  nodes = [{"name": f"{rig.name}_mesh", "mesh": 0, "skin": 0},
           {"name": ROOT_NODE_NAME,
            "children": [2 + k for k in range(num_joints) if joints.parent[k] < 0]}]
  for k in range(num_joints):
    node = {"name": joints.names[k],
            "translation": [float(x) for x in joints.rest_trans[k].astype(np.float32)],
            "rotation": [float(x) for x in joints.rest_quat[k].astype(np.float32)]}
    children = [2 + c for c in np.flatnonzero(joints.parent == k)]
    if children:
      node["children"] = [int(c) for c in children]
    nodes.append(node)
  return nodes


def _add_animation(builder: _BinaryBuilder, rig: Rig, joints: _Joints, root_motion: bool
                   ) -> dict:
  """The clip: one LINEAR key per frame (from 0 s) for the root (with root motion) and every joint."""
  times = (np.arange(rig.num_frames, dtype=np.float64) / rig.fps).astype(np.float32)
  time_accessor = builder.add(times, _FLOAT, "SCALAR", with_bounds=True)
  samplers, channels = [], []

  def animate(node: int, rotation: np.ndarray, translation: np.ndarray) -> None:
    for path, values, kind in (("rotation", rotation, "VEC4"),
                               ("translation", translation, "VEC3")):
      output = builder.add(np.asarray(values, np.float32), _FLOAT, kind)
      samplers.append({"input": time_accessor, "output": output, "interpolation": "LINEAR"})
      channels.append({"sampler": len(samplers) - 1, "target": {"node": node, "path": path}})

  if root_motion and rig.root_to_world is not None:
    root_quat, root_trans = matrix_to_quat_trans(rig.root_to_world)
    animate(1, quaternion_np.continuous_quaternions(root_quat), root_trans)
  for k in range(len(joints.names)):
    animate(2 + k, joints.quat[:, k], joints.trans[:, k])
  return {"name": CLIP_NAME, "samplers": samplers, "channels": channels}


def encode_glb(doc: dict, binary: bytes) -> bytes:
  """GLB container: 12-byte header, JSON chunk (space padded), BIN chunk (zero padded)."""
  json_bytes = json.dumps(doc, separators=(",", ":")).encode("utf-8")
  json_bytes += b" " * ((-len(json_bytes)) % 4)
  binary = binary + b"\x00" * ((-len(binary)) % 4)
  total = 12 + 8 + len(json_bytes) + 8 + len(binary)
  return b"".join([
      struct.pack("<III", _GLB_MAGIC, 2, total),
      struct.pack("<II", len(json_bytes), _GLB_JSON), json_bytes,
      struct.pack("<II", len(binary), _GLB_BIN), binary,
  ])


def glb_bytes(rig: Rig, root_motion: bool = True, extras: Optional[dict] = None) -> bytes:
  """Validates `rig` and returns the .glb file's bytes."""
  rig = validate_rig(rig)
  doc, binary = build_gltf(rig, root_motion=root_motion, extras=extras)
  return encode_glb(doc, binary)


def write_glb(path: str | os.PathLike, rig: Rig, root_motion: bool = True,
              extras: Optional[dict] = None) -> dict:
  """Writes a rigged, animated .glb atomically.

  Args:
    path: output file (.glb).
    rig: the arrays (validated here; UserError on bad shapes/values).
    root_motion: animate the root joint with `rig.root_to_world`.
    extras: JSON-able provenance stored in `asset.extras`.
  Returns:
    {"path", "bytes", "num_vertices", "num_faces", "num_joints" (with the root),
     "rig" ("flat" or "tree"), "num_frames", "duration_s", "root_motion"}.
  """
  rig = validate_rig(rig, str(path))
  data = encode_glb(*build_gltf(rig, root_motion=root_motion, extras=extras))
  files.save_bytes(path, data)
  return {"path": str(path), "bytes": len(data),
          "num_vertices": int(rig.rest_vertices.shape[0]), "num_faces": int(rig.faces.shape[0]),
          "num_joints": rig.num_joints + 1, "rig": rig.kind, "num_frames": rig.num_frames,
          "duration_s": (rig.num_frames - 1) / rig.fps,
          "root_motion": bool(root_motion and rig.root_to_world is not None)}


# ----------------------------------------------------------------------------
# The Khronos glTF validator (optional: Node + npm `gltf-validator`).

_VALIDATE_JS = """
const validator = require(process.argv[1]);
const fs = require('fs');
const data = new Uint8Array(fs.readFileSync(process.argv[2]));
validator.validateBytes(data, {maxIssues: 0}).then((report) => {
  process.stdout.write(JSON.stringify(report.issues));
}).catch((e) => { process.stderr.write(String(e)); process.exit(3); });
"""


def khronos_validator_dir() -> Optional[pathlib.Path]:
  """The npm `gltf-validator` package installed under viewer_assets, or None."""
  folder = pathlib.Path(__file__).resolve().parent / "viewer_assets" / "node_modules" / \
      "gltf-validator"
  return folder if (folder / "index.js").is_file() else None


def khronos_validate(path: str | os.PathLike, timeout_s: float = 120.0) -> Optional[dict]:
  """Runs the Khronos glTF validator on a file.

  Returns:
    {"numErrors", "numWarnings", "numInfos", "numHints", "messages": [...]},
    or None when Node or the validator is not installed
    (`npm ci --prefix animdreamer_jax/export/viewer_assets` installs it).
  Raises:
    RuntimeError: the validator itself failed.
  """
  node = shutil.which("node")
  package = khronos_validator_dir()
  if node is None or package is None:
    return None
  with warnings.catch_warnings():
    # The child execs node at once, so JAX's "fork with threads" warning does not apply.
    warnings.simplefilter("ignore", RuntimeWarning)
    result = subprocess.run([node, "-e", _VALIDATE_JS, str(package), str(path)],
                            capture_output=True, text=True, timeout=timeout_s, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"gltf-validator failed on {path}: {result.stderr.strip()[:500]}")
  return json.loads(result.stdout)
