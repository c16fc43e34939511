"""orbax-checkpoint for the train state: periodic, atomic, keep N, resume.

Layout: <workdir>/checkpoints/<step>/{state, meta}. orbax writes each step to
a temporary folder and renames it when complete, so a process killed in the
middle of a save leaves the previous checkpoint as the latest one. The state's
leaves are saved as a flat dict (leaf_00000, ...) and restored into the
structure of a freshly built state; `meta` records the leaf shapes, so a
checkpoint from a different config fails with a clear error instead of
silently mis-assigning arrays. A state with a NaN/Inf is never saved.
"""

from __future__ import annotations

import os
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from animdreamer_jax.errors import UserError
from animdreamer_jax.train import state as state_lib


def _flatten(tree: Any) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves(tree)
  return {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}


def _signature(tree: Any) -> list[list]:
  return [[list(np.shape(x)), str(np.asarray(x).dtype)] for x in jax.tree_util.tree_leaves(tree)]


class Checkpointer:
  """Saves and restores TrainStates under `<directory>` (keeps the newest N)."""

  def __init__(self, directory: str | os.PathLike, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "meta"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, train_state: state_lib.TrainState, meta: dict | None = None) -> bool:
    """Saves the state under its step; returns False (and saves nothing) if not finite."""
    host = state_lib.to_host(train_state)
    if not state_lib.all_finite(host):
      return False
    step = int(host.step)
    meta = dict(meta or {})
    meta["step"] = step
    meta["signature"] = _signature(host)
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_flatten(host)), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()
    return True

  def check(self, template: state_lib.TrainState, step: int | None = None) -> dict:
    """Reads a checkpoint's meta and checks it fits `template`; returns the meta.

    Raises:
      UserError: no checkpoint, or one written for a different model/config.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"{self.directory}: no checkpoint to resume from")
    meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    if meta.get("signature") != _signature(state_lib.to_host(template)):
      raise UserError(f"{self.directory}/{step}: checkpoint does not match this config "
                      "(different model sizes or video); use another --workdir")
    return meta

  def restore(self, template: state_lib.TrainState,
              step: int | None = None) -> tuple[state_lib.TrainState, dict]:
    """Restores into the structure of `template` (a freshly built state).

    Raises:
      UserError: no checkpoint, or one written for a different model/config.
    """
    step = self.latest_step() if step is None else step
    meta = self.check(template, step)
    host_template = state_lib.to_host(template)
    flat_template = _flatten(host_template)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(flat_template))).state
    leaves = [np.asarray(restored[k]) for k in sorted(flat_template)]
    treedef = jax.tree_util.tree_structure(host_template)
    return state_lib.to_device(jax.tree_util.tree_unflatten(treedef, leaves)), meta

  def close(self) -> None:
    self._manager.close()
