"""Motion files: root poses + per-bone transforms per frame, for other tools.

One format, two containers with the same keys: JSON (`.json`, human readable,
nested lists) or NPZ (`.npz`, NumPy arrays). All matrices are 4x4, row-major
for column vectors (`p' = M @ [x, y, z, 1]`; in JSON `M[i][j]` is row i,
column j), rigid (rotation + translation), in the normalised units of the
run (rest bounding-box diagonal 1), +Y up.

| key | shape | meaning |
| --- | --- | --- |
| `format` | str | "animdreamer-motion" |
| `version` | int | 1 |
| `fps` | float | frames per second |
| `bone_to_object` | (T, B, 4, 4) | bone b's frame at frame t in the object (canonical) frame |
| `rest_bone_to_object` | (B, 4, 4) | the same in the rest pose |
| `object_to_world` | (T, 4, 4) | root motion (the glTF root joint); identity when unknown |
| `object_to_camera` | (T, 4, 4) | learned root pose, OpenCV camera (optional) |
| `bone_log_scale` | (B, 3) | Gaussian bone log standard deviations along the bone axes (optional) |
| `source` | str | provenance (optional) |

A point x attached to bone b in the rest pose moves, in the object frame, to
`bone_to_object[t, b] @ inv(rest_bone_to_object[b]) @ x` at frame t
(the skin matrix of the glTF export before the root is applied).

`load_motion` checks every key (presence, shapes, finiteness, rigidity) and
raises UserError naming the file; `save_motion` writes atomically.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pathlib
from typing import Optional

import numpy as np

from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.geometry import transforms_np

FORMAT_NAME = "animdreamer-motion"
FORMAT_VERSION = 1
_RIGID_TOLERANCE = 1e-3


@dataclasses.dataclass(frozen=True)
class Motion:
  """Per-frame motion of B Gaussian bones and the root (see the module docstring).

  Attributes:
    fps: frames per second.
    bone_to_object: (T, B, 4, 4) float64.
    rest_bone_to_object: (B, 4, 4) float64.
    object_to_world: (T, 4, 4) float64 root motion.
    object_to_camera: (T, 4, 4) float64 or None.
    bone_log_scale: (B, 3) float64 or None.
    source: provenance text.
  """
  fps: float
  bone_to_object: np.ndarray
  rest_bone_to_object: np.ndarray
  object_to_world: np.ndarray
  object_to_camera: Optional[np.ndarray] = None
  bone_log_scale: Optional[np.ndarray] = None
  source: str = ""

  @property
  def num_frames(self) -> int:
    return int(self.bone_to_object.shape[0])

  @property
  def num_bones(self) -> int:
    return int(self.bone_to_object.shape[1])


def motion_from_rig(rig: gltf_writer.Rig, object_to_camera: Optional[np.ndarray] = None,
                    bone_log_scale: Optional[np.ndarray] = None, source: str = "") -> Motion:
  """The motion of a Rig (root motion = identity when the rig has none)."""
  root = (np.tile(np.eye(4), (rig.num_frames, 1, 1)) if rig.root_to_world is None
          else np.asarray(rig.root_to_world, np.float64))
  return validate_motion(Motion(
      fps=float(rig.fps),
      bone_to_object=transforms_np.rigid_matrix(rig.bone_quat, rig.bone_trans),
      rest_bone_to_object=transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans),
      object_to_world=root,
      object_to_camera=None if object_to_camera is None else np.asarray(object_to_camera,
                                                                        np.float64),
      bone_log_scale=None if bone_log_scale is None else np.asarray(bone_log_scale, np.float64),
      source=source), "motion")


def _fail(where: str, message: str):
  raise UserError(f"{where}: {message}")


def _check_rigid(name: str, m: np.ndarray, where: str) -> None:
  if not np.all(np.isfinite(m)):
    _fail(where, f"'{name}' has NaN or Inf values")
  rot = m[..., :3, :3]
  err = np.abs(rot @ np.swapaxes(rot, -1, -2) - np.eye(3)).max() if rot.size else 0.0
  if (err > _RIGID_TOLERANCE or np.any(np.linalg.det(rot) <= 0)
      or not np.allclose(m[..., 3, :], [0, 0, 0, 1], atol=1e-6)):
    _fail(where, f"'{name}' must hold rigid 4x4 transforms (rotation + translation)")


def validate_motion(motion: Motion, where: str) -> Motion:
  """Checks shapes, finiteness and rigidity; returns float64 copies. UserError otherwise."""
  fps = motion.fps
  try:
    fps = float(fps)
  except (TypeError, ValueError):
    _fail(where, f"'fps' must be a number, got {fps!r}")
  if not (np.isfinite(fps) and fps > 0):
    _fail(where, f"'fps' must be positive, got {fps}")
  bones = np.asarray(motion.bone_to_object, np.float64)
  if bones.ndim != 4 or bones.shape[2:] != (4, 4) or bones.shape[0] < 1 or bones.shape[1] < 1:
    _fail(where, f"'bone_to_object' must be (T, B, 4, 4), got {bones.shape}")
  t, b = bones.shape[:2]
  rest = np.asarray(motion.rest_bone_to_object, np.float64)
  if rest.shape != (b, 4, 4):
    _fail(where, f"'rest_bone_to_object' must be ({b}, 4, 4), got {rest.shape}")
  root = np.asarray(motion.object_to_world, np.float64)
  if root.shape != (t, 4, 4):
    _fail(where, f"'object_to_world' must be ({t}, 4, 4), got {root.shape}")
  for name, m in (("bone_to_object", bones), ("rest_bone_to_object", rest),
                  ("object_to_world", root)):
    _check_rigid(name, m, where)
  cam = motion.object_to_camera
  if cam is not None:
    cam = np.asarray(cam, np.float64)
    if cam.shape != (t, 4, 4):
      _fail(where, f"'object_to_camera' must be ({t}, 4, 4), got {cam.shape}")
    _check_rigid("object_to_camera", cam, where)
  scale = motion.bone_log_scale
  if scale is not None:
    scale = np.asarray(scale, np.float64)
    if scale.shape != (b, 3) or not np.all(np.isfinite(scale)):
      _fail(where, f"'bone_log_scale' must be finite ({b}, 3), got {scale.shape}")
  return Motion(fps=fps, bone_to_object=bones, rest_bone_to_object=rest, object_to_world=root,
                object_to_camera=cam, bone_log_scale=scale, source=str(motion.source))


def _as_dict(motion: Motion) -> dict:
  out = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fps": motion.fps,
         "num_frames": motion.num_frames, "num_bones": motion.num_bones,
         "bone_to_object": motion.bone_to_object,
         "rest_bone_to_object": motion.rest_bone_to_object,
         "object_to_world": motion.object_to_world, "source": motion.source}
  if motion.object_to_camera is not None:
    out["object_to_camera"] = motion.object_to_camera
  if motion.bone_log_scale is not None:
    out["bone_log_scale"] = motion.bone_log_scale
  return out


def motion_bytes(motion: Motion, kind: str) -> bytes:
  """The file content for kind "json" or "npz"."""
  data = _as_dict(validate_motion(motion, "motion"))
  if kind == "json":
    plain = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in data.items()}
    return (json.dumps(plain, indent=None, separators=(",", ":")) + "\n").encode()
  if kind == "npz":
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in data.items()})
    return buf.getvalue()
  raise ValueError(f"unknown motion file kind {kind!r}")


def _kind(path: pathlib.Path) -> str:
  suffix = path.suffix.lower()
  if suffix not in (".json", ".npz"):
    raise UserError(f"{path}: a motion file must end in .json or .npz")
  return suffix[1:]


def save_motion(path: str | os.PathLike, motion: Motion) -> None:
  """Writes a motion file (.json or .npz by suffix), atomically."""
  path = pathlib.Path(path)
  files.save_bytes(path, motion_bytes(motion, _kind(path)))


def load_motion(path: str | os.PathLike) -> Motion:
  """Reads and validates a motion file (.json or .npz).

  Raises:
    UserError: missing/corrupt file, wrong format or version, bad shapes.
  """
  path = pathlib.Path(path)
  kind = _kind(path)
  if not path.is_file():
    raise UserError(f"{path}: motion file not found")
  where = str(path)
  try:
    if kind == "json":
      data = json.loads(path.read_text(encoding="utf-8"))
      if not isinstance(data, dict):
        _fail(where, "not a motion file (JSON is not an object)")
    else:
      with np.load(path, allow_pickle=False) as npz:
        data = {k: npz[k] for k in npz.files}
      data = {k: (v.item() if v.ndim == 0 else v) for k, v in data.items()}
  except (OSError, ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: cannot read the motion file ({e})") from e
  if data.get("format") != FORMAT_NAME:
    _fail(where, f"not a motion file (format is {data.get('format')!r}, expected {FORMAT_NAME!r})")
  if data.get("version") != FORMAT_VERSION:
    _fail(where, f"unsupported motion file version {data.get('version')!r}")
  for key in ("fps", "bone_to_object", "rest_bone_to_object", "object_to_world"):
    if key not in data:
      _fail(where, f"missing key '{key}'")

  def array(key):
    value = data.get(key)
    if value is None:
      return None
    try:
      return np.asarray(value, np.float64)
    except (TypeError, ValueError):
      _fail(where, f"'{key}' is not a numeric array")

  return validate_motion(Motion(
      fps=data["fps"], bone_to_object=array("bone_to_object"),
      rest_bone_to_object=array("rest_bone_to_object"),
      object_to_world=array("object_to_world"), object_to_camera=array("object_to_camera"),
      bone_log_scale=array("bone_log_scale"), source=str(data.get("source", ""))), where)


def retarget_direct(rig: gltf_writer.Rig, motion: Motion, where: str = "motion"
                    ) -> gltf_writer.Rig:
  """Drives `rig` with another model's motion, bone by bone (same bone count).

  Each of the rig's bones takes the source bone's motion expressed in that
  bone's own rest frame: bone_t = rest_rig * rest_src^-1 * src_t. When the two
  rest poses agree this is the source motion itself; otherwise every bone turns
  about its own centre as the source bone turned about its centre. The root
  motion and frame rate come from the motion.

  Raises:
    UserError: different bone counts (skeleton retargeting does not exist yet).
  """
  if motion.num_bones != rig.num_bones:
    raise UserError(f"{where}: the motion has {motion.num_bones} bones but the model has "
                    f"{rig.num_bones}; re-animation needs the same bone count (retargeting "
                    "between different skeletons is not implemented)")
  rest_rig = transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans)  # (B, 4, 4)
  delta = np.linalg.inv(motion.rest_bone_to_object)[None] @ motion.bone_to_object
  bones = rest_rig[None] @ delta
  quat, trans = gltf_writer.matrix_to_quat_trans(bones)
  return dataclasses.replace(
      rig, bone_quat=quat.astype(np.float32), bone_trans=trans.astype(np.float32),
      fps=motion.fps, root_to_world=motion.object_to_world)
