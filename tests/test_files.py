"""Atomic file and folder writes: all or nothing, no temporary leftovers, readable modes."""

from __future__ import annotations

import json
import os
import stat

import cv2
import numpy as np
import pytest

from animdreamer_jax import files


class _Boom(Exception):
  pass


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def _names(folder) -> list[str]:
  return sorted(p.name for p in folder.iterdir())


def _failing_writer(f):
  f.write(b"half")
  raise _Boom()


def test_atomic_write_writes_bytes_with_mode_644(tmp_path):
  path = tmp_path / "sub" / "dir" / "out.bin"  # parents are created
  files.atomic_write(path, lambda f: f.write(b"hello"))
  assert path.read_bytes() == b"hello"
  assert _mode(path) == 0o644
  assert _names(path.parent) == ["out.bin"]


def test_failing_writer_leaves_no_file_and_no_temp_file(tmp_path):
  path = tmp_path / "out.bin"
  with pytest.raises(_Boom):
    files.atomic_write(path, _failing_writer)
  assert _names(tmp_path) == []


def test_failing_writer_keeps_the_existing_target(tmp_path):
  path = tmp_path / "out.json"
  files.save_json(path, {"old": 1})
  with pytest.raises(_Boom):
    files.atomic_write(path, _failing_writer)
  assert json.loads(path.read_text()) == {"old": 1}
  assert _names(tmp_path) == ["out.json"]
  # An interrupt (not an Exception) cleans up too.
  def interrupted(f):
    raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    files.atomic_write(path, interrupted)
  assert _names(tmp_path) == ["out.json"]


def test_atomic_path_renames_on_success_and_removes_on_failure(tmp_path):
  path = tmp_path / "video.mp4"
  with files.atomic_path(path) as tmp:
    assert tmp.parent == tmp_path and tmp.suffix == ".mp4" and tmp != path
    tmp.write_bytes(b"frames")  # a writer that wants a file name
    assert not path.exists()
  assert path.read_bytes() == b"frames"
  assert _mode(path) == 0o644
  with pytest.raises(_Boom):
    with files.atomic_path(path) as tmp:
      tmp.write_bytes(b"broken")
      raise _Boom()
  assert path.read_bytes() == b"frames"
  assert _names(tmp_path) == ["video.mp4"]


def test_save_helpers_round_trip(tmp_path):
  files.save_text(tmp_path / "a.txt", "héllo\n")
  assert (tmp_path / "a.txt").read_bytes() == "héllo\n".encode("utf-8")
  files.save_json(tmp_path / "b.json", {"x": [1, 2]})
  assert (tmp_path / "b.json").read_text() == json.dumps({"x": [1, 2]}, indent=1) + "\n"
  arrays = {"v": np.arange(6.0).reshape(2, 3), "f": np.array([[0, 1, 2]], np.int32)}
  files.save_npz(tmp_path / "c.npz", **arrays)
  with np.load(tmp_path / "c.npz") as data:
    assert sorted(data.files) == ["f", "v"]
    for key, value in arrays.items():
      np.testing.assert_array_equal(data[key], value)
      assert data[key].dtype == value.dtype
  rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3)).astype(np.uint8)
  files.save_png(tmp_path / "d.png", rgb)
  back = cv2.imread(str(tmp_path / "d.png"), cv2.IMREAD_UNCHANGED)
  np.testing.assert_array_equal(back[..., ::-1], rgb)  # stored as RGB, OpenCV reads BGR
  grey = rgb[..., 0]
  files.save_png(tmp_path / "e.png", grey)
  np.testing.assert_array_equal(cv2.imread(str(tmp_path / "e.png"), cv2.IMREAD_UNCHANGED), grey)
  for name in _names(tmp_path):
    assert _mode(tmp_path / name) == 0o644
  assert _names(tmp_path) == ["a.txt", "b.json", "c.npz", "d.png", "e.png"]


def test_atomic_folder_creates_the_folder_with_mode_755(tmp_path):
  target = tmp_path / "parent" / "run"
  with files.atomic_folder(target) as tmp:
    assert tmp.parent == target.parent and tmp != target
    assert not target.exists()  # nothing shows until the folder is complete
    (tmp / "a.txt").write_text("a")
  assert _names(target) == ["a.txt"]
  assert _mode(target) == 0o755
  assert _names(target.parent) == ["run"]


def test_atomic_folder_replaces_an_existing_folder_only_when_asked(tmp_path):
  target = tmp_path / "run"
  target.mkdir()
  (target / "old.txt").write_text("old")
  with pytest.raises(FileExistsError):
    with files.atomic_folder(target) as tmp:
      pytest.fail("the body must not run when the target exists")
  assert _names(target) == ["old.txt"]
  assert _names(tmp_path) == ["run"]
  with files.atomic_folder(target, replace=True) as tmp:
    (tmp / "new.txt").write_text("new")
    assert _names(target) == ["old.txt"]  # the old folder stays until the new one is done
  assert _names(target) == ["new.txt"]
  assert _names(tmp_path) == ["run"]  # no temporary or old folder left


def test_atomic_folder_cleans_up_on_an_exception(tmp_path):
  target = tmp_path / "run"
  with pytest.raises(_Boom):
    with files.atomic_folder(target) as tmp:
      (tmp / "part.txt").write_text("part")
      raise _Boom()
  assert _names(tmp_path) == []
  # With an existing target: it is kept as it was.
  target.mkdir()
  (target / "old.txt").write_text("old")
  with pytest.raises(_Boom):
    with files.atomic_folder(target, replace=True) as tmp:
      (tmp / "new.txt").write_text("new")
      raise _Boom()
  assert _names(target) == ["old.txt"]
  assert _names(tmp_path) == ["run"]
