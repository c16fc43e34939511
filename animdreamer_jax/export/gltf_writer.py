"""Rigged, animated glTF 2.0 binary (.glb) from plain arrays.

What the file holds (one scene, everything in the model's object frame, +Y up,
normalised units):
  * one triangle mesh: POSITION, NORMAL (area-weighted), COLOR_0 (linear RGB
    from the sRGB vertex colours), JOINTS_0 / WEIGHTS_0 (the 4 largest skinning
    weights of each vertex, renormalised to sum 1);
  * node "root" (joint 0) carrying the root motion, object -> world, and one
    child joint per Gaussian bone ("bone_000", ...), whose local transform is
    the bone-to-object transform (rotation + translation). The skinned mesh
    node sits at the scene root with no transform, so players that apply it
    (and those that do not) agree;
  * inverse bind matrices: identity for the root, inverse rest bone for the
    bones, so the skin matrix of bone b at frame t is
      root_t * bone_t,b * rest_b^-1,
    i.e. the model's per-bone rest -> frame transform followed by the root;
  * one animation clip, LINEAR, one key per video frame at t / fps seconds:
    rotation + translation of every bone and (with root motion) of the root.
    Without root motion the root stays at the identity (the animal articulates
    in place in its object frame).

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

NUM_INFLUENCES = 4  # glTF players (three.js, engines) read one set of 4
_FLOAT, _UBYTE, _USHORT, _UINT = 5126, 5121, 5123, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_TRIANGLES = 4
ROOT_NODE_NAME = "root"
CLIP_NAME = "motion"


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

  @property
  def num_frames(self) -> int:
    return int(np.shape(self.bone_quat)[0])

  @property
  def num_bones(self) -> int:
    return int(np.shape(self.rest_bone_quat)[0])


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
  return Rig(**a)


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


def rigid_matrix(quat: np.ndarray, trans: np.ndarray) -> np.ndarray:
  """(..., 4) quaternions (x, y, z, w), renormalised, + (..., 3) translations -> (..., 4, 4)."""
  quat = quaternion_np.normalize(quat)
  return transforms_np.compose_trs(trans, quat, np.ones(quat.shape[:-1] + (3,)))


def matrix_to_quat_trans(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(..., 4, 4) rigid transforms -> unit quaternions (..., 4) (x, y, z, w), (..., 3)."""
  matrix = np.asarray(matrix, np.float64)
  return quaternion_np.matrix_to_quaternion(matrix[..., :3, :3]), matrix[..., :3, 3].copy()


def joint_globals(rig: Rig, root_motion: bool = True) -> np.ndarray:
  """(T, 1 + B, 4, 4) global transforms of the joints (root first) per frame."""
  bones = rigid_matrix(rig.bone_quat, rig.bone_trans)  # (T, B, 4, 4)
  root = _root_matrices(rig, root_motion)  # (T, 4, 4)
  return np.concatenate([root[:, None], root[:, None] @ bones], axis=1)


def inverse_bind_matrices(rig: Rig) -> np.ndarray:
  """(1 + B, 4, 4): identity for the root, inverse rest bone-to-object for the bones."""
  rest = rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans)
  return np.concatenate([np.eye(4)[None], np.linalg.inv(rest)], axis=0)


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


def build_gltf(rig: Rig, root_motion: bool = True,
               extras: Optional[dict] = None) -> tuple[dict, bytes]:
  """The glTF JSON document and its binary buffer.

  Args:
    rig: a validated Rig (see `validate_rig`).
    root_motion: animate the root joint with `rig.root_to_world` (when given);
      otherwise the root stays at the identity.
    extras: JSON-able provenance stored in `asset.extras`.
  Returns:
    (document dict, binary buffer bytes).
  """
  num_bones = rig.num_bones
  # The order of the `builder.add` calls fixes the accessor indices and byte layout.
  builder = _BinaryBuilder()
  attributes, indices = _add_mesh(builder, rig)
  ibm = inverse_bind_matrices(rig)
  # glTF matrices are column-major: the transpose's row-major bytes.
  ibm_accessor = builder.add(np.transpose(ibm, (0, 2, 1)).reshape(num_bones + 1, 16)
                             .astype(np.float32), _FLOAT, "MAT4")
  animation = _add_animation(builder, rig, root_motion)

  asset = {"version": "2.0", "generator": "animdreamer_jax export"}
  if extras:
    asset["extras"] = extras
  doc = {
      "asset": asset,
      "scene": 0,
      "scenes": [{"name": rig.name, "nodes": [0, 1]}],
      "nodes": _nodes(rig),
      "meshes": [{"name": rig.name, "primitives": [{
          "attributes": attributes, "indices": indices, "material": 0,
          "mode": _TRIANGLES}]}],
      "materials": [{"name": f"{rig.name}_vertex_color", "pbrMetallicRoughness": {
          "baseColorFactor": [1.0, 1.0, 1.0, 1.0], "metallicFactor": 0.0,
          "roughnessFactor": 0.85}}],
      "skins": [{"name": f"{rig.name}_bones", "joints": list(range(1, 2 + num_bones)),
                 "skeleton": 1, "inverseBindMatrices": ibm_accessor}],
      "animations": [animation],
      "accessors": builder.accessors,
      "bufferViews": builder.buffer_views,
      "buffers": [{"byteLength": builder.length}],
  }
  return doc, builder.data()


def _add_mesh(builder: _BinaryBuilder, rig: Rig) -> tuple[dict, int]:
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
  bones, weights = top_k_influences(rig.skin_weights)
  # Joint 0 is the root; bone b is joint b + 1. Empty slots (fewer than 4
  # bones) point at the root with weight 0.
  joints = np.where(bones >= 0, bones + 1, 0)
  joint_dtype, joint_component = ((np.uint8, _UBYTE) if rig.num_bones + 1 <= 256
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


def _nodes(rig: Rig) -> list[dict]:
  """Nodes: 0 mesh, 1 root joint, 2.. bones (rest pose as their static TRS)."""
  rest_quat = quaternion_np.continuous_quaternions(np.asarray(rig.rest_bone_quat)[None])[0]
  nodes = [{"name": f"{rig.name}_mesh", "mesh": 0, "skin": 0},
           {"name": ROOT_NODE_NAME, "children": list(range(2, 2 + rig.num_bones))}]
  for b in range(rig.num_bones):
    nodes.append({"name": f"bone_{b:03d}",
                  "translation": [float(x) for x in np.asarray(rig.rest_bone_trans[b],
                                                               np.float32)],
                  "rotation": [float(x) for x in rest_quat[b].astype(np.float32)]})
  return nodes


def _add_animation(builder: _BinaryBuilder, rig: Rig, root_motion: bool) -> dict:
  """The clip: one LINEAR key per frame for the root (with root motion) and every bone."""
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
  bone_quat = quaternion_np.continuous_quaternions(rig.bone_quat)
  for b in range(rig.num_bones):
    animate(2 + b, bone_quat[:, b], np.asarray(rig.bone_trans)[:, b])
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
    {"path", "bytes", "num_vertices", "num_faces", "num_joints", "num_frames",
     "duration_s", "root_motion"}.
  """
  rig = validate_rig(rig, str(path))
  data = encode_glb(*build_gltf(rig, root_motion=root_motion, extras=extras))
  files.save_bytes(path, data)
  return {"path": str(path), "bytes": len(data),
          "num_vertices": int(rig.rest_vertices.shape[0]), "num_faces": int(rig.faces.shape[0]),
          "num_joints": rig.num_bones + 1, "num_frames": rig.num_frames,
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
