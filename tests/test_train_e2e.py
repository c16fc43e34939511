"""End-to-end extraction on a tiny synthetic video: step, rollback, checkpoints, resume, outputs."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import imageio.v2 as imageio
import numpy as np
import pytest

import dataclasses

from animdreamer_jax import assets
from animdreamer_jax.commands import extract as extract_cmd
from animdreamer_jax.commands import skeleton as skeleton_cmd
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction
from animdreamer_jax.train import checkpoint as checkpoint_lib
from animdreamer_jax.train import loop
from animdreamer_jax.train import state as state_lib

NUM_FRAMES = 6
RES = 20


@pytest.fixture(scope="module")
def compile_cache():
  """The product's persistent XLA cache: identical computations compile once
  (within this module and across test runs); it only affects speed."""
  loop.enable_compilation_cache(extraction.defaults("tiny").train.compilation_cache)
  return str(jax.config.jax_compilation_cache_dir or "")


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory, repo_root) -> pathlib.Path:
  seq = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf", clip="Walk",
                             num_frames=NUM_FRAMES)
  video = synthetic.synthesize(seq, synthetic.SynthOptions(resolution=RES), progress=False)
  path = tmp_path_factory.mktemp("videos") / "fox"
  video_lib.write_video(path, video)
  return path


def tiny_config(cache: str = ""):
  c = extraction.base_config("tiny")
  c.model.sphere_radius = 0.25
  c.data.pairs_per_batch = 2
  c.data.pixels_per_frame = 16
  c.render.num_samples = 8
  c.render.eval_samples = 6
  c.render.eval_importance_samples = 2
  c.render.eval_chunk = 256
  c.render.match_candidates = 64
  c.loss.gauss_skin_points = 64
  c.optim.lr = 3e-3
  c.train.num_rounds = 2
  c.train.iters_per_round = 3
  c.train.mc_resolution = 12
  c.train.proxy_points = 32
  c.init.root_steps = 50
  c.init.sdf_steps = 400
  c.init.lr = 1e-2
  c.train.tensorboard = True
  c.train.compilation_cache = cache
  c.extract.mc_resolution = 20
  c.extract.eval_samples = 300
  c.extract.contact_frames = 2
  c.extract.camera_frame_metrics = False
  return c


def make_trainer(config, video_dir, workdir, prior=None) -> loop.Trainer:
  settings = extraction.from_config(config)
  plan = plan_lib.build_plan(settings, video_lib.load_video(video_dir), prior=prior)
  return loop.Trainer(plan, settings.train, workdir)


@pytest.fixture(scope="module")
def trainer(tiny_video, tmp_path_factory, compile_cache):
  return make_trainer(tiny_config(compile_cache), tiny_video, tmp_path_factory.mktemp("run"))


def test_step_lowers_the_loss_and_is_traced_once(trainer):
  state = trainer.plan.initial_state(True)
  state, _ = loop.update_geometry(state, trainer, ema=0.0)
  step = trainer.steps[plan_lib.RECONSTRUCTION]
  losses = []
  for i in range(12):
    # The batch key is fold_in(key, step): resetting the step count repeats
    # batch 0, so this is plain gradient descent on one batch with fixed loss
    # weights. The learning rate changes every call: no re-trace allowed.
    state = state.replace(step=jnp.zeros((), jnp.int32))
    kind, scalars = trainer.plan.schedule(0, 12)
    assert kind == plan_lib.RECONSTRUCTION
    scalars["lr"] = np.float32(3e-3 * (1 - i / 24))
    state, metrics = step(state, trainer.plan.data, scalars)
    assert int(metrics["applied"]) == 1 and int(metrics["finite"]) == 1
    assert np.isfinite(float(metrics["grad_norm"]))
    losses.append(float(metrics["loss"]))
  assert step._cache_size() == 1  # pylint: disable=protected-access
  assert losses[-1] < 0.8 * losses[0], losses


def test_nonfinite_or_spiking_step_is_not_applied(trainer):
  state = trainer.template()
  before = state_lib.to_host(state)
  step = trainer.steps[plan_lib.RECONSTRUCTION]
  _, scalars = trainer.plan.schedule(0, 6)
  scalars["w_mask"] = np.float32(np.nan)
  state, metrics = step(state, trainer.plan.data, scalars)
  assert int(metrics["finite"]) == 0 and int(metrics["applied"]) == 0
  assert int(state.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert state_lib.all_finite(state.opt_state)
  # A gradient norm above the threshold is refused too (finite, not applied).
  _, scalars = trainer.plan.schedule(0, 6)
  scalars["grad_spike_threshold"] = np.float32(1e-12)
  state, metrics = step(state, trainer.plan.data, scalars)
  assert int(metrics["finite"]) == 1 and int(metrics["applied"]) == 0


def test_repeated_nan_stops_with_clear_error_and_keeps_checkpoint(trainer, tmp_path):
  real = trainer.plan.schedule

  def nan_after_first_round(step, total):
    kind, out = real(step, total)
    if step >= 3:
      out["w_mask"] = np.float32(np.nan)
    return kind, out

  nan_trainer = loop.Trainer(dataclasses.replace(trainer.plan, schedule=nan_after_first_round),
                             trainer.settings, tmp_path)
  with pytest.raises(loop.TrainingDiverged, match="NaN/Inf in 3 steps in a row"):
    loop.train(nan_trainer, resume=False, progress=False)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() == 3  # end of round 1, saved before the NaNs
  restored, _ = ckpt.restore(trainer.template())
  assert state_lib.all_finite(restored)


def test_schedule_gives_lab4d_weights_and_alternates_with_csd(trainer):
  """The stage's schedule: lab4d's loss-weight shapes at any run length (eikonal x1 -> x100
  log-linear, camera prior and bone mask 1 -> 0, coarse-to-fine 0.6 -> 1), the root-pose
  hold, and with CSD every k-th step a CSD step, with one set of scalar names for both."""
  settings = extraction.from_config(tiny_config())
  total = 200
  schedule = plan_lib.make_schedule(settings)
  weights = settings.loss.weights
  for step in (0, 20, 100, 199):
    kind, s = schedule(step, total)
    assert kind == plan_lib.RECONSTRUCTION
    assert math.isclose(s["w_eikonal"], weights.eikonal * 100 ** (step / total), rel_tol=1e-5)
    cam = max(0.0, 1 - step / (0.2 * total))
    assert math.isclose(s["w_cam_prior"], weights.cam_prior * cam, rel_tol=1e-5, abs_tol=1e-9)
    assert math.isclose(s["w_gauss_mask"], weights.gauss_mask * (1 - step / total), rel_tol=1e-5,
                        abs_tol=1e-9)
    assert math.isclose(s["alpha"], 0.6 + 0.4 * step / total, rel_tol=1e-6)
    assert s["w_mask"] == np.float32(weights.mask) and "w_depth" not in s  # weight 0: not built
    assert s["update_scale/root_pose"] == 1.0
  held = dataclasses.replace(settings, optim=dataclasses.replace(settings.optim,
                                                                 root_pose_warmup_fraction=0.1))
  assert [float(plan_lib.make_schedule(held)(s, 100)[1]["update_scale/root_pose"])
          for s in (0, 9, 10, 50)] == [0.0, 0.0, 1.0, 1.0]
  with_csd = dataclasses.replace(settings, csd=dataclasses.replace(settings.csd, prior="oracle",
                                                                   every_k=3, weight=0.2))
  kinds = [plan_lib.make_schedule(with_csd)(s, total) for s in range(7)]
  assert [k for k, _ in kinds] == ["csd", "reconstruction", "reconstruction"] * 2 + ["csd"]
  assert len({tuple(sorted(s)) for _, s in kinds}) == 1  # never re-traced
  assert kinds[0][1]["w_csd"] == np.float32(0.2)
  # CSD steps: no spike test (0), only non-finite ones are refused; reconstruction: lab4d's.
  assert kinds[0][1]["grad_spike_threshold"] == 0.0
  assert kinds[1][1]["grad_spike_threshold"] == np.float32(settings.train.grad_spike_threshold)


def test_resumed_run_ends_in_the_same_state(trainer, tmp_path):
  """Killed after round 1 and resumed == uninterrupted (same batches, same updates)."""
  trainer.workdir = tmp_path / "full"
  full, info = loop.train(trainer, resume=False, progress=False)
  assert info["steps"] == 6 and info["rollbacks"] == 0
  # A run folder holding only the round-1 checkpoint, as if killed during round 2.
  (tmp_path / "killed" / "checkpoints").mkdir(parents=True)
  shutil.copytree(tmp_path / "full" / "checkpoints" / "3", tmp_path / "killed" / "checkpoints" / "3")
  trainer.workdir = tmp_path / "killed"
  resumed, info = loop.train(trainer, resume=True, progress=False)
  assert info["resumed_from"] == 3 and info["steps"] == 6
  for a, b in zip(jax.tree_util.tree_leaves(state_lib.to_host(full)),
                  jax.tree_util.tree_leaves(state_lib.to_host(resumed))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_extract_end_to_end_and_resume(tiny_video, tmp_path, compile_cache):
  workdir = tmp_path / "run"
  result = extract_cmd.run_extraction(tiny_config(compile_cache), tiny_video, workdir, progress=False)
  assert result["steps"] == 6 and result["resumed_from"] is None
  seq = assets.load_sequence_npz(workdir / "meshes.npz")
  assert seq.vertices.shape[0] == NUM_FRAMES and seq.faces.shape[0] > 0
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert np.isfinite(metrics["mean"]["all"]["chamfer"])
  # Part-wise scores of the Fox: height split and chains from its joint names (gt/joints.npz).
  assert metrics["limb_fraction"] == 0.35 and metrics["chains_recorded"]
  parts = ["all", "seen", "unseen", "limbs", "body", "legs", "tail", "head", "torso"]
  assert list(metrics["mean"]) == parts
  assert 0 < metrics["area_fraction"]["limbs"] < 0.5
  comparison = imageio.imread(workdir / "comparison.png")
  assert comparison.shape[1] == 4 * 256 and comparison.shape[0] > 256
  assert json.loads((workdir / "config.json").read_text())["train"]["num_rounds"] == 2
  for name in ("rest.obj", "motion.npz", "bones_rest.obj", "contact_sheet.png", "skeleton.png"):
    assert (workdir / name).is_file(), name
  # The skeleton: a valid tree over the model's bones; the command rebuilds the same one.
  skel = skeleton_file.load(workdir / "skeleton.json")
  assert skel.num_model_bones == json.loads((workdir / "model.json").read_text())["num_bones"]
  assert skeleton_cmd.run(argparse.Namespace(run=str(workdir), config_overrides=[])) == 0
  again = skeleton_file.load(workdir / "skeleton.json")
  np.testing.assert_array_equal(again.parent, skel.parent)
  np.testing.assert_allclose(again.rest_position, skel.rest_position, atol=1e-5)
  assert list((workdir / "tensorboard").iterdir())
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints")
  assert ckpt.latest_step() == 6
  # The checkpoint holds the final state: its rest mesh matches the written one.
  # Resume with one more round: continues from step 6 (not from 0) to step 9.
  config = tiny_config(compile_cache)
  config.train.num_rounds = 3
  result = extract_cmd.run_extraction(config, tiny_video, workdir, progress=False)
  assert result["resumed_from"] == 6 and result["steps"] == 9
  assert checkpoint_lib.Checkpointer(workdir / "checkpoints").latest_step() == 9
  # The round log: one row per round (the resumed run appended round 3), with the SDF's
  # statistics; the surface checkpoint holds the last round that had a surface.
  rounds = loop.read_round_log(workdir)
  assert [r["round"] for r in rounds] == [1, 2, 3] and [r["step"] for r in rounds] == [3, 6, 9]
  assert all(set(r) >= {"proxy_vertices", "sdf_min", "inside_share", "search_box"} for r in rounds)
  with_surface = [r["step"] for r in rounds if r["proxy_vertices"] > 0]
  surface_ckpt = checkpoint_lib.Checkpointer(workdir / loop.SURFACE_CHECKPOINTS, 1)
  assert surface_ckpt.latest_step() == (with_surface[-1] if with_surface else None)
  # Another model in the same run folder: one clear error, config.json untouched.
  saved = (workdir / "config.json").read_text()
  config.model.sdf_width = 24
  with pytest.raises(UserError, match="checkpoint does not match this config"):
    extract_cmd.run_extraction(config, tiny_video, workdir, progress=False)
  assert (workdir / "config.json").read_text() == saved


def test_extract_with_oracle_csd_on_pixel_subsets(tiny_video, tmp_path, compile_cache):
  """The extraction trainer with oracle CSD mixed in (every 2nd step, random pixel subsets of
  full-resolution views, warp and bones included): it trains, each kind's metrics reach
  TensorBoard under its name, and the run ends with its outputs and scores."""
  config = tiny_config(compile_cache)
  config.csd.update(prior="oracle", every_k=2, resolution=RES, pixels_per_view=24,
                    num_samples=8, reduction="mean", weight=0.1, object_size=1.0,
                    param_groups="fg")
  workdir = tmp_path / "run"
  result = extract_cmd.run_extraction(config, tiny_video, workdir, progress=False)
  assert result["steps"] == 6 and result["rollbacks"] == 0
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert np.isfinite(metrics["mean"]["all"]["chamfer"])
  events = b"".join(f.read_bytes() for f in (workdir / "tensorboard").iterdir())
  assert b"csd/csd_loss" in events and b"csd/csd_frame" in events
  assert b"reconstruction/mask" in events


def test_a_csd_step_trains_only_its_groups(tiny_video, tmp_path, compile_cache):
  """One CSD step of the extraction trainer (oracle prior, "canonical" groups): only those
  leaves move; every other leaf and its Adam moments are exactly as before."""
  import flax  # pylint: disable=g-import-not-at-top
  config = tiny_config(compile_cache)
  config.csd.update(prior="oracle", resolution=4, num_samples=8, reduction="mean", weight=1.0)
  trainer = make_trainer(config, tiny_video, tmp_path)
  state = trainer.template()
  state, _ = loop.update_geometry(state, trainer, ema=0.0)
  before = state_lib.to_host(state)
  kind, new_state, metrics = trainer.step(state, 0)
  assert kind == plan_lib.CSD and int(metrics["applied"]) == 1 and float(metrics["grad_norm"]) > 0
  old = flax.traverse_util.flatten_dict(before.params["params"], sep="/")
  new = flax.traverse_util.flatten_dict(state_lib.to_host(new_state).params["params"], sep="/")
  mask = flax.traverse_util.flatten_dict(
      trainer.plan.kinds[plan_lib.CSD].trainable["params"], sep="/")
  changed = {k for k in old if not np.array_equal(old[k], new[k])}
  assert changed and changed <= {k for k, m in mask.items() if m}
  assert any(k.startswith("canonical/sdf_head/") for k in changed)
  for (path, o), n in zip(jax.tree_util.tree_flatten_with_path(before.opt_state)[0],
                          jax.tree_util.tree_leaves(state_lib.to_host(new_state).opt_state)):
    names = jax.tree_util.keystr(path)
    if "bones" in names or "root_pose" in names or "feature_mlp" in names:
      np.testing.assert_array_equal(np.asarray(n), np.asarray(o), err_msg=names)


def _chain_skeleton(num_model_bones: int) -> skeleton_file.Skeleton:
  """root (bone 1) -> a (bone 0) -> b (bone 2), the joints far from the bones (a small
  relative rotation already opens them), the video's ranges all 0."""
  target = np.array([1, 0, 2] + [0] * (num_model_bones - 3))
  return skeleton_file.Skeleton(
      names=np.array(["root", "a", "b"]), parent=np.array([-1, 0, 1]), bone=np.array([1, 0, 2]),
      rest_position=np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 3.0, 0.0]]),
      weight_target=target, skin_mass=np.full(3, 1 / 3), strength=np.array([0.0, 1.0, 1.0]),
      rest_length=np.array([0.0, 3.0, 4.24]), length_range=np.zeros((3, 2)), dislocation_max=np.zeros(3),
      angle_range_deg=np.zeros((3, 2)))


@pytest.mark.slow  # a tiny extraction step (~50 s); the losses themselves: test_skeleton_constraints.py
def test_skeleton_constraints_are_built_and_logged(tiny_video, tmp_path, compile_cache):
  """loss.weights.bone_inside and .skeleton (with a skeleton.json over the tiny model's 3
  bones): with the bones moved off their rest pose and out of the surface, one
  reconstruction step logs both losses, positive and finite, and applies its update; the
  bone-inside weight decays to 0; a missing skeleton or one over other bones is one clear error."""
  path = tmp_path / "skeleton.json"
  skeleton_file.save(path, _chain_skeleton(3))
  config = tiny_config(compile_cache)
  config.loss.weights.bone_inside = 0.1
  config.loss.weights.skeleton = 1.0
  config.loss.skeleton_file = str(path)
  trainer = make_trainer(config, tiny_video, tmp_path / "run")
  assert trainer.plan.data.skeleton.num_edges == 2
  import flax  # pylint: disable=g-import-not-at-top
  state = trainer.plan.initial_state(True)  # the SDF fitted to a sphere of radius 0.25
  # At init every frame's bones are the rest bones, at the centre: both losses 0. Moved:
  # random bone-network weights (per-frame motion), the centres shifted 0.5 along each axis
  # (outside the sphere).
  flat = flax.traverse_util.flatten_dict(state.params, sep="/")
  names = [k for k in flat if k.startswith("params/bones/")]
  for name, key in zip(names, jax.random.split(jax.random.PRNGKey(0), len(names))):
    flat[name] = flat[name] + 0.3 * jax.random.normal(key, flat[name].shape)
  flat["params/bones/trans_head/output/dense/bias"] += 2.0  # x model.bone_trans_scale 0.25
  state = state.replace(params=flax.traverse_util.unflatten_dict(flat, sep="/"))
  _, scalars = trainer.plan.schedule(0, 6)
  scalars["grad_spike_threshold"] = np.float32(0.0)  # a moved bone's gradient spikes
  _, metrics = trainer.steps[plan_lib.RECONSTRUCTION](state, trainer.plan.data, scalars)
  assert int(metrics["applied"]) == 1
  for name in ("bone_inside", "skeleton"):
    assert np.isfinite(metrics[name]) and metrics[name] > 0, (name, metrics[name])
  total = 100
  weights = [trainer.plan.schedule(step, total)[1]["w_bone_inside"] for step in (0, 50, 100)]
  np.testing.assert_allclose(weights, [0.1, 0.05, 0.0], atol=1e-7)
  assert trainer.plan.schedule(50, total)[1]["w_skeleton"] == np.float32(1.0)
  skeleton_file.save(path, _chain_skeleton(4))
  with pytest.raises(UserError, match="a skeleton over 4 model bones, but the model has 3"):
    make_trainer(config, tiny_video, tmp_path / "run2")
  config.loss.skeleton_file = str(tmp_path / "missing.json")
  with pytest.raises(UserError, match="skeleton file not found"):
    make_trainer(config, tiny_video, tmp_path / "run3")


def test_bad_inputs_write_nothing(tiny_video, tmp_path, repo_root):
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match="config.train.num_roundz: unknown config key"):
    extract_cmd.run_extraction(repo_root / "configs" / "extract_demo_cpu.py", tiny_video, workdir,
                               overrides=["--config.train.num_roundz=3"])
  bad = tiny_config()
  bad.extract.mesh_frame = "wrold"
  with pytest.raises(UserError, match="config.extract.mesh_frame: unknown frame 'wrold'"):
    extract_cmd.run_extraction(bad, tiny_video, workdir)
  with pytest.raises(UserError, match="not found|missing|does not exist"):
    extract_cmd.run_extraction(tiny_config(), tmp_path / "no_video", workdir)
  empty = tmp_path / "empty_mask"
  video_lib.write_video(empty, video_lib.load_video(tiny_video))
  # A consistent video without any foreground: every per-pixel array zeroed.
  for path in [empty / "mask.npy", empty / "depth.npy", empty / "feature.npy",
               *empty.glob("flow_*.npy")]:
    np.save(path, np.zeros_like(np.load(path)))
  with pytest.raises(UserError, match="mask sequence is empty"):
    extract_cmd.run_extraction(tiny_config(), empty, workdir)
  assert not workdir.exists()
  with pytest.raises(UserError, match="no checkpoint"):
    extract_cmd.run_extraction(tiny_config(), tiny_video, workdir, resume=True)
  assert not workdir.exists()


def test_cli_error_line(tmp_path, repo_root):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(repo_root / "bin" / "animdreamer"), "extract", "--config",
       str(repo_root / "configs" / "extract_demo_cpu.py"), "--video", str(tmp_path / "none"),
       "--workdir", str(tmp_path / "run"), "--config.optim.lr=fast"],
      capture_output=True, text=True, env=env, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == "error: config.optim.lr: expected a number, got 'fast'"
  assert not (tmp_path / "run").exists()


TINY_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import test_train_e2e
def get_config():
  return test_train_e2e.tiny_config()
""".format(tests=str(pathlib.Path(__file__).parent))


@pytest.mark.slow
def test_kill_and_resume(tiny_video, tmp_path, repo_root):
  """A run killed mid-training resumes from its last checkpoint and finishes."""
  workdir = tmp_path / "run"
  config_file = tmp_path / "tiny_config.py"
  config_file.write_text(TINY_CONFIG_FILE)
  args = [sys.executable, str(repo_root / "bin" / "animdreamer"), "extract", "--config",
          str(config_file), "--video", str(tiny_video), "--workdir", str(workdir),
          "--config.train.num_rounds=6", "--config.train.iters_per_round=4",
          f"--config.train.compilation_cache={tmp_path / 'cache'}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  ckpt_dir = workdir / "checkpoints"
  deadline = time.time() + 600
  # Kill as soon as the first training-round checkpoint (step 4) exists.
  while time.time() < deadline and proc.poll() is None:
    # Finished checkpoints only (orbax writes <step>.orbax-checkpoint-tmp first).
    steps = [int(p.name) for p in ckpt_dir.glob("[0-9]*") if p.name.isdigit()] if ckpt_dir.is_dir() else []
    if any(s >= 4 for s in steps):
      break
    time.sleep(0.5)
  assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  saved = checkpoint_lib.Checkpointer(ckpt_dir).latest_step()
  assert saved is not None and saved >= 4
  done = subprocess.run(args + ["--resume"], env=env, capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  assert checkpoint_lib.Checkpointer(ckpt_dir).latest_step() == 24
  assert (workdir / "meshes.npz").is_file() and (workdir / "metrics.json").is_file()
