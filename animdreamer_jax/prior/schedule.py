"""The diffusion noise schedule of SD2.1 / MVDream and the epsilon parameterisation.

LDM's "linear" schedule (= diffusers' "scaled_linear"): betas = linspace(sqrt(0.00085), sqrt(0.012),
1000)^2, built in float64, alpha_bar_t = prod_{s<=t} (1 - beta_s), stored as float32. Timesteps are integer
indices 0..999 into that table. The UNet predicts the noise eps ("eps" parameterisation):

  x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps
  x_0 = sqrt(1 / alpha_bar_t) x_t - sqrt(1 / alpha_bar_t - 1) eps
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.00085
LINEAR_END = 0.012


def ldm_linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, start: float = LINEAR_START,
                     end: float = LINEAR_END) -> np.ndarray:
  """LDM "linear" betas, float64 (T,): squares of a linspace between sqrt(start) and sqrt(end)."""
  return np.linspace(np.sqrt(start), np.sqrt(end), num_timesteps, dtype=np.float64) ** 2


def make_alphas_cumprod(num_timesteps: int = NUM_TRAIN_TIMESTEPS, start: float = LINEAR_START,
                        end: float = LINEAR_END) -> np.ndarray:
  """alpha_bar, float32 (T,): the cumulative product is taken in float64, then cast (as LDM stores it)."""
  return np.cumprod(1.0 - ldm_linear_betas(num_timesteps, start, end)).astype(np.float32)


def _gather(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """table[t] for t (N,) reshaped to (N, 1, ..., 1) with `ndim` axes in all."""
  values = jnp.asarray(table, jnp.float32)[jnp.asarray(t, jnp.int32)]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def q_sample(x0: jax.Array, t: jax.Array, noise: jax.Array, alphas_cumprod: jax.Array) -> jax.Array:
  """Forward diffusion x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise.

  Args:
    x0: clean latents (N, ...).
    t: integer timesteps (N,) (or a scalar for all).
    noise: (N, ...) standard normal.
    alphas_cumprod: (T,) alpha_bar table.

  Returns:
    (N, ...) noisy latents.
  """
  a = _gather(alphas_cumprod, t, x0.ndim)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def predict_x0_from_eps(x_t: jax.Array, t: jax.Array, eps: jax.Array, alphas_cumprod: jax.Array
                       ) -> jax.Array:
  """x0 = sqrt(1/a_t) x_t - sqrt(1/a_t - 1) eps; shapes as in `q_sample`."""
  a = _gather(alphas_cumprod, t, x_t.ndim)
  return jnp.sqrt(1.0 / a) * x_t - jnp.sqrt(1.0 / a - 1.0) * eps


def predict_eps_from_x0(x_t: jax.Array, t: jax.Array, x0: jax.Array, alphas_cumprod: jax.Array
                       ) -> jax.Array:
  """eps = (sqrt(1/a_t) x_t - x0) / sqrt(1/a_t - 1); the inverse of `predict_x0_from_eps`."""
  a = _gather(alphas_cumprod, t, x_t.ndim)
  return (jnp.sqrt(1.0 / a) * x_t - x0) / jnp.sqrt(1.0 / a - 1.0)
