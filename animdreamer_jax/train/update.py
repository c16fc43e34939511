"""The one update rule: gradients -> new parameters and optimiser state, for every kind of step.

`apply_gradients` is called inside every jitted train step, whatever stage or
loss terms produced the gradient. In order:

1. the global gradient norm; a step whose loss or gradient is not finite, or
   whose norm exceeds `scalars["grad_spike_threshold"]` (<= 0 disables the
   spike test), is refused: `metrics["applied"] == 0` and params and
   optimiser state come back unchanged (lab4d `check_grad`; the host loop then
   rolls back). A refused gradient is zeroed before the optimiser sees it, so
   NaN never enters Adam's moments;
2. the optax chain (`train.optimizer`: global-norm clip, then AdamW with the
   explicit parameters at x10 through `optax.multi_transform`), at unit rate;
3. the scheduled learning rate `scalars["lr"]`, and per parameter group
   `scalars["update_scale/<group>"]` (e.g. the root pose held at its camera
   fit for the first steps: 0, then 1);
4. where the step trains only some parameters (`trainable`, a static boolean
   tree), every other leaf - and its optimiser moments, located with
   `optax.tree_utils.tree_map_params` - stays exactly as it was, and so does a
   trainable leaf whose gradient is exactly zero. That is PyTorch's rule (a
   parameter without a gradient is skipped by the optimiser), which lab4d and
   AnimatableDreamer train under: interleaved CSD steps neither decay the
   moments of the reconstruction-only parameters nor move them by momentum.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

UPDATE_SCALE_PREFIX = "update_scale/"


def scale_groups(updates: Any, scalars: dict) -> Any:
  """Multiplies the updates of each top-level parameter group G by scalars["update_scale/G"]."""
  scales = {k[len(UPDATE_SCALE_PREFIX):]: v for k, v in scalars.items()
            if k.startswith(UPDATE_SCALE_PREFIX)}
  if not scales:
    return updates
  inner = dict(updates["params"])
  for group, scale in scales.items():
    inner[group] = jax.tree_util.tree_map(lambda u, s=scale: u * jnp.asarray(s, u.dtype),
                                          inner[group])
  return {**updates, "params": inner}


def _keep_where(mask: Any, new: Any, old: Any) -> Any:
  return jax.tree_util.tree_map(lambda m, a, b: jnp.where(m, a, b), mask, new, old)


def apply_gradients(tx: optax.GradientTransformation, params: Any, opt_state: Any, loss: jnp.ndarray,
                    grads: Any, scalars: dict, trainable: Optional[Any] = None
                    ) -> tuple[Any, Any, dict[str, jnp.ndarray]]:
  """One optimiser step under the rule in the module docstring.

  Args:
    tx: the unit-rate optax chain (`train.optimizer.make_optimizer`).
    params, opt_state: current parameters and optimiser state.
    loss: () the step's total loss (a non-finite loss refuses the step).
    grads: gradient tree like params.
    scalars: "lr", "grad_spike_threshold", optional "update_scale/<group>".
    trainable: None (every leaf), or a tree of Python bools like params.

  Returns:
    (new params, new opt_state, {"grad_norm", "finite", "applied"}).
  """
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  spike = scalars["grad_spike_threshold"]
  applied = finite & ((grad_norm <= spike) | (spike <= 0))
  grads = jax.tree_util.tree_map(lambda g: jnp.where(applied, g, jnp.zeros_like(g)), grads)
  updates, new_opt = tx.update(grads, opt_state, params)
  lr = scalars["lr"]
  updates = jax.tree_util.tree_map(lambda u: u * jnp.asarray(lr, u.dtype), updates)
  updates = scale_groups(updates, scalars)
  new_params = optax.apply_updates(params, updates)
  if trainable is not None:
    # Per leaf: updated only if trainable here and it received a gradient.
    leaf_mask = jax.tree_util.tree_map(
        lambda g, t: jnp.logical_and(bool(t), jnp.any(g != 0)), grads, trainable)
    new_params = _keep_where(leaf_mask, new_params, params)
    # multi_transform's branch states hold MaskedNode where a leaf belongs to
    # the other branch: kept as it is (it has no arrays).
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    state_mask = optax.tree_utils.tree_map_params(
        tx, lambda v, m: v if masked(v) else m, new_opt, leaf_mask,
        transform_non_params=lambda _: jnp.bool_(True), is_leaf=masked)
    new_opt = _keep_where(state_mask, new_opt, opt_state)
  keep_if_refused = lambda new, old: jnp.where(applied, new, old)  # noqa: E731
  new_params = jax.tree_util.tree_map(keep_if_refused, new_params, params)
  new_opt = jax.tree_util.tree_map(keep_if_refused, new_opt, opt_state)
  metrics = {"grad_norm": grad_norm, "finite": finite.astype(jnp.int32),
             "applied": applied.astype(jnp.int32)}
  return new_params, new_opt, metrics
