"""Skeleton construction (skeleton/construct.py) and its file (skeleton/skeleton_file.py), against slow references."""

import itertools
import json

import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.skeleton import construct
from animdreamer_jax.skeleton import picture
from animdreamer_jax.skeleton import skeleton_file


def rot_x(deg):
  a = np.radians(deg)
  return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def rigid(rot=np.eye(3), trans=(0, 0, 0)):
  m = np.eye(4)
  m[:3, :3] = rot
  m[:3, 3] = trans
  return m


# ----------------------------------------------------------------------------
# Strengths.


def test_skin_overlap_and_feature_similarity_match_loops():
  rng = np.random.default_rng(0)
  w = rng.dirichlet(np.ones(5), size=40)
  f = rng.normal(size=(40, 6))
  overlap = construct.skin_overlap(w)
  sim = construct.feature_similarity(w, f)
  for j in range(5):
    for k in range(5):
      num = sum(min(w[n, j], w[n, k]) for n in range(40))
      den = sum(max(w[n, j], w[n, k]) for n in range(40))
      assert overlap[j, k] == pytest.approx(num / den, rel=1e-9)
      mj = sum(w[n, j] * f[n] for n in range(40)) / sum(w[n, j] for n in range(40))
      mk = sum(w[n, k] * f[n] for n in range(40)) / sum(w[n, k] for n in range(40))
      cos = float(mj @ mk / np.linalg.norm(mj) / np.linalg.norm(mk))
      assert sim[j, k] == pytest.approx(max(cos, 0.0), abs=1e-9)
  mixed = construct.connection_strength(w, f, 0.3)
  np.testing.assert_allclose(mixed, 0.3 * sim + 0.7 * overlap)
  np.testing.assert_allclose(construct.connection_strength(w, None, 0.3), overlap)


def spanning_trees(k):
  """Every spanning tree of the complete graph on k vertices, from Pruefer sequences."""
  for seq in itertools.product(range(k), repeat=k - 2):
    degree = [1] * k
    for v in seq:
      degree[v] += 1
    edges = []
    for v in seq:
      leaf = min(i for i in range(k) if degree[i] == 1)
      edges.append((leaf, v))
      degree[leaf] -= 1
      degree[v] -= 1
    u, w = [i for i in range(k) if degree[i] == 1]
    edges.append((u, w))
    yield edges


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_maximum_spanning_tree_is_the_heaviest_of_all_trees(seed):
  rng = np.random.default_rng(seed)
  k = 6
  s = rng.uniform(size=(k, k))
  s = (s + s.T) / 2
  order, parent = construct.maximum_spanning_tree(s, root=2)
  assert order[0] == 2 and parent[2] == -1 and sorted(order) == list(range(k))
  position = {v: i for i, v in enumerate(order)}
  assert all(position[parent[v]] < position[v] for v in range(k) if v != 2)
  got = sum(s[v, parent[v]] for v in range(k) if v != 2)
  best = max(sum(s[a, b] for a, b in tree) for tree in spanning_trees(k))
  assert got == pytest.approx(best)


def test_prune_dead_and_outside_bones_merge_into_the_most_overlapping():
  mass = np.array([0.5, 0.3, 0.001, 0.199])
  sdf = np.array([-0.1, -0.1, -0.1, 0.2])
  overlap = np.array([[1, 0.2, 0.0, 0.1], [0.2, 1, 0.0, 0.6], [0.0, 0.0, 1, 0.0],
                      [0.1, 0.6, 0.0, 1]])
  centres = np.array([[0, 0, 0], [1, 0, 0], [0.1, 0, 0], [2, 0, 0]], float)
  p = construct.prune(mass, sdf, overlap, centres, min_mass=0.01, max_outside=0.05)
  assert list(p.kept) == [0, 1]
  assert p.reasons == {2: "dead", 3: "outside"}
  assert p.target[3] == 1  # overlaps bone 1 most
  assert p.target[2] == 0  # overlaps nothing: the nearest kept centre


def test_prune_keeps_a_candidate_whose_merge_would_move_the_surface():
  mass = np.array([0.6, 0.395, 0.005])
  sdf = np.full(3, -0.1)
  overlap = np.array([[1, 0.3, 0.2], [0.3, 1, 0.1], [0.2, 0.1, 1]])
  centres = np.eye(3)
  moves = {(2, 0): 0.2}
  p = construct.prune(mass, sdf, overlap, centres, 0.01, 0.05, lambda i, t: moves[(i, t)], 0.1)
  assert list(p.kept) == [0, 1, 2] and not p.reasons
  p = construct.prune(mass, sdf, overlap, centres, 0.01, 0.05, lambda i, t: moves[(i, t)], 0.3)
  assert list(p.kept) == [0, 1] and p.reasons == {2: "dead"} and p.target[2] == 0


def test_merge_displacement_is_the_lbs_difference():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(30, 3))
  w = rng.dirichlet(np.ones(3), size=30)
  rest = np.stack([rigid(rot_x(rng.uniform(-30, 30)), rng.normal(size=3)) for _ in range(3)])
  frames = np.stack([np.stack([rigid(rot_x(rng.uniform(-30, 30)), rng.normal(size=3))
                               for _ in range(3)]) for _ in range(4)])

  def lbs(weights, t):
    out = np.zeros((30, 3))
    for v in range(30):
      for b in range(3):
        m = frames[t, b] @ np.linalg.inv(rest[b])
        out[v] += weights[v, b] * (m @ np.append(x[v], 1))[:3]
    return out

  merged = w.copy()
  merged[:, 0] += merged[:, 2]
  merged[:, 2] = 0
  ref = max(np.linalg.norm(lbs(w, t) - lbs(merged, t), axis=1).max() for t in range(4))
  assert construct.merge_displacement(x, w, rest, frames, 2, 0) == pytest.approx(ref, rel=1e-9)


# ----------------------------------------------------------------------------
# Joints and motion.


def test_place_joints_at_the_meeting_of_two_regions_and_inside():
  # Two bones along x; interior samples on a line; weights switch at x = 0.3.
  x = np.linspace(-1, 1, 201)
  interior = np.stack([x, np.zeros_like(x), np.zeros_like(x)], -1)
  w1 = 1 / (1 + np.exp(-(x - 0.3) / 0.05))
  weights = np.stack([1 - w1, w1], -1)
  parent = np.array([-1, 0])
  joints = construct.place_joints(parent, interior, weights, interior, weights,
                                  lambda p: np.abs(p[:, 0]) <= 1)
  assert joints[1, 0] == pytest.approx(0.3, abs=1e-3)
  root_ref = (weights[:, 0, None] * interior).sum(0) / weights[:, 0].sum()
  np.testing.assert_allclose(joints[0], root_ref)
  # A centroid outside (a ring-shaped region) is pulled onto the nearest interior sample.
  ring = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
  wr = np.ones((4, 1))
  out = construct.place_joints(np.array([-1]), ring, wr, ring, wr,
                               lambda p: np.linalg.norm(p, axis=-1) > 0.5)
  assert np.min(np.linalg.norm(ring - out[0], axis=1)) == 0.0


def test_bone_ends_reach_the_far_end_of_a_leaf_region():
  # A root at the origin with one child at x = 1 whose region runs on to x = 3.
  x = np.linspace(0, 3, 301)
  surface = np.stack([x, np.zeros_like(x), np.zeros_like(x)], -1)
  w1 = (x > 1).astype(float)
  weights = np.stack([1 - w1, w1], -1)
  joints = np.array([[0.0, 0, 0], [1.0, 0, 0]])
  ends = construct.bone_ends(np.array([-1, 0]), joints, surface, weights, far_share=0.1)
  np.testing.assert_allclose(ends[0], joints[1])  # inner bone: its child
  far = surface[(x > 1)][np.abs(surface[(x > 1), 0] - 1) >= np.quantile(np.abs(x[x > 1] - 1), 0.9)]
  np.testing.assert_allclose(ends[1], far.mean(0))
  assert ends[1, 0] > 2.8


def test_joints_and_leaf_ends_add_one_point_per_leaf_with_length():
  skel = small_skeleton()
  bone, points, parent = skeleton_file.joints_and_leaf_ends(skel)
  leaves = [k for k in range(skel.num_joints) if not np.any(skel.parent == k)
            and np.linalg.norm(skel.end_position[k] - skel.rest_position[k]) > 1e-6]
  assert len(bone) == skel.num_joints + len(leaves) and len(leaves) > 0
  np.testing.assert_array_equal(parent[skel.num_joints:], leaves)
  np.testing.assert_array_equal(bone[skel.num_joints:], skel.bone[leaves])
  np.testing.assert_allclose(points[skel.num_joints:], skel.end_position[leaves])


def test_motion_ranges_of_a_hinge():
  # Parent bone still; child bone rotates about the joint at (0, 0, 1) by 0..30 degrees.
  joint = np.array([0.0, 0.0, 1.0])
  angles = np.array([0.0, 10.0, 30.0, 20.0])
  rest = np.stack([rigid(), rigid(trans=(0, 0, 1.5))])
  frames = []
  for a in angles:
    hinge = rigid(trans=joint) @ rigid(rot_x(a)) @ rigid(trans=-joint)
    frames.append(np.stack([rest[0], hinge @ rest[1]]))
  frames = np.stack(frames)
  r = construct.motion_ranges(np.array([-1, 0]), np.array([0, 1]),
                              np.stack([np.zeros(3), joint]), rest, frames)
  np.testing.assert_allclose(r["angle_range_deg"][1], [0.0, 30.0], atol=1e-6)
  assert r["dislocation_max"][1] == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(r["length_range"][1], [1.0, 1.0])
  assert r["rest_length"][1] == pytest.approx(1.0)
  np.testing.assert_allclose(r["angle_range_deg"][0], [0, 0])
  # The child also slides 0.1 along y in one frame: the joint is pulled apart by 0.1.
  frames[2, 1] = rigid(trans=(0, 0.1, 0)) @ frames[2, 1]
  r = construct.motion_ranges(np.array([-1, 0]), np.array([0, 1]),
                              np.stack([np.zeros(3), joint]), rest, frames)
  assert r["dislocation_max"][1] == pytest.approx(0.1)


def quadruped():
  """A root, a spine to a head (+z) and a tail (-z), four legs down (y = -1), as joints."""
  pos = {"root": (0, 0, 0), "s_front": (0, 0, 0.5), "neck": (0, 0.3, 0.9), "head": (0, 0.5, 1.2),
         "s_back": (0, 0, -0.5), "tail_a": (0, 0.1, -0.9), "tail_b": (0, 0.2, -1.3),
         "lf_a": (0.2, -0.5, 0.5), "lf_b": (0.2, -1.0, 0.5),
         "rf_a": (-0.2, -0.5, 0.5), "rf_b": (-0.2, -1.0, 0.5),
         "lb_a": (0.2, -0.5, -0.5), "lb_b": (0.2, -1.0, -0.5),
         "rb_a": (-0.2, -0.5, -0.5), "rb_b": (-0.2, -1.0, -0.5)}
  parents = {"root": None, "s_front": "root", "neck": "s_front", "head": "neck",
             "s_back": "root", "tail_a": "s_back", "tail_b": "tail_a",
             "lf_a": "s_front", "lf_b": "lf_a", "rf_a": "s_front", "rf_b": "rf_a",
             "lb_a": "s_back", "lb_b": "lb_a", "rb_a": "s_back", "rb_b": "rb_a"}
  keys = list(pos)
  parent = np.array([-1 if parents[k] is None else keys.index(parents[k]) for k in keys])
  return keys, parent, np.array([pos[k] for k in keys], float)


def test_role_names_of_a_quadruped():
  keys, parent, pos = quadruped()
  surface = np.concatenate([pos, [[0, -1.05, 0], [0, 0.6, 0]]])
  names = dict(zip(keys, construct.role_names(parent, pos, pos, surface, "+z", 0.35)))
  assert names["root"] == construct.ROOT_NAME
  assert (names["neck"], names["head"]) == ("head_1", "head_2")
  assert (names["tail_a"], names["tail_b"]) == ("tail_1", "tail_2")
  # Forward +z, up +y: the animal's left is +x.
  assert (names["lf_a"], names["lf_b"]) == ("leg_front_left_1", "leg_front_left_2")
  assert names["rf_b"] == "leg_front_right_2" and names["lb_b"] == "leg_back_left_2"
  assert names["rb_a"] == "leg_back_right_1"
  assert (names["s_front"], names["s_back"]) == ("spine_1", "spine_2")
  # Facing -z, front and back and left and right swap.
  flipped = dict(zip(keys, construct.role_names(parent, pos, pos, surface, "-z", 0.35)))
  assert flipped["lf_b"] == "leg_back_right_2" and flipped["tail_b"] == "head_2"


def synthetic_samples(num_frames=3):
  """A quadruped's joints as Gaussian 'bones' on a cloud of points along its segments."""
  keys, parent, pos = quadruped()
  rng = np.random.default_rng(0)
  pts = []
  for j in range(1, len(keys)):
    a, b = pos[parent[j]], pos[j]
    u = rng.uniform(size=(60, 1))
    pts.append(a + u * (b - a) + rng.normal(scale=0.03, size=(60, 3)))
  surface = np.concatenate(pts)
  centres = np.array([0.5 * (pos[j] + pos[max(parent[j], 0)]) for j in range(len(keys))])
  centres[0] = pos[0]
  d2 = ((surface[:, None] - centres[None]) ** 2).sum(-1)
  logits = -d2 / (2 * 0.08 ** 2)
  weights = np.exp(logits - logits.max(1, keepdims=True))
  weights /= weights.sum(1, keepdims=True)
  rest = np.stack([rigid(trans=c) for c in centres])
  frames = np.stack([rest] * num_frames)
  return keys, construct.BoneSamples(
      surface=surface, surface_weights=weights, interior=surface, interior_weights=weights,
      features=None, centres=centres, centre_sdf=np.full(len(keys), -0.05),
      rest_bone_to_object=rest, bone_to_object=frames,
      is_inside=lambda p: np.ones(len(p), bool))


def test_build_recovers_a_tree_with_legs_head_and_tail():
  keys, samples = synthetic_samples()
  settings = construct.SkeletonSettings(alpha=0.0, min_mass=0.001)
  skel = construct.build(samples, settings)
  assert skel.num_joints == len(keys) and not skel.pruned
  assert skel.depth() >= 3
  names = set(skel.names.tolist())
  for prefix in ("leg_front_left", "leg_front_right", "leg_back_left", "leg_back_right", "tail"):
    assert any(n.startswith(prefix) for n in names), (prefix, names)
  assert np.all(skel.skin_mass > 0)
  assert skel.settings["alpha"] == 0.0 and skel.settings["num_model_bones"] == len(keys)
  # A dead bone is pruned and its weight goes to a neighbour.
  w = samples.surface_weights.copy()
  w[:, 2] += w[:, 3] - 1e-6  # bone 3's weight moves to bone 2, 1e-6 stays
  w[:, 3] = 1e-6
  dead = construct.build(construct.BoneSamples(**{**samples.__dict__, "surface_weights": w,
                                                  "interior_weights": w}), settings)
  assert dead.num_joints == len(keys) - 1 and dead.pruned[0]["bone"] == 3
  assert 3 not in dead.bone.tolist() and dead.weight_target[3] != -1


# ----------------------------------------------------------------------------
# The file.


def small_skeleton():
  keys, samples = synthetic_samples()
  return construct.build(samples, construct.SkeletonSettings(alpha=0.0, min_mass=0.001))


def test_skeleton_json_round_trip_and_errors(tmp_path):
  skel = small_skeleton()
  path = tmp_path / "skeleton.json"
  skeleton_file.save(path, skel)
  back = skeleton_file.load(path)
  for field in ("names", "parent", "bone", "weight_target"):
    np.testing.assert_array_equal(getattr(back, field), getattr(skel, field))
  np.testing.assert_allclose(back.rest_position, skel.rest_position, atol=1e-6)
  assert back.settings == json.loads(json.dumps(skel.settings))
  data = json.loads(path.read_text())
  data["joints"][2]["parent"] = 5  # after itself
  with pytest.raises(UserError, match="parent must come before"):
    skeleton_file.from_json(data)
  with pytest.raises(UserError, match="not a skeleton file"):
    skeleton_file.from_json({"format": "x"})
  with pytest.raises(UserError, match="not found"):
    skeleton_file.load(tmp_path / "missing.json")
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(UserError, match="cannot read"):
    skeleton_file.load(tmp_path / "bad.json")


def test_joint_positions_and_merged_weights_match_loops():
  skel = small_skeleton()
  rng = np.random.default_rng(3)
  b = skel.num_model_bones
  rest = np.stack([rigid(rot_x(rng.uniform(-40, 40)), rng.normal(size=3)) for _ in range(b)])
  frames = np.stack([np.stack([rigid(rot_x(rng.uniform(-40, 40)), rng.normal(size=3))
                               for _ in range(b)]) for _ in range(2)])
  got = skeleton_file.joint_positions(skel, rest, frames)
  for t in range(2):
    for k in range(skel.num_joints):
      m = frames[t, skel.bone[k]] @ np.linalg.inv(rest[skel.bone[k]])
      np.testing.assert_allclose(got[t, k], (m @ np.append(skel.rest_position[k], 1))[:3],
                                 atol=1e-9)
  w = rng.dirichlet(np.ones(b), size=7)
  merged = skeleton_file.merged_weights(skel, w)
  ref = np.zeros((7, skel.num_joints))
  for v in range(7):
    for i in range(b):
      ref[v, skel.weight_target[i]] += w[v, i]
  np.testing.assert_allclose(merged, ref)


def test_picture_draws_the_bones():
  skel = small_skeleton()
  _, samples = synthetic_samples()
  # A box mesh around the animal.
  lo, hi = samples.surface.min(0), samples.surface.max(0)
  corners = np.array(list(itertools.product(*zip(lo, hi))))
  faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
  image = picture.skeleton_picture(corners, faces, skel, size=128)
  assert image.shape == (128 + 2 * picture.HEADER_HEIGHT, 3 * 128, 3)
  leg = np.array(picture.role_color("leg"))
  assert np.any(np.all(np.abs(image.astype(int) - leg) < 10, axis=-1))
