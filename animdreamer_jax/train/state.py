"""The training state: one pytree that the jitted step donates and returns.

`aux` holds the arrays the host refreshes between rounds (near/far per frame,
the canonical bounding box, proxy-surface points for feature matching); they
are inputs of the step like the parameters, and are checkpointed with them so
a resumed run continues from exactly the same state.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from animdreamer_jax import parallel


@flax.struct.dataclass
class TrainState:
  """Attributes:
    step: () int32, number of steps taken (applied or rejected).
    params: the model's parameter tree.
    opt_state: the optax state of `make_optimizer`.
    aux: dict of host-updated arrays (near_far (T, 2), aabb (2, 3), ...).
    key: (2,) uint32 base PRNG key; step n uses fold_in(key, n).
  """
  step: jnp.ndarray
  params: Any
  opt_state: Any
  aux: dict
  key: jnp.ndarray


def create(params: Any, tx: optax.GradientTransformation, aux: dict, seed: int) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    aux={k: jnp.asarray(v) for k, v in aux.items()},
                    key=jax.random.PRNGKey(seed))


def to_host(state: TrainState) -> TrainState:
  """A NumPy copy (safe to keep while the device state is donated; a state replicated over
  several devices or hosts is read from this process's own copy)."""
  return parallel.to_host(state)


def to_device(state: TrainState) -> TrainState:
  """Fresh device buffers (copies: on CPU `jnp.asarray` may alias the NumPy
  memory, which a donating step could then overwrite)."""
  return jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)


def all_finite(tree: Any) -> bool:
  """True if every floating-point leaf is finite (checked on the host)."""
  for leaf in jax.tree_util.tree_leaves(tree):
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      return False
  return True
