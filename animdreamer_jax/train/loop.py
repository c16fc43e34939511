"""The host training loop: rounds of jitted steps, rollback, geometry updates, logging.

One round = `train.iters_per_round` calls of the jitted, state-donating step
(`step.make_train_step`). The host

- computes the scheduled scalars (learning rate, loss weights, coarse-to-fine
  alpha) for every step and passes them as arguments;
- reads back a few scalars per step (loss, grad norm, finite/applied flags):
  a step whose gradient is non-finite or above `train.grad_spike_threshold`
  was not applied by the step itself, and the host restores the parameters
  and optimiser state cached at the start of the round before last (lab4d's
  rollback); `train.max_nonfinite_steps` non-finite steps in a row stop the
  run with a clear message (the last good checkpoint is kept);
- between rounds, runs marching cubes on the canonical SDF and refreshes the
  proxy surface points, the bounding box (EMA) and per-frame near/far (EMA)
  in `state.aux`;
- writes TensorBoard scalars (tensorboardX) and one rendered image per round,
  and a checkpoint every `train.checkpoint_every_rounds` rounds.
"""

from __future__ import annotations

import collections
import json
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.train import checkpoint as checkpoint_lib
from animdreamer_jax.train import config as config_lib
from animdreamer_jax.train import extract_outputs
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib


class TrainingDiverged(UserError):
  """Raised when the loss stays non-finite after rollbacks."""


def total_steps(config: ml_collections.ConfigDict) -> int:
  return int(config.train.num_rounds) * int(config.train.iters_per_round)


# ----------------------------------------------------------------------------
# Geometry bookkeeping between rounds (lab4d MultiFields.update_geometry_aux).


def update_geometry(state: state_lib.TrainState, trainer: "Trainer",
                    ema: float | None = None) -> tuple[state_lib.TrainState, dict]:
  """Marching cubes of the canonical SDF -> proxy points, AABB (EMA), near/far (EMA).

  Args:
    state: the train state (its aux is replaced).
    trainer: the Trainer (config, jitted SDF and root-pose functions).
    ema: EMA factor of the old values (None: config.train.geometry_ema; 0 at
      start-up replaces the placeholders outright).

  Returns the new state and a dict of host statistics for logging. If the
  SDF has no zero crossing in the box, the previous proxy is kept.
  """
  cfg = trainer.config.train
  aux = {k: np.asarray(v) for k, v in state.aux.items()}
  params = state.params
  aabb = aux["aabb"]
  search = mesh_lib.extend_aabb(aabb, cfg.mc_extend)
  verts, faces = mesh_lib.extract_mesh(trainer.sdf_fn(params), search, cfg.mc_resolution,
                                       level=cfg.mc_level, largest=True)
  stats = {"proxy_vertices": float(verts.shape[0])}
  if faces.shape[0] == 0:
    return state, stats
  ema = cfg.geometry_ema if ema is None else ema
  new_aabb = np.stack([verts.min(0), verts.max(0)]).astype(np.float32)
  aux["aabb"] = (ema * aabb + (1 - ema) * new_aabb).astype(np.float32)
  aux["proxy_points"] = mesh_lib.sample_surface_host(int(state.step), verts, faces,
                                                     aux["proxy_points"].shape[0])
  root = np.asarray(trainer.root_poses_fn(params))
  near_far = mesh_lib.near_far_from_points(verts, root, tolerance=cfg.near_far_tolerance)
  aux["near_far"] = (ema * aux["near_far"] + (1 - ema) * near_far).astype(np.float32)
  stats.update(aabb_size=float(np.linalg.norm(aux["aabb"][1] - aux["aabb"][0])),
               near=float(aux["near_far"][:, 0].mean()), far=float(aux["near_far"][:, 1].mean()))
  return state.replace(aux={k: jnp.asarray(v) for k, v in aux.items()}), stats


# ----------------------------------------------------------------------------
# The trainer.


class Trainer:
  """Owns the model, data, jitted functions, checkpointer and logs of one run."""

  def __init__(self, config: ml_collections.ConfigDict, video, workdir: pathlib.Path,
               source: str = "video"):
    step_lib.validate_config(config)
    self.config = config
    self.video = video
    self.workdir = workdir
    self.data = step_lib.make_train_data(video, config, source=source)
    self.model = step_lib.make_model(config, video)
    self.steps_total = total_steps(config)
    template = step_lib.initial_state(config, self.model, self.data, video, fit=False)
    # Kept on the host: the device copies handed out are donated by the step.
    self._template = state_lib.to_host(template)
    self.step_fn = step_lib.make_train_step(config, self.model, template.params)
    self.render_fn = step_lib.make_render_fn(config, self.model, self.data,
                                             video.meta.get("background", (1.0, 1.0, 1.0)))
    self._sdf = jax.jit(lambda params, x: self.model.apply(params, x, method="sdf"))
    frames = jnp.arange(video.num_frames, dtype=jnp.int32)
    self._root = jax.jit(lambda params: self.model.apply(params, frames, method="root_pose"))

  def sdf_fn(self, params):
    return lambda x: self._sdf(params, x)

  def root_poses_fn(self, params):
    return self._root(params)

  def initial_state(self, fit: bool = True) -> state_lib.TrainState:
    if not fit:
      return state_lib.to_device(self._template)
    return step_lib.initial_state(self.config, self.model, self.data, self.video)


def _log_scalars(writer, metrics: dict, step: int, prefix: str = "train/") -> None:
  if writer is None:
    return
  for k, v in metrics.items():
    if np.ndim(v) == 0:
      writer.add_scalar(prefix + k, float(v), step)


def _log_image(writer, trainer: Trainer, state: state_lib.TrainState, step: int) -> None:
  if writer is None:
    return
  frame = int(trainer.config.train.log_image_frame) % trainer.video.num_frames
  out = trainer.render_fn(state.params, state.aux, frame)
  gt = trainer.video.rgb[frame].astype(np.float32) / 255.0
  panel = np.concatenate([gt, np.asarray(out["rgb"]), np.repeat(np.asarray(out["mask"])[..., None], 3, -1)], 1)
  writer.add_image("render/reference_vs_rgb_vs_mask", np.clip(panel, 0, 1), step, dataformats="HWC")


def train(trainer: Trainer, resume: bool, progress: bool = True) -> tuple[state_lib.TrainState, dict]:
  """Runs (or resumes) training to config.train.num_rounds rounds.

  Returns:
    (final state, {"steps", "train_seconds", "rollbacks", "resumed_from"}).
  """
  config = trainer.config
  cfg = config.train
  iters = int(cfg.iters_per_round)
  checkpointer = checkpoint_lib.Checkpointer(trainer.workdir / "checkpoints", cfg.keep_checkpoints)
  resumed_from = None
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(trainer.initial_state(fit=False))
    resumed_from = int(state.step)
  elif resume:
    raise UserError(f"{trainer.workdir}: --resume given but there is no checkpoint to resume from")
  else:
    state = trainer.initial_state()
    # Proxy mesh, box and near/far from the initial SDF before the first step.
    state, _ = update_geometry(state, trainer, ema=0.0)
    checkpointer.save(state, {"round": 0})

  writer = None
  if cfg.tensorboard:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    writer = SummaryWriter(str(trainer.workdir / "tensorboard"))

  pbar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    pbar = tqdm(total=trainer.steps_total, initial=int(state.step), desc="extract", unit="step",
                dynamic_ncols=True)
  # Host copies of the state at the start of the last two rounds (lab4d caches).
  cache: collections.deque = collections.deque(maxlen=2)
  rollbacks = 0
  nonfinite_in_row = 0
  start = time.time()
  step = int(state.step)
  loss_ema = None
  last_csd = None  # the latest CSD step's metrics (CSD steps rarely fall on a log step)
  try:
    while step < trainer.steps_total:
      if step % iters == 0 or not cache:
        cache.append(state_lib.to_host(state))
      scalars = step_lib.scheduled_scalars(config, step, trainer.steps_total)
      state, metrics = trainer.step_fn(state, trainer.data, scalars)
      m = jax.device_get(metrics)
      step += 1
      if not bool(m["applied"]):
        nonfinite_in_row = nonfinite_in_row + 1 if not bool(m["finite"]) else 0
        if nonfinite_in_row >= cfg.max_nonfinite_steps:
          raise TrainingDiverged(
              f"{trainer.workdir}: the loss was NaN/Inf in {nonfinite_in_row} steps in a row at step "
              f"{step} even after rolling back; stopped (the last checkpoint is intact). Try a lower "
              "--config.optim.lr or check the video's cameras")
        # lab4d rollback: parameters and optimiser from two rounds back (keep the step count).
        rollbacks += 1
        restored = state_lib.to_device(cache[0])
        state = restored.replace(step=state.step, aux=state.aux)
      else:
        nonfinite_in_row = 0
        loss = float(m["loss"])
        loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
      if "csd_loss" in m:
        last_csd = m
      if step % cfg.log_every == 0 or step == trainer.steps_total:
        _log_scalars(writer, {**m, "rollbacks": rollbacks, **scalars}, step)
        if last_csd is not None:
          _log_scalars(writer, last_csd, step, prefix="csd/")
          last_csd = None
      if pbar is not None:
        pbar.update(1)
        if step % 5 == 0 and loss_ema is not None:
          pbar.set_postfix(loss=f"{loss_ema:.4f}", gnorm=f"{float(m['grad_norm']):.2f}",
                           rb=rollbacks, refresh=False)
      if step % iters == 0:
        round_index = step // iters
        state, stats = update_geometry(state, trainer)
        _log_scalars(writer, stats, step, prefix="geometry/")
        if cfg.log_image_every_rounds and round_index % cfg.log_image_every_rounds == 0:
          _log_image(writer, trainer, state, step)
        if round_index % cfg.checkpoint_every_rounds == 0 or step == trainer.steps_total:
          checkpointer.save(state, {"round": round_index})
    if checkpointer.latest_step() != step:
      checkpointer.save(state, {"round": step // iters})
  finally:
    if pbar is not None:
      pbar.close()
    if writer is not None:
      writer.close()
    checkpointer.close()
  return state, {"steps": step, "train_seconds": time.time() - start, "rollbacks": rollbacks,
                 "resumed_from": resumed_from}


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache (process-wide; JAX_COMPILATION_CACHE_DIR wins)."""
  import os  # pylint: disable=g-import-not-at-top
  if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    return
  directory = pathlib.Path(path).expanduser()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # an unwritable cache only costs time
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _check_workdir(workdir: pathlib.Path) -> None:
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{workdir}: exists and is not a folder")


def run_extraction(config: ml_collections.ConfigDict, video_dir: pathlib.Path,
                   workdir: pathlib.Path, resume: bool = False, progress: bool = True) -> dict:
  """Loads the video, trains (or resumes), and writes the outputs. See commands/extract.py."""
  import resource  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  wall0, cpu0 = time.time(), time.process_time()
  _check_workdir(workdir)
  if resume and not (workdir / "checkpoints").is_dir():
    raise UserError(f"{workdir}: --resume given but there is no checkpoint to resume from")
  video = video_lib.load_video(video_dir)
  enable_compilation_cache(str(config.train.compilation_cache))
  # Validates shapes and an empty mask before anything is written.
  trainer = Trainer(config, video, workdir, source=str(video_dir))
  if "csd" in config:
    # Every k-th step becomes a CSD step when config.csd.prior != "none".
    from animdreamer_jax.csd import hook as csd_hook  # pylint: disable=g-import-not-at-top
    csd_hook.install(trainer)
  if (workdir / "checkpoints").is_dir():
    # A checkpoint from another config must fail before config.json is replaced.
    checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", config.train.keep_checkpoints)
    try:
      if checkpointer.latest_step() is not None:
        checkpointer.check(trainer.initial_state(fit=False))
      elif resume:
        raise UserError(f"{workdir}: --resume given but there is no checkpoint to resume from")
    finally:
      checkpointer.close()
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.save_config(config, workdir / "config.json")
  state, info = train(trainer, resume=resume, progress=progress)
  outputs = extract_outputs.write_outputs(trainer, state, workdir, progress=progress)
  # Peak resident memory of this process so far (Linux reports KiB).
  peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  run_info = {**info, "wall_seconds": time.time() - wall0, "cpu_seconds": time.process_time() - cpu0,
              "peak_rss_mb": peak_mb, "device": str(jax.devices()[0].device_kind),
              "num_devices": jax.device_count(), "num_rounds": int(config.train.num_rounds),
              "iters_per_round": int(config.train.iters_per_round)}
  extract_outputs.save_json(workdir / "run.json", run_info)
  return {"workdir": str(workdir), **run_info, **outputs}
