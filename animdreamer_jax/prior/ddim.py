"""DDIM sampling (Song et al. 2021) as LDM/MVDream run it.

Timesteps ("uniform" in LDM = diffusers' "leading" with `steps_offset=1`): t_i = i * (T // S) + 1 for
i = 0..S-1, visited from the largest down (981, 961, ..., 1 for S = 50). At step t_i the previous
alpha_bar is alpha_bar[t_{i-1}], and alpha_bar[0] for the last step (not 1: diffusers'
`set_alpha_to_one=False`). One step from the predicted noise eps:

  x0     = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
  sigma  = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev))
  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z,   z ~ N(0, I)

No clipping of x0 (LDM does not clip latents).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from animdreamer_jax.prior.schedule import NUM_TRAIN_TIMESTEPS


class DdimSchedule(NamedTuple):
  """Per-step constants in sampling order (largest t first); all (S,).

  Attributes:
    timesteps: int32 UNet timesteps.
    alphas: float32 alpha_bar[t].
    alphas_prev: float32 alpha_bar of the next (smaller) timestep; alpha_bar[0] at the end.
    sigmas: float32 noise scale (0 for eta = 0).
  """
  timesteps: np.ndarray
  alphas: np.ndarray
  alphas_prev: np.ndarray
  sigmas: np.ndarray


def ddim_timesteps(num_steps: int, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS,
                   offset: int = 1) -> np.ndarray:
  """Ascending int32 (S,) timesteps i * (T // S) + offset (LDM "uniform" when S divides T)."""
  if not 1 <= num_steps <= num_train_timesteps:
    raise ValueError(f"num_steps must be in [1, {num_train_timesteps}], got {num_steps}")
  return (np.arange(num_steps) * (num_train_timesteps // num_steps) + offset).astype(np.int32)


def make_ddim_schedule(alphas_cumprod: np.ndarray, num_steps: int, eta: float = 0.0,
                       offset: int = 1) -> DdimSchedule:
  """DDIM constants for `num_steps` steps over the (T,) alpha_bar table, in sampling order."""
  ac = np.asarray(alphas_cumprod, np.float64)
  steps = ddim_timesteps(num_steps, len(ac), offset)
  alphas = ac[steps]
  alphas_prev = np.concatenate([ac[:1], ac[steps[:-1]]])
  sigmas = eta * np.sqrt((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev))
  flip = lambda a, dtype: np.ascontiguousarray(a[::-1]).astype(dtype)
  return DdimSchedule(flip(steps, np.int32), flip(alphas, np.float32),
                      flip(alphas_prev, np.float32), flip(sigmas, np.float32))


def ddim_step(x_t: jax.Array, eps: jax.Array, alpha: jax.Array, alpha_prev: jax.Array,
              sigma: jax.Array, noise: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """One DDIM update.

  Args:
    x_t: (N, ...) current latents.
    eps: (N, ...) predicted noise (after guidance).
    alpha, alpha_prev, sigma: scalars (or broadcastable) from `DdimSchedule`.
    noise: (N, ...) standard normal, needed only when sigma > 0 (None = zeros).

  Returns:
    (x_prev, x0_pred), each (N, ...).
  """
  x0 = (x_t - jnp.sqrt(1.0 - alpha) * eps) / jnp.sqrt(alpha)
  x_prev = jnp.sqrt(alpha_prev) * x0 + jnp.sqrt(1.0 - alpha_prev - sigma**2) * eps
  if noise is not None:
    x_prev = x_prev + sigma * noise
  return x_prev, x0


EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def _step_keys(schedule: DdimSchedule, key: jax.Array | None, caller: str
               ) -> tuple[bool, jax.Array]:
  """Whether any step adds noise (sigma > 0), and one PRNG key per step (dummies if none does)."""
  stochastic = bool(np.any(np.asarray(schedule.sigmas) > 0))
  if stochastic and key is None:
    raise ValueError(f"{caller}: eta > 0 needs a PRNG key")
  keys = jax.random.split(key if key is not None else jax.random.PRNGKey(0), len(schedule.timesteps))
  return stochastic, keys


def ddim_sample(eps_fn: EpsFn, x_T: jax.Array, schedule: DdimSchedule,
                key: jax.Array | None = None) -> jax.Array:
  """Runs all DDIM steps with `lax.scan` (jit-able).

  Args:
    eps_fn: (x (N, ...), t int32 scalar) -> predicted noise (N, ...), guidance included.
    x_T: (N, ...) initial noise.
    schedule: from `make_ddim_schedule`.
    key: PRNG key for the per-step noise; required when any sigma > 0.

  Returns:
    (N, ...) final latents x_0.
  """
  stochastic, keys = _step_keys(schedule, key, "ddim_sample")

  def body(x, step):
    t, alpha, alpha_prev, sigma, k = step
    noise = jax.random.normal(k, x.shape, x.dtype) if stochastic else None
    x_prev, _ = ddim_step(x, eps_fn(x, t), alpha, alpha_prev, sigma, noise)
    return x_prev, None

  steps = (jnp.asarray(schedule.timesteps), jnp.asarray(schedule.alphas),
           jnp.asarray(schedule.alphas_prev), jnp.asarray(schedule.sigmas), keys)
  x0, _ = jax.lax.scan(body, x_T, steps)
  return x0


def ddim_sample_loop(eps_fn: EpsFn, x_T: jax.Array, schedule: DdimSchedule,
                     key: jax.Array | None = None, progress: bool = False) -> jax.Array:
  """Same result as `ddim_sample`, as a Python loop (one jitted `eps_fn` call per step, optional tqdm bar).

  Use it when each step is expensive (the full UNet) and progress should be visible.
  """
  stochastic, keys = _step_keys(schedule, key, "ddim_sample_loop")
  step_fn = jax.jit(ddim_step)
  indices = range(len(schedule.timesteps))
  if progress:
    indices = tqdm(indices, desc="DDIM", unit="step")
  x = x_T
  for i in indices:
    noise = jax.random.normal(keys[i], x.shape, x.dtype) if stochastic else None
    eps = eps_fn(x, jnp.asarray(schedule.timesteps[i]))
    x, _ = step_fn(x, eps, schedule.alphas[i], schedule.alphas_prev[i], schedule.sigmas[i], noise)
  return x
