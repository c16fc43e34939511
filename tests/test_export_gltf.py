"""Rigged glb writer: structure, round trip through the project's loader, LBS vs the model.

References are written here as slow loops (per frame, vertex and influence)
with scipy rotations; the node-marked tests pose the same files with three.js
and run the Khronos glTF validator (skipped without Node / npm packages).
"""

from __future__ import annotations

import json
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.assets import load_gltf
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import rig_from_run
from animdreamer_jax.geometry import transforms_np

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOLS = REPO / "tests" / "tools"


# ----------------------------------------------------------------------------
# A bending cylinder with 3 Gaussian-like bones (any bone count works).


def cylinder_mesh(rings: int = 10, segments: int = 12, radius: float = 0.1, length: float = 1.0):
  vertices = []
  for i in range(rings):
    y = length * i / (rings - 1)
    for j in range(segments):
      a = 2 * np.pi * j / segments
      vertices.append([radius * np.cos(a), y, radius * np.sin(a)])
  faces = []
  for i in range(rings - 1):
    for j in range(segments):
      a, b = i * segments + j, i * segments + (j + 1) % segments
      faces += [[a, a + segments, b], [b, a + segments, b + segments]]
  return np.asarray(vertices, np.float32), np.asarray(faces, np.int32)


def bending_rig(num_bones: int = 3, num_frames: int = 6, root_motion: bool = True,
                seed: int = 0) -> gltf_writer.Rig:
  """Bones along +Y; frame t bends bone k by 12 t k degrees about z (+ a drift)."""
  rng = np.random.default_rng(seed)
  vertices, faces = cylinder_mesh()
  centres = np.stack([np.zeros(num_bones), (np.arange(num_bones) + 0.5) / num_bones,
                      np.zeros(num_bones)], 1)
  d2 = ((vertices[:, None, :] - centres[None]) ** 2).sum(-1)
  weights = np.exp(-d2 / (2 * (0.6 / num_bones) ** 2))
  weights /= weights.sum(1, keepdims=True)
  rest_rot = Rotation.from_rotvec(rng.normal(size=(num_bones, 3)) * 0.4)
  bone_quat = np.zeros((num_frames, num_bones, 4))
  bone_trans = np.zeros((num_frames, num_bones, 3))
  for t in range(num_frames):
    for k in range(num_bones):
      bend = Rotation.from_euler("z", 12.0 * t * (k + 1), degrees=True)
      bone_quat[t, k] = (bend * rest_rot[k]).as_quat()
      bone_trans[t, k] = bend.apply(centres[k]) + [0.01 * t, 0.0, 0.0]
  root = None
  if root_motion:
    root = np.tile(np.eye(4), (num_frames, 1, 1))
    root[:, :3, :3] = Rotation.from_euler("y", 15.0 * np.arange(num_frames)[:, None],
                                          degrees=True).as_matrix()
    root[:, :3, 3] = np.stack([0.1 * np.arange(num_frames), np.zeros(num_frames),
                               -0.05 * np.arange(num_frames)], 1)
  colors = rng.integers(0, 256, size=vertices.shape).astype(np.uint8)
  return gltf_writer.Rig(rest_vertices=vertices, faces=faces,
                         skin_weights=weights.astype(np.float32),
                         rest_bone_quat=rest_rot.as_quat(), rest_bone_trans=centres,
                         bone_quat=bone_quat, bone_trans=bone_trans, fps=12.0,
                         root_to_world=root, vertex_colors=colors, name="cylinder")


def slow_lbs_reference(rig: gltf_writer.Rig, root_motion: bool = True) -> np.ndarray:
  """Loop reference of what a glTF player shows: top-4 renormalised LBS, then the root."""
  verts = np.asarray(rig.rest_vertices, np.float64)
  weights = np.asarray(rig.skin_weights, np.float64)
  out = np.zeros((rig.num_frames,) + verts.shape)
  for t in range(rig.num_frames):
    root = np.eye(4)
    if root_motion and rig.root_to_world is not None:
      root = np.asarray(rig.root_to_world[t], np.float64)
    skins = []
    for b in range(rig.num_bones):
      pose, rest = np.eye(4), np.eye(4)
      pose[:3, :3] = Rotation.from_quat(rig.bone_quat[t, b]).as_matrix()
      pose[:3, 3] = rig.bone_trans[t, b]
      rest[:3, :3] = Rotation.from_quat(rig.rest_bone_quat[b]).as_matrix()
      rest[:3, 3] = rig.rest_bone_trans[b]
      skins.append(root @ pose @ np.linalg.inv(rest))
    for v in range(verts.shape[0]):
      order = sorted(range(rig.num_bones), key=lambda b: (-weights[v, b], b))[:4]
      total = sum(weights[v, b] for b in order)
      p = np.zeros(3)
      for b in order:
        p += weights[v, b] / total * (skins[b] @ np.append(verts[v], 1.0))[:3]
      out[t, v] = p
  return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  rig = bending_rig()
  path = tmp_path_factory.mktemp("glb") / "cylinder.glb"
  info = gltf_writer.write_glb(path, rig)
  return rig, path, info


def _glb_json(path: pathlib.Path) -> dict:
  raw = path.read_bytes()
  magic, version, length = struct.unpack_from("<III", raw, 0)
  assert (magic, version, length) == (0x46546C67, 2, len(raw))
  json_len, json_type = struct.unpack_from("<II", raw, 12)
  assert json_type == 0x4E4F534A and json_len % 4 == 0
  bin_len, bin_type = struct.unpack_from("<II", raw, 20 + json_len)
  assert bin_type == 0x004E4942 and bin_len % 4 == 0
  assert 28 + json_len + bin_len == len(raw)
  return json.loads(raw[20:20 + json_len])


# ----------------------------------------------------------------------------
# Structure.


def test_glb_structure(written):
  rig, path, info = written
  doc = _glb_json(path)
  assert info["num_joints"] == 4 and info["num_frames"] == 6 and info["root_motion"]
  skin = doc["skins"][0]
  assert [doc["nodes"][j]["name"] for j in skin["joints"]] == ["root", "bone_000", "bone_001",
                                                               "bone_002"]
  assert doc["scenes"][0]["nodes"] == [0, 1]  # skinned mesh node at the scene root
  assert "translation" not in doc["nodes"][0] and "matrix" not in doc["nodes"][0]
  prim = doc["meshes"][0]["primitives"][0]
  assert set(prim["attributes"]) == {"POSITION", "NORMAL", "COLOR_0", "JOINTS_0", "WEIGHTS_0"}
  pos = doc["accessors"][prim["attributes"]["POSITION"]]
  np.testing.assert_allclose(pos["min"], rig.rest_vertices.min(0), atol=1e-7)
  np.testing.assert_allclose(pos["max"], rig.rest_vertices.max(0), atol=1e-7)
  anim = doc["animations"][0]
  assert anim["name"] == "motion"
  # root + 3 bones, rotation and translation each, all on one time accessor.
  assert len(anim["channels"]) == 8
  assert len({s["input"] for s in anim["samplers"]}) == 1
  times = doc["accessors"][anim["samplers"][0]["input"]]
  assert times["count"] == 6 and times["max"] == [pytest.approx(5 / 12)]


def test_rest_mesh_colours_and_bind_pose_round_trip(written):
  rig, path, _ = written
  asset = load_gltf(path)
  np.testing.assert_allclose(asset.rest_vertices, rig.rest_vertices, atol=1e-7)
  np.testing.assert_array_equal(asset.faces, rig.faces)
  # sRGB uint8 -> linear float32 COLOR_0 -> sRGB uint8 is exact.
  np.testing.assert_array_equal(asset.vertex_colors, rig.vertex_colors)
  # Rest joint positions = rest bone centres (root at the origin).
  np.testing.assert_allclose(asset.rest_joint_positions[1:], rig.rest_bone_trans, atol=1e-6)
  np.testing.assert_allclose(asset.rest_joint_positions[0], 0.0, atol=1e-7)


def test_loader_pose_matches_slow_lbs_reference(written):
  rig, path, _ = written
  asset = load_gltf(path)
  posed = asset.pose("motion", np.arange(rig.num_frames) / rig.fps)
  np.testing.assert_allclose(posed, slow_lbs_reference(rig), atol=1e-5)
  # Joint positions follow root * bone.
  joints = asset.joint_world_positions("motion", np.arange(rig.num_frames) / rig.fps)
  expected = (np.einsum("tij,tbj->tbi", rig.root_to_world[:, :3, :3], rig.bone_trans)
              + rig.root_to_world[:, None, :3, 3])
  np.testing.assert_allclose(joints[:, 1:], expected, atol=1e-5)


def test_lbs_mode_agrees_and_dqs_does_not(written):
  """The model's forward warp with linear blending is what the player shows (3 bones:
  no top-4 truncation); dual-quaternion blending differs on the bent cylinder."""
  rig, path, _ = written
  posed = load_gltf(path).pose("motion", np.arange(rig.num_frames) / rig.fps)
  model = {b: transforms_np.to_camera(
               rig_from_run.forward_warp_np(rig, rig.skin_weights, b), rig.root_to_world)
           for b in ("lbs", "dqs")}
  assert np.abs(posed - model["lbs"]).max() < 1e-5
  assert np.abs(posed - model["dqs"]).max() > 1e-3


def test_no_root_motion_stays_in_object_frame(tmp_path):
  rig = bending_rig()
  path = tmp_path / "still.glb"
  info = gltf_writer.write_glb(path, rig, root_motion=False)
  assert not info["root_motion"]
  doc = _glb_json(path)
  assert all(c["target"]["node"] != 1 for c in doc["animations"][0]["channels"])
  posed = load_gltf(path).pose("motion", np.arange(rig.num_frames) / rig.fps)
  np.testing.assert_allclose(posed, slow_lbs_reference(rig, root_motion=False), atol=1e-5)


def test_many_bones_use_top_four(tmp_path):
  """7 bones: the player keeps the 4 largest weights (loop reference does the same)."""
  rig = bending_rig(num_bones=7, num_frames=3, root_motion=False, seed=3)
  path = tmp_path / "seven.glb"
  gltf_writer.write_glb(path, rig)
  posed = load_gltf(path).pose("motion", np.arange(3) / rig.fps)
  np.testing.assert_allclose(posed, slow_lbs_reference(rig, root_motion=False), atol=1e-5)


# ----------------------------------------------------------------------------
# Helpers.


def test_top_k_influences_vs_loop():
  rng = np.random.default_rng(1)
  weights = rng.uniform(size=(50, 6))
  weights[0] = [0.2, 0.2, 0.2, 0.2, 0.2, 0.0]  # ties: smaller index first
  bones, top = gltf_writer.top_k_influences(weights, 4)
  for v in range(weights.shape[0]):
    order = sorted(range(6), key=lambda b: (-weights[v, b], b))[:4]
    assert list(bones[v]) == order
    np.testing.assert_allclose(top[v], weights[v, order] / weights[v, order].sum(), rtol=1e-12)
  bones, top = gltf_writer.top_k_influences(np.array([[0.25, 0.75]]), 4)
  assert list(bones[0]) == [1, 0, -1, -1]
  np.testing.assert_allclose(top[0], [0.75, 0.25, 0, 0])


def test_vertex_normals_point_outwards():
  vertices, faces = cylinder_mesh()
  normals = gltf_writer.vertex_normals(vertices, faces)
  np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)
  middle = (vertices[:, 1] > 0.05) & (vertices[:, 1] < 0.95)
  radial = vertices[middle] * [1, 0, 1]
  cos = np.sum(normals[middle] * radial, 1) / np.linalg.norm(radial, axis=1)
  assert np.all(cos > 0.99)


def test_inverse_bind_matrices(written):
  rig, path, _ = written
  asset = load_gltf(path)
  ibm = gltf_writer.inverse_bind_matrices(rig)
  for b in range(rig.num_bones):
    rest = np.eye(4)
    rest[:3, :3] = Rotation.from_quat(rig.rest_bone_quat[b]).as_matrix()
    rest[:3, 3] = rig.rest_bone_trans[b]
    np.testing.assert_allclose(ibm[b + 1] @ rest, np.eye(4), atol=1e-12)
  np.testing.assert_allclose(ibm[0], np.eye(4))
  del asset


# ----------------------------------------------------------------------------
# Bad input: one clear error, nothing written.


@pytest.mark.parametrize("field,value,message", [
    ("skin_weights", np.ones((5, 3)), "skin_weights must be"),
    ("bone_quat", np.zeros((6, 3, 4)), "not unit quaternions"),
    ("faces", np.array([[0, 1, 100000]]), "faces index vertices"),
    ("fps", 0.0, "fps must be positive"),
    ("bone_trans", np.zeros((5, 3, 3)), "bone_trans must be"),
    ("root_to_world", np.tile(np.diag([2.0, 1, 1, 1]), (6, 1, 1)), "rigid"),
    ("vertex_colors", np.zeros((3, 3), np.uint8), "vertex_colors must be"),
])
def test_bad_rig_raises_and_writes_nothing(tmp_path, field, value, message):
  import dataclasses  # pylint: disable=g-import-not-at-top
  rig = dataclasses.replace(bending_rig(), **{field: value})
  path = tmp_path / "bad.glb"
  with pytest.raises(UserError, match=message):
    gltf_writer.write_glb(path, rig)
  assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------
# Node: Khronos validator and three.js.


def _validator_available() -> bool:
  return shutil.which("node") is not None and gltf_writer.khronos_validator_dir() is not None


@pytest.mark.node
@pytest.mark.skipif(not _validator_available(),
                    reason="needs node and `npm ci --prefix animdreamer_jax/export/viewer_assets`")
@pytest.mark.parametrize("num_bones,root_motion", [(3, True), (7, False), (1, True), (2, False)])
def test_khronos_validator_no_errors(tmp_path, num_bones, root_motion):
  rig = bending_rig(num_bones=num_bones, num_frames=4, root_motion=root_motion)
  path = tmp_path / "v.glb"
  gltf_writer.write_glb(path, rig)
  report = gltf_writer.khronos_validate(path)
  assert report["numErrors"] == 0, report["messages"]
  assert report["numWarnings"] == 0, report["messages"]


def _three_available() -> bool:
  return shutil.which("node") is not None and (TOOLS / "node_modules" / "three").is_dir()


@pytest.mark.node
@pytest.mark.skipif(not _three_available(),
                    reason="needs node and `cd tests/tools && npm install` (three.js)")
def test_threejs_poses_like_the_loader_and_the_model_lbs(written, tmp_path):
  rig, path, _ = written
  out = tmp_path / "three.npz"
  # three.js loops at the clip's end (t = duration shows frame 0): stop short of it.
  times = np.arange(rig.num_frames - 1) / rig.fps
  times = np.append(times, (rig.num_frames - 1) / rig.fps - 1e-4)
  subprocess.run(["node", str(TOOLS / "threejs_pose.mjs"), "--asset", str(path), "--out",
                  str(out), "--times", ",".join(f"{t:.9g}" for t in times), "--all-vertices"],
                 check=True, capture_output=True, timeout=120)
  with np.load(out) as data:
    three = data["positions"][0]
  reference = slow_lbs_reference(rig)
  np.testing.assert_allclose(three[:-1], reference[:-1], atol=1e-5)
  np.testing.assert_allclose(three, load_gltf(path).pose("motion", times), atol=1e-5)
  model_lbs = transforms_np.to_camera(
      rig_from_run.forward_warp_np(rig, rig.skin_weights, "lbs"), rig.root_to_world)
  np.testing.assert_allclose(three[:-1], model_lbs[:-1], atol=1e-5)


# ----------------------------------------------------------------------------
# The export pipeline on arrays: all files or none.


def test_export_pipeline_is_all_or_nothing(tmp_path, monkeypatch):
  from animdreamer_jax.commands import export as export_cmd  # pylint: disable=g-import-not-at-top
  rig = bending_rig()
  out = tmp_path / "new" / "deeper" / "x.glb"
  job = export_cmd.ExportJob(rig=rig, weights=np.asarray(rig.skin_weights), model_blend="dqs",
                             out=out, videos=False, viewer=False, progress=False)

  def broken_validator(path):
    raise RuntimeError(f"validator crashed on {path}")

  monkeypatch.setattr(gltf_writer, "khronos_validate", broken_validator)
  with pytest.raises(RuntimeError, match="validator crashed"):
    export_cmd.export_rig(job)
  assert list(tmp_path.iterdir()) == []  # no files, no temp folder, no new folders
  monkeypatch.undo()
  log = export_cmd.export_rig(job)
  assert sorted(p.name for p in out.parent.iterdir()) == [
      "x.export.json", "x.glb", "x.meshes.npz", "x.motion.json", "x_frames"]
  assert log["player_vs_model_lbs"]["max"] < 1e-5  # 3 bones: LBS agrees exactly
  assert log["player_vs_model_dqs"]["max"] > 1e-3
