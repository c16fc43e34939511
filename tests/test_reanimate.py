"""Motion files (JSON/NPZ) and re-animation: round trips, retargeting, bad input."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax import cli
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.export import motion_file


def _rigid(rotvec, trans) -> np.ndarray:
  m = np.zeros(np.shape(trans)[:-1] + (4, 4))
  m[..., :3, :3] = Rotation.from_rotvec(np.reshape(rotvec, (-1, 3))).as_matrix().reshape(
      np.shape(trans)[:-1] + (3, 3))
  m[..., :3, 3] = trans
  m[..., 3, 3] = 1.0
  return m


def random_motion(num_frames=5, num_bones=4, seed=0) -> motion_file.Motion:
  rng = np.random.default_rng(seed)
  return motion_file.Motion(
      fps=24.0,
      bone_to_object=_rigid(rng.normal(size=(num_frames, num_bones, 3)),
                            rng.normal(size=(num_frames, num_bones, 3))),
      rest_bone_to_object=_rigid(rng.normal(size=(num_bones, 3)), rng.normal(size=(num_bones, 3))),
      object_to_world=_rigid(rng.normal(size=(num_frames, 3)), rng.normal(size=(num_frames, 3))),
      object_to_camera=_rigid(rng.normal(size=(num_frames, 3)), rng.normal(size=(num_frames, 3))),
      bone_log_scale=rng.normal(size=(num_bones, 3)), source="test")


def random_rig(num_frames=3, num_bones=4, seed=1) -> gltf_writer.Rig:
  rng = np.random.default_rng(seed)
  vertices = rng.normal(size=(10, 3)).astype(np.float32)
  return gltf_writer.Rig(
      rest_vertices=vertices, faces=np.array([[0, 1, 2], [2, 3, 4]], np.int32),
      skin_weights=rng.dirichlet(np.ones(num_bones), size=10),
      rest_bone_quat=Rotation.random(num_bones, random_state=seed).as_quat(),
      rest_bone_trans=rng.normal(size=(num_bones, 3)),
      bone_quat=Rotation.random(num_frames * num_bones, random_state=seed + 1).as_quat()
      .reshape(num_frames, num_bones, 4),
      bone_trans=rng.normal(size=(num_frames, num_bones, 3)), fps=10.0)


# ----------------------------------------------------------------------------
# Motion files.


@pytest.mark.parametrize("suffix", [".json", ".npz"])
def test_motion_file_round_trip(tmp_path, suffix):
  motion = random_motion()
  path = tmp_path / f"m{suffix}"
  motion_file.save_motion(path, motion)
  loaded = motion_file.load_motion(path)
  assert loaded.fps == 24.0 and loaded.source == "test"
  for field in ("bone_to_object", "rest_bone_to_object", "object_to_world", "object_to_camera",
                "bone_log_scale"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(motion, field))


def test_motion_json_is_plain_and_documented_layout(tmp_path):
  """Other tools read it with any JSON parser: nested lists, row-major 4x4 matrices."""
  motion = random_motion(num_frames=2, num_bones=3)
  path = tmp_path / "m.json"
  motion_file.save_motion(path, motion)
  data = json.loads(path.read_text())
  assert data["format"] == "animdreamer-motion" and data["version"] == 1
  assert data["num_frames"] == 2 and data["num_bones"] == 3
  m = data["bone_to_object"][1][2]
  assert len(m) == 4 and all(len(row) == 4 for row in m)
  assert m[3] == [0.0, 0.0, 0.0, 1.0]  # row-major, column vectors: last row is 0 0 0 1
  np.testing.assert_array_equal(np.array(m)[:3, 3], motion.bone_to_object[1, 2, :3, 3])


def test_motion_from_rig_matches_quaternions():
  rig = random_rig()
  motion = motion_file.motion_from_rig(rig)
  for t in range(rig.num_frames):
    for b in range(rig.num_bones):
      np.testing.assert_allclose(motion.bone_to_object[t, b, :3, :3],
                                 Rotation.from_quat(rig.bone_quat[t, b]).as_matrix(), atol=1e-12)
      np.testing.assert_allclose(motion.bone_to_object[t, b, :3, 3], rig.bone_trans[t, b])
  np.testing.assert_array_equal(motion.object_to_world, np.tile(np.eye(4), (3, 1, 1)))


@pytest.mark.parametrize("change,message", [
    (lambda d: d.update(format="other"), "not a motion file"),
    (lambda d: d.update(version=7), "unsupported motion file version"),
    (lambda d: d.pop("object_to_world"), "missing key 'object_to_world'"),
    (lambda d: d.update(fps=-1), "'fps' must be positive"),
    (lambda d: d.update(rest_bone_to_object=d["rest_bone_to_object"][:2]),
     "'rest_bone_to_object' must be"),
    (lambda d: d["bone_to_object"][0][0][0].__setitem__(0, 3.0), "rigid"),
    (lambda d: d.update(bone_to_object="abc"), "bone_to_object"),
])
def test_bad_motion_files(tmp_path, change, message):
  path = tmp_path / "m.json"
  motion_file.save_motion(path, random_motion())
  data = json.loads(path.read_text())
  change(data)
  path.write_text(json.dumps(data))
  with pytest.raises(UserError, match=message) as info:
    motion_file.load_motion(path)
  assert str(path) in str(info.value)


def test_corrupt_and_missing_motion_files(tmp_path):
  bad = tmp_path / "m.npz"
  bad.write_bytes(b"not a zip")
  with pytest.raises(UserError, match="m.npz"):
    motion_file.load_motion(bad)
  with pytest.raises(UserError, match="not found"):
    motion_file.load_motion(tmp_path / "none.json")
  with pytest.raises(UserError, match=".json or .npz"):
    motion_file.load_motion(tmp_path / "m.txt")


# ----------------------------------------------------------------------------
# Retargeting.


def test_retarget_own_motion_is_identity():
  rig = random_rig()
  out = motion_file.retarget_direct(rig, motion_file.motion_from_rig(rig))
  np.testing.assert_allclose(transforms_np.rigid_matrix(out.bone_quat, out.bone_trans),
                             transforms_np.rigid_matrix(rig.bone_quat, rig.bone_trans), atol=1e-6)


def test_retarget_moves_each_bone_about_its_own_rest_frame():
  """Source bone b turns by R_b about its own rest frame -> target bone b turns by the same
  R_b about *its* rest frame (local right-multiplication), independent of where it is."""
  rig = random_rig(num_frames=1)
  source = random_motion(num_frames=4, num_bones=4, seed=5)
  rng = np.random.default_rng(9)
  local = _rigid(rng.normal(size=(4, 4, 3)), rng.normal(size=(4, 4, 3)))  # (T, B)
  source = dataclasses.replace(source, bone_to_object=source.rest_bone_to_object[None] @ local)
  out = motion_file.retarget_direct(rig, source)
  target_rest = transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans)
  for t in range(4):
    for b in range(4):
      expected = target_rest[b] @ local[t, b]
      got = transforms_np.rigid_matrix(out.bone_quat[t, b], out.bone_trans[t, b])
      np.testing.assert_allclose(got, expected, atol=1e-5)
  assert out.fps == source.fps
  np.testing.assert_array_equal(out.root_to_world, source.object_to_world)
  gltf_writer.validate_rig(out)


def test_retarget_other_bone_count_is_an_error():
  with pytest.raises(UserError, match="3 bones but the model has 4"):
    motion_file.retarget_direct(random_rig(), random_motion(num_bones=3), where="m.json")


# ----------------------------------------------------------------------------
# The command: bad input gives one error line, exit 2 and no files.


def _minimal_run(folder: pathlib.Path, num_bones: int = 4, num_frames: int = 3) -> pathlib.Path:
  """The files a finished run has (no real checkpoint: the checks here come before it)."""
  folder.mkdir(parents=True)
  rig = random_rig(num_frames=num_frames, num_bones=num_bones)
  (folder / "config.json").write_text(json.dumps({"model": {}}))
  (folder / "model.json").write_text(json.dumps({"num_bones": num_bones}))
  (folder / "checkpoints" / "10").mkdir(parents=True)
  np.savez(folder / "rest.npz", vertices=rig.rest_vertices, faces=rig.faces)
  np.savez(folder / "meshes.npz", vertices=np.repeat(rig.rest_vertices[None], num_frames, 0),
           faces=rig.faces, fps=np.float32(10.0))
  np.savez(folder / "motion.npz", object_to_camera=np.tile(np.eye(4), (num_frames, 1, 1)),
           bone_quat=rig.bone_quat, bone_trans=rig.bone_trans, rest_bone_quat=rig.rest_bone_quat,
           rest_bone_trans=rig.rest_bone_trans, bone_log_scale=np.zeros((num_bones, 3)))
  return folder


def _run_cli(argv, capsys):
  code = cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  return code, err


def test_reanimate_other_bone_count(tmp_path, capsys):
  model_run = _minimal_run(tmp_path / "a", num_bones=4)
  other_run = _minimal_run(tmp_path / "b", num_bones=6)
  out = tmp_path / "out" / "x.glb"
  for source in (other_run, tmp_path / "m.json"):
    if source.suffix == ".json":
      motion_file.save_motion(source, random_motion(num_bones=2))
    code, err = _run_cli(["reanimate", "--run", str(model_run), "--motion", str(source),
                          "--out", str(out)], capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and "same bone count" in err[0]
  assert not (tmp_path / "out").exists()


def test_reanimate_bad_sources(tmp_path, capsys):
  model_run = _minimal_run(tmp_path / "a")
  unfinished = tmp_path / "unfinished"
  unfinished.mkdir()
  (unfinished / "config.json").write_text("{}")
  cases = [(tmp_path / "nothing.json", "motion not found"),
           (unfinished, "not a finished run")]
  for source, message in cases:
    code, err = _run_cli(["reanimate", "--run", str(model_run), "--motion", str(source), "--out",
                          str(tmp_path / "o.glb")], capsys)
    assert code == 2 and len(err) == 1 and message in err[0], err
  # The model run itself unfinished / without checkpoint.
  (model_run / "checkpoints" / "10").rmdir()
  motion_file.save_motion(tmp_path / "m.npz", random_motion())
  code, err = _run_cli(["reanimate", "--run", str(model_run), "--motion", str(tmp_path / "m.npz"),
                        "--out", str(tmp_path / "o.glb")], capsys)
  assert code == 2 and len(err) == 1 and "missing checkpoint" in err[0], err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.npz", "unfinished"]
