"""Animated meshes with a fixed topology: the MeshSequence and its NPZ format.

Mesh-sequence NPZ (for animated meshes from any tool):
  vertices         float32 (T, V, 3)  posed positions, +Y up
  faces            int32   (F, 3)     counter-clockwise triangles
  fps              float   ()         frame rate
  vertex_colors    uint8   (V, 3)     optional, sRGB
  skin_weights     float32 (V, J)     optional ground-truth skinning
  joint_positions  float32 (T, J, 3)  optional ground-truth joint positions
  rest_vertices    float32 (V, 3)     optional bind/rest-pose positions
  joint_parents    int32   (J,)       optional parent joint, -1 for roots
Other float/int widths are accepted and converted; any other key is an error.
Joint names are not stored in the NPZ (MeshSequence.joint_names is filled from
glTF only; a synthetic video records them in gt/joints.npz).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import zipfile

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from scipy.spatial import cKDTree

from animdreamer_jax import files
from animdreamer_jax.assets import gltf
from animdreamer_jax.errors import UserError

_REQUIRED_KEYS = ("vertices", "faces", "fps")
_OPTIONAL_KEYS = ("vertex_colors", "skin_weights", "joint_positions",
                  "rest_vertices", "joint_parents")


@dataclasses.dataclass
class MeshSequence:
  """T frames of one triangle mesh (fixed topology).

  Attributes:
    vertices: (T, V, 3) float32 posed positions.
    faces: (F, 3) int32 counter-clockwise triangles.
    fps: frames per second.
    vertex_colors: (V, 3) uint8 sRGB, or None.
    skin_weights: (V, J) float32 ground-truth skinning weights, or None.
    joint_positions: (T, J, 3) float32 joint positions per frame, or None.
    rest_vertices: (V, 3) float32 bind/rest-pose positions, when known.
    joint_parents: (J,) int32 parent joint, -1 for roots, when known.
    joint_names: J joint names, when known (glTF); kept in memory only, the
      mesh-sequence NPZ has no names.
  """
  vertices: np.ndarray
  faces: np.ndarray
  fps: float
  vertex_colors: np.ndarray | None = None
  skin_weights: np.ndarray | None = None
  joint_positions: np.ndarray | None = None
  rest_vertices: np.ndarray | None = None
  joint_parents: np.ndarray | None = None
  joint_names: tuple[str, ...] | None = None

  @property
  def num_frames(self) -> int:
    return int(self.vertices.shape[0])

  @property
  def num_vertices(self) -> int:
    return int(self.vertices.shape[1])


# ----------------------------------------------------------------------------
# Validation (shared by the NPZ reader and writer).


def _check_array(name: str, value, kind: str, shape: tuple, where: str,
                 dtype) -> np.ndarray:
  """Checks dtype kind and shape (None = any size) and converts to `dtype`."""
  value = np.asarray(value)
  kinds = {"float": "f", "int": "iu", "uint8": "u"}[kind]
  if value.dtype.kind not in kinds or (kind == "uint8"
                                       and value.dtype != np.uint8):
    raise UserError(f"{where}: {name} must be {kind} {_shape_text(shape)}, "
                    f"got {value.dtype} {value.shape}")
  if value.ndim != len(shape) or any(
      s is not None and s != v for s, v in zip(shape, value.shape)):
    raise UserError(f"{where}: {name} must have shape {_shape_text(shape)}, "
                    f"got {value.shape}")
  if kind == "float" and not np.all(np.isfinite(value)):
    raise UserError(f"{where}: {name} has NaN or infinite values")
  return value.astype(dtype)


def _shape_text(shape: tuple) -> str:
  return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def validate_sequence(seq: MeshSequence, where: str) -> MeshSequence:
  """Checks shapes/dtypes/ranges; returns a copy with canonical dtypes.

  Raises:
    UserError: "<where>: <what is wrong>".
  """
  vertices = _check_array("vertices", seq.vertices, "float",
                          (None, None, 3), where, np.float32)
  num_frames, num_verts = vertices.shape[:2]
  if num_frames == 0 or num_verts == 0:
    raise UserError(f"{where}: vertices is empty {vertices.shape}")
  faces = _check_array("faces", seq.faces, "int", (None, 3), where, np.int64)
  if faces.shape[0] == 0:
    raise UserError(f"{where}: faces is empty")
  if faces.min() < 0 or faces.max() >= num_verts:
    raise UserError(f"{where}: faces index vertices outside 0..{num_verts - 1}")
  fps = np.asarray(seq.fps)
  if fps.shape != () or fps.dtype.kind not in "fiu" or not (
      np.isfinite(fps) and fps > 0):
    raise UserError(f"{where}: fps must be a positive number, got {seq.fps!r}")
  out = MeshSequence(vertices=vertices, faces=faces.astype(np.int32),
                     fps=float(fps))
  if seq.vertex_colors is not None:
    out.vertex_colors = _check_array("vertex_colors", seq.vertex_colors,
                                     "uint8", (num_verts, 3), where, np.uint8)
  if seq.rest_vertices is not None:
    out.rest_vertices = _check_array("rest_vertices", seq.rest_vertices,
                                     "float", (num_verts, 3), where,
                                     np.float32)
  num_joints = None
  if seq.skin_weights is not None:
    out.skin_weights = _check_array("skin_weights", seq.skin_weights, "float",
                                    (num_verts, None), where, np.float32)
    num_joints = out.skin_weights.shape[1]
  if seq.joint_positions is not None:
    out.joint_positions = _check_array(
        "joint_positions", seq.joint_positions, "float",
        (num_frames, num_joints, 3), where, np.float32)
    num_joints = out.joint_positions.shape[1]
  if seq.joint_parents is not None:
    parents = _check_array("joint_parents", seq.joint_parents, "int",
                           (num_joints,), where, np.int64)
    if parents.size and (parents.min() < -1 or parents.max() >= parents.size
                         or np.any(parents == np.arange(parents.size))):
      raise UserError(f"{where}: joint_parents must be -1 or another joint's "
                      "index")
    out.joint_parents = parents.astype(np.int32)
    num_joints = parents.size
  if seq.joint_names is not None:
    out.joint_names = _check_joint_names(seq.joint_names, num_joints, where)
  return out


def _check_joint_names(names, num_joints: int | None, where: str) -> tuple[str, ...]:
  """A tuple of J strings (J as the other joint arrays say, when they are given)."""
  names = tuple(names)
  if not all(isinstance(name, str) for name in names):
    raise UserError(f"{where}: joint_names must be strings")
  if num_joints is not None and len(names) != num_joints:
    raise UserError(f"{where}: {len(names)} joint_names for {num_joints} joints")
  return names


# ----------------------------------------------------------------------------
# NPZ.


def load_sequence_npz(path: str | os.PathLike) -> MeshSequence:
  """Reads and validates a mesh-sequence NPZ (format in the module docstring).

  Raises:
    UserError: missing/corrupt file, missing or unknown keys, wrong
      shapes/dtypes, out-of-range face indices.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: file not found")
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {key: data[key] for key in data.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise UserError(f"{path}: not a readable .npz file ({e})") from e
  missing = [k for k in _REQUIRED_KEYS if k not in arrays]
  if missing:
    raise UserError(f"{path}: missing key(s) {', '.join(missing)} (a mesh "
                    "sequence needs vertices, faces, fps)")
  unknown = sorted(set(arrays) - set(_REQUIRED_KEYS) - set(_OPTIONAL_KEYS))
  if unknown:
    raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; allowed: "
                    f"{', '.join(_REQUIRED_KEYS + _OPTIONAL_KEYS)}")
  fps = arrays.pop("fps")
  if fps.shape not in ((), (1,)):
    raise UserError(f"{path}: fps must be a scalar, got shape {fps.shape}")
  return validate_sequence(MeshSequence(fps=fps.reshape(()), **arrays),
                           str(path))


def save_sequence_npz(path: str | os.PathLike, seq: MeshSequence) -> None:
  """Writes a mesh-sequence NPZ atomically (temp file + rename).

  Raises:
    UserError: the sequence does not validate.
  """
  path = pathlib.Path(path)
  seq = validate_sequence(seq, str(path))
  arrays = {"vertices": seq.vertices, "faces": seq.faces,
            "fps": np.asarray(seq.fps, np.float64)}
  for key in _OPTIONAL_KEYS:
    if getattr(seq, key) is not None:
      arrays[key] = getattr(seq, key)
  files.save_npz(path, **arrays)


# ----------------------------------------------------------------------------
# Loading any supported file.


def _resample_frames(frames: np.ndarray, src_fps: float, dst_fps: float,
                     num_frames: int) -> np.ndarray:
  """Frames at times k / dst_fps, linear between stored frames, looping."""
  position = np.arange(num_frames) * (src_fps / dst_fps)
  count = frames.shape[0]
  lo = np.floor(position).astype(np.int64)
  frac = (position - lo).astype(np.float32)
  frac = frac.reshape((-1,) + (1,) * (frames.ndim - 1))
  a, b = frames[lo % count], frames[(lo + 1) % count]
  return (a + frac * (b - a)).astype(frames.dtype)


def load_sequence(path: str | os.PathLike, clip: str | None = None,
                  num_frames: int | None = None,
                  fps: float | None = None) -> MeshSequence:
  """Loads an animated mesh from .glb / .gltf / .npz.

  glTF: `clip` None picks the first clip; frame k is posed at time
  (k / fps) mod duration (clips loop; their last key repeats the first, so it
  is never a frame of its own); `fps` defaults to the clip's key rate
  (keys - 1) / duration; `num_frames` None gives one loop, round(duration *
  fps) frames.
  NPZ: `clip` must be None; `num_frames` takes the first frames (looping when
  more are asked); an `fps` different from the file's resamples linearly in
  time (looping).

  Raises:
    UserError: unsupported extension, unknown clip, bad file (see
      load_gltf / load_sequence_npz).
  """
  path = pathlib.Path(path)
  if num_frames is not None and num_frames < 1:
    raise UserError(f"{path}: number of frames must be >= 1, got {num_frames}")
  if fps is not None and not fps > 0:
    raise UserError(f"{path}: fps must be positive, got {fps}")
  suffix = path.suffix.lower()
  if suffix == ".npz":
    if clip is not None:
      raise UserError(f"{path}: a mesh-sequence NPZ has no clips (got "
                      f"clip {clip!r})")
    seq = load_sequence_npz(path)
    count = num_frames if num_frames is not None else seq.num_frames
    target_fps = seq.fps if fps is None else float(fps)
    if target_fps == seq.fps:
      take = np.arange(count) % seq.num_frames
      resample = lambda a: a[take]
    else:
      resample = lambda a: _resample_frames(a, seq.fps, target_fps, count)
    seq.vertices = resample(seq.vertices)
    if seq.joint_positions is not None:
      seq.joint_positions = resample(seq.joint_positions)
    seq.fps = target_fps
    return seq
  if suffix not in (".glb", ".gltf"):
    raise UserError(f"{path}: unsupported file type {suffix or '(none)'} "
                    "(expected .glb, .gltf or a mesh-sequence .npz)")
  asset = gltf.load_gltf(path)
  clip = asset.clip_names[0] if clip is None else clip
  duration = asset.clip_duration(clip)
  fps = asset.clip_native_fps(clip) if fps is None else float(fps)
  if num_frames is None:
    num_frames = max(1, int(round(duration * fps)))
  times = np.arange(num_frames) / fps
  times = np.mod(times, duration) if duration > 0 else np.zeros_like(times)
  return MeshSequence(
      vertices=asset.pose(clip, times),
      faces=asset.faces.copy(),
      fps=float(fps),
      vertex_colors=asset.vertex_colors.copy(),
      skin_weights=asset.skin_weights.copy(),
      joint_positions=asset.joint_world_positions(clip, times),
      rest_vertices=asset.rest_vertices.copy(),
      joint_parents=asset.joint_parents.copy(),
      joint_names=tuple(asset.joint_names))


# ----------------------------------------------------------------------------
# Welding.


def weld_vertices(vertices: np.ndarray, faces: np.ndarray, tol: float = 1e-6):
  """Merges vertices closer than `tol` (e.g. UV/material seams).

  Clusters are the connected components of the "closer than tol" graph, so a
  chain of near points merges as one; each welded vertex takes the position of
  its cluster's lowest-index member, and welded vertices are numbered in order
  of first appearance. Faces that collapse (two corners in one cluster) are
  dropped.

  Args:
    vertices: (V, 3).
    faces: (F, 3) int.
    tol: absolute distance, in the vertices' units.
  Returns:
    welded_vertices: (W, 3), same dtype as `vertices`.
    welded_faces: (F', 3) int32, F' <= F.
    index_map: (V,) int32, original vertex -> welded vertex.
  """
  vertices = np.asarray(vertices)
  faces = np.asarray(faces, np.int64)
  num = vertices.shape[0]
  pairs = cKDTree(vertices).query_pairs(r=tol, output_type="ndarray")
  graph = sparse.coo_matrix(
      (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(num, num))
  _, labels = csgraph.connected_components(graph, directed=False)
  # Renumber clusters by their first (lowest-index) member.
  first = np.full(labels.max() + 1 if num else 0, num, np.int64)
  np.minimum.at(first, labels, np.arange(num))
  order = np.argsort(first)
  rank = np.empty_like(order)
  rank[order] = np.arange(order.size)
  index_map = rank[labels].astype(np.int32)
  welded_vertices = vertices[first[order]]
  welded_faces = index_map[faces]
  keep = ((welded_faces[:, 0] != welded_faces[:, 1])
          & (welded_faces[:, 1] != welded_faces[:, 2])
          & (welded_faces[:, 0] != welded_faces[:, 2]))
  return welded_vertices, welded_faces[keep].astype(np.int32), index_map


def weld_sequence(seq: MeshSequence, tol: float = 1e-6) -> MeshSequence:
  """A sequence with seam duplicates merged (by rest pose, else frame 0).

  Duplicates move together under skinning, so each welded vertex keeps its
  first member's trajectory. Vertex colours and skin weights come from that
  member too. `tol` is absolute, in the sequence's units.
  """
  reference = seq.rest_vertices if seq.rest_vertices is not None else (
      seq.vertices[0])
  _, faces, index_map = weld_vertices(reference, seq.faces, tol)
  first = np.full(index_map.max() + 1, index_map.size, np.int64)
  np.minimum.at(first, index_map, np.arange(index_map.size))
  pick = lambda a: None if a is None else a[first]
  return MeshSequence(
      vertices=seq.vertices[:, first], faces=faces, fps=seq.fps,
      vertex_colors=pick(seq.vertex_colors),
      skin_weights=pick(seq.skin_weights),
      joint_positions=seq.joint_positions,
      rest_vertices=pick(seq.rest_vertices),
      joint_parents=seq.joint_parents, joint_names=seq.joint_names)
