"""Part-wise scores: limbs / body by rest height, chains from joint names."""

from __future__ import annotations

import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import metrics
from animdreamer_jax.eval import parts
from animdreamer_jax.eval import run_scores

# The standing "animal" below: legs from the ground (y = 0) to the body's underside.
LEG_TOP, BODY_TOP = 0.4, 1.0


def box(lo, hi, rings_y=2):
  """Closed axis-aligned box, its sides cut into rings_y - 1 bands along y: (V, 3), (F, 3)."""
  ys = np.linspace(lo[1], hi[1], rings_y)
  corners = [(lo[0], lo[2]), (hi[0], lo[2]), (hi[0], hi[2]), (lo[0], hi[2])]
  vertices = np.array([[x, y, z] for y in ys for x, z in corners], np.float64)
  faces = []
  for ring in range(rings_y - 1):
    for k in range(4):
      a, b = 4 * ring + k, 4 * ring + (k + 1) % 4
      faces += [[a, b, b + 4], [a, b + 4, a + 4]]
  top = 4 * (rings_y - 1)
  faces += [[0, 2, 1], [0, 3, 2], [top, top + 1, top + 2], [top, top + 2, top + 3]]
  return vertices, np.array(faces, np.int64)


def merge(meshes):
  vertices, faces, offset = [], [], 0
  for v, f in meshes:
    vertices.append(v)
    faces.append(f + offset)
    offset += len(v)
  return np.concatenate(vertices), np.concatenate(faces)


def standing_animal():
  """A box body on four thin box legs (y up), one frame: vertices (1, V, 3), faces, leg faces."""
  body = box((-0.5, LEG_TOP, -0.25), (0.5, BODY_TOP, 0.25))
  legs = [box((x, 0.0, z), (x + 0.06, LEG_TOP, z + 0.06), rings_y=9)  # 0.05 bands
          for x in (-0.45, 0.39) for z in (-0.2, 0.14)]
  vertices, faces = merge([body, *legs])
  is_leg = np.repeat([False, True, True, True, True], [len(body[1])] + [len(f) for _, f in legs])
  return vertices[None].astype(np.float32), faces.astype(np.int32), is_leg


def test_legs_cut_off_score_no_limbs_but_a_full_body():
  vertices, faces, is_leg = standing_animal()
  face_parts = parts.FaceParts(parts.height_parts(vertices[0], faces, parts.LIMB_FRACTION), {})
  # The limbs are leg faces (cut at 0.35 < LEG_TOP), the body is the box and the legs' tops.
  assert not face_parts.masks["limbs"][~is_leg].any()
  assert 0.8 < face_parts.masks["limbs"][is_leg].mean() < 1
  legless = faces[~is_leg]
  report = metrics.evaluate_sequence(vertices, legless, vertices, faces, parts=face_parts,
                                     num_samples=4000, align=False)
  limbs, body = report["mean"]["limbs"], report["mean"]["body"]
  assert limbs["recall@2%"] < 10
  assert body["recall@2%"] > 90
  # Whole-surface recall hides the missing legs less than the limbs' does.
  assert report["mean"]["all"]["recall@2%"] > 80
  # Every predicted point is on the body: no precision for limbs (no points there),
  # and the missing part's F-score is 0, not undefined.
  assert limbs["precision@2%"] is None and body["precision@2%"] == 100.0
  assert limbs["fscore@2%"] == 0.0 and body["fscore@2%"] > 90
  whole = metrics.evaluate_sequence(vertices, faces, vertices, faces, parts=face_parts,
                                    num_samples=4000, align=False)
  for part in ("limbs", "body"):
    for name in ("recall@2%", "precision@2%", "fscore@2%", "fscore@1%"):
      assert whole["mean"][part][name] == 100.0, (part, name)
    assert whole["mean"][part]["chamfer"] < 1e-6


def test_limb_vertices_follow_the_rest_height_range():
  rest = np.array([[0, -2.0, 0], [5, -1.0, 1], [0, 0.0, 0], [0, 2.0, 9]])  # range -2..2
  np.testing.assert_array_equal(parts.limb_vertices(rest, 0.25), [True, True, False, False])
  np.testing.assert_array_equal(parts.limb_vertices(rest, 0.5), [True, True, True, False])
  for bad in (0.0, 1.0, -0.1, float("nan")):
    with pytest.raises(UserError, match="--limb-fraction"):
      parts.limb_vertices(rest, bad)


def test_a_face_follows_the_majority_of_its_vertices():
  labels = np.array([0, 0, 1, 2, 1])
  faces = np.array([[0, 1, 2], [2, 4, 0], [2, 3, 4], [4, 3, 0], [3, 3, 3]])
  # [0 0 1] -> 0, [1 1 0] -> 1, [1 2 1] -> 1, [1 2 0] (all differ) -> smallest 0, [2 2 2] -> 2.
  np.testing.assert_array_equal(parts.majority_labels(labels, faces), [0, 1, 1, 0, 2])


@pytest.mark.parametrize("name, tokens", [
    ("b_LeftLeg01_019", ["b", "left", "leg"]),
    ("b_RightForeArm_07", ["b", "right", "fore", "arm"]),
    ("IKBackLeg.L", ["ik", "back", "leg", "l"]),
    ("Ear.L", ["ear", "l"]),
    ("mixamorig:HeadTop_End", ["mixamorig", "head", "top", "end"]),
    ("forearm.R", ["forearm", "r"]),
])
def test_name_tokens(name, tokens):
  assert parts.name_tokens(name) == tokens


def test_chains_from_names_inherit_from_parents():
  names = ["Root", "Spine", "Neck", "Head", "Ear.L", "Jaw_end", "Tail", "Tail2", "TailTip",
           "b_LeftLeg01_019", "knuckle", "FFB.L", "IKFrontLeg.L", "RearLeg", "Armature_Spare",
           "Bone.003"]
  parents = [-1, 0, 1, 2, 3, 3, 0, 6, 7, 0, 9, -1, -1, 0, 0, 4]
  chains = parts.joint_chains(names, parents)
  assert dict(zip(names, chains)) == {
      "Root": "torso", "Spine": "torso", "Neck": "head", "Head": "head", "Ear.L": "ears",
      "Jaw_end": "head", "Tail": "tail", "Tail2": "tail", "TailTip": "tail",
      "b_LeftLeg01_019": "legs",
      "knuckle": "legs",          # no keyword: its parent's chain
      "FFB.L": "torso",           # no keyword, a root: torso
      "IKFrontLeg.L": "legs",
      "RearLeg": "legs",          # "rear" is not "ear": whole tokens only, legs come first
      "Armature_Spare": "torso",  # "armature" is not "arm"
      "Bone.003": "ears",         # under Ear.L
  }
  with pytest.raises(UserError, match="cycle"):
    parts.joint_chains(["a", "b"], [1, 0])


def test_chain_parts_skip_empty_chains_and_group_faces():
  # Two triangles: one on the leg joint, one on the head; no tail/ears/torso vertices.
  names, parents = ["Hip", "Leg", "Head"], [-1, 0, 0]
  vertex_joint = np.array([1, 1, 1, 2, 2, 2])
  faces = np.array([[0, 1, 2], [3, 4, 5], [0, 1, 3]])
  masks = parts.chain_parts(parts.joint_chains(names, parents), vertex_joint, faces)
  assert list(masks) == ["legs", "head"]
  np.testing.assert_array_equal(masks["legs"], [True, False, True])
  np.testing.assert_array_equal(masks["head"], [False, True, False])


def test_khronos_fox_chains(repo_root):
  fox = assets.load_gltf(repo_root / "third_party" / "khronos_fox" / "Fox.gltf")
  grouped = parts.chain_joint_names(fox.joint_names,
                                    parts.joint_chains(fox.joint_names, fox.joint_parents))
  assert grouped["torso"] == ["_rootJoint", "b_Root_00", "b_Hip_01", "b_Spine01_02",
                              "b_Spine02_03"]
  assert grouped["head"] == ["b_Neck_04", "b_Head_05"]
  assert grouped["tail"] == ["b_Tail01_012", "b_Tail02_013", "b_Tail03_014"]
  assert sorted(grouped["legs"]) == sorted(
      [f"b_{side}{bone}" for side, bones in (
          ("Right", ("UpperArm_06", "ForeArm_07", "Hand_08", "Leg01_019", "Leg02_020",
                     "Foot01_021", "Foot02_022")),
          ("Left", ("UpperArm_09", "ForeArm_010", "Hand_011", "Leg01_015", "Leg02_016",
                    "Foot01_017", "Foot02_018"))) for bone in bones])
  assert "ears" not in grouped  # the Khronos Fox has no ear joints


def test_limb_summary_line():
  report = {"mean": {"all": {}, "limbs": {"recall@2%": 12.04, "fscore@2%": 0.0}}}
  assert run_scores.limb_summary(report) == "limb recall@2% 12.0, limb F@2% 0.0"
  # Reports without the part (older metrics.json) say so rather than fail.
  assert run_scores.limb_summary({"mean": {"all": {}}}) == "limb recall@2% n/a, limb F@2% n/a"
