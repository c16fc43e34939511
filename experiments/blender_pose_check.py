"""Blender live check of an exported rig: the armature is a tree and turning one joint moves only its subtree.

  blender -b --python experiments/blender_pose_check.py -- OUT.glb JOINT_NAME [NUMPY_DIR]

Imports the .glb with Blender's glTF importer, prints the armature's bone count,
depth and roots, clears the clip, turns JOINT_NAME by 40 degrees in pose mode and
counts the mesh vertices that moved, those skinned to the joint or its
descendants, and those that moved outside that subtree (0 for a rig an animator
can pose). Debian's Blender 3.x Python may lack NumPy, which its glTF importer
needs: pass a NumPy folder of the same Python minor version (NUMPY_DIR, e.g.
`python3 -c "import numpy, os; print(os.path.dirname(numpy.__path__[0]))"`).
"""
import sys

args = sys.argv[sys.argv.index("--") + 1:]
if len(args) > 2:
  sys.path.append(args[2])
import numpy  # noqa: E402

numpy.bool = bool  # Blender 3.x's importer uses the alias NumPy removed
import bpy  # noqa: E402
import mathutils  # noqa: E402
glb, joint = args[:2]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.import_scene.gltf(filepath=glb)
arm = [o for o in bpy.data.objects if o.type == "ARMATURE"][0]
mesh = [o for o in bpy.data.objects if o.type == "MESH"][0]
bones = {b.name: (b.parent.name if b.parent else None) for b in arm.data.bones}
def depth(n):
  d = 0
  while bones[n]: n = bones[n]; d += 1
  return d
print("bones", len(bones), "max depth", max(depth(n) for n in bones))
print("roots", [n for n, p in bones.items() if p is None])
scene = bpy.context.scene
scene.frame_set(0)
for pb in arm.pose.bones: pb.rotation_mode = "QUATERNION"
# Clear animation so pose edits are not overwritten.
arm.animation_data_clear()
for pb in arm.pose.bones:
  pb.location = (0, 0, 0); pb.rotation_quaternion = (1, 0, 0, 0)
bpy.context.view_layer.update()
dg = bpy.context.evaluated_depsgraph_get()
before = numpy.array([v.co[:] for v in mesh.evaluated_get(dg).to_mesh().vertices])
arm.pose.bones[joint].rotation_quaternion = mathutils.Quaternion((1, 0.3, 0.5), 0.7)  # 40 degrees about a generic axis
bpy.context.view_layer.update()
dg = bpy.context.evaluated_depsgraph_get()
after = numpy.array([v.co[:] for v in mesh.evaluated_get(dg).to_mesh().vertices])
moved = numpy.linalg.norm(after - before, axis=1) > 1e-5
# Vertex groups of the joint and its descendants.
sub = {joint}
changed = True
while changed:
  changed = False
  for n, p in bones.items():
    if p in sub and n not in sub: sub.add(n); changed = True
gi = {g.index: g.name for g in mesh.vertex_groups}
inside = numpy.array([any(gi[g.group] in sub and g.weight > 0 for g in v.groups) for v in mesh.data.vertices])
print("joint", joint, "subtree", sorted(sub))
print("moved", int(moved.sum()), "skinned to subtree", int(inside.sum()), "moved outside subtree", int((moved & ~inside).sum()))
