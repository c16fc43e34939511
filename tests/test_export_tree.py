"""The glb's tree layout: a skeleton's joints as a node hierarchy an animator can pose.

References here are slow and written from the definitions: the joint rest
frames with scipy's `align_vectors`, the glb parsed with `struct` and a loop
that composes the node hierarchy from the file's own TRS keys and skins with
its own inverse binds (a minimal glTF player), the model's motion as loops over
A_t,b = bone_t,b * rest_b^-1. The node-marked tests run the Khronos validator
and three.js on tree files (skipped without Node / npm packages).
"""

from __future__ import annotations

import dataclasses
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
from animdreamer_jax.skeleton import skeleton_file

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOLS = REPO / "tests" / "tools"

# ----------------------------------------------------------------------------
# A four-legged toy: a body along x, two legs of two segments, a tail. Seven
# model bones; the skeleton keeps six and merges the tail bone into the body.

# Part name -> (start, end) of its capsule axis in the rest pose (object frame, +y up).
PARTS = {
    "body_back": ([-0.5, 0.6, 0.0], [0.0, 0.6, 0.0]),
    "body_front": ([0.0, 0.6, 0.0], [0.5, 0.6, 0.0]),
    "front_upper": ([0.4, 0.6, 0.0], [0.4, 0.3, 0.0]),
    "front_lower": ([0.4, 0.3, 0.0], [0.4, 0.0, 0.0]),
    "back_upper": ([-0.4, 0.6, 0.0], [-0.4, 0.3, 0.0]),
    "back_lower": ([-0.4, 0.3, 0.0], [-0.4, 0.0, 0.0]),
    "tail": ([-0.5, 0.6, 0.0], [-0.7, 0.7, 0.0]),
}
# The skeleton: (joint name, parent joint, model bone, rest position).
JOINTS = [
    ("hips", -1, 0, [-0.25, 0.6, 0.0]),
    ("chest", 0, 1, [0.0, 0.6, 0.0]),
    ("front_thigh", 1, 2, [0.4, 0.6, 0.0]),
    ("front_shin", 2, 3, [0.4, 0.3, 0.0]),
    ("back_thigh", 0, 4, [-0.4, 0.6, 0.0]),
    ("back_shin", 4, 5, [-0.4, 0.3, 0.0]),
]
TAIL_BONE, TAIL_TARGET = 6, 0


def tube(start, end, rings: int = 6, segments: int = 8, radius: float = 0.06):
  """Vertices and faces of an open tube around the segment start -> end."""
  start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
  axis = (end - start) / np.linalg.norm(end - start)
  side = np.cross(axis, [0.0, 0.0, 1.0])
  side = side if np.linalg.norm(side) > 1e-6 else np.cross(axis, [1.0, 0.0, 0.0])
  side /= np.linalg.norm(side)
  up = np.cross(axis, side)
  vertices = []
  for i in range(rings):
    centre = start + (end - start) * i / (rings - 1)
    for j in range(segments):
      a = 2 * np.pi * j / segments
      vertices.append(centre + radius * (np.cos(a) * side + np.sin(a) * up))
  faces = []
  for i in range(rings - 1):
    for j in range(segments):
      a, b = i * segments + j, i * segments + (j + 1) % segments
      faces += [[a, a + segments, b], [b, a + segments, b + segments]]
  return np.asarray(vertices), np.asarray(faces)


def toy_mesh():
  vertices, faces = [], []
  for start, end in PARTS.values():
    v, f = tube(start, end)
    faces.append(f + sum(len(x) for x in vertices))
    vertices.append(v)
  return np.concatenate(vertices).astype(np.float32), np.concatenate(faces).astype(np.int32)


def toy_rig(num_frames: int = 5, root_motion: bool = True, seed: int = 0,
            linked: bool = False) -> gltf_writer.Rig:
  """The toy's bones at their part centres, each turning and drifting on its own.

  linked: every bone moves with bone 0 (one rigid motion), so no joint stretches.
  """
  rng = np.random.default_rng(seed)
  vertices, faces = toy_mesh()
  centres = np.asarray([(np.add(s, e)) / 2 for s, e in PARTS.values()])
  num_bones = len(PARTS)
  d2 = ((vertices[:, None, :] - centres[None]) ** 2).sum(-1)
  weights = np.exp(-d2 / (2 * 0.12 ** 2)) + 1e-6
  weights /= weights.sum(1, keepdims=True)
  rest_rot = Rotation.from_rotvec(rng.normal(size=(num_bones, 3)) * 0.5)
  bone_quat = np.zeros((num_frames, num_bones, 4))
  bone_trans = np.zeros((num_frames, num_bones, 3))
  for t in range(num_frames):
    for b in range(num_bones):
      turn = Rotation.from_rotvec(rng.normal(size=3) * 0.25 * t)
      drift = rng.normal(size=3) * 0.02 * t
      if linked:
        turn = Rotation.from_rotvec([0.0, 0.0, 0.2 * t])
        drift = np.array([0.03 * t, 0.0, 0.0])
      bone_quat[t, b] = (turn * rest_rot[b]).as_quat()
      bone_trans[t, b] = turn.apply(centres[b]) + drift
  root = None
  if root_motion:
    root = np.tile(np.eye(4), (num_frames, 1, 1))
    root[:, :3, :3] = Rotation.from_euler("y", 20.0 * np.arange(num_frames)[:, None],
                                          degrees=True).as_matrix()
    root[:, :3, 3] = np.stack([0.2 * np.arange(num_frames), np.zeros(num_frames),
                               0.1 * np.arange(num_frames)], 1)
  colors = rng.integers(0, 256, size=vertices.shape).astype(np.uint8)
  return gltf_writer.Rig(rest_vertices=vertices, faces=faces,
                         skin_weights=weights.astype(np.float32),
                         rest_bone_quat=rest_rot.as_quat(), rest_bone_trans=centres,
                         bone_quat=bone_quat, bone_trans=bone_trans, fps=10.0,
                         root_to_world=root, vertex_colors=colors, name="toy")


def make_skeleton(joints=JOINTS, num_bones: int = len(PARTS),
                  merges: dict | None = None) -> skeleton_file.Skeleton:
  """A hand-made skeleton (the statistics fields are zeros: the export does not read them)."""
  merges = {TAIL_BONE: TAIL_TARGET} if merges is None else merges
  k = len(joints)
  target = np.zeros(num_bones, np.int32)
  for j, (_, _, bone, _) in enumerate(joints):
    target[bone] = j
  for bone, joint in merges.items():
    target[bone] = joint
  # Validated: float32 positions, as a skeleton read from skeleton.json has.
  return skeleton_file.validate(skeleton_file.Skeleton(
      names=np.asarray([j[0] for j in joints]), parent=np.asarray([j[1] for j in joints]),
      bone=np.asarray([j[2] for j in joints]), rest_position=np.asarray([j[3] for j in joints]),
      weight_target=target, skin_mass=np.full(k, 1.0 / k), strength=np.zeros(k),
      rest_length=np.zeros(k), length_range=np.zeros((k, 2)), dislocation_max=np.zeros(k),
      angle_range_deg=np.zeros((k, 2))))


def tree_rig(skel=None, **kwargs) -> gltf_writer.Rig:
  rig = toy_rig(**kwargs)
  skel = make_skeleton() if skel is None else skel
  return dataclasses.replace(rig, tree=gltf_writer.tree_from_skeleton(skel, rig.skin_weights))


# ----------------------------------------------------------------------------
# Slow references.


def reference_rest_frames(parent, position) -> np.ndarray:
  """J_k by the rule, one joint at a time: +y toward the children's mean, a leaf's from its parent."""
  position = np.asarray(position, np.float64)
  frames = []
  for k in range(len(parent)):
    children = [c for c in range(len(parent)) if parent[c] == k]
    direction = None
    if children:
      direction = np.mean([position[c] for c in children], axis=0) - position[k]
    if (direction is None or np.linalg.norm(direction) < 1e-6) and parent[k] >= 0:
      direction = position[k] - position[parent[k]]
    frame = np.eye(4)
    if direction is not None and np.linalg.norm(direction) >= 1e-6:
      unit = direction / np.linalg.norm(direction)
      if np.allclose(unit, [0, -1, 0], atol=1e-12):  # the shortest turn is any half turn: about x
        frame[:3, :3] = np.diag([1.0, -1.0, -1.0])
      else:
        frame[:3, :3] = Rotation.align_vectors([unit], [[0, 1, 0]])[0].as_matrix()
    frame[:3, 3] = position[k]
    frames.append(frame)
  return np.asarray(frames)


def rigid(quat, trans) -> np.ndarray:
  m = np.eye(4)
  m[:3, :3] = Rotation.from_quat(quat).as_matrix()
  m[:3, 3] = trans
  return m


def reference_globals(rig: gltf_writer.Rig, skel, root_motion: bool = True) -> np.ndarray:
  """(T, K, 4, 4) G_t,k = root_t * A_t,bone[k] * J_k, one matrix at a time."""
  frames = reference_rest_frames(skel.parent, skel.rest_position)
  out = np.zeros((rig.num_frames, skel.num_joints, 4, 4))
  for t in range(rig.num_frames):
    root = np.eye(4)
    if root_motion and rig.root_to_world is not None:
      root = np.asarray(rig.root_to_world[t])
    for k in range(skel.num_joints):
      b = skel.bone[k]
      a = rigid(rig.bone_quat[t, b], rig.bone_trans[t, b]) @ np.linalg.inv(
          rigid(rig.rest_bone_quat[b], rig.rest_bone_trans[b]))
      out[t, k] = root @ a @ frames[k]
  return out


def reference_merged_weights(skel, weights) -> np.ndarray:
  out = np.zeros((weights.shape[0], skel.num_joints))
  for b in range(weights.shape[1]):
    out[:, skel.weight_target[b]] += weights[:, b]
  return out


def read_glb(path: pathlib.Path):
  """(document, accessor reader) of a .glb, read with struct and NumPy only."""
  raw = path.read_bytes()
  json_len = struct.unpack_from("<I", raw, 12)[0]
  doc = json.loads(raw[20:20 + json_len])
  binary = raw[28 + json_len:]
  dtypes = {5126: "<f4", 5121: "u1", 5123: "<u2", 5125: "<u4"}
  widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4, "MAT4": 16}

  def accessor(i):
    acc = doc["accessors"][i]
    view = doc["bufferViews"][acc["bufferView"]]
    count, width = acc["count"], widths[acc["type"]]
    data = np.frombuffer(binary, dtypes[acc["componentType"]], count * width,
                         view["byteOffset"] + acc.get("byteOffset", 0))
    return data.reshape(count, width).astype(np.float64)

  return doc, accessor


def reference_player(path: pathlib.Path, frame: int):
  """A minimal glTF player at key `frame`: node globals from the TRS keys, LBS with the inverse binds.

  Returns:
    (posed vertices (V, 3), node globals (N, 4, 4)).
  """
  doc, accessor = read_glb(path)
  nodes = doc["nodes"]
  local = {}
  for n, node in enumerate(nodes):
    local[n] = [np.asarray(node.get("translation", [0, 0, 0]), np.float64),
                np.asarray(node.get("rotation", [0, 0, 0, 1]), np.float64)]
  for channel in doc["animations"][0]["channels"]:
    sampler = doc["animations"][0]["samplers"][channel["sampler"]]
    value = accessor(sampler["output"])[frame]
    slot = {"translation": 0, "rotation": 1}[channel["target"]["path"]]
    local[channel["target"]["node"]][slot] = value
  parent = {c: n for n, node in enumerate(nodes) for c in node.get("children", [])}

  def global_of(n):
    m = rigid(local[n][1], local[n][0])
    return m if n not in parent else global_of(parent[n]) @ m

  globals_ = np.asarray([global_of(n) for n in range(len(nodes))])
  skin = doc["skins"][0]
  ibm = accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
  prim = doc["meshes"][0]["primitives"][0]
  rest = accessor(prim["attributes"]["POSITION"])
  joints = accessor(prim["attributes"]["JOINTS_0"]).astype(int)
  weights = accessor(prim["attributes"]["WEIGHTS_0"])
  posed = np.zeros_like(rest)
  for v in range(rest.shape[0]):
    for slot in range(4):
      node = skin["joints"][joints[v, slot]]
      matrix = globals_[node] @ ibm[joints[v, slot]]
      posed[v] += weights[v, slot] * (matrix @ np.append(rest[v], 1.0))[:3]
  return posed, globals_


def top4_on_bones(tree: gltf_writer.JointTree, num_bones: int) -> np.ndarray:
  """(V, B) the merged weights' renormalised top 4, each on its joint's model bone."""
  out = np.zeros((tree.skin_weights.shape[0], num_bones))
  for v in range(out.shape[0]):
    row = np.asarray(tree.skin_weights[v], np.float64)
    order = sorted(range(row.shape[0]), key=lambda k: (-row[k], k))[:4]
    for k in order:
      out[v, tree.bone[k]] = row[k] / row[order].sum()
  return out


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  skel = make_skeleton()
  rig = tree_rig(skel)
  path = tmp_path_factory.mktemp("tree") / "toy.glb"
  info = gltf_writer.write_glb(path, rig)
  return rig, skel, path, info


# ----------------------------------------------------------------------------
# Joint rest frames.


def test_joint_rest_frames_vs_reference():
  skel = make_skeleton()
  frames = gltf_writer.joint_rest_frames(skel.parent, skel.rest_position)
  np.testing.assert_allclose(frames, reference_rest_frames(skel.parent, skel.rest_position),
                             atol=1e-12)
  # Blender's bone axis: +y of the chest points at its one child, the front thigh.
  np.testing.assert_allclose(frames[1, :3, 1], [1.0, 0.0, 0.0], atol=1e-12)
  # A leaf continues its parent's direction: the front shin points down.
  np.testing.assert_allclose(frames[3, :3, 1], [0.0, -1.0, 0.0], atol=1e-12)


def test_joint_rest_frames_edge_cases():
  rng = np.random.default_rng(2)
  # Random trees, one joint straight below its only child's mean (antipodal to +y), a
  # joint at its children's mean (falls back to the parent direction), a leaf on top
  # of its parent (no direction: identity), and a lone root.
  parent = np.array([-1, 0, 0, 1, 1, 2, 5, 6])
  position = rng.normal(size=(8, 3))
  position[6] = position[5] - [0.0, 0.5, 0.0]  # 5 -> 6 straight down
  position[7] = position[6]  # leaf on its parent
  position[1] = (position[3] + position[4]) / 2  # at its children's mean
  frames = gltf_writer.joint_rest_frames(parent, position)
  np.testing.assert_allclose(frames, reference_rest_frames(parent, position), atol=1e-9)
  np.testing.assert_allclose(frames[5, :3, 1], [0.0, -1.0, 0.0], atol=1e-12)
  np.testing.assert_allclose(frames[7, :3, :3], np.eye(3))
  for frame in frames:
    np.testing.assert_allclose(frame[:3, :3] @ frame[:3, :3].T, np.eye(3), atol=1e-12)
    assert np.linalg.det(frame[:3, :3]) > 0
  np.testing.assert_allclose(gltf_writer.joint_rest_frames([-1], [[1.0, 2.0, 3.0]])[0],
                             [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]])
  # Nearly antipodal directions: no jump to the half-turn fallback (a few nanoradians of
  # rounding at most, far below the file's float32).
  for eps in (1e-3, 1e-7):
    d = np.array([eps, -1.0, 0.0]) / np.linalg.norm([eps, -1.0, 0.0])
    frame = gltf_writer.joint_rest_frames([-1, 0], [[0, 0, 0], d])[0]
    np.testing.assert_allclose(frame[:3, 1], d, atol=1e-8)


# ----------------------------------------------------------------------------
# The written file.


def test_tree_glb_structure_and_round_trip(written):
  rig, skel, path, info = written
  doc, accessor = read_glb(path)
  assert info["rig"] == "tree" and info["num_joints"] == skel.num_joints + 1
  nodes = doc["nodes"]
  skin = doc["skins"][0]
  assert skin["skeleton"] == 1 and nodes[1]["name"] == "root"
  assert [nodes[n]["name"] for n in skin["joints"]] == ["root"] + list(skel.names)
  # The node hierarchy is the skeleton: root node -> hips, and each joint's children.
  node_of = {k: skin["joints"][k + 1] for k in range(skel.num_joints)}
  assert nodes[1]["children"] == [node_of[0]]
  for k in range(skel.num_joints):
    expected = [node_of[c] for c in range(skel.num_joints) if skel.parent[c] == k]
    assert nodes[node_of[k]].get("children", []) == expected
    assert "scale" not in nodes[node_of[k]] and "matrix" not in nodes[node_of[k]]
  # Inverse binds: identity for the root, J_k^-1.
  frames = reference_rest_frames(skel.parent, skel.rest_position)
  ibm = accessor(skin["inverseBindMatrices"]).reshape(-1, 4, 4).transpose(0, 2, 1)
  np.testing.assert_allclose(ibm[0], np.eye(4), atol=1e-7)
  for k in range(skel.num_joints):
    np.testing.assert_allclose(ibm[k + 1], np.linalg.inv(frames[k]), atol=1e-6)
  # The nodes' static TRS compose to the rest frames (the bind pose).
  _, rest_globals = reference_player_rest(doc)
  for k in range(skel.num_joints):
    np.testing.assert_allclose(rest_globals[node_of[k]], frames[k], atol=1e-6)
  # Keys start at frame 0, one per frame; every joint has rotation + translation keys.
  anim = doc["animations"][0]
  times = accessor(anim["samplers"][0]["input"])[:, 0]
  np.testing.assert_allclose(times, np.arange(rig.num_frames) / rig.fps, atol=1e-7)
  assert times[0] == 0.0
  targets = {(c["target"]["node"], c["target"]["path"]) for c in anim["channels"]}
  assert targets == {(n, p) for n in [1] + list(node_of.values())
                     for p in ("rotation", "translation")}
  # Composed local keys = G_t,k = root_t * A_t,bone[k] * J_k.
  expected = reference_globals(rig, skel)
  for t in range(rig.num_frames):
    _, globals_ = reference_player(path, t)
    for k in range(skel.num_joints):
      np.testing.assert_allclose(globals_[node_of[k]], expected[t, k], atol=2e-6)
  # JOINTS_0 / WEIGHTS_0: the top 4 of the merged weights (skin joint k + 1).
  prim = doc["meshes"][0]["primitives"][0]
  joints = accessor(prim["attributes"]["JOINTS_0"]).astype(int)
  weights = accessor(prim["attributes"]["WEIGHTS_0"])
  merged = reference_merged_weights(skel, np.asarray(rig.skin_weights, np.float64))
  for v in range(merged.shape[0]):
    order = sorted(range(skel.num_joints), key=lambda k: (-merged[v, k], k))[:4]
    assert list(joints[v]) == [k + 1 for k in order]
    np.testing.assert_allclose(weights[v], merged[v, order] / merged[v, order].sum(), atol=1e-6)


def reference_player_rest(doc):
  """Node globals of the nodes' static TRS (no animation)."""
  nodes = doc["nodes"]
  parent = {c: n for n, node in enumerate(nodes) for c in node.get("children", [])}

  def global_of(n):
    m = rigid(nodes[n].get("rotation", [0, 0, 0, 1]), nodes[n].get("translation", [0, 0, 0]))
    return m if n not in parent else global_of(parent[n]) @ m

  return None, np.asarray([global_of(n) for n in range(len(nodes))])


def test_reference_player_reproduces_the_model(written):
  """The loop player on the file's own keys = the model's forward warp (LBS) with the
  merged top-4 weights on the kept bones; the project's loader agrees."""
  rig, _, path, _ = written
  weights = top4_on_bones(rig.tree, rig.num_bones)
  model = transforms_np.to_camera(rig_from_run.forward_warp_np(rig, weights, "lbs"),
                                  rig.root_to_world)
  loader = load_gltf(path).pose("motion", np.arange(rig.num_frames) / rig.fps)
  for t in range(rig.num_frames):
    posed, _ = reference_player(path, t)
    np.testing.assert_allclose(posed, model[t], atol=5e-6)
  np.testing.assert_allclose(loader, model, atol=5e-6)
  # The merge and the top 4 matter here (the comparison above is not the model's own warp).
  full = transforms_np.to_camera(rig_from_run.forward_warp_np(rig, rig.skin_weights, "lbs"),
                                 rig.root_to_world)
  assert np.abs(loader - full).max() > 1e-2


def test_tree_keeping_every_bone_poses_like_the_flat_rig(tmp_path):
  """No pruning and at most 4 bones: tree and flat files skin identically (the model's LBS)."""
  four = {name: PARTS[name] for name in ("body_back", "body_front", "front_upper",
                                         "front_lower")}
  rig = toy_rig(seed=5)
  keep = [list(PARTS).index(n) for n in four]
  rig = dataclasses.replace(
      rig, rest_bone_quat=rig.rest_bone_quat[keep], rest_bone_trans=rig.rest_bone_trans[keep],
      bone_quat=rig.bone_quat[:, keep], bone_trans=rig.bone_trans[:, keep],
      skin_weights=rig.skin_weights[:, keep] / rig.skin_weights[:, keep].sum(1, keepdims=True))
  skel = make_skeleton(JOINTS[:4], num_bones=4, merges={})
  tree = dataclasses.replace(rig, tree=gltf_writer.tree_from_skeleton(skel, rig.skin_weights))
  gltf_writer.write_glb(tmp_path / "flat.glb", rig)
  gltf_writer.write_glb(tmp_path / "tree.glb", tree)
  times = np.arange(rig.num_frames) / rig.fps
  flat_posed = load_gltf(tmp_path / "flat.glb").pose("motion", times)
  tree_posed = load_gltf(tmp_path / "tree.glb").pose("motion", times)
  model = transforms_np.to_camera(rig_from_run.forward_warp_np(rig, rig.skin_weights, "lbs"),
                                  rig.root_to_world)
  np.testing.assert_allclose(tree_posed, flat_posed, atol=5e-6)
  np.testing.assert_allclose(tree_posed, model, atol=5e-6)


def test_without_root_motion_the_root_stays(tmp_path):
  skel = make_skeleton()
  rig = tree_rig(skel)
  path = tmp_path / "still.glb"
  info = gltf_writer.write_glb(path, rig, root_motion=False)
  assert not info["root_motion"]
  doc, _ = read_glb(path)
  assert all(c["target"]["node"] != 1 for c in doc["animations"][0]["channels"])
  expected = reference_globals(rig, skel, root_motion=False)
  joints = load_gltf(path).joint_world_positions("motion", np.arange(rig.num_frames) / rig.fps)
  np.testing.assert_allclose(joints[:, 1:], expected[..., :3, 3], atol=2e-6)


def test_helpers_match_the_definitions(written):
  rig, skel, _, _ = written
  expected = reference_globals(rig, skel)
  np.testing.assert_allclose(gltf_writer.joint_globals(rig)[:, 1:], expected, atol=1e-9)
  np.testing.assert_allclose(gltf_writer.joint_globals(rig)[:, 0], rig.root_to_world)
  frames = reference_rest_frames(skel.parent, skel.rest_position)
  ibm = gltf_writer.inverse_bind_matrices(rig)
  np.testing.assert_allclose(ibm[1:] @ frames, np.tile(np.eye(4), (skel.num_joints, 1, 1)),
                             atol=1e-12)


# ----------------------------------------------------------------------------
# Joint stretch.


def test_joint_stretch_vs_reference():
  skel = make_skeleton()
  rig = tree_rig(skel)
  stretch = gltf_writer.joint_stretch(rig)
  # Where the parent's bone puts the child joint vs where the child's own bone does.
  for k in range(skel.num_joints):
    worst = 0.0
    if skel.parent[k] >= 0:
      x = np.append(skel.rest_position[k], 1.0)
      for t in range(rig.num_frames):
        moved = []
        for b in (skel.bone[k], skel.bone[skel.parent[k]]):
          a = rigid(rig.bone_quat[t, b], rig.bone_trans[t, b]) @ np.linalg.inv(
              rigid(rig.rest_bone_quat[b], rig.rest_bone_trans[b]))
          moved.append((a @ x)[:3])
        worst = max(worst, np.linalg.norm(moved[0] - moved[1]))
    assert stretch[k] == pytest.approx(worst, abs=1e-9)
  assert stretch[0] == 0.0 and stretch[1:].min() > 1e-3
  # Bones moving as one rigid body: nothing stretches.
  linked = tree_rig(skel, linked=True)
  np.testing.assert_allclose(gltf_writer.joint_stretch(linked), 0.0, atol=1e-12)


# ----------------------------------------------------------------------------
# Bad trees: one clear error, nothing written.


def _tree_with(**changes) -> gltf_writer.Rig:
  rig = tree_rig()
  return dataclasses.replace(rig, tree=dataclasses.replace(rig.tree, **changes))


@pytest.mark.parametrize("changes,message", [
    (dict(names=np.asarray(["a", "b", "c", "d", "e", "a"])), "distinct"),
    (dict(names=np.asarray(["root", "b", "c", "d", "e", "f"])), "'root'"),
    (dict(parent=np.asarray([-1, 0, 3, 2, 0, 4])), "parent must come before"),
    (dict(parent=np.asarray([-1, -1, 1, 2, 0, 4])), "one root"),
    (dict(bone=np.asarray([0, 1, 2, 3, 4, 7])), "distinct model bones in 0..6"),
    (dict(bone=np.asarray([0, 1, 2, 3, 4, 4])), "distinct model bones"),
    (dict(rest_frame=np.tile(np.diag([2.0, 1.0, 1.0, 1.0]), (6, 1, 1))), "rigid"),
    (dict(skin_weights=np.ones((3, 6))), "skin_weights must be"),
    (dict(skin_weights=-np.ones((len(toy_mesh()[0]), 6))), "non-negative"),
])
def test_bad_tree_raises_and_writes_nothing(tmp_path, changes, message):
  path = tmp_path / "bad.glb"
  with pytest.raises(UserError, match=message):
    gltf_writer.write_glb(path, _tree_with(**changes))
  assert list(tmp_path.iterdir()) == []


def test_skeleton_of_another_model_is_refused():
  rig = toy_rig()
  with pytest.raises(UserError, match="made for 8 model bones but the model has 7"):
    gltf_writer.tree_from_skeleton(make_skeleton(num_bones=8), rig.skin_weights)
  broken = dataclasses.replace(make_skeleton(), parent=np.asarray([-1, 0, 1, 2, 0, 7]))
  with pytest.raises(UserError, match="parent must come before"):
    gltf_writer.tree_from_skeleton(broken, rig.skin_weights)


# ----------------------------------------------------------------------------
# Node: Khronos validator and three.js on tree files.


def _validator_available() -> bool:
  return shutil.which("node") is not None and gltf_writer.khronos_validator_dir() is not None


@pytest.mark.node
@pytest.mark.skipif(not _validator_available(),
                    reason="needs node and `npm ci --prefix animdreamer_jax/export/viewer_assets`")
@pytest.mark.parametrize("num_joints,root_motion", [(6, True), (6, False), (1, True)])
def test_khronos_validator_no_errors_on_tree(tmp_path, num_joints, root_motion):
  merges = {TAIL_BONE: TAIL_TARGET} if num_joints == 6 else {b: 0 for b in range(1, 7)}
  skel = make_skeleton(JOINTS[:num_joints], merges=merges)
  rig = tree_rig(skel, num_frames=4, root_motion=root_motion)
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
def test_threejs_poses_the_tree_like_the_model(written, tmp_path):
  rig, skel, path, _ = written
  out = tmp_path / "three.npz"
  # three.js loops at the clip's end (t = duration shows frame 0): stop short of it.
  times = np.arange(rig.num_frames - 1) / rig.fps
  subprocess.run(["node", str(TOOLS / "threejs_pose.mjs"), "--asset", str(path), "--out",
                  str(out), "--times", ",".join(f"{t:.9g}" for t in times), "--all-vertices"],
                 check=True, capture_output=True, timeout=120)
  with np.load(out) as data:
    three, three_joints = data["positions"][0], data["joint_positions"][0]
  model = transforms_np.to_camera(
      rig_from_run.forward_warp_np(rig, top4_on_bones(rig.tree, rig.num_bones), "lbs"),
      rig.root_to_world)
  np.testing.assert_allclose(three, model[:-1], atol=1e-5)
  expected = reference_globals(rig, skel)[:-1, :, :3, 3]
  np.testing.assert_allclose(three_joints[:, 1:], expected, atol=1e-5)
