"""Blender live check of the tree glb: an animator imports it and poses a leg.

Runs Blender headless (`blender -b`) on a tree glb of the toy animal of
test_export_tree.py and reads back, through Blender's own API, the armature's
bones and the skinned mesh in the rest pose, with one leg joint turned in pose
mode, and at the clip's keys. Skipped without the `blender` binary (Debian
package `blender`). Blender 3.x's glTF importer needs NumPy, which the Debian
build's Python may lack: the script falls back to this interpreter's NumPy (same
Python minor version) and restores the `numpy.bool` alias the importer uses.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import subprocess

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.assets import load_gltf
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import rig_from_run
from animdreamer_jax.geometry import transforms_np

import test_export_tree as toy

BLENDER = shutil.which("blender")
pytestmark = [pytest.mark.blender,
              pytest.mark.skipif(BLENDER is None, reason="needs the blender binary")]

POSED_JOINT = "front_thigh"  # a leg joint with a child (front_shin), not the root
TURN_AXIS, TURN_DEG = (1.0, 0.3, 0.5), 40.0  # a generic axis: no vertex lies on it

# Run by Blender's Python: argv after "--" is glb, out.json, numpy folder, joint name,
# turn axis (x,y,z) and angle (degrees), the clip's fps.
_SCRIPT = r"""
import json, math, sys
glb, out, numpy_dir, joint, axis, angle, fps = sys.argv[sys.argv.index("--") + 1:]
try:
  import numpy
except ImportError:
  sys.path.append(numpy_dir)
  import numpy
numpy.bool = bool  # Blender 3.x's glTF importer still uses the removed alias
import bpy
import mathutils

bpy.ops.wm.read_factory_settings(use_empty=True)
scene = bpy.context.scene
scene.render.fps, scene.render.fps_base = int(fps), 1.0  # the importer keys at time * fps
bpy.ops.import_scene.gltf(filepath=glb)
arma = next(o for o in bpy.data.objects if o.type == "ARMATURE")
mesh = next(o for o in bpy.data.objects if o.type == "MESH")

def vertices():
  bpy.context.view_layer.update()
  evaluated = mesh.evaluated_get(bpy.context.evaluated_depsgraph_get())
  data = evaluated.to_mesh()
  out = [list(evaluated.matrix_world @ v.co) for v in data.vertices]
  evaluated.to_mesh_clear()
  return out

result = {"bones": {b.name: b.parent.name if b.parent else None for b in arma.data.bones},
          "matrix_local": {b.name: [list(r) for r in arma.matrix_world @ b.matrix_local]
                           for b in arma.data.bones},
          "tail": {b.name: list(arma.matrix_world @ b.tail_local) for b in arma.data.bones}}
action = arma.animation_data.action
start, end = (int(round(f)) for f in action.frame_range)
result["frames"] = list(range(start, end + 1))
result["animated"] = []
for frame in result["frames"]:
  scene.frame_set(frame)
  result["animated"].append(vertices())
# The rest pose: no clip, every pose bone at rest.
arma.animation_data.action = None
for bone in arma.pose.bones:
  bone.matrix_basis = mathutils.Matrix.Identity(4)
result["rest"] = vertices()
# Pose mode: turn one joint about an axis of its own frame.
bpy.context.view_layer.objects.active = arma
bpy.ops.object.mode_set(mode="POSE")
bone = arma.pose.bones[joint]
bone.rotation_mode = "QUATERNION"
bone.rotation_quaternion = mathutils.Quaternion(
    mathutils.Vector([float(x) for x in axis.split(",")]).normalized(), math.radians(float(angle)))
bpy.ops.object.mode_set(mode="OBJECT")
result["posed"] = vertices()
with open(out, "w") as f:
  json.dump(result, f)
"""


def gltf_to_blender(points: np.ndarray) -> np.ndarray:
  """glTF's +Y up -> Blender's +Z up, as the importer converts: (x, y, z) -> (x, -z, y)."""
  points = np.asarray(points, np.float64)
  return np.stack([points[..., 0], -points[..., 2], points[..., 1]], -1)


@pytest.fixture(scope="module")
def blender_result(tmp_path_factory):
  folder = tmp_path_factory.mktemp("blender")
  skel = toy.make_skeleton()
  rig = toy.toy_rig(num_frames=4)
  # Sparse weights (small ones dropped), so a vertex either follows the joint or not.
  weights = np.where(rig.skin_weights > 0.02, rig.skin_weights, 0.0)
  rig = dataclasses.replace(rig, skin_weights=weights / weights.sum(1, keepdims=True))
  rig = dataclasses.replace(rig, tree=gltf_writer.tree_from_skeleton(skel, rig.skin_weights))
  path = folder / "toy.glb"
  gltf_writer.write_glb(path, rig)
  script, out = folder / "pose.py", folder / "blender.json"
  script.write_text(_SCRIPT)
  numpy_dir = pathlib.Path(np.__file__).resolve().parents[1]
  subprocess.run([BLENDER, "-b", "--factory-startup", "--python", str(script), "--",
                  str(path), str(out), str(numpy_dir), POSED_JOINT,
                  ",".join(str(x) for x in TURN_AXIS), str(TURN_DEG), f"{rig.fps:g}"],
                 check=True, capture_output=True, timeout=300)
  return rig, skel, path, json.loads(out.read_text())


def test_blender_imports_the_joint_tree(blender_result):
  rig, skel, _, result = blender_result
  expected = {"root": None}
  for k in range(skel.num_joints):
    expected[str(skel.names[k])] = "root" if skel.parent[k] < 0 else str(skel.names[skel.parent[k]])
  assert result["bones"] == expected
  # Each bone starts at its joint and runs along the joint's +Y (toward its children).
  frames = gltf_writer.joint_rest_frames(skel.parent, skel.rest_position)
  for k in range(skel.num_joints):
    bone = np.asarray(result["matrix_local"][str(skel.names[k])])
    np.testing.assert_allclose(bone[:3, 3], gltf_to_blender(skel.rest_position[k]), atol=1e-5)
    np.testing.assert_allclose(bone[:3, 1], gltf_to_blender(frames[k, :3, 1]), atol=1e-5)
  # A joint with one child ends at that child.
  np.testing.assert_allclose(result["tail"]["front_thigh"],
                             gltf_to_blender(skel.rest_position[3]), atol=1e-5)
  # The rest pose is the bind pose: the mesh as written.
  np.testing.assert_allclose(result["rest"], gltf_to_blender(rig.rest_vertices), atol=1e-5)


def test_blender_plays_the_clip_like_the_model(blender_result):
  """At the keys Blender shows the model's forward warp (LBS, merged top-4 weights, root)."""
  rig, _, path, result = blender_result
  assert len(result["frames"]) == rig.num_frames
  model = transforms_np.to_camera(
      rig_from_run.forward_warp_np(rig, toy.top4_on_bones(rig.tree, rig.num_bones), "lbs"),
      rig.root_to_world)
  np.testing.assert_allclose(result["animated"], gltf_to_blender(model), atol=1e-4)
  player = load_gltf(path).pose("motion", np.arange(rig.num_frames) / rig.fps)
  np.testing.assert_allclose(result["animated"], gltf_to_blender(player), atol=1e-4)


def test_turning_a_leg_moves_exactly_its_skinned_vertices(blender_result):
  rig, skel, path, result = blender_result
  doc, accessor = toy.read_glb(path)
  prim = doc["meshes"][0]["primitives"][0]
  joints = accessor(prim["attributes"]["JOINTS_0"]).astype(int) - 1  # skin joint 0 is the root
  weights = accessor(prim["attributes"]["WEIGHTS_0"])
  k = list(skel.names).index(POSED_JOINT)
  subtree = {k}
  for j in range(skel.num_joints):  # parents come before children
    if skel.parent[j] in subtree:
      subtree.add(j)
  assert {str(skel.names[j]) for j in subtree} == {"front_thigh", "front_shin"}
  on_subtree = np.where(np.isin(joints, sorted(subtree)), weights, 0.0).sum(1)
  rest, posed = np.asarray(result["rest"]), np.asarray(result["posed"])
  moved = np.linalg.norm(posed - rest, axis=1) > 1e-6
  assert 10 < moved.sum() < rest.shape[0] // 2
  np.testing.assert_array_equal(moved, on_subtree > 0)
  # And by how much: the turn about the joint, in its bone's frame B, blended by the weight.
  bone = np.asarray(result["matrix_local"][POSED_JOINT])
  turn = np.eye(4)
  turn[:3, :3] = Rotation.from_rotvec(np.radians(TURN_DEG) * np.asarray(TURN_AXIS)
                                      / np.linalg.norm(TURN_AXIS)).as_matrix()
  move = bone @ turn @ np.linalg.inv(bone)
  turned = rest @ move[:3, :3].T + move[:3, 3]
  np.testing.assert_allclose(posed, rest + on_subtree[:, None] * (turned - rest), atol=1e-5)
