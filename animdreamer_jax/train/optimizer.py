"""optax AdamW with lab4d's x10 learning rate for the explicit scalar parameters.

The learning rate itself is NOT inside the optimiser: the chain is built with
a unit rate and the step multiplies the updates by the scheduled rate it gets
as an argument (`apply_learning_rate`), so the one-cycle schedule is computed
on the host and never re-traces the step. The chain is

  clip_by_global_norm(clip) -> multi_transform(base: adamw(1), explicit: adamw(10))

AdamW's decoupled weight decay is inside each branch, so a parameter with
rate lr x m decays by lr x m x wd, as torch.optim.AdamW does.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import optax

# lab4d trainer.get_lr_dict: parameters whose name contains one of these get
# ten times the base rate (log-scales, betas, base rotations, temperatures).
DEFAULT_EXPLICIT_PARAMS = ("logibeta", "log_beta", "logsigma", "log_sigma", "logscale",
                           "log_scale", "log_gauss", "base_quat", "base_logfocal",
                           "base_ppoint", "shift")


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


def explicit_param_labels(params: Any, patterns: Sequence[str] = DEFAULT_EXPLICIT_PARAMS) -> Any:
  """'explicit' for parameters whose path contains a pattern, else 'base'."""
  return jax.tree_util.tree_map(
      lambda n: "explicit" if any(p in n for p in patterns) else "base", param_path_names(params))


def make_optimizer(params: Any, *, explicit_lr_multiplier: float = 10.0,
                   weight_decay: float = 1e-4, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, clip_norm: float = 5.0,
                   explicit_patterns: Sequence[str] = DEFAULT_EXPLICIT_PARAMS
                   ) -> optax.GradientTransformation:
  """The unit-rate AdamW chain described in the module docstring.

  Args:
    params: the parameter tree (only its structure and names are used).
    explicit_lr_multiplier: rate multiplier of the explicit parameters (lab4d: 10).
    weight_decay, b1, b2, eps: AdamW settings (lab4d: 1e-4, 0.9, 0.999).
    clip_norm: global-norm clip (lab4d: 5); <= 0 disables.
    explicit_patterns: name substrings of the explicit parameters.
  """
  labels = explicit_param_labels(params, explicit_patterns)
  def adamw(lr):
    return optax.adamw(learning_rate=lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  branches = optax.multi_transform(
      {"base": adamw(1.0), "explicit": adamw(float(explicit_lr_multiplier))}, labels)
  if clip_norm and clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(clip_norm), branches)
  return branches


def make_optimizer_from_config(params: Any, optim_config) -> optax.GradientTransformation:
  """make_optimizer with settings from config.optim."""
  return make_optimizer(
      params,
      explicit_lr_multiplier=optim_config.explicit_lr_multiplier,
      weight_decay=optim_config.weight_decay,
      b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps,
      clip_norm=optim_config.clip_norm,
      explicit_patterns=tuple(optim_config.explicit_params))


def apply_learning_rate(updates: Any, learning_rate: jax.Array) -> Any:
  """Scales the unit-rate updates by the scheduled learning rate."""
  return jax.tree_util.tree_map(lambda u: u * learning_rate.astype(u.dtype), updates)
