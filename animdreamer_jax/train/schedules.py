"""Pure schedules: linear / log anneals, the one-cycle learning rate, loss weights.

Everything here is a function of the step (a Python int, a NumPy or a jnp
scalar) and returns a value of the same kind, so the host computes the
scheduled scalars and passes them to the jitted step as arguments (the step is
never re-traced when they change).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np


def _xp(step: Any):
  """jnp for traced/jax inputs, NumPy otherwise (keeps host calls cheap)."""
  if type(step).__module__.startswith("jax"):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
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


def scheduled_value(spec: Mapping[str, Any], step: Any) -> Any:
  """Evaluates a schedule spec: {kind: constant|linear|log, start, end, start_step, end_step}."""
  kind = spec.get("kind", "constant")
  if kind == "constant":
    return spec.get("value", 1.0)
  fn = {"linear": linear_anneal, "log": log_anneal}.get(kind)
  if fn is None:
    raise ValueError(f"unknown schedule kind {kind!r}")
  return fn(step, spec["start_step"], spec["end_step"], spec["start"], spec["end"])


def loss_weights(weights: Mapping[str, float], factors: Mapping[str, Mapping[str, Any]],
                 step: Any) -> dict[str, Any]:
  """Scheduled loss weights: base weight x schedule factor.

  Args:
    weights: loss name -> base weight (lab4d defaults in the configs). Losses
      with weight 0 are left out, so the step does not compute them at all.
    factors: loss name -> schedule spec for a multiplicative factor (e.g. the
      eikonal log ramp 1 -> 100, the camera prior decay 1 -> 0).
    step: the training step.

  Returns:
    loss name -> float32 scalar weight.
  """
  out = {}
  for name, base in weights.items():
    if base == 0:
      continue
    factor = scheduled_value(factors[name], step) if name in factors else 1.0
    out[name] = np.float32(base * factor) if _xp(step) is np else base * factor
  return out


def lab4d_loss_weight_factors(eikonal_steps: int = 4000, cam_prior_steps: int = 800,
                              gauss_mask_steps: int = 4000,
                              flow_warmup_steps: int = 0) -> dict[str, dict[str, Any]]:
  """lab4d's schedules (lab4d_internals A.6), with their lengths as arguments.

  eikonal: log 1 -> 100; cam_prior: linear 1 -> 0; gauss_mask: linear 1 -> 0;
  and (not in lab4d, 0 = off) flow: linear 0 -> 1 over `flow_warmup_steps`.
  The flow warm-up is for studying an early collapse: from a fresh sphere and
  random bones, the flow loss (weight 0.5) can drive the SDF's zero level out
  of the box in the first round, after which a positive-SDF fog fits the
  video (Khronos Fox Run, 60-degree arc: 6 proxy vertices after round 1 with
  flow, 2325 without). A 10-25% ramp only delays it (98-292 after round 2).
  """
  flow = ({"flow": dict(kind="linear", start=0.0, end=1.0, start_step=0,
                        end_step=flow_warmup_steps)} if flow_warmup_steps > 0 else {})
  return {**flow,
      "eikonal": dict(kind="log", start=1.0, end=100.0, start_step=0, end_step=eikonal_steps),
      "cam_prior": dict(kind="linear", start=1.0, end=0.0, start_step=0, end_step=cam_prior_steps),
      "gauss_mask": dict(kind="linear", start=1.0, end=0.0, start_step=0, end_step=gauss_mask_steps),
  }


def positional_encoding_alpha(step: Any, start: float = 0.6, end: float = 1.0,
                              end_step: int = 4000) -> Any:
  """lab4d's coarse-to-fine window fraction: 0.6 -> 1.0 linearly over end_step."""
  return linear_anneal(step, 0, end_step, start, end)
