"""End-to-end extraction on a tiny synthetic video: step, rollback, checkpoints, resume, outputs."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.commands import extract as extract_cmd
from animdreamer_jax.data import batching
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.train import checkpoint as checkpoint_lib
from animdreamer_jax.train import config as config_lib
from animdreamer_jax.train import loop
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib

NUM_FRAMES = 6
RES = 20


@pytest.fixture(scope="module")
def compile_cache():
  """The product's persistent XLA cache: identical computations compile once
  (within this module and across test runs); it only affects speed."""
  loop.enable_compilation_cache(config_lib.extract_base_config("tiny").train.compilation_cache)
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
  c = config_lib.extract_base_config("tiny")
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
  c.train.init_root_steps = 50
  c.train.init_sdf_steps = 400
  c.train.init_lr = 1e-2
  c.train.tensorboard = True
  c.train.compilation_cache = cache
  c.extract.mc_resolution = 20
  c.extract.eval_samples = 300
  c.extract.contact_frames = 2
  c.extract.camera_frame_metrics = False
  return c


@pytest.fixture(scope="module")
def trainer(tiny_video, tmp_path_factory, compile_cache):
  video = video_lib.load_video(tiny_video)
  return loop.Trainer(tiny_config(compile_cache), video, tmp_path_factory.mktemp("run"))


def test_step_lowers_the_loss_and_is_traced_once(trainer):
  state = trainer.initial_state()
  state, _ = loop.update_geometry(state, trainer, ema=0.0)
  losses = []
  for i in range(12):
    # The batch key is fold_in(key, step): resetting the step count repeats
    # batch 0, so this is plain gradient descent on one batch with fixed loss
    # weights. The learning rate changes every call: no re-trace allowed.
    state = state.replace(step=jnp.zeros((), jnp.int32))
    scalars = step_lib.scheduled_scalars(trainer.config, 0, 12)
    scalars["lr"] = np.float32(3e-3 * (1 - i / 24))
    state, metrics = trainer.step_fn(state, trainer.data, scalars)
    assert int(metrics["applied"]) == 1 and int(metrics["finite"]) == 1
    assert np.isfinite(float(metrics["grad_norm"]))
    losses.append(float(metrics["loss"]))
  assert trainer.step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert losses[-1] < 0.8 * losses[0], losses


def test_nonfinite_or_spiking_step_is_not_applied(trainer):
  state = trainer.initial_state(fit=False)
  before = state_lib.to_host(state)
  scalars = step_lib.scheduled_scalars(trainer.config, 0, 6)
  scalars["w_mask"] = np.float32(np.nan)
  state, metrics = trainer.step_fn(state, trainer.data, scalars)
  assert int(metrics["finite"]) == 0 and int(metrics["applied"]) == 0
  assert int(state.step) == 1
  for a, b in zip(jax.tree_util.tree_leaves(before.params), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert state_lib.all_finite(state.opt_state)
  # A gradient norm above the threshold is refused too (finite, not applied).
  scalars = step_lib.scheduled_scalars(trainer.config, 0, 6)
  scalars["grad_spike_threshold"] = np.float32(1e-12)
  state, metrics = trainer.step_fn(state, trainer.data, scalars)
  assert int(metrics["finite"]) == 1 and int(metrics["applied"]) == 0


def test_repeated_nan_stops_with_clear_error_and_keeps_checkpoint(trainer, monkeypatch, tmp_path):
  real = step_lib.scheduled_scalars

  def nan_after_first_round(config, step, total):
    out = real(config, step, total)
    if step >= 3:
      out["w_mask"] = np.float32(np.nan)
    return out

  monkeypatch.setattr(step_lib, "scheduled_scalars", nan_after_first_round)
  trainer.workdir = tmp_path
  with pytest.raises(loop.TrainingDiverged, match="NaN/Inf in 3 steps in a row"):
    loop.train(trainer, resume=False, progress=False)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "checkpoints")
  assert ckpt.latest_step() == 3  # end of round 1, saved before the NaNs
  restored, _ = ckpt.restore(trainer.initial_state(fit=False))
  assert state_lib.all_finite(restored)


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
  assert json.loads((workdir / "config.json").read_text())["train"]["num_rounds"] == 2
  for name in ("rest.obj", "motion.npz", "bones_rest.obj", "contact_sheet.png"):
    assert (workdir / name).is_file(), name
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
  # Another model in the same run folder: one clear error, config.json untouched.
  saved = (workdir / "config.json").read_text()
  config.model.sdf_width = 24
  with pytest.raises(UserError, match="checkpoint does not match this config"):
    extract_cmd.run_extraction(config, tiny_video, workdir, progress=False)
  assert (workdir / "config.json").read_text() == saved


def test_extract_with_oracle_csd_on_pixel_subsets(tiny_video, tmp_path, compile_cache):
  """The extraction trainer with oracle CSD mixed in (every 2nd step, random pixel subsets of
  full-resolution views, object-frame targets, warp and bones included): it trains, the
  CSD steps' metrics reach TensorBoard under csd/, and the run ends with its outputs."""
  config = tiny_config(compile_cache)
  config.csd.update(prior="oracle", every_k=2, resolution=RES, pixels_per_view=24,
                    num_samples=8, reduction="mean", weight=0.1, object_size=1.0,
                    oracle_supersample=1, oracle_align=False, oracle_align_space="object",
                    param_groups="fg")
  from animdreamer_jax.csd import experiment  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  result = experiment.run_one(config, tiny_video, workdir, progress=False)
  assert result["steps"] == 6 and result["rollbacks"] == 0 and result["csd"]
  metrics = json.loads((workdir / "metrics.json").read_text())
  assert np.isfinite(metrics["mean"]["all"]["chamfer"])
  events = b"".join(f.read_bytes() for f in (workdir / "tensorboard").iterdir())
  assert b"csd/csd_loss" in events and b"csd/csd_frame" in events
  # The experiment's pictures and novel-view scores (model vs ground truth, 4 views).
  views = json.loads((workdir / "novel_views.json").read_text())
  assert np.isfinite(views["psnr"]) and 0.0 <= views["iou"] <= 1.0
  assert np.isfinite(views["world_psnr"]) and 0.0 <= views["world_iou"] <= 1.0
  for name in ("csd_views.png", "novel_views.png", "novel_views_world.png"):
    assert (workdir / name).is_file(), name


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
