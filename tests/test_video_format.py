"""The video folder: round trip, atomic writes, and validation that names the file."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.data import contact_sheet
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError

T, RES = 6, 24


def twisting_box(num_frames=T, n=4):
  """A subdivided box (n x n quads per side) twisting about Y, in asset units of 50.

  Skinned to two named joints: "Root" below y = 0.2, its child "Neck" above.
  """
  g = np.linspace(-1, 1, n + 1)
  verts, faces = [], []
  for axis in range(3):
    for sign in (-1.0, 1.0):
      a, b = np.meshgrid(g, g, indexing="ij")
      p = np.zeros((n + 1, n + 1, 3))
      p[..., axis] = sign
      p[..., (axis + 1) % 3], p[..., (axis + 2) % 3] = a, b
      base = len(verts) * (n + 1) ** 2
      verts.append(p.reshape(-1, 3))
      for i in range(n):
        for j in range(n):
          q = [base + i * (n + 1) + j, base + (i + 1) * (n + 1) + j,
               base + (i + 1) * (n + 1) + j + 1, base + i * (n + 1) + j + 1]
          tri = [[q[0], q[1], q[2]], [q[0], q[2], q[3]]]
          faces += tri if sign > 0 else [t[::-1] for t in tri]
  rest = np.concatenate(verts) * np.array([1.0, 0.6, 0.4])
  frames = []
  for t in range(num_frames):
    ang = 0.8 * np.sin(2 * np.pi * t / num_frames) * (rest[:, 1] + 0.6)
    c, s = np.cos(ang), np.sin(ang)
    frames.append(np.stack([c * rest[:, 0] + s * rest[:, 2], rest[:, 1],
                            -s * rest[:, 0] + c * rest[:, 2]], -1))
  colors = (np.abs(rest) / np.abs(rest).max(0) * 200 + 30).astype(np.uint8)
  upper = np.clip(rest[:, 1] / 0.6 + 0.3, 0, 1)  # weight of the upper joint: 0.5 at y = 0.12
  return assets.MeshSequence(vertices=(np.stack(frames) * 50).astype(np.float32),
                             faces=np.asarray(faces, np.int32), fps=12.0, vertex_colors=colors,
                             rest_vertices=(rest * 50).astype(np.float32),
                             skin_weights=np.stack([1 - upper, upper], -1).astype(np.float32),
                             joint_parents=np.int32([-1, 0]), joint_names=("Root", "Neck"))


@pytest.fixture(scope="module")
def video():
  return synthetic.synthesize(twisting_box(), synthetic.SynthOptions(resolution=RES),
                              source={"asset": "twisting_box"}, progress=False)


@pytest.fixture
def folder(video, tmp_path):
  return video_lib.write_video(tmp_path / "vid", video)


def test_round_trip(video, folder):
  loaded = video_lib.load_video(folder)
  for name in ("rgb", "mask", "depth", "feature", "intrinsics", "w2c"):
    got, want = getattr(loaded, name), getattr(video, name)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  assert sorted(loaded.flow_fw) == sorted(loaded.flow_bw) == [1, 2, 4, 8]
  for gap in (1, 2, 4, 8):
    np.testing.assert_array_equal(loaded.flow_fw[gap], video.flow_fw[gap])
    np.testing.assert_array_equal(loaded.flow_bw[gap], video.flow_bw[gap])
  meta = json.loads((folder / "video.json").read_text())
  assert meta == loaded.meta
  assert meta["format"] == "animdreamer-video" and meta["version"] == video_lib.FORMAT_VERSION == 2
  sizes = (meta["num_frames"], meta["height"], meta["width"], meta["feature_dim"])
  assert sizes == (T, RES, RES, 16)
  assert meta["feature_kind"] == "oracle" and meta["camera_path"] == "orbit"
  assert meta["source"]["asset"] == "twisting_box"
  gt, want = loaded.gt, video.gt
  np.testing.assert_array_equal(gt.meshes.vertices, want.meshes.vertices)
  np.testing.assert_array_equal(gt.meshes.faces, want.meshes.faces)
  np.testing.assert_array_equal(gt.meshes.vertex_colors, want.meshes.vertex_colors)
  np.testing.assert_array_equal(gt.rest_vertices, want.rest_vertices)
  np.testing.assert_array_equal(gt.rest_faces, want.rest_faces)
  np.testing.assert_array_equal(gt.w2c, want.w2c)
  np.testing.assert_array_equal(gt.intrinsics, want.intrinsics)
  np.testing.assert_array_equal(gt.face_visible, want.face_visible)
  assert loaded.num_frames == T and loaded.flow_gaps == [1, 2, 4, 8]
  # gt/joints.npz: names, parents, each vertex's dominant joint (largest skin weight).
  assert gt.joints.names.tolist() == ["Root", "Neck"]
  np.testing.assert_array_equal(gt.joints.parents, [-1, 0])
  assert gt.joints.vertex_joint.dtype == np.int32
  upper = twisting_box().rest_vertices[:, 1] / 50 > 0.12  # where "Neck" weighs more
  np.testing.assert_array_equal(gt.joints.vertex_joint, upper.astype(np.int32))
  assert 0 < upper.mean() < 1


def test_mmap_and_no_gt(folder):
  loaded = video_lib.load_video(folder, mmap=True, load_gt=False)
  assert isinstance(loaded.rgb, np.memmap) and loaded.gt is None
  for p in (folder / "gt").iterdir():
    p.unlink()
  (folder / "gt").rmdir()
  assert video_lib.load_video(folder).gt is None


def test_contact_sheet_written(video, folder):
  png = cv2.imread(str(folder / "contact_sheet.png"))
  assert png is not None
  np.testing.assert_array_equal(png[..., ::-1], contact_sheet.make_contact_sheet(video))
  # header + 5 rows of RES pixels + 4 separators; label column + 5 frames.
  assert png.shape[0] == 14 + 5 * RES + 4 * 2


def test_existing_folder_and_overwrite(video, folder):
  with pytest.raises(UserError, match="already exists"):
    video_lib.write_video(folder, video)
  shorter = dataclasses.replace(video, meta={**video.meta, "fps": 5.0})
  video_lib.write_video(folder, shorter, overwrite=True)
  assert video_lib.load_video(folder).meta["fps"] == 5.0
  assert sorted(p.name for p in folder.parent.iterdir()) == ["vid"]


def test_failed_write_leaves_nothing(video, tmp_path, monkeypatch):
  calls = []

  def failing_save(path, arr):
    calls.append(path)
    if len(calls) == 4:
      raise OSError("disk full")
    np.lib.format.write_array(open(path, "wb"), arr)

  monkeypatch.setattr(video_lib.np, "save", failing_save)
  with pytest.raises(OSError):
    video_lib.write_video(tmp_path / "vid", video)
  assert list(tmp_path.iterdir()) == []


def test_invalid_video_is_not_written(video, tmp_path):
  bad = dataclasses.replace(video, mask=video.mask[:-1])
  with pytest.raises(UserError, match="mask.npy"):
    video_lib.write_video(tmp_path / "vid", bad)
  bad = dataclasses.replace(video, meta={k: v for k, v in video.meta.items() if k != "fps"})
  with pytest.raises(UserError, match="video.json: missing key 'fps'"):
    video_lib.write_video(tmp_path / "vid", bad)
  assert list(tmp_path.iterdir()) == []


def _edit_json(folder, **changes):
  meta = json.loads((folder / "video.json").read_text())
  meta.update(changes)
  (folder / "video.json").write_text(json.dumps(meta))


def _edit_npy(folder, name, fn):
  np.save(folder / name, fn(np.load(folder / name)))


def _drop_key(folder, name, key):
  with np.load(folder / name) as z:
    kept = {k: z[k] for k in z.files if k != key}
  np.savez(folder / name, **kept)


def _valid_flow_on_last_frame(folder):
  """Marks a foreground pixel of the last frame valid in flow_fw_1 (no frame T)."""
  v, u = np.argwhere(np.load(folder / "mask.npy")[-1])[0]
  flow = np.load(folder / "flow_fw_1.npy")
  flow[-1, v, u] = [1, 1, 1]
  np.save(folder / "flow_fw_1.npy", flow)


def _edit_joints(folder, **changes):
  """Rewrites gt/joints.npz with some arrays replaced."""
  with np.load(folder / "gt" / "joints.npz") as z:
    arrays = {k: z[k] for k in z.files}
  np.savez(folder / "gt" / "joints.npz", **{**arrays, **changes})


def _flip_rotation(a):
  a = a.copy()
  a[:, 0, :3] *= -1  # determinant -1
  return a


CORRUPTIONS = {
    "rgb_dtype": ("rgb.npy", lambda f: _edit_npy(f, "rgb.npy", lambda a: a.astype(np.float32))),
    "mask_values": ("mask.npy", lambda f: _edit_npy(f, "mask.npy", lambda a: a * 2)),
    "feature_frames": ("feature.npy", lambda f: _edit_npy(f, "feature.npy", lambda a: a[:-1])),
    "feature_norm": ("feature.npy", lambda f: _edit_npy(f, "feature.npy", lambda a: a * 2)),
    "depth_nan": ("depth.npy", lambda f: _edit_npy(
        f, "depth.npy", lambda a: np.where(a > 0, np.nan, a).astype(np.float32))),
    "depth_truncated": ("depth.npy", lambda f: (f / "depth.npy").write_bytes(
        (f / "depth.npy").read_bytes()[:300])),
    "flow_missing": ("flow_fw_2.npy", lambda f: (f / "flow_fw_2.npy").unlink()),
    "flow_past_end": ("flow_fw_1.npy: valid flow pointing outside", _valid_flow_on_last_frame),
    "flow_shape": ("flow_bw_4.npy", lambda f: _edit_npy(f, "flow_bw_4.npy", lambda a: a[..., :2])),
    "cameras_key": ("cameras.npz", lambda f: _drop_key(f, "cameras.npz", "w2c")),
    "cameras_rotation": ("cameras.npz", lambda f: np.savez(
        f / "cameras.npz", intrinsics=np.load(f / "cameras.npz")["intrinsics"],
        w2c=_flip_rotation(np.load(f / "cameras.npz")["w2c"]))),
    "json_syntax": ("video.json", lambda f: (f / "video.json").write_text("{not json")),
    "json_frames": ("video.json", lambda f: _edit_json(f, num_frames=T + 1)),
    "json_camera_path": ("video.json", lambda f: _edit_json(f, camera_path="spiral")),
    "json_version": ("video.json", lambda f: _edit_json(f, version=7)),
    "gt_face_visible": ("face_visible.npy", lambda f: _edit_npy(
        f, "gt/face_visible.npy", lambda a: a[:-1])),
    "gt_meshes_frames": ("meshes.npz", lambda f: assets.save_sequence_npz(
        f / "gt" / "meshes.npz", dataclasses.replace(
            assets.load_sequence_npz(f / "gt" / "meshes.npz"),
            vertices=assets.load_sequence_npz(f / "gt" / "meshes.npz").vertices[:-1]))),
    "gt_rest_missing": ("rest.npz", lambda f: (f / "gt" / "rest.npz").unlink()),
    "gt_joints_vertex_count": ("joints.npz vertex_joint: expected int32 (", lambda f: _edit_joints(
        f, vertex_joint=np.zeros(5, np.int32))),
    "gt_joints_vertex_range": ("joints.npz vertex_joint: joint index out of range", lambda f:
                               _edit_joints(f, vertex_joint=np.load(f / "gt" / "joints.npz")[
                                   "vertex_joint"] + 2)),
    "gt_joints_parents_shape": ("joints.npz parents", lambda f: _edit_joints(
        f, parents=np.int32([-1, 0, 1]))),
    "gt_joints_cycle": ("joints.npz parents: the joints form a cycle", lambda f: _edit_joints(
        f, parents=np.int32([1, 0]))),
    "gt_joints_names_dtype": ("joints.npz names", lambda f: _edit_joints(
        f, names=np.int32([1, 2]))),
    "gt_joints_pickled_names": ("joints.npz: cannot read", lambda f: _edit_joints(
        f, names=np.array(["Root", "Neck"], dtype=object))),
    "gt_joints_key": ("joints.npz: missing key", lambda f: _drop_key(f, "gt/joints.npz",
                                                                     "parents")),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_load_rejects_bad_files_naming_them(folder, case):
  file_name, corrupt = CORRUPTIONS[case]
  corrupt(folder)
  with pytest.raises(UserError) as info:
    video_lib.load_video(folder)
  assert file_name in str(info.value), str(info.value)
  assert "\n" not in str(info.value)


def test_folder_without_joints_still_loads(folder):
  """Folders written before gt/joints.npz existed (or of unrigged assets) have no chains."""
  (folder / "gt" / "joints.npz").unlink()
  assert video_lib.load_video(folder).gt.joints is None


def test_load_missing_folder(tmp_path):
  with pytest.raises(UserError, match="missing"):
    video_lib.load_video(tmp_path / "nothing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(UserError, match="video.json"):
    video_lib.load_video(tmp_path / "empty")
