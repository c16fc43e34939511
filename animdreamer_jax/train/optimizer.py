"""The `optim` section and optax AdamW with lab4d's x10 learning rate for the explicit parameters.

The learning rate itself is NOT inside the optimiser: the chain is built with
a unit rate and the update rule (`train.update`) multiplies the updates by the
scheduled rate it gets as an argument, so the one-cycle schedule is computed
on the host and never re-traces the step. The chain is

  clip_by_global_norm(clip) -> multi_transform(base: adamw(1), explicit: adamw(10))

AdamW's decoupled weight decay is inside each branch, so a parameter with
rate lr x m decays by lr x m x wd, as torch.optim.AdamW does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import optax

from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax import schedules


@dataclasses.dataclass(frozen=True)
class OptimSettings:
  """`optim`: AdamW and its one-cycle learning rate (lab4d's values)."""
  lr: float = 5e-4  # peak learning rate
  warmup_fraction: float = 0.1  # linear rise to the peak over this fraction of training
  initial_div: float = 25.0  # the rate starts at lr / initial_div
  final_div: float = 25.0  # and ends at lr / final_div
  explicit_lr_multiplier: float = 10.0  # rate multiplier of the explicit parameters below
  # Parameters whose path contains one of these get the multiplied rate (log-scales,
  # betas, base rotations, temperatures; lab4d `get_lr_dict`).
  explicit_params: tuple[str, ...] = articulated_model.EXPLICIT_PARAM_NAMES
  weight_decay: float = 1e-4  # AdamW's decoupled weight decay
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 5.0  # global-norm clip of the gradient; <= 0: off
  # Not in lab4d (0 = off): the root pose is held at its camera fit for this fraction of
  # training (the workaround for the SDF collapse on narrow camera arcs).
  root_pose_warmup_fraction: float = 0.0
  # Not in lab4d: a round that ends without a surface is redone from its start with the root
  # pose held there, and held until a round ends with a surface (what keeps one-sided videos
  # from ending as a surfaceless fog; docs/results.md, "One side").
  hold_root_pose_without_surface: bool = True

  def __post_init__(self):
    if not self.lr > 0:
      raise UserError("config.optim.lr: must be > 0")
    if not 0.0 <= self.warmup_fraction <= 1.0:
      raise UserError("config.optim.warmup_fraction: must be in [0, 1]")
    if not 0.0 <= self.root_pose_warmup_fraction <= 1.0:
      raise UserError("config.optim.root_pose_warmup_fraction: must be in [0, 1]")

  def learning_rate(self, step: int, total_steps: int) -> float:
    """lab4d's linear one-cycle rate at `step`."""
    warmup = int(round(self.warmup_fraction * total_steps))
    return schedules.one_cycle_lr(step, total_steps, self.lr, warmup, self.initial_div,
                                  self.final_div)


def param_path_names(params: Any) -> Any:
  """Pytree of '/'-joined key paths with the structure of `params`."""
  def name(path, _):
    parts = []
    for entry in path:
      for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
          parts.append(str(getattr(entry, attr)))
          break
    return "/".join(parts)
  return jax.tree_util.tree_map_with_path(name, params)


def explicit_param_labels(params: Any, patterns: tuple[str, ...]) -> Any:
  """'explicit' for parameters whose path contains a pattern, else 'base'."""
  return jax.tree_util.tree_map(
      lambda n: "explicit" if any(p in n for p in patterns) else "base", param_path_names(params))


def make_optimizer(params: Any, settings: OptimSettings = OptimSettings()
                   ) -> optax.GradientTransformation:
  """The unit-rate AdamW chain described in the module docstring.

  Args:
    params: the parameter tree (only its structure and names are used).
    settings: the optim section.
  """
  labels = explicit_param_labels(params, tuple(settings.explicit_params))

  def adamw(lr):
    return optax.adamw(learning_rate=lr, b1=settings.b1, b2=settings.b2, eps=settings.eps,
                       weight_decay=settings.weight_decay)

  branches = optax.multi_transform(
      {"base": adamw(1.0), "explicit": adamw(float(settings.explicit_lr_multiplier))}, labels)
  if settings.clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(settings.clip_norm), branches)
  return branches
