"""SDF -> volume density maps. Every map has the signature `fn(sdf, beta) -> density`.

Pass a different function of that signature to the renderer to swap the map.
The SDF is negative inside.

- `volsdf_density` (lab4d's choice): sigma = (1/beta) Psi_beta(-sdf), Psi the
  CDF of a zero-mean Laplace distribution with scale beta.
- `neus_density`: the logistic counterpart, sigma = (1/beta) sigmoid(-sdf/beta).
  This is NeuS's unbiased density -dPhi/dt / Phi for a ray that meets the
  surface head-on (Phi = sigmoid(sdf/beta), |d sdf/dt| = 1), written per sample
  so it composes like any density (NeuS's cosine-annealed discrete alphas are
  not reproduced).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

DensityFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def laplace_cdf_neg(sdf: jnp.ndarray, beta: jnp.ndarray) -> jnp.ndarray:
  """Psi_beta(-sdf): 1 - 0.5 exp(sdf / beta) inside, 0.5 exp(-sdf / beta) outside.

  Each branch is evaluated without cancellation (exp of a non-positive number
  outside, 0.5 - 0.5 expm1(.) inside; lab4d's single expm1 form underflows to 0
  in the far tail), and a "double where" keeps the gradient exact everywhere,
  including sdf = 0 (where lab4d's sign() form gives 0).

  Args:
    sdf: (...) signed distances.
    beta: () or broadcastable scale > 0.

  Returns:
    (...) values in (0, 1).
  """
  outside = sdf > 0
  # -|sdf| / beta, with the derivative of the branch actually taken.
  neg_abs = jnp.where(outside, -sdf, sdf) / beta
  return jnp.where(outside, 0.5 * jnp.exp(neg_abs), 0.5 - 0.5 * jnp.expm1(neg_abs))


def volsdf_density(sdf: jnp.ndarray, beta: jnp.ndarray) -> jnp.ndarray:
  """VolSDF density (1/beta) Psi_beta(-sdf). (...) -> (...), in (0, 1/beta)."""
  return laplace_cdf_neg(sdf, beta) / beta


def neus_density(sdf: jnp.ndarray, beta: jnp.ndarray) -> jnp.ndarray:
  """Logistic (NeuS) density (1/beta) sigmoid(-sdf / beta). (...) -> (...)."""
  return jax.nn.sigmoid(-sdf / beta) / beta


def occupancy(sdf: jnp.ndarray, beta: jnp.ndarray,
              density_fn: DensityFn = volsdf_density) -> jnp.ndarray:
  """density * beta in (0, 1): lab4d's "occupancy" for the bone-SDF consistency loss."""
  return density_fn(sdf, beta) * beta
