"""safe_norm against a per-vector loop, and its gradient at zero."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.geometry import vector


def _loop_norm(x):
  """Slow reference: sqrt of the sum of squares, one vector (last axis) at a time."""
  flat = x.reshape(-1, x.shape[-1])
  out = [math.sqrt(sum(float(c) * float(c) for c in row)) for row in flat]
  return np.array(out).reshape(x.shape[:-1])


def test_safe_norm_matches_loop():
  x = np.random.default_rng(0).normal(size=(4, 5, 3))
  x[1, 2] = 0.0
  got = vector.safe_norm(jnp.asarray(x, jnp.float32))
  chex.assert_shape(got, (4, 5))
  chex.assert_type(got, jnp.float32)
  np.testing.assert_allclose(got, _loop_norm(x), rtol=1e-6)
  assert got[1, 2] == 0.0


def test_safe_norm_axis_and_keepdims():
  x = np.random.default_rng(1).normal(size=(3, 4, 2))
  want = _loop_norm(np.moveaxis(x, 1, -1))  # norm over axis 1
  got = vector.safe_norm(jnp.asarray(x), axis=1)
  chex.assert_shape(got, (3, 2))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  kept = vector.safe_norm(jnp.asarray(x), axis=1, keepdims=True)
  chex.assert_shape(kept, (3, 1, 2))
  np.testing.assert_allclose(kept[:, 0], want, rtol=1e-6)


def test_safe_norm_gradient_is_zero_at_zero_and_unit_elsewhere():
  grad = jax.jit(jax.grad(lambda v: vector.safe_norm(v)))
  np.testing.assert_array_equal(grad(jnp.zeros(3)), np.zeros(3))
  v = np.array([0.3, -1.2, 0.5])
  np.testing.assert_allclose(grad(jnp.asarray(v, jnp.float32)), v / np.linalg.norm(v), rtol=1e-6)
  # Batched: a zero row does not poison its neighbours.
  batch = jnp.asarray([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
  g = jax.grad(lambda b: jnp.sum(vector.safe_norm(b)))(batch)
  np.testing.assert_allclose(g, [[0.0, 0.0, 0.0], [0.6, 0.8, 0.0]], rtol=1e-6)
