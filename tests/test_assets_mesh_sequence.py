"""Mesh-sequence NPZ, load_sequence frame sampling, welding, OBJ."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.errors import UserError

KHRONOS_FOX = "khronos_fox/Fox.gltf"
QUATERNIUS_WOLF = "quaternius_animals/Wolf.glb"


def _random_sequence(seed=0, frames=5, verts=7, joints=3):
  rng = np.random.default_rng(seed)
  return assets.MeshSequence(
      vertices=rng.normal(size=(frames, verts, 3)).astype(np.float32),
      faces=rng.integers(0, verts, size=(4, 3)).astype(np.int32),
      fps=12.5,
      vertex_colors=rng.integers(0, 256, size=(verts, 3)).astype(np.uint8),
      skin_weights=rng.uniform(size=(verts, joints)).astype(np.float32),
      joint_positions=rng.normal(size=(frames, joints, 3)).astype(np.float32),
      rest_vertices=rng.normal(size=(verts, 3)).astype(np.float32),
      joint_parents=np.array([-1, 0, 1], np.int32))


def _assert_sequences_equal(a, b):
  for field in dataclasses.fields(assets.MeshSequence):
    x, y = getattr(a, field.name), getattr(b, field.name)
    if field.name == "fps":
      assert x == y
    elif x is None or y is None:
      assert x is None and y is None, field.name
    else:
      assert x.dtype == y.dtype, field.name
      np.testing.assert_array_equal(x, y, err_msg=field.name)


# ----------------------------------------------------------------------------
# NPZ.


def test_npz_round_trip(tmp_path):
  seq = _random_sequence()
  path = tmp_path / "seq.npz"
  assets.save_sequence_npz(path, seq)
  loaded = assets.load_sequence_npz(path)
  _assert_sequences_equal(seq, loaded)
  assert loaded.vertices.dtype == np.float32
  assert loaded.faces.dtype == np.int32
  assert os.listdir(tmp_path) == ["seq.npz"]  # no temp file left behind
  with np.load(path) as data:  # plain arrays, readable by anyone
    assert data["fps"].shape == ()
    # Every field but the joint names, which the NPZ does not hold.
    assert sorted(data.files) == sorted(
        f.name for f in dataclasses.fields(assets.MeshSequence) if f.name != "joint_names")
  named = dataclasses.replace(seq, joint_names=("root", "spine", "head"))
  assets.save_sequence_npz(path, named)
  assert assets.load_sequence_npz(path).joint_names is None


@pytest.mark.parametrize("names,message", [
    (("root", "spine"), "2 joint_names for 3 joints"),
    (("root", "spine", 7), "joint_names must be strings"),
])
def test_joint_names_are_checked(names, message):
  seq = dataclasses.replace(_random_sequence(), joint_names=names)
  with pytest.raises(UserError, match=f"here: {message}"):
    assets.validate_sequence(seq, "here")
  # Names alone (no other joint arrays) are accepted as they are.
  bare = assets.MeshSequence(vertices=seq.vertices, faces=seq.faces, fps=1.0,
                             joint_names=["a", "b"])
  assert assets.validate_sequence(bare, "here").joint_names == ("a", "b")


def test_npz_minimal_and_dtype_conversion(tmp_path):
  rng = np.random.default_rng(1)
  path = tmp_path / "min.npz"
  vertices = rng.normal(size=(3, 4, 3))  # float64 and int64: converted
  np.savez(path, vertices=vertices, faces=np.array([[0, 1, 2], [0, 2, 3]]),
           fps=30)
  seq = assets.load_sequence_npz(path)
  assert seq.vertices.dtype == np.float32 and seq.faces.dtype == np.int32
  np.testing.assert_array_equal(seq.vertices, vertices.astype(np.float32))
  assert seq.fps == 30.0 and isinstance(seq.fps, float)
  assert seq.vertex_colors is None and seq.skin_weights is None


def _bad(**changes):
  arrays = dict(vertices=np.zeros((2, 4, 3), np.float32),
                faces=np.array([[0, 1, 2]], np.int32), fps=np.float64(10),
                skin_weights=np.full((4, 2), 0.5, np.float32),
                joint_positions=np.zeros((2, 2, 3), np.float32))
  arrays.update(changes)
  return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize("arrays,message", [
    (_bad(vertices=np.zeros((2, 4), np.float32)), "vertices must have shape"),
    (_bad(vertices=np.zeros((2, 4, 3), np.int32)), "vertices must be float"),
    (_bad(vertices=np.full((2, 4, 3), np.nan, np.float32)), "NaN"),
    (_bad(faces=np.array([[0, 1, 2, 3]])), r"faces must have shape \(\?, 3\)"),
    (_bad(faces=np.array([[0, 1, 4]])), "faces index vertices outside 0..3"),
    (_bad(faces=np.array([[0.0, 1.0, 2.0]])), "faces must be int"),
    (_bad(fps=np.float64(-1)), "fps must be a positive number"),
    (_bad(fps=np.array([1.0, 2.0])), "fps must be a scalar"),
    (_bad(vertex_colors=np.zeros((4, 3), np.float32)),
     "vertex_colors must be uint8"),
    (_bad(vertex_colors=np.zeros((5, 3), np.uint8)),
     r"vertex_colors must have shape \(4, 3\)"),
    (_bad(skin_weights=np.zeros((3, 2), np.float32)),
     r"skin_weights must have shape \(4, \?\)"),
    (_bad(joint_positions=np.zeros((3, 2, 3), np.float32)),
     r"joint_positions must have shape \(2, 2, 3\)"),
    (_bad(joint_positions=np.zeros((2, 5, 3), np.float32)),
     r"joint_positions must have shape \(2, 2, 3\)"),
    (_bad(joint_parents=np.array([-1, 1])), "joint_parents"),
    (_bad(faces=None), "missing key.*faces"),
    (_bad(normals=np.zeros((4, 3))), "unknown key.*normals"),
])
def test_npz_bad_input(tmp_path, arrays, message):
  path = tmp_path / "bad.npz"
  np.savez(path, **arrays)
  with pytest.raises(UserError, match=f"bad.npz: .*{message}"):
    assets.load_sequence_npz(path)
  # The writer refuses the same sequence and leaves nothing behind.
  fps = arrays.pop("fps", 1.0)
  if "faces" in arrays and "normals" not in arrays and np.ndim(fps) == 0:
    out = tmp_path / "out" / "seq.npz"
    with pytest.raises(UserError):
      assets.save_sequence_npz(out, assets.MeshSequence(fps=fps, **arrays))
    assert not out.exists() and not list(out.parent.glob("*"))


def test_npz_missing_and_corrupt(tmp_path):
  with pytest.raises(UserError, match="none.npz: file not found"):
    assets.load_sequence_npz(tmp_path / "none.npz")
  (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
  with pytest.raises(UserError, match="junk.npz: not a readable .npz"):
    assets.load_sequence_npz(tmp_path / "junk.npz")


# ----------------------------------------------------------------------------
# load_sequence.


def test_load_sequence_npz_frames_and_fps(tmp_path):
  seq = _random_sequence(frames=4)
  path = tmp_path / "seq.npz"
  assets.save_sequence_npz(path, seq)
  # More frames than stored: loops.
  looped = assets.load_sequence(path, num_frames=10)
  for k in range(10):
    np.testing.assert_array_equal(looped.vertices[k], seq.vertices[k % 4])
    np.testing.assert_array_equal(looped.joint_positions[k],
                                  seq.joint_positions[k % 4])
  assert assets.load_sequence(path, num_frames=2).vertices.shape[0] == 2
  # Another fps: linear in time between stored frames (slow reference).
  fast = assets.load_sequence(path, num_frames=9, fps=2 * seq.fps)
  assert fast.fps == 2 * seq.fps
  for k in range(9):
    t = k / fast.fps * seq.fps  # in stored frames
    lo = int(np.floor(t))
    a, b = seq.vertices[lo % 4], seq.vertices[(lo + 1) % 4]
    np.testing.assert_allclose(fast.vertices[k], a + (t - lo) * (b - a),
                               atol=1e-6)
  with pytest.raises(UserError, match="has no clips"):
    assets.load_sequence(path, clip="Walk")


def test_load_sequence_gltf_frame_times(shared_assets):
  path = shared_assets / KHRONOS_FOX
  asset = assets.load_gltf(path)
  seq = assets.load_sequence(path, clip="Walk")
  keys, duration = asset.clip_num_keys("Walk"), asset.clip_duration("Walk")
  # One loop at the key rate, the repeated last key dropped.
  assert seq.vertices.shape == (keys - 1, 1728, 3)
  assert seq.fps == pytest.approx((keys - 1) / duration)
  np.testing.assert_array_equal(
      seq.vertices, asset.pose("Walk", np.arange(keys - 1) / seq.fps))
  np.testing.assert_array_equal(seq.faces, asset.faces)
  np.testing.assert_array_equal(seq.vertex_colors, asset.vertex_colors)
  np.testing.assert_array_equal(seq.skin_weights, asset.skin_weights)
  np.testing.assert_array_equal(seq.rest_vertices, asset.rest_vertices)
  np.testing.assert_array_equal(seq.joint_parents, asset.joint_parents)
  assert seq.joint_names == tuple(asset.joint_names) and len(seq.joint_names) == 24
  assert seq.joint_positions.shape == (keys - 1, 24, 3)
  # Frame keys-1 is the loop's start again; the clip's last key repeats its
  # first, so posing there matches frame 0.
  two = assets.load_sequence(path, clip="Walk", num_frames=2 * (keys - 1) + 3)
  diag = np.linalg.norm(np.ptp(asset.rest_vertices, 0))
  np.testing.assert_allclose(two.vertices[keys - 1:2 * (keys - 1)],
                             seq.vertices, atol=1e-5 * diag)
  # Default clip is the first one; explicit fps and frame count.
  first = assets.load_sequence(path, num_frames=5, fps=10.0)
  t = np.mod(np.arange(5) / 10.0, asset.clip_duration("Survey"))
  np.testing.assert_array_equal(first.vertices, asset.pose("Survey", t))
  assert first.fps == 10.0


def test_load_sequence_bad_input(shared_assets, tmp_path):
  with pytest.raises(UserError, match="available: Survey, Walk, Run"):
    assets.load_sequence(shared_assets / KHRONOS_FOX, clip="Trot")
  (tmp_path / "a.fbx").write_bytes(b"")
  with pytest.raises(UserError, match="a.fbx: unsupported file type .fbx"):
    assets.load_sequence(tmp_path / "a.fbx")
  with pytest.raises(UserError, match="number of frames"):
    assets.load_sequence(shared_assets / KHRONOS_FOX, num_frames=0)


# ----------------------------------------------------------------------------
# Welding.


def _slow_weld_groups(vertices, tol):
  """Union-find over all pairs closer than tol (O(V^2) distance matrix)."""
  parent = list(range(len(vertices)))

  def find(i):
    while parent[i] != i:
      i = parent[i]
    return i

  for i in range(len(vertices)):
    close = np.linalg.norm(vertices[i + 1:] - vertices[i], axis=-1) <= tol
    for j in np.nonzero(close)[0] + i + 1:
      parent[find(i)] = find(j)
  return np.array([find(i) for i in range(len(vertices))])


@pytest.mark.parametrize("name", [KHRONOS_FOX, QUATERNIUS_WOLF])
def test_weld_matches_slow_reference_and_seams_stay_closed(shared_assets,
                                                           name):
  asset = assets.load_gltf(shared_assets / name)
  rest = asset.rest_vertices.astype(np.float64)
  welded, faces, index_map = assets.weld_vertices(rest, asset.faces)
  groups = _slow_weld_groups(rest, 1e-6)
  # Same partition: two vertices share a welded index iff they share a group.
  same_welded = index_map[:, None] == index_map[None]
  same_slow = groups[:, None] == groups[None]
  np.testing.assert_array_equal(same_welded, same_slow)
  assert welded.shape[0] == len(np.unique(groups))
  np.testing.assert_allclose(welded[index_map], rest, atol=1e-6)
  np.testing.assert_array_equal(faces, index_map[asset.faces])  # none lost
  # Seams do not open: duplicates move together in every posed frame.
  seq = assets.load_sequence(shared_assets / name, num_frames=12)
  diag = np.linalg.norm(np.ptp(rest, 0))
  spread = np.abs(seq.vertices - seq.vertices[:, np.argmax(
      same_welded, axis=1)]).max()
  assert spread < 1e-5 * diag
  w = assets.weld_sequence(seq)
  assert w.vertices.shape == (12, welded.shape[0], 3)
  np.testing.assert_array_equal(w.faces, faces)
  np.testing.assert_allclose(w.rest_vertices, welded, atol=1e-6)
  assert w.joint_names == seq.joint_names == tuple(asset.joint_names)


def test_weld_chains_and_drops_collapsed_faces():
  v = np.array([[0, 0, 0], [0.6, 0, 0], [1.2, 0, 0], [5, 0, 0], [5, 5, 0],
                [0, 5, 0]], np.float32)
  faces = np.array([[0, 1, 3], [0, 3, 4], [2, 4, 5]])
  welded, wf, index_map = assets.weld_vertices(v, faces, tol=0.7)
  # 0-1 and 1-2 are within tol (0-2 is not): one cluster through the chain.
  np.testing.assert_array_equal(index_map, [0, 0, 0, 1, 2, 3])
  np.testing.assert_array_equal(welded, v[[0, 3, 4, 5]])
  np.testing.assert_array_equal(wf, [[0, 1, 2], [0, 2, 3]])
  assert wf.dtype == np.int32 and index_map.dtype == np.int32


# ----------------------------------------------------------------------------
# OBJ.


def test_obj_round_trip(tmp_path):
  seq = _random_sequence(verts=9)
  path = tmp_path / "frame.obj"
  assets.write_obj(path, seq.vertices[0], seq.faces, seq.vertex_colors)
  v, f, c = assets.read_obj(path, return_colors=True)
  np.testing.assert_array_equal(v, seq.vertices[0])  # float32 exact
  np.testing.assert_array_equal(f, seq.faces)
  np.testing.assert_array_equal(c, seq.vertex_colors)
  assets.write_obj(path, seq.vertices[1], seq.faces)
  v, f = assets.read_obj(path)
  np.testing.assert_array_equal(v, seq.vertices[1])
  assert assets.read_obj(path, return_colors=True)[2] is None
  assert os.listdir(tmp_path) == ["frame.obj"]


def test_obj_reads_common_forms(tmp_path):
  path = tmp_path / "quad.obj"
  path.write_text("# comment\no quad\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"
                  "vt 0 0\nvn 0 0 1\nusemtl m\ns off\n"
                  "f 1/1/1 2/1/1 3/1/1 4/1/1\nf -4//1 -2//1 -1//1\n")
  v, f = assets.read_obj(path)
  assert v.shape == (4, 3) and v.dtype == np.float32
  np.testing.assert_array_equal(f, [[0, 1, 2], [0, 2, 3], [0, 2, 3]])


@pytest.mark.parametrize("text,message", [
    ("v 0 0\nf 1 1 1\n", "line 1"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 x\n", "line 4"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 4\n", "face index outside 1..3"),
    ("v 0 0 0\n", "no vertices or no faces"),
])
def test_obj_bad_input(tmp_path, text, message):
  path = tmp_path / "bad.obj"
  path.write_text(text)
  with pytest.raises(UserError, match=f"bad.obj: .*{message}"):
    assets.read_obj(path)


def test_obj_write_bad_input(tmp_path):
  with pytest.raises(UserError, match="faces index vertices"):
    assets.write_obj(tmp_path / "x.obj", np.zeros((3, 3)), [[0, 1, 3]])
  with pytest.raises(UserError, match="colors must be uint8"):
    assets.write_obj(tmp_path / "x.obj", np.zeros((3, 3)), [[0, 1, 2]],
                     np.zeros((3, 3)))
  assert not (tmp_path / "x.obj").exists()
