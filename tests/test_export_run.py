"""Export and re-animation of a run folder (a tiny model with a real orbax checkpoint).

The run folder is made here the way the extraction writes it: a tiny
ArticulatedModel with random parameters (moving bones, non-zero delta
skinning), its checkpoint through train/checkpoint.py, and meshes.npz from the
extraction's own forward warp (`render.posing.posed_sequence`, the
renderer's SkinningWarp), which is the independent reference for the
export's array-based warp.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import ConvexHull
from scipy.spatial.transform import Rotation

from animdreamer_jax import assets
from animdreamer_jax import cli
from animdreamer_jax import files
from animdreamer_jax import settings as settings_lib
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import motion_file
from animdreamer_jax.export import rig_from_run
from animdreamer_jax.export import viewer
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax.model import skinning
from animdreamer_jax.render import posing
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction
from animdreamer_jax.train import checkpoint as checkpoint_lib
from animdreamer_jax.train import optimizer as optimizer_lib
from animdreamer_jax.train import state as state_lib

NUM_FRAMES, NUM_BONES, FPS = 6, 5, 12.0


def _random_params(shapes, seed):
  """Fan-in scaled random weights (NumPy); the explicit parameters set to sensible values."""
  rng = np.random.default_rng(seed)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  special = {"log_gauss": lambda s: np.full(s, np.log(0.12)),
             "base_quat": lambda s: np.tile([0.0, 0.0, 0.0, 1.0], (s[0], 1)),
             "base_logfocal": lambda s: np.full(s, np.log(40.0)),
             "base_ppoint": lambda s: np.full(s, 16.0)}
  out = []
  for path, leaf in leaves:
    name = str(getattr(path[-1], "key", path[-1]))
    if name in special:
      value = special[name](leaf.shape)
    elif leaf.ndim == 0:
      value = np.zeros(())
    elif name.startswith("kernel"):
      value = rng.normal(size=leaf.shape) / np.sqrt(leaf.shape[0])
    else:
      value = 0.3 * rng.normal(size=leaf.shape)
    out.append(jnp.asarray(value, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


def make_run(folder: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A finished-looking run folder (config, model.json, checkpoint, rest/meshes/motion npz)."""
  folder.mkdir(parents=True)
  settings = extraction.defaults("tiny")
  settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model,
                                                                     num_bones=NUM_BONES))
  # The feature width follows the video (here 6, not the config's): the export
  # must take the model from model.json.
  model = articulated_model.ArticulatedModel(
      plan_lib.model_config(settings, NUM_FRAMES, (32, 32), feature_dim=6))
  assert model.config.feature_dim != settings.model.feature_dim
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.int32(0))
  params = _random_params(shapes, seed)
  # Put the object 2 units in front of the camera.
  head = params["params"]["root_pose"]["trans_head"]["output"]["dense"]
  head["bias"] = head["bias"] + jnp.array([0.0, 0.0, 2.0])
  tx = optimizer_lib.make_optimizer(params, settings.optim)
  aux = plan_lib.initial_aux(settings, NUM_FRAMES)
  state = state_lib.create(params, tx, aux, seed=settings.train.seed + 1)
  checkpointer = checkpoint_lib.Checkpointer(folder / "checkpoints")
  assert checkpointer.save(state)
  checkpointer.close()
  settings_lib.save_config(extraction.to_config(settings), folder / "config.json")
  files.save_json(folder / "model.json", dataclasses.asdict(model.config))

  # Rest mesh: a closed ellipsoid (convex hull of a UV grid).
  u, v = np.meshgrid(np.linspace(0, np.pi, 9), np.linspace(0, 2 * np.pi, 12, endpoint=False),
                     indexing="ij")
  points = np.stack([0.45 * np.sin(u) * np.cos(v), 0.2 * np.cos(u), 0.18 * np.sin(u) * np.sin(v)],
                    -1).reshape(-1, 3)
  points = np.unique(np.round(points, 6), axis=0)
  hull = ConvexHull(points)
  rest_v = points[np.unique(hull.simplices)].astype(np.float32)
  rest_f = ConvexHull(rest_v).simplices.astype(np.int32)
  posed, obj2cam = posing.posed_sequence(model, params, rest_v, range(NUM_FRAMES),
                                         blend=settings.render.blend)

  @jax.jit
  def motion_arrays(params):
    rest_bones = model.apply(params, method="rest_bones")
    log_scale = model.apply(params, method="log_scale")
    bones = model.apply(params, jnp.arange(NUM_FRAMES), method="bones")
    no_delta = skinning.skinning_weights_points(jnp.asarray(rest_v), rest_bones, log_scale)
    return rest_bones, log_scale, bones, no_delta

  rest_bones, log_scale, bones, no_delta = jax.tree_util.tree_map(np.asarray,
                                                                  motion_arrays(params))
  colors = np.random.default_rng(seed).integers(0, 256, rest_v.shape).astype(np.uint8)
  # Cameras: obj2cam = w2c * root with a known root motion (turn + walk).
  root = np.tile(np.eye(4), (NUM_FRAMES, 1, 1))
  root[:, :3, :3] = Rotation.from_euler("y", 10.0 * np.arange(NUM_FRAMES)[:, None],
                                        degrees=True).as_matrix()
  root[:, 0, 3] = 0.05 * np.arange(NUM_FRAMES)
  w2c = obj2cam.astype(np.float64) @ np.linalg.inv(root)
  assets.save_sequence_npz(folder / "meshes.npz", assets.MeshSequence(
      vertices=posed, faces=rest_f, fps=FPS, vertex_colors=colors, rest_vertices=rest_v))
  files.save_npz(folder / "rest.npz", vertices=rest_v, faces=rest_f, vertex_colors=colors)
  files.save_npz(
      folder / "motion.npz", object_to_camera=obj2cam, mesh_frame=np.array("object"),
      bone_quat=np.asarray(bones.quat), bone_trans=np.asarray(bones.trans),
      rest_bone_quat=np.asarray(rest_bones.quat), rest_bone_trans=np.asarray(rest_bones.trans),
      bone_log_scale=log_scale, rest_skin_weights=no_delta, w2c=w2c.astype(np.float32))
  np.save(folder / "true_root.npy", root)
  return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def run_rig(run_dir):
  return rig_from_run.load_run_rig(run_dir)


def _truncation_bound(weights, rel, vertices):
  """|LBS(all) - LBS(top 4)| <= (1 - s) max_{b,b'} |M_b x - M_b' x| per vertex (s: kept mass)."""
  moved = np.einsum("tbij,vj->tvbi", rel[..., :3, :3], vertices) + rel[:, None, :, :3, 3]
  spread = np.linalg.norm(moved[:, :, :, None] - moved[:, :, None], axis=-1).max((2, 3))
  kept = -np.sort(-weights, axis=1)[:, :4].sum(1)
  return (1 - kept)[None] * spread


def test_weights_and_warp_reproduce_the_extraction(run_dir, run_rig):
  """The array warp with the checkpoint's forward weights = the renderer's forward warp."""
  meshes = assets.load_sequence_npz(run_dir / "meshes.npz").vertices
  ours = rig_from_run.forward_warp_np(run_rig.rig, run_rig.rig.skin_weights, "dqs")
  np.testing.assert_allclose(ours, meshes, atol=1e-5)
  # Delta skinning matters here (motion.npz's weights leave it out).
  with np.load(run_dir / "motion.npz") as motion:
    assert np.abs(run_rig.rig.skin_weights - motion["rest_skin_weights"]).max() > 1e-2
  # The bones really move and rotate (else the test would prove little).
  assert np.abs(meshes - run_rig.rig.rest_vertices).max() > 0.05
  np.testing.assert_allclose(run_rig.rig.root_to_world, np.load(run_dir / "true_root.npy"),
                             atol=1e-4)
  assert run_rig.root_source == "motion.npz w2c"


def test_export_command(run_dir, run_rig, tmp_path, capsys):
  out = tmp_path / "exp" / "animal.glb"
  # The viewer page needs three.js from npm (set-up step); without it, export the rest.
  try:
    viewer.three_package_dir()
    with_viewer = True
  except UserError:
    with_viewer = False
  argv = ["export", "--run", str(run_dir), "--out", str(out), "--size", "32"]
  assert cli.main(argv + ([] if with_viewer else ["--no-viewer"])) == 0
  printed = capsys.readouterr().out
  assert "vs model DQS" in printed
  names = sorted(p.name for p in out.parent.iterdir())
  expected = ["animal.export.json", "animal.glb", "animal.html", "animal.meshes.npz",
              "animal.motion.json", "animal_animation.mp4", "animal_frames", "animal_turntable.mp4"]
  if not with_viewer:
    expected.remove("animal.html")
  assert names == expected
  assert len(list((out.parent / "animal_frames").glob("*.obj"))) == NUM_FRAMES
  log = json.loads((out.parent / "animal.export.json").read_text())
  assert log["root_motion"] and log["frame"] == "world"

  # The project's glTF loader vs the model's own per-frame meshes (meshes.npz, DQS),
  # moved by the root motion. Stated tolerance: 1% of the rest bbox diagonal.
  root = run_rig.rig.root_to_world
  model_dqs = transforms_np.to_camera(
      assets.load_sequence_npz(run_dir / "meshes.npz").vertices, root)
  player = assets.load_gltf(out).pose("motion", np.arange(NUM_FRAMES) / FPS)
  dist = np.linalg.norm(player - model_dqs, axis=-1)
  diagonal = np.linalg.norm(np.ptp(run_rig.rig.rest_vertices, axis=0))
  assert dist.max() < 0.01 * diagonal
  np.testing.assert_allclose(log["player_vs_model_dqs"]["per_frame_max"], dist.max(1), rtol=1e-4,
                             atol=1e-7)
  # Against the model's linear blending only the top-4 truncation remains.
  rig = run_rig.rig
  rel = (transforms_np.rigid_matrix(rig.bone_quat, rig.bone_trans)
         @ np.linalg.inv(transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans))[None])
  bound = _truncation_bound(rig.skin_weights.astype(np.float64), rel, rig.rest_vertices)
  model_lbs = transforms_np.to_camera(
      rig_from_run.forward_warp_np(rig, rig.skin_weights, "lbs"), root)
  assert np.all(np.linalg.norm(player - model_lbs, axis=-1) <= bound + 1e-5)
  # The written per-frame meshes are the model's (DQS, the run's blend), in the glTF frame.
  written = assets.load_sequence_npz(out.parent / "animal.meshes.npz")
  np.testing.assert_allclose(written.vertices, model_dqs, atol=1e-5)
  assert written.fps == FPS
  first = assets.read_obj(out.parent / "animal_frames" / "animal_00000.obj")
  np.testing.assert_allclose(first[0], model_dqs[0], atol=1e-6)
  # The motion file holds the run's motion.
  motion = motion_file.load_motion(out.parent / "animal.motion.json")
  np.testing.assert_allclose(motion.object_to_world, root, atol=1e-9)
  np.testing.assert_allclose(motion.object_to_camera, run_rig.object_to_camera, atol=1e-6)
  if gltf_writer.khronos_validate(out) is not None:
    assert log["khronos_validator"]["numErrors"] == 0
  if with_viewer:
    # The viewer frames the clip's box in the glTF frame, root motion included.
    page = (out.parent / "animal.html").read_text()
    config = json.loads(re.search(r"const CONFIG = (\{.*?\});", page).group(1))
    np.testing.assert_allclose(config["bounds"], [player.min((0, 1)), player.max((0, 1))],
                               rtol=1e-6, atol=1e-7)
    assert config["num_frames"] == NUM_FRAMES and config["fps"] == FPS


def test_export_lbs_without_root_motion(run_dir, run_rig, tmp_path):
  out = tmp_path / "lbs.glb"
  assert cli.main(["export", "--run", str(run_dir), "--out", str(out), "--blend", "lbs",
                   "--no-root-motion", "--no-videos", "--no-viewer"]) == 0
  log = json.loads((tmp_path / "lbs.export.json").read_text())
  assert not log["root_motion"] and log["meshes_blend"] == "lbs"
  written = assets.load_sequence_npz(tmp_path / "lbs.meshes.npz").vertices
  model_lbs = rig_from_run.forward_warp_np(run_rig.rig, run_rig.rig.skin_weights, "lbs")
  np.testing.assert_allclose(written, model_lbs, atol=1e-6)
  player = assets.load_gltf(out).pose("motion", np.arange(NUM_FRAMES) / FPS)
  # LBS mode: the player and the model differ by the top-4 truncation alone, which
  # is smaller than the DQS/LBS gap on this rig.
  assert log["player_vs_model_lbs"]["mean"] < log["player_vs_model_dqs"]["mean"]
  assert np.abs(np.linalg.norm(player - written, axis=-1).max()
                - log["player_vs_model_lbs"]["max"]) < 1e-6


@pytest.mark.slow
def test_reanimate_with_another_runs_motion(run_dir, run_rig, tmp_path):
  # Another "run": the same files with every bone's motion changed in its local frame.
  other = tmp_path / "other"
  other.mkdir()
  shutil.copy(run_dir / "meshes.npz", other / "meshes.npz")
  with np.load(run_dir / "motion.npz") as data:
    motion = {k: data[k] for k in data.files}
  rng = np.random.default_rng(4)
  rest = transforms_np.rigid_matrix(motion["rest_bone_quat"] * 0 + [0, 0, 0, 1.0],
                                  rng.normal(size=(NUM_BONES, 3)))
  local = transforms_np.rigid_matrix(Rotation.random(NUM_FRAMES * NUM_BONES, random_state=1)
                                   .as_quat().reshape(NUM_FRAMES, NUM_BONES, 4),
                                   0.1 * rng.normal(size=(NUM_FRAMES, NUM_BONES, 3)))
  bones = rest[None] @ local
  motion["rest_bone_quat"], motion["rest_bone_trans"] = gltf_writer.matrix_to_quat_trans(rest)
  motion["bone_quat"], motion["bone_trans"] = gltf_writer.matrix_to_quat_trans(bones)
  np.savez(other / "motion.npz", **motion)
  out = tmp_path / "re.glb"
  assert cli.main(["reanimate", "--run", str(run_dir), "--motion", str(other), "--out", str(out),
                   "--no-videos", "--no-viewer"]) == 0
  # Joint b of the model moves by the other run's local motion: rest_model * local.
  asset = assets.load_gltf(out)
  joints = asset.joint_world_positions("motion", np.arange(NUM_FRAMES) / FPS)
  rest_model = transforms_np.rigid_matrix(run_rig.rig.rest_bone_quat, run_rig.rig.rest_bone_trans)
  expected = transforms_np.to_camera((rest_model[None] @ local)[..., :3, 3],
                                     run_rig.rig.root_to_world)
  np.testing.assert_allclose(joints[:, 1:], expected, atol=1e-5)
  # Re-animating with the run's own motion file reproduces the run's motion.
  exported = tmp_path / "own.glb"
  assert cli.main(["export", "--run", str(run_dir), "--out", str(exported), "--no-videos",
                   "--no-viewer"]) == 0
  again = tmp_path / "again.glb"
  assert cli.main(["reanimate", "--run", str(run_dir), "--motion",
                   str(tmp_path / "own.motion.json"), "--out", str(again), "--no-videos",
                   "--no-viewer"]) == 0
  times = np.arange(NUM_FRAMES) / FPS
  np.testing.assert_allclose(assets.load_gltf(again).pose("motion", times),
                             assets.load_gltf(exported).pose("motion", times), atol=1e-5)


def _expect_error(argv, message, capsys):
  code = cli.main(argv)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_bad_run_folders(run_dir, tmp_path, capsys):
  out = tmp_path / "out" / "x.glb"
  broken = tmp_path / "broken"
  shutil.copytree(run_dir, broken)
  (broken / "meshes.npz").unlink()
  _expect_error(["export", "--run", str(broken), "--out", str(out)],
                "not a finished run (missing meshes.npz)", capsys)
  shutil.copy(run_dir / "meshes.npz", broken / "meshes.npz")
  shutil.rmtree(broken / "checkpoints")
  _expect_error(["export", "--run", str(broken), "--out", str(out)], "missing checkpoint", capsys)
  shutil.copytree(run_dir / "checkpoints", broken / "checkpoints")
  (broken / "motion.npz").write_bytes(b"garbage")
  _expect_error(["export", "--run", str(broken), "--out", str(out)], "motion.npz", capsys)
  _expect_error(["export", "--run", str(run_dir), "--out", str(tmp_path / "x.obj")], ".glb",
                capsys)
  assert not (tmp_path / "out").exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]


def hand_made_skeleton(run_rig, prune: bool = False) -> skeleton_file.Skeleton:
  """A skeleton over the run's bones (with `prune`, the lightest merged into its nearest joint).

  Joints in order of skin mass; each joint's parent is the nearest earlier one (by
  rest bone centre), met halfway between the two centres.
  """
  rig = run_rig.rig
  mass = rig.skin_weights.sum(0)
  order = [int(b) for b in np.argsort(-mass, kind="stable")]
  kept, pruned = (order[:-1], order[-1:]) if prune else (order, [])
  centre = np.asarray(rig.rest_bone_trans, np.float64)
  parent, position = [-1], [centre[kept[0]]]
  for k in range(1, len(kept)):
    p = int(np.argmin([np.linalg.norm(centre[kept[k]] - centre[kept[j]]) for j in range(k)]))
    parent.append(p)
    position.append((centre[kept[k]] + centre[kept[p]]) / 2)
  target = np.zeros(rig.num_bones, np.int32)
  target[kept] = np.arange(len(kept))
  for b in pruned:
    target[b] = int(np.argmin([np.linalg.norm(centre[b] - centre[j]) for j in kept]))
  k = len(kept)
  return skeleton_file.validate(skeleton_file.Skeleton(
      names=np.asarray(["spine", "neck", "front_leg", "back_leg", "tail"][:k]),
      parent=np.asarray(parent), bone=np.asarray(kept), rest_position=np.asarray(position),
      weight_target=target, skin_mass=mass[kept] / mass.sum(), strength=np.zeros(k),
      rest_length=np.zeros(k), length_range=np.zeros((k, 2)), dislocation_max=np.zeros(k),
      angle_range_deg=np.zeros((k, 2)),
      pruned=[{"bone": b, "reason": "test", "merged_into": int(target[b])} for b in pruned]))


def _with_skeleton(run_dir, folder, skel) -> pathlib.Path:
  shutil.copytree(run_dir, folder)
  skeleton_file.save(folder / skeleton_file.FILE_NAME, skel)
  return folder


@pytest.fixture(scope="module")
def tree_run(run_dir, run_rig, tmp_path_factory):
  """The run with a skeleton.json over all its bones, and the skeleton as read back."""
  folder = _with_skeleton(run_dir, tmp_path_factory.mktemp("tree") / "run",
                          hand_made_skeleton(run_rig))
  return folder, skeleton_file.load_of_run(folder)


def test_export_tree_from_the_runs_skeleton(tree_run, run_rig, tmp_path, capsys):
  folder, skel = tree_run
  out = tmp_path / "tree.glb"
  assert cli.main(["export", "--run", str(folder), "--out", str(out), "--no-videos",
                   "--no-viewer"]) == 0
  printed = capsys.readouterr().out
  assert "a tree of 5 joints over 5 bones (0 pruned)" in printed and "joint stretch" in printed
  log = json.loads((tmp_path / "tree.export.json").read_text())
  assert log["rig"] == "tree" and log["num_joints"] == 5
  assert log["skeleton"] == str(folder / "skeleton.json")
  assert log["joint_names"] == list(skel.names) and log["pruned_bones"] == []
  # The glb's joints: root, then the skeleton's tree.
  asset = assets.load_gltf(out)
  assert asset.joint_names == ["root"] + list(skel.names)
  np.testing.assert_array_equal(asset.joint_parents, [-1, 0] + [p + 1 for p in skel.parent[1:]])
  # The loader composes the hierarchy as players do; against the model's own meshes
  # (DQS, all bones, moved by the root) it stays within 1% of the rest bbox diagonal.
  root = run_rig.rig.root_to_world
  model_dqs = transforms_np.to_camera(
      assets.load_sequence_npz(folder / "meshes.npz").vertices, root)
  player = asset.pose("motion", np.arange(NUM_FRAMES) / FPS)
  dist = np.linalg.norm(player - model_dqs, axis=-1)
  diagonal = np.linalg.norm(np.ptp(run_rig.rig.rest_vertices, axis=0))
  assert dist.max() < 0.01 * diagonal
  np.testing.assert_allclose(log["player_vs_model_dqs"]["per_frame_max"], dist.max(1), rtol=1e-4,
                             atol=1e-7)
  # Joint stretch: the child joints' offsets, as shares of the diagonal.
  tree_rig = dataclasses.replace(run_rig.rig, tree=gltf_writer.tree_from_skeleton(
      skel, run_rig.rig.skin_weights))
  stretch = gltf_writer.joint_stretch(tree_rig) / log["rest_bbox_diagonal"]
  assert log["joint_stretch"]["per_joint"] == pytest.approx(
      {str(skel.names[k]): stretch[k] for k in range(1, skel.num_joints)}, rel=1e-6)
  assert log["joint_stretch"]["max"] == pytest.approx(stretch.max(), rel=1e-6)
  if gltf_writer.khronos_validate(out) is not None:
    assert log["khronos_validator"]["numErrors"] == 0
  # --rig flat on the same run: one joint per bone again.
  flat = tmp_path / "flat.glb"
  assert cli.main(["export", "--run", str(folder), "--out", str(flat), "--rig", "flat",
                   "--no-videos", "--no-viewer"]) == 0
  log = json.loads((tmp_path / "flat.export.json").read_text())
  assert log["rig"] == "flat" and log["joint_stretch"] is None and log["skeleton"] is None
  assert assets.load_gltf(flat).joint_names == ["root"] + [f"bone_{b:03d}" for b in
                                                           range(NUM_BONES)]


def test_export_tree_with_a_pruned_bone(run_dir, run_rig, tmp_path):
  """A pruned bone's vertices follow its merge target: the player is the model's LBS
  with the merged weights (up to the top-4 truncation), and the log says how much
  weight was merged."""
  skel = hand_made_skeleton(run_rig, prune=True)
  folder = _with_skeleton(run_dir, tmp_path / "run", skel)
  out = tmp_path / "pruned.glb"
  assert cli.main(["export", "--run", str(folder), "--out", str(out), "--no-videos",
                   "--no-viewer"]) == 0
  log = json.loads((tmp_path / "pruned.export.json").read_text())
  pruned = skel.pruned[0]["bone"]
  assert log["num_joints"] == 4 and log["pruned_bones"] == [pruned]
  rig = run_rig.rig
  assert log["weight_on_pruned_bones"]["max"] == pytest.approx(
      float(rig.skin_weights[:, pruned].max()), rel=1e-6)
  merged = np.zeros_like(rig.skin_weights)
  merged[:, skel.bone] = skeleton_file.merged_weights(skel, rig.skin_weights)
  merged_lbs = transforms_np.to_camera(rig_from_run.forward_warp_np(rig, merged, "lbs"),
                                       rig.root_to_world)
  player = assets.load_gltf(out).pose("motion", np.arange(NUM_FRAMES) / FPS)
  rel = (transforms_np.rigid_matrix(rig.bone_quat, rig.bone_trans)
         @ np.linalg.inv(transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans))[None])
  bound = _truncation_bound(merged.astype(np.float64), rel, rig.rest_vertices)
  assert np.all(np.linalg.norm(player - merged_lbs, axis=-1) <= bound + 1e-5)


@pytest.mark.slow
def test_reanimate_keeps_the_tree(tree_run, tmp_path):
  """Re-animating a run that has a skeleton writes the tree; with the run's own motion
  it poses as the export does."""
  folder, skel = tree_run
  exported = tmp_path / "own.glb"
  assert cli.main(["export", "--run", str(folder), "--out", str(exported), "--no-videos",
                   "--no-viewer"]) == 0
  again = tmp_path / "again.glb"
  assert cli.main(["reanimate", "--run", str(folder), "--motion",
                   str(tmp_path / "own.motion.json"), "--out", str(again), "--no-videos",
                   "--no-viewer"]) == 0
  log = json.loads((tmp_path / "again.export.json").read_text())
  assert log["rig"] == "tree" and log["skeleton"] == str(folder / "skeleton.json")
  asset = assets.load_gltf(again)
  assert asset.joint_names == ["root"] + list(skel.names)
  times = np.arange(NUM_FRAMES) / FPS
  np.testing.assert_allclose(asset.pose("motion", times),
                             assets.load_gltf(exported).pose("motion", times), atol=1e-5)


def test_tree_rig_errors(run_dir, tree_run, tmp_path, capsys):
  folder, skel = tree_run
  out = tmp_path / "o" / "x.glb"
  _expect_error(["export", "--run", str(run_dir), "--out", str(out), "--rig", "tree"],
                "no skeleton.json for a tree rig", capsys)
  other = tmp_path / "other"
  shutil.copytree(folder, other)
  wider = dataclasses.replace(skel, weight_target=np.append(skel.weight_target, 0))
  skeleton_file.save(other / "skeleton.json", wider)
  _expect_error(["export", "--run", str(other), "--out", str(out)],
                "the skeleton is made for 6 model bones but the run has 5", capsys)
  (other / "skeleton.json").write_text("{}")
  _expect_error(["export", "--run", str(other), "--out", str(out)], "not a skeleton file", capsys)
  # A flat export does not read the skeleton.
  assert cli.main(["export", "--run", str(other), "--out", str(out), "--rig", "flat",
                   "--no-videos", "--no-viewer"]) == 0
  assert sorted(p.name for p in tmp_path.iterdir()) == ["o", "other"]


def _run_without_cameras(run_dir: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
  shutil.copytree(run_dir, folder)
  with np.load(folder / "motion.npz") as data:
    motion = {k: data[k] for k in data.files if k != "w2c"}
  np.savez(folder / "motion.npz", **motion)
  return folder


@pytest.mark.slow
def test_root_motion_from_the_video_folder(run_dir, tmp_path, capsys):
  from animdreamer_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  bare = _run_without_cameras(run_dir, tmp_path / "bare")
  # Without cameras: no root motion, and the log says why.
  out = tmp_path / "a" / "still.glb"
  assert cli.main(["export", "--run", str(bare), "--out", str(out), "--no-videos",
                   "--no-viewer"]) == 0
  log = json.loads((out.parent / "still.export.json").read_text())
  assert not log["root_motion"] and "no camera poses" in log["root_source"]
  # With the video folder: its cameras give the root motion, and the reference video.
  with np.load(run_dir / "motion.npz") as data:
    w2c = data["w2c"]
  t, h, w = NUM_FRAMES, 24, 32
  rgb = np.random.default_rng(0).integers(0, 256, (t, h, w, 3)).astype(np.uint8)
  zeros = np.zeros((t, h, w, 3), np.float16)
  video = video_lib.Video(
      rgb=rgb, mask=np.zeros((t, h, w), np.uint8), depth=np.zeros((t, h, w), np.float32),
      feature=np.zeros((t, h, w, 1), np.float16), flow_fw={1: zeros}, flow_bw={1: zeros},
      intrinsics=np.tile(np.float32([40, 40, 16, 12]), (t, 1)), w2c=w2c,
      meta={"fps": FPS, "feature_kind": "oracle", "background": [1, 1, 1], "camera_path": "fixed",
            "source": {}, "normalisation": {"center": [0, 0, 0], "scale": 1.0}})
  video_lib.write_video(tmp_path / "video", video)
  out = tmp_path / "b" / "moving.glb"
  assert cli.main(["export", "--run", str(bare), "--out", str(out), "--video",
                   str(tmp_path / "video"), "--size", "32"]) == 0
  log = json.loads((out.parent / "moving.export.json").read_text())
  assert log["root_motion"] and log["root_source"].endswith("cameras")
  assert (out.parent / "moving_reference.mp4").is_file()
  motion = motion_file.load_motion(out.parent / "moving.motion.json")
  np.testing.assert_allclose(motion.object_to_world, np.load(run_dir / "true_root.npy"), atol=1e-4)
  # A video of another length is refused before anything is written.
  capsys.readouterr()
  short = video_lib.load_video(tmp_path / "video")
  for name in ("rgb", "mask", "depth", "feature", "intrinsics", "w2c"):
    setattr(short, name, getattr(short, name)[:3])
  short.flow_fw = {1: zeros[:3]}
  short.flow_bw = {1: zeros[:3]}
  video_lib.write_video(tmp_path / "short", short)
  _expect_error(["export", "--run", str(bare), "--out", str(tmp_path / "c" / "x.glb"), "--video",
                 str(tmp_path / "short")], "has 3 frames but the run has 6", capsys)
  assert not (tmp_path / "c").exists()


def test_checkpoint_of_another_model(run_dir, tmp_path, capsys):
  other = tmp_path / "other"
  shutil.copytree(run_dir, other)
  model = json.loads((other / "model.json").read_text())  # the model the run describes
  model["delta_width"] = model["delta_width"] + 4
  (other / "model.json").write_text(json.dumps(model))
  _expect_error(["export", "--run", str(other), "--out", str(tmp_path / "o" / "x.glb")],
                "the checkpoint does not match the model", capsys)
  assert not (tmp_path / "o").exists()
