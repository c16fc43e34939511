"""Pure schedules: linear / log anneals, the one-cycle learning rate, the coarse-to-fine window.

Everything here is a function of the step (a Python int, a NumPy or a jnp
scalar) and returns a value of the same kind, so the host computes the
scheduled scalars and passes them to the jitted step as arguments (the step is
never re-traced when they change).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def _xp(step: Any):
  """jnp for traced/jax inputs, NumPy otherwise (keeps host calls cheap)."""
  if type(step).__module__.startswith("jax"):
    return jnp
  return np


def progress(step: Any, start_step: float, end_step: float) -> Any:
  """Fraction of the way from start_step to end_step, clipped to [0, 1]."""
  xp = _xp(step)
  if end_step <= start_step:
    return xp.where(xp.asarray(step) >= start_step, 1.0, 0.0)
  return xp.clip((xp.asarray(step, dtype=np.float32) - start_step) / (end_step - start_step), 0.0, 1.0)


def linear_anneal(step: Any, start_step: float, end_step: float, start_value: float,
                  end_value: float) -> Any:
  """start_value before start_step, end_value after end_step, linear between."""
  p = progress(step, start_step, end_step)
  return start_value + (end_value - start_value) * p


def log_anneal(step: Any, start_step: float, end_step: float, start_value: float,
               end_value: float) -> Any:
  """Like linear_anneal but linear in log(value) (both values must be > 0).

  lab4d ramps the eikonal factor this way: 1 -> 100 over 4000 steps.
  """
  if start_value <= 0 or end_value <= 0:
    raise ValueError("log_anneal needs positive start and end values")
  xp = _xp(step)
  p = progress(step, start_step, end_step)
  return xp.exp(np.log(start_value) + (np.log(end_value) - np.log(start_value)) * p)


def one_cycle_lr(step: Any, total_steps: int, peak_lr: float, warmup_steps: int,
                 initial_div: float = 25.0, final_div: float = 25.0) -> Any:
  """lab4d's linear one-cycle learning rate.

  Rises linearly from peak_lr / initial_div at step 0 to peak_lr at
  warmup_steps, then falls linearly to peak_lr / final_div at total_steps.
  """
  xp = _xp(step)
  step = xp.asarray(step, dtype=np.float32)
  low_start = peak_lr / initial_div
  low_end = peak_lr / final_div
  warm = low_start + (peak_lr - low_start) * progress(step, 0, max(warmup_steps, 0))
  decay = peak_lr + (low_end - peak_lr) * progress(step, warmup_steps, total_steps)
  return xp.where(step < warmup_steps, warm, decay)


def positional_encoding_alpha(step: Any, start: float = 0.6, end: float = 1.0,
                              end_step: int = 4000) -> Any:
  """lab4d's coarse-to-fine window fraction: 0.6 -> 1.0 linearly over end_step."""
  return linear_anneal(step, 0, end_step, start, end)
