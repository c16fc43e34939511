"""The host training loop, for any stage: rounds of jitted steps, rollback, geometry, logs, checkpoints.

A stage hands the trainer a `TrainingPlan`: its model, device data, optimiser,
its kinds of step (`train.step.StepKind`) and a schedule that says, for every
step, which kind runs and with which scalars. The trainer does not know which
stage it runs. One round = `train.iters_per_round` steps. The host

- computes the scheduled scalars and passes them as arguments;
- reads back a few scalars per step: a step whose loss or gradient was not
  finite or spiked was not applied by the step itself, and the host restores
  the parameters and optimiser state cached at the start of the round before
  last (lab4d's rollback); `train.max_nonfinite_steps` non-finite steps in a row
  stop the run with a clear message (the last good checkpoint is kept);
- between rounds, runs marching cubes on the canonical SDF and refreshes the
  proxy surface points, the bounding box (EMA) and per-frame near/far (EMA)
  in `state.aux`;
- writes TensorBoard scalars (each kind's latest metrics under its name) and
  one rendered image per round, and a checkpoint every
  `train.checkpoint_every_rounds` rounds (never a non-finite state).

On several devices (a `parallel.Layout` with a mesh) the steps run on all of
them with the state and data replicated; the host-side work between steps
(geometry, pictures, the returned state) uses this process's own copy, and
only the primary process writes logs (orbax coordinates the checkpoints).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import resource
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorboardX
import tqdm

from animdreamer_jax import allocator
from animdreamer_jax import parallel
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.train import checkpoint as checkpoint_lib
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """`train`: the host loop (lab4d's values unless noted)."""
  seed: int = 0  # PRNG seed of initialisation, batches and CSD views
  num_rounds: int = 20  # training length in rounds
  iters_per_round: int = 200  # steps per round (geometry refresh, checkpoint, image)
  # A step whose gradient norm exceeds this is refused and rolled back (lab4d); <= 0: off.
  grad_spike_threshold: float = 5.0
  max_nonfinite_steps: int = 3  # non-finite steps in a row (after rollbacks) that stop the run
  checkpoint_every_rounds: int = 1
  keep_checkpoints: int = 2
  log_every: int = 10  # TensorBoard scalars every this many steps
  tensorboard: bool = True
  log_image_every_rounds: int = 1  # a rendered frame in TensorBoard every this many rounds; 0: off
  log_image_frame: int = 0  # ... of this frame
  mc_resolution: int = 64  # marching-cubes grid of the proxy mesh between rounds
  mc_extend: float = 0.5  # ... over the bounding box grown by this factor (lab4d extend_aabb)
  geometry_ema: float = 0.9  # EMA weight of the old box and near/far at each refresh
  near_far_tolerance: float = 1.5  # near/far = depth centre -+ this x half the proxy's depth range
  proxy_points: int = 1024  # surface points of the proxy mesh kept for feature matching
  # A round whose largest surface component spans less than this share of the previous
  # surface's box (diagonals) lost its surface (it broke up), like one with none in the box;
  # the plan's recovery_scalars then redo it. 0: only a vanished surface counts.
  min_surface_size: float = 0.5
  # XLA compilations are cached here across runs (a resumed or repeated run skips most of
  # the ~1 min of compiling); "" disables the cache.
  compilation_cache: str = "~/.cache/animdreamer_jax/xla"

  def __post_init__(self):
    for name in ("num_rounds", "iters_per_round", "checkpoint_every_rounds", "keep_checkpoints",
                 "log_every", "mc_resolution", "max_nonfinite_steps", "proxy_points"):
      if getattr(self, name) < 1:
        raise UserError(f"config.train.{name}: must be >= 1")

  @property
  def total_steps(self) -> int:
    return self.num_rounds * self.iters_per_round


@dataclasses.dataclass(frozen=True, eq=False)
class TrainingPlan:
  """What a stage hands the trainer.

  Attributes:
    name: the stage's name (progress bar).
    model: the Flax model; its methods "sdf" (points -> SDF) and "root_pose"
      (frames -> object-to-camera) drive the proxy mesh and near/far.
    num_frames: frames of the video the model explains.
    data: device pytree given to every step (not donated).
    tx: the optimiser chain (train.optimizer).
    kinds: the stage's kinds of step, by name.
    schedule: (step, total steps) -> (kind name, scalars dict) on the host.
      Each kind must always get the same scalar names (no re-tracing).
    initial_state: fit -> TrainState (fit=False: the structure only, e.g. to
      restore a checkpoint into).
    render_image: optional (params, near_far (2,), frame) -> {"rgb", "mask"}
      for TensorBoard; reference_image: frame -> (H, W, 3) in [0, 1].
    recovery_scalars: scalars that replace the schedule's while the loop
      recovers from a round that ended without a surface in the previous
      surface's box (vanished, or moved away): that round is redone from its
      start with them, and they stay on until a round ends with one there
      (None: no recovery; the names must be among the schedule's).
  """
  name: str
  model: Any
  num_frames: int
  data: Any
  tx: optax.GradientTransformation
  kinds: dict[str, step_lib.StepKind]
  schedule: Callable[[int, int], tuple[str, dict]]
  initial_state: Callable[[bool], state_lib.TrainState]
  render_image: Optional[Callable[..., dict]] = None
  reference_image: Optional[Callable[[int], np.ndarray]] = None
  recovery_scalars: Optional[dict] = None


class TrainingDiverged(UserError):
  """Raised when the loss stays non-finite after rollbacks."""


class Trainer:
  """Runs a TrainingPlan in a run folder: jitted steps, geometry refresh, checkpoints, logs."""

  def __init__(self, plan: TrainingPlan, settings: TrainSettings, workdir: pathlib.Path,
               layout: parallel.Layout = parallel.Layout()):
    """layout: the devices every step is split over (`parallel.make_layout`).

    Raises:
      UserError: a batch axis of the plan's terms does not split over the layout's devices.
    """
    self.plan = plan
    self.settings = settings
    self.workdir = pathlib.Path(workdir)
    self.layout = layout
    step_lib.check_layout(plan.kinds.values(), layout)
    self.steps = {name: step_lib.make_train_step(kind, plan.tx, layout)
                  for name, kind in plan.kinds.items()}
    self.data = layout.place(plan.data)
    # Kept on the host: the device copies handed out are donated by the steps.
    self._template = state_lib.to_host(plan.initial_state(False))
    model = plan.model
    self._sdf = jax.jit(lambda params, x: model.apply(params, x, method="sdf"))
    frames = jnp.arange(plan.num_frames, dtype=jnp.int32)
    self._root = jax.jit(lambda params: model.apply(params, frames, method="root_pose"))

  @property
  def total_steps(self) -> int:
    return self.settings.total_steps

  def template(self) -> state_lib.TrainState:
    """A fresh device copy of the state's structure (for restoring checkpoints)."""
    return state_lib.to_device(self._template)

  def sdf_fn(self, params) -> Callable:
    params = parallel.local(params)
    return lambda x: self._sdf(params, x)

  def root_poses(self, params) -> np.ndarray:
    return np.asarray(self._root(parallel.local(params)))

  def step(self, state: state_lib.TrainState, step: int, recovering: bool = False
           ) -> tuple[str, state_lib.TrainState, dict]:
    """Runs the scheduled kind of step `step` -> (kind, new state, metrics on the host, with scalars).

    recovering: the plan's recovery_scalars replace the schedule's.
    """
    kind, scalars = self.plan.schedule(step, self.total_steps)
    if recovering and self.plan.recovery_scalars:
      scalars = {**scalars, **self.plan.recovery_scalars}
    state, metrics = self.steps[kind](self.layout.place(state), self.data, scalars)
    return kind, state, {**parallel.to_host(metrics), **scalars}


# ----------------------------------------------------------------------------
# Geometry bookkeeping between rounds (lab4d MultiFields.update_geometry_aux).


def update_geometry(state: state_lib.TrainState, trainer: Trainer,
                    ema: Optional[float] = None) -> tuple[state_lib.TrainState, dict]:
  """Marching cubes of the canonical SDF -> proxy points, AABB (EMA), near/far (EMA).

  Args:
    state: the train state (its aux is replaced).
    trainer: the Trainer (settings, jitted SDF and root-pose functions).
    ema: EMA factor of the old values (None: train.geometry_ema; 0 at start-up
      replaces the placeholders outright).

  Returns the new state and host statistics for logging. If the SDF has no
  zero crossing in the box, the previous proxy is kept.
  """
  cfg = trainer.settings
  aux = parallel.to_host(state.aux)
  aabb = aux["aabb"]
  verts, faces, volume, found_in = mesh_lib.find_surface(
      trainer.sdf_fn(state.params), aabb, cfg.mc_extend, cfg.mc_resolution)
  # The SDF's minimum and inside share in the box tell a vanishing surface (minimum > 0:
  # a positive "fog" renders the animal without a zero level) from one that moved away.
  stats = {"proxy_vertices": float(verts.shape[0]), "sdf_min": float(volume.min()),
           "inside_share": float((volume < 0).mean()), "search_box": float(found_in)}
  if faces.shape[0] == 0:
    return state, stats
  new_aabb = np.stack([verts.min(0), verts.max(0)]).astype(np.float32)
  # The largest component's size against the box it came from: well under 1 when the
  # surface broke up into fragments (the animal's rest box does not halve in a round).
  stats["surface_size"] = float(np.linalg.norm(new_aabb[1] - new_aabb[0]) /
                                max(np.linalg.norm(aabb[1] - aabb[0]), 1e-9))
  ema = cfg.geometry_ema if ema is None else ema
  if found_in > 0:
    ema = 0.0  # the surface moved out of the old box: follow it at once
  aux["aabb"] = (ema * aabb + (1 - ema) * new_aabb).astype(np.float32)
  aux["proxy_points"] = mesh_lib.sample_surface_host(
      int(parallel.to_host(state.step)), verts, faces, aux["proxy_points"].shape[0])
  near_far = mesh_lib.near_far_from_points(verts, trainer.root_poses(state.params),
                                           tolerance=cfg.near_far_tolerance)
  aux["near_far"] = (ema * aux["near_far"] + (1 - ema) * near_far).astype(np.float32)
  stats.update(aabb_size=float(np.linalg.norm(aux["aabb"][1] - aux["aabb"][0])),
               near=float(aux["near_far"][:, 0].mean()), far=float(aux["near_far"][:, 1].mean()))
  return state.replace(aux={k: jnp.asarray(v) for k, v in aux.items()}), stats


# ----------------------------------------------------------------------------
# The loop.


class _Logs:
  """TensorBoard scalars and images (a no-op without a writer)."""

  def __init__(self, trainer: Trainer):
    self.trainer = trainer
    self.writer = None
    if trainer.settings.tensorboard and parallel.is_primary():
      self.writer = tensorboardX.SummaryWriter(str(trainer.workdir / "tensorboard"))

  def scalars(self, metrics: dict, step: int, prefix: str) -> None:
    if self.writer is None:
      return
    for k, v in metrics.items():
      if np.ndim(v) == 0:
        self.writer.add_scalar(f"{prefix}/{k}", float(v), step)

  def image(self, state: state_lib.TrainState, step: int) -> None:
    plan = self.trainer.plan
    if self.writer is None or plan.render_image is None:
      return
    frame = int(self.trainer.settings.log_image_frame) % plan.num_frames
    out = plan.render_image(parallel.local(state.params),
                            parallel.to_host(state.aux["near_far"])[frame], frame)
    panels = [np.asarray(out["rgb"]), np.repeat(np.asarray(out["mask"])[..., None], 3, -1)]
    if plan.reference_image is not None:
      panels.insert(0, plan.reference_image(frame))
    self.writer.add_image("render/reference_rgb_mask", np.clip(np.concatenate(panels, 1), 0, 1),
                          step, dataformats="HWC")

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()


SURFACE_CHECKPOINTS = "checkpoints_surface"  # the newest state with a surface (keep 1)
ROUND_LOG = "rounds.jsonl"  # one line per round: its geometry statistics


def _append_round_log(workdir: pathlib.Path, row: dict) -> None:
  if not parallel.is_primary():
    return
  with open(workdir / ROUND_LOG, "a") as f:
    f.write(json.dumps(row) + "\n")


def read_round_log(workdir: str | os.PathLike) -> list[dict]:
  """The rows `train` appended to the run's round log (a resumed run repeats rounds: the
  last row of each round wins)."""
  path = pathlib.Path(workdir) / ROUND_LOG
  if not path.is_file():
    return []
  rows = {}
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut by a kill
    rows[int(row["round"])] = row
  return [rows[k] for k in sorted(rows)]


def _start_state(trainer: Trainer, checkpointer: checkpoint_lib.Checkpointer,
                 resume: bool) -> tuple[state_lib.TrainState, Optional[int]]:
  if checkpointer.latest_step() is not None:
    state, _ = checkpointer.restore(trainer.template())
    return state, int(state.step)
  if resume:
    raise UserError(f"{trainer.workdir}: --resume given but there is no checkpoint to resume from")
  if parallel.is_primary():
    (trainer.workdir / ROUND_LOG).unlink(missing_ok=True)  # a fresh run starts a fresh log
  state = trainer.plan.initial_state(True)
  # Proxy mesh, box and near/far from the initial SDF before the first step.
  state, _ = update_geometry(state, trainer, ema=0.0)
  checkpointer.save(state, {"round": 0})
  return state, None


def train(trainer: Trainer, resume: bool = False, progress: bool = True,
          on_round: Optional[Callable[[state_lib.TrainState, int, dict], bool]] = None
          ) -> tuple[state_lib.TrainState, dict]:
  """Runs (or resumes) training to train.num_rounds rounds.

  `on_round(state, round, geometry stats)` runs after each round's geometry
  refresh (diagnostics, experiments); returning True stops training there.

  Returns:
    (final state, {"steps", "train_seconds", "rollbacks", "resumed_from"}).
  """
  cfg = trainer.settings
  iters = cfg.iters_per_round
  checkpointer = checkpoint_lib.Checkpointer(trainer.workdir / "checkpoints", cfg.keep_checkpoints)
  state, resumed_from = _start_state(trainer, checkpointer, resume)
  # The newest state whose SDF had a surface, kept apart: a run whose surface vanishes
  # later still leaves one (the message of `outputs.NoSurface` points to it).
  surface_checkpointer = checkpoint_lib.Checkpointer(trainer.workdir / SURFACE_CHECKPOINTS, 1)
  logs = _Logs(trainer)
  pbar = tqdm.tqdm(total=trainer.total_steps, initial=int(state.step), desc=trainer.plan.name,
                   unit="step", dynamic_ncols=True,
                   disable=not (progress and parallel.is_primary()))
  cache: collections.deque = collections.deque(maxlen=2)  # states at the last two round starts
  rollbacks = nonfinite_in_row = redone_rounds = 0
  recovering = False
  start = time.time()
  step = int(state.step)
  loss_ema = None
  latest: dict[str, dict] = {}  # each kind's metrics since the last log step
  try:
    while step < trainer.total_steps:
      if step % iters == 0 or not cache:
        cache.append(state_lib.to_host(state))
      kind, state, m = trainer.step(state, step, recovering)
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
        state = state_lib.to_device(cache[0]).replace(step=state.step, aux=state.aux)
      else:
        nonfinite_in_row = 0
        loss_ema = float(m["loss"]) if loss_ema is None else 0.9 * loss_ema + 0.1 * float(m["loss"])
      latest[kind] = m
      if step % cfg.log_every == 0 or step == trainer.total_steps:
        for name, metrics in latest.items():
          logs.scalars(metrics, step, name)
        logs.scalars({"rollbacks": rollbacks}, step, "train")
        latest = {}
      pbar.update(1)
      if step % 5 == 0 and loss_ema is not None:
        pbar.set_postfix(loss=f"{loss_ema:.4f}", gnorm=f"{float(m['grad_norm']):.2f}",
                         rb=rollbacks, refresh=False)
      if step % iters == 0:
        round_index = step // iters
        state, stats = update_geometry(state, trainer)
        stats["recovering"] = float(recovering)
        logs.scalars(stats, step, "geometry")
        _append_round_log(trainer.workdir, {"round": round_index, "step": step, **stats})
        # No surface left in the previous surface's box, or only a fragment of it.
        lost = stats["search_box"] != 0 or stats.get("surface_size", 0.0) < cfg.min_surface_size
        if lost and trainer.plan.recovery_scalars and not recovering:
          # The surface vanished or moved away during this round: redo it from its start
          # with the recovery scalars (extraction: the root pose held while the shape forms).
          state = state_lib.to_device(cache[-1])
          step = int(state.step)
          recovering, redone_rounds = True, redone_rounds + 1
          pbar.n = step
          pbar.refresh()
          continue
        if not lost:
          recovering = False
        if cfg.log_image_every_rounds and round_index % cfg.log_image_every_rounds == 0:
          logs.image(state, step)
        if round_index % cfg.checkpoint_every_rounds == 0 or step == trainer.total_steps:
          checkpointer.save(state, {"round": round_index})
        if stats["proxy_vertices"] > 0:
          surface_checkpointer.save(state, {"round": round_index})
        if on_round is not None and on_round(state, round_index, stats):
          break
    if checkpointer.latest_step() != step:
      checkpointer.save(state, {"round": step // iters})
  finally:
    pbar.close()
    logs.close()
    checkpointer.close()
    surface_checkpointer.close()
  # This process's own copy: what follows (outputs, pictures) runs once, on one device.
  info = {"steps": step, "train_seconds": time.time() - start, "rollbacks": rollbacks,
          "redone_rounds": redone_rounds, "resumed_from": resumed_from}
  return parallel.local(state), info


def process_stats(wall0: float, cpu0: float, trainer: Trainer) -> dict:
  """run.json's cost figures since (time.time(), time.process_time()) = (wall0, cpu0): wall and
  CPU seconds, peak resident memory (this process's), device, the devices and processes the
  steps ran on, rounds x steps per round."""
  settings = trainer.settings
  return {"wall_seconds": time.time() - wall0, "cpu_seconds": time.process_time() - cpu0,
          # Peak resident memory of this process so far (Linux reports KiB).
          "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
          "device": str(jax.devices()[0].device_kind), "num_devices": trainer.layout.num_devices,
          "num_processes": jax.process_count(), "allocator": allocator.current(),
          "num_rounds": settings.num_rounds, "iters_per_round": settings.iters_per_round}


def check_resumable(trainer: Trainer, resume: bool) -> None:
  """Fails before anything is written if the run folder's checkpoint does not fit this plan.

  Several processes read the folder together (between two barriers), so all take the same
  branch (orbax's managers synchronise the processes that open them)."""
  parallel.sync("check_resumable:start")
  try:
    _check_resumable(trainer, resume)
  finally:
    parallel.sync("check_resumable:end")


def _check_resumable(trainer: Trainer, resume: bool) -> None:
  directory = trainer.workdir / "checkpoints"
  if not directory.is_dir():
    if resume:
      raise UserError(f"{trainer.workdir}: --resume given but there is no checkpoint to resume from")
    return
  checkpointer = checkpoint_lib.Checkpointer(directory, trainer.settings.keep_checkpoints)
  try:
    if checkpointer.latest_step() is not None:
      checkpointer.check(trainer.template())
    elif resume:
      raise UserError(f"{trainer.workdir}: --resume given but there is no checkpoint to resume from")
  finally:
    checkpointer.close()


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache (process-wide; JAX_COMPILATION_CACHE_DIR wins)."""
  if not path or os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.jax_compilation_cache_dir:
    return
  directory = pathlib.Path(path).expanduser()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError:
    return  # an unwritable cache only costs time
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
