"""The one on-disk video format that every stage reads (write, read, validate).

A video folder DIR holds (T frames of H x W pixels, C feature channels):

  video.json        {"format": "animdreamer-video", "version": 2, "num_frames": T,
                     "height": H, "width": W, "fps": f, "feature_dim": C,
                     "feature_kind": "oracle" | "dinov2" | "none", "flow_gaps": [1, 2, 4, 8],
                     "background": [r, g, b] (0..1), "camera_path": "orbit|arc|fixed|real",
                     "source": {...free-form provenance...},
                     "normalisation": {"center": [3], "scale": s}}
  rgb.npy           uint8   (T, H, W, 3)
  mask.npy          uint8   (T, H, W)     1 = foreground
  depth.npy         float32 (T, H, W)     camera-space z of the visible surface, 0 on background;
                                          optional (a real video has none)
  feature.npy       float16 (T, H, W, C)  unit-norm on foreground, 0 on background; absent when
                                          feature_kind is "none" (C = 0)
  flow_fw_<d>.npy   float16 (T, H, W, 3)  for each gap d: (dx, dy, valid), the pixel displacement
                                          of the surface point seen at pixel (u, v) of frame t to
                                          its projection in frame t + d; valid = 1 only if
                                          t + d < T, the pixel is foreground and the point is
                                          visible in frame t + d
  flow_bw_<d>.npy   float16 (T, H, W, 3)  the same from frame t to frame t - d
  cameras.npz       intrinsics float32 (T, 4) fx, fy, cx, cy; w2c float32 (T, 4, 4): the cameras
                    reconstruction uses (ground truth, or noisy when noise was requested)
  gt/               optional ground truth (synthetic videos)
    meshes.npz      mesh-sequence NPZ (README) in the normalised world frame
    rest.npz        vertices (V, 3), faces (F, 3): the rest-pose mesh, normalised the same way
    cameras.npz     noise-free intrinsics (T, 4) and w2c (T, 4, 4)
    face_visible.npy bool (F,): was the face seen in any frame
    joints.npz      optional (rigged assets): names str (J,), parents int32 (J,) (-1 for
                    roots), vertex_joint int32 (V,): each vertex's dominant joint (largest
                    skin weight); evaluation groups vertices into chains by joint name
  contact_sheet.png RGB / mask / flow / feature / depth of a few frames, for people

Normalisation: x_normalised = (x_asset - center) * scale. Cameras follow OpenCV
(x right, y down, z forward; world-to-camera `w2c`); pixel (u, v) has its centre
at (u + 0.5, v + 0.5), so frame t's pixel centre p moves to p + (dx, dy).

Version 1 folders (depth.npy and feature.npy required) are read unchanged.

`load_video` checks every file (presence, dtype, shape, frame counts, basic value
ranges) and raises `UserError` naming the file; `write_video` runs the same checks
before writing, writes into DIR.tmp-xxxx next to DIR and renames it at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import numpy as np

from animdreamer_jax import assets
from animdreamer_jax import files
from animdreamer_jax.data import contact_sheet as sheet
from animdreamer_jax.errors import UserError

FORMAT_NAME = "animdreamer-video"
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)  # version 1: depth.npy and feature.npy always present
CAMERA_PATHS = ("orbit", "arc", "fixed", "real")
FEATURE_KINDS = ("oracle", "dinov2", "none")
DEFAULT_FLOW_GAPS = (1, 2, 4, 8)
# Keys the producer supplies in `meta`; the others are derived from the arrays.
_PRODUCER_KEYS = ("fps", "feature_kind", "background", "camera_path", "source", "normalisation")
_FEATURE_NORM_TOLERANCE = 1e-2  # float16 storage of unit vectors
JOINTS_KEYS = ("names", "parents", "vertex_joint")  # gt/joints.npz = GroundTruthJoints' fields


@dataclasses.dataclass
class GroundTruthJoints:
  """The ground truth's skeleton, as much as evaluation needs (gt/joints.npz).

  Attributes:
    names: str (J,) joint names as the asset spells them.
    parents: int32 (J,) parent joint, -1 for roots.
    vertex_joint: int32 (V,) each vertex's dominant joint (largest skin weight).
  """
  names: np.ndarray
  parents: np.ndarray
  vertex_joint: np.ndarray


@dataclasses.dataclass
class GroundTruth:
  """Ground truth of a synthetic video (all in the normalised world frame).

  Attributes:
    meshes: MeshSequence (animdreamer_jax.assets) with vertices (T, V, 3), faces (F, 3), ...
    rest_vertices: float32 (V, 3) rest/bind-pose mesh.
    rest_faces: int32 (F, 3).
    intrinsics: float32 (T, 4) noise-free fx, fy, cx, cy.
    w2c: float32 (T, 4, 4) noise-free world-to-camera poses.
    face_visible: bool (F,) whether the face was seen in any frame.
    joints: the skeleton, when the asset has named joints (older folders: None).
  """
  meshes: Any
  rest_vertices: np.ndarray
  rest_faces: np.ndarray
  intrinsics: np.ndarray
  w2c: np.ndarray
  face_visible: np.ndarray
  joints: GroundTruthJoints | None = None


@dataclasses.dataclass
class Video:
  """A video folder in memory (NumPy arrays; shapes as in the module docstring).

  `meta` is the content of video.json; num_frames/height/width/feature_dim/
  flow_gaps/format/version are rewritten from the arrays by `write_video`.
  """
  rgb: np.ndarray
  mask: np.ndarray
  depth: np.ndarray | None  # None: no depth (real videos)
  feature: np.ndarray  # (T, H, W, 0) when feature_kind is "none"
  flow_fw: dict[int, np.ndarray]
  flow_bw: dict[int, np.ndarray]
  intrinsics: np.ndarray
  w2c: np.ndarray
  meta: dict
  gt: GroundTruth | None = None

  @property
  def num_frames(self) -> int:
    return int(self.rgb.shape[0])

  @property
  def height(self) -> int:
    return int(self.rgb.shape[1])

  @property
  def width(self) -> int:
    return int(self.rgb.shape[2])

  @property
  def feature_dim(self) -> int:
    return int(self.feature.shape[-1])

  @property
  def flow_gaps(self) -> list[int]:
    return sorted(self.flow_fw)


# ----------------------------------------------------------------------------- checks


def _describe(a: np.ndarray) -> str:
  return f"{a.dtype} {tuple(a.shape)}"


def _check_array(name: str, a: Any, dtype, shape: tuple) -> np.ndarray:
  """Dtype and shape check; None in `shape` matches any size."""
  if not isinstance(a, np.ndarray):
    raise UserError(f"{name}: expected a NumPy array, got {type(a).__name__}")
  want = str(tuple("?" if s is None else s for s in shape)).replace("'", "")
  if a.dtype != np.dtype(dtype) or a.ndim != len(shape) or any(
      s is not None and s != n for s, n in zip(shape, a.shape)):
    raise UserError(f"{name}: expected {np.dtype(dtype)} {want}, got {_describe(a)}")
  return a


def _check_finite(name: str, a: np.ndarray) -> None:
  if not np.all(np.isfinite(a)):
    raise UserError(f"{name}: contains NaN or infinite values")


def _check_cameras(name: str, intrinsics: np.ndarray, w2c: np.ndarray, t: int) -> None:
  _check_array(f"{name} intrinsics", intrinsics, np.float32, (t, 4))
  _check_array(f"{name} w2c", w2c, np.float32, (t, 4, 4))
  _check_finite(f"{name} intrinsics", intrinsics)
  _check_finite(f"{name} w2c", w2c)
  if np.any(intrinsics[:, :2] <= 0):
    raise UserError(f"{name} intrinsics: focal lengths must be positive")
  if not np.allclose(w2c[:, 3], [0, 0, 0, 1], atol=1e-6):
    raise UserError(f"{name} w2c: last row must be [0, 0, 0, 1]")
  rot = w2c[:, :3, :3].astype(np.float64)
  err = np.abs(rot @ np.swapaxes(rot, 1, 2) - np.eye(3)).max()
  det = np.linalg.det(rot).min()
  if err > 1e-3 or det <= 0:
    raise UserError(f"{name} w2c: rotation part is not a proper rotation "
                    f"(orthonormality error {err:.2g}, smallest determinant {det:.3g})")


def _check_meta(name: str, meta: Any) -> None:
  if not isinstance(meta, dict):
    raise UserError(f"{name}: expected a JSON object")
  for key in _PRODUCER_KEYS:
    if key not in meta:
      raise UserError(f"{name}: missing key '{key}'")
  if meta["feature_kind"] not in FEATURE_KINDS:
    raise UserError(f"{name}: feature_kind must be one of {list(FEATURE_KINDS)}, "
                    f"got {meta['feature_kind']!r}")
  if meta["camera_path"] not in CAMERA_PATHS:
    raise UserError(f"{name}: camera_path must be one of {list(CAMERA_PATHS)}, "
                    f"got {meta['camera_path']!r}")
  try:
    fps = float(meta["fps"])
    background = np.asarray(meta["background"], dtype=np.float64)
    center = np.asarray(meta["normalisation"]["center"], dtype=np.float64)
    scale = float(meta["normalisation"]["scale"])
  except (TypeError, ValueError, KeyError) as e:
    raise UserError(f"{name}: malformed fps/background/normalisation ({e})") from e
  if not fps > 0:
    raise UserError(f"{name}: fps must be positive, got {meta['fps']!r}")
  if background.shape != (3,) or np.any(background < 0) or np.any(background > 1):
    raise UserError(f"{name}: background must be 3 numbers in [0, 1], got {meta['background']!r}")
  if center.shape != (3,) or not np.all(np.isfinite(center)) or not scale > 0:
    raise UserError(f"{name}: normalisation needs center [3] and a positive scale")
  if not isinstance(meta["source"], dict):
    raise UserError(f"{name}: source must be a JSON object")


def validate_video(video: Video, where: str = "video") -> None:
  """Checks a Video in memory; raises UserError naming the offending part.

  `where` prefixes names (the folder when loading), so messages name files.
  """
  p = lambda f: f"{where}/{f}"  # noqa: E731
  rgb = _check_array(p("rgb.npy"), video.rgb, np.uint8, (None, None, None, 3))
  t, h, w = rgb.shape[:3]
  if t < 1 or h < 1 or w < 1:
    raise UserError(f"{p('rgb.npy')}: empty video {tuple(rgb.shape)}")
  mask = _check_array(p("mask.npy"), video.mask, np.uint8, (t, h, w))
  if mask.max(initial=0) > 1:
    raise UserError(f"{p('mask.npy')}: values must be 0 or 1")
  fg = mask.astype(bool)
  if video.depth is not None:
    depth = _check_array(p("depth.npy"), video.depth, np.float32, (t, h, w))
    _check_finite(p("depth.npy"), depth)
    if np.any(depth < 0) or np.any(depth[~fg] != 0):
      raise UserError(f"{p('depth.npy')}: depth must be >= 0 and 0 on background")
  feature = _check_array(p("feature.npy"), video.feature, np.float16, (t, h, w, None))
  no_features = isinstance(video.meta, dict) and video.meta.get("feature_kind") == "none"
  if no_features and feature.shape[-1]:
    raise UserError(f"{p('video.json')}: feature_kind is 'none' but there are "
                    f"{feature.shape[-1]} feature channels")
  if not no_features and feature.shape[-1] < 1:
    raise UserError(f"{p('feature.npy')}: no feature channels")
  _check_finite(p("feature.npy"), feature)
  norm = np.sqrt(np.einsum("thwc,thwc->thw", feature, feature, dtype=np.float32))
  if feature.shape[-1] and (np.any(np.abs(norm[fg] - 1) > _FEATURE_NORM_TOLERANCE)
                            or np.any(norm[~fg] != 0)):
    raise UserError(f"{p('feature.npy')}: features must be unit-norm on foreground and 0 "
                    "on background")
  if not video.flow_fw or sorted(video.flow_fw) != sorted(video.flow_bw):
    raise UserError(f"{where}: forward and backward flows need the same non-empty set of gaps")
  for direction, flows in (("fw", video.flow_fw), ("bw", video.flow_bw)):
    for gap, flow in flows.items():
      name = p(f"flow_{direction}_{gap}.npy")
      if not isinstance(gap, (int, np.integer)) or gap < 1:
        raise UserError(f"{name}: flow gap must be a positive integer")
      _check_array(name, flow, np.float16, (t, h, w, 3))
      _check_finite(name, flow)
      valid = flow[..., 2]
      if np.any((valid != 0) & (valid != 1)):
        raise UserError(f"{name}: valid channel must be 0 or 1")
      if np.any(valid.astype(bool) & ~fg):
        raise UserError(f"{name}: valid flow on a background pixel")
      # The partner frame must exist: the last/first `gap` frames have no flow.
      edge = valid[max(t - gap, 0):] if direction == "fw" else valid[:gap]
      if np.any(edge != 0):
        raise UserError(f"{name}: valid flow pointing outside the video")
  _check_cameras(p("cameras.npz"), video.intrinsics, video.w2c, t)
  _check_meta(p("video.json"), video.meta)
  if video.gt is not None:
    _validate_gt(video.gt, t, p("gt"))


def _validate_gt(gt: GroundTruth, t: int, where: str) -> None:
  verts = np.asarray(gt.meshes.vertices)
  faces = np.asarray(gt.meshes.faces)
  if verts.ndim != 3 or verts.shape[0] != t or verts.shape[2] != 3:
    raise UserError(f"{where}/meshes.npz: vertices must be (T={t}, V, 3), got {verts.shape}")
  v = verts.shape[1]
  _check_array(f"{where}/rest.npz vertices", gt.rest_vertices, np.float32, (v, 3))
  _check_finite(f"{where}/rest.npz vertices", gt.rest_vertices)
  rest_faces = _check_array(f"{where}/rest.npz faces", gt.rest_faces, np.int32, (None, 3))
  if faces.shape != rest_faces.shape or not np.array_equal(faces, rest_faces):
    raise UserError(f"{where}/rest.npz: faces differ from meshes.npz faces")
  if rest_faces.size and (rest_faces.min() < 0 or rest_faces.max() >= v):
    raise UserError(f"{where}/rest.npz faces: vertex index out of range [0, {v})")
  _check_cameras(f"{where}/cameras.npz", gt.intrinsics, gt.w2c, t)
  _check_array(f"{where}/face_visible.npy", gt.face_visible, np.bool_, (rest_faces.shape[0],))
  if gt.joints is not None:
    _validate_joints(gt.joints, v, f"{where}/joints.npz")


def _validate_joints(joints: GroundTruthJoints, num_vertices: int, name: str) -> None:
  names = joints.names
  if not isinstance(names, np.ndarray) or names.dtype.kind != "U" or names.ndim != 1 \
      or names.size == 0:
    raise UserError(f"{name} names: expected a non-empty string array (J,), got "
                    f"{_describe(np.asarray(names))}")
  num_joints = names.shape[0]
  parents = _check_array(f"{name} parents", joints.parents, np.int32, (num_joints,))
  if np.any(parents < -1) or np.any(parents >= num_joints) or \
      np.any(parents == np.arange(num_joints)):
    raise UserError(f"{name} parents: each must be -1 or another joint's index")
  if _has_cycle(parents):
    raise UserError(f"{name} parents: the joints form a cycle, not a tree")
  vertex_joint = _check_array(f"{name} vertex_joint", joints.vertex_joint, np.int32,
                              (num_vertices,))
  if np.any(vertex_joint < 0) or np.any(vertex_joint >= num_joints):
    raise UserError(f"{name} vertex_joint: joint index out of range [0, {num_joints})")


def _has_cycle(parents: np.ndarray) -> bool:
  """Whether following parents from some joint never reaches a root (-1)."""
  ancestor = parents.copy()
  # A tree of J joints is at most J deep: after J steps up every walk has left it.
  for _ in range(parents.size):
    ancestor = np.where(ancestor >= 0, parents[np.maximum(ancestor, 0)], -1)
  return bool(np.any(ancestor >= 0))


# ----------------------------------------------------------------------------- reading


def _load_npy(path: pathlib.Path, mmap: bool) -> np.ndarray:
  if not path.is_file():
    raise UserError(f"{path}: missing")
  try:
    a = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise UserError(f"{path}: cannot read as .npy ({e})") from e
  if not isinstance(a, np.ndarray):
    raise UserError(f"{path}: not a single .npy array")
  return a


def _load_npz(path: pathlib.Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
  if not path.is_file():
    raise UserError(f"{path}: missing")
  try:
    with np.load(path, allow_pickle=False) as z:
      missing = [k for k in keys if k not in z.files]
      if missing:
        raise UserError(f"{path}: missing key(s) {missing} (has {sorted(z.files)})")
      return {k: z[k] for k in keys}
  except UserError:
    raise
  except Exception as e:  # zipfile/np errors: corrupt archive
    raise UserError(f"{path}: cannot read as .npz ({e})") from e


def load_video(path: str | os.PathLike, mmap: bool = False, load_gt: bool = True) -> Video:
  """Reads and validates a video folder.

  Args:
    path: the folder.
    mmap: memory-map the large arrays instead of reading them (read-only).
    load_gt: also read gt/ when present.

  Returns:
    Video (gt is None when the folder has no gt/ or load_gt is False).

  Raises:
    UserError: naming the file and what is wrong with it.
  """
  root = pathlib.Path(path)
  if not root.is_dir():
    raise UserError(f"{root}: not a video folder (missing)")
  meta_path = root / "video.json"
  if not meta_path.is_file():
    raise UserError(f"{meta_path}: missing (not a video folder)")
  try:
    meta = json.loads(meta_path.read_text())
  except (OSError, ValueError) as e:
    raise UserError(f"{meta_path}: cannot read as JSON ({e})") from e
  if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
    raise UserError(f"{meta_path}: not an {FORMAT_NAME} file")
  version = meta.get("version")
  if version not in READ_VERSIONS:
    raise UserError(f"{meta_path}: unsupported version {version!r} "
                    f"(this build reads {', '.join(map(str, READ_VERSIONS))})")
  try:
    gaps = [int(g) for g in meta["flow_gaps"]]
    declared = {k: int(meta[k]) for k in ("num_frames", "height", "width", "feature_dim")}
  except (KeyError, TypeError, ValueError) as e:
    raise UserError(f"{meta_path}: missing or malformed frame/size/gap entries ({e})") from e

  arrays = {name: _load_npy(root / f"{name}.npy", mmap) for name in ("rgb", "mask")}
  # Version 2: depth is optional, and a video without features has no feature.npy.
  optional = version >= 2
  arrays["depth"] = (_load_npy(root / "depth.npy", mmap)
                     if not optional or (root / "depth.npy").is_file() else None)
  if optional and meta.get("feature_kind") == "none":
    arrays["feature"] = np.zeros(arrays["rgb"].shape[:3] + (0,), np.float16)
  else:
    arrays["feature"] = _load_npy(root / "feature.npy", mmap)
  flow_fw = {g: _load_npy(root / f"flow_fw_{g}.npy", mmap) for g in gaps}
  flow_bw = {g: _load_npy(root / f"flow_bw_{g}.npy", mmap) for g in gaps}
  cams = _load_npz(root / "cameras.npz", ("intrinsics", "w2c"))
  gt = None
  if load_gt and (root / "gt").is_dir():
    gt = _load_gt(root / "gt")
  video = Video(flow_fw=flow_fw, flow_bw=flow_bw, intrinsics=cams["intrinsics"],
                w2c=cams["w2c"], meta=meta, gt=gt, **arrays)
  validate_video(video, str(root))
  actual = {"num_frames": video.num_frames, "height": video.height, "width": video.width,
            "feature_dim": video.feature_dim}
  for key, value in declared.items():
    if actual[key] != value:
      raise UserError(f"{meta_path}: {key} is {value} but the arrays have {actual[key]}")
  return video


def _load_gt(root: pathlib.Path) -> GroundTruth:
  meshes_path = root / "meshes.npz"
  if not meshes_path.is_file():
    raise UserError(f"{meshes_path}: missing")
  meshes = assets.load_sequence_npz(meshes_path)
  rest = _load_npz(root / "rest.npz", ("vertices", "faces"))
  cams = _load_npz(root / "cameras.npz", ("intrinsics", "w2c"))
  joints = None
  if (root / "joints.npz").is_file():  # optional: older folders and unrigged assets have none
    joints = GroundTruthJoints(**_load_npz(root / "joints.npz", JOINTS_KEYS))
  return GroundTruth(meshes=meshes, rest_vertices=rest["vertices"], rest_faces=rest["faces"],
                     intrinsics=cams["intrinsics"], w2c=cams["w2c"],
                     face_visible=_load_npy(root / "face_visible.npy", mmap=False),
                     joints=joints)


# ----------------------------------------------------------------------------- writing


def write_video(path: str | os.PathLike, video: Video, overwrite: bool = False,
                contact_sheet: bool = True) -> pathlib.Path:
  """Validates `video` and writes it as a folder, atomically.

  Everything goes into a temporary folder next to DIR (`files.atomic_folder`),
  renamed to DIR only once complete, so an interrupted write never leaves a
  folder that looks done.

  Args:
    path: the folder DIR to create.
    video: the Video; meta must have the producer keys (fps, feature_kind,
      background, camera_path, source, normalisation).
    overwrite: replace an existing DIR (otherwise an existing DIR is an error).
    contact_sheet: also render contact_sheet.png.

  Returns:
    The folder path.
  """
  root = pathlib.Path(path)
  if root.exists() and not overwrite:
    raise UserError(f"{root}: already exists (pass overwrite / --overwrite to replace it)")
  validate_video(video, str(root))
  meta = dict(video.meta)
  meta.update(format=FORMAT_NAME, version=FORMAT_VERSION, num_frames=video.num_frames,
              height=video.height, width=video.width, feature_dim=video.feature_dim,
              flow_gaps=video.flow_gaps)
  with files.atomic_folder(root, replace=overwrite) as tmp:
    (tmp / "video.json").write_text(json.dumps(_jsonable(meta), indent=1) + "\n")
    for name in ("rgb", "mask"):
      np.save(tmp / f"{name}.npy", getattr(video, name))
    if video.depth is not None:
      np.save(tmp / "depth.npy", video.depth)
    if video.feature_dim:
      np.save(tmp / "feature.npy", video.feature)
    for gap in video.flow_gaps:
      np.save(tmp / f"flow_fw_{gap}.npy", video.flow_fw[gap])
      np.save(tmp / f"flow_bw_{gap}.npy", video.flow_bw[gap])
    np.savez(tmp / "cameras.npz", intrinsics=video.intrinsics, w2c=video.w2c)
    if video.gt is not None:
      _write_gt(tmp / "gt", video.gt)
    if contact_sheet:
      files.save_png(tmp / "contact_sheet.png", sheet.make_contact_sheet(video))
  return root


def _write_gt(root: pathlib.Path, gt: GroundTruth) -> None:
  root.mkdir()
  assets.save_sequence_npz(root / "meshes.npz", gt.meshes)
  np.savez(root / "rest.npz", vertices=gt.rest_vertices, faces=gt.rest_faces)
  np.savez(root / "cameras.npz", intrinsics=gt.intrinsics, w2c=gt.w2c)
  np.save(root / "face_visible.npy", gt.face_visible)
  if gt.joints is not None:
    np.savez(root / "joints.npz", **{key: getattr(gt.joints, key) for key in JOINTS_KEYS})


def _jsonable(x: Any) -> Any:
  """NumPy scalars/arrays -> plain JSON values."""
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, pathlib.PurePath):
    return str(x)
  return x
