"""SDF->density, alpha compositing and ray sampling against slow loop references."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from animdreamer_jax.render import compositing
from animdreamer_jax.render import density
from animdreamer_jax.render import sampling


def ref_volsdf(s, beta):
  """VolSDF: (1/beta) * LaplaceCDF(-s), one value at a time."""
  if -s <= 0:
    psi = 0.5 * math.exp(-s / beta)
  else:
    psi = 1.0 - 0.5 * math.exp(s / beta)
  return psi / beta


def ref_neus(s, beta):
  return 1.0 / (1.0 + math.exp(s / beta)) / beta


def ref_weights(sigma, deltas):
  """Loop over samples with the product form of the transmittance."""
  w = np.zeros_like(sigma)
  t_after = np.zeros_like(sigma)
  for r in range(sigma.shape[0]):
    trans = 1.0
    for i in range(sigma.shape[1]):
      a = 1.0 - math.exp(-sigma[r, i] * deltas[r, i])
      w[r, i] = trans * a
      trans *= 1.0 - a
      t_after[r, i] = trans
  return w, t_after


def ref_sample_pdf(bins, weights, n, eps=1e-5):
  """nerf_pl sample_pdf (deterministic), one ray at a time with np.searchsorted."""
  out = np.zeros((bins.shape[0], n))
  for r in range(bins.shape[0]):
    w = weights[r] + eps
    pdf = w / w.sum()
    cdf = np.concatenate([[0.0], np.cumsum(pdf)])
    for j, u in enumerate(np.linspace(0, 1, n)):
      i = np.searchsorted(cdf, u, side="right")
      lo, hi = max(i - 1, 0), min(i, len(w))
      denom = cdf[hi] - cdf[lo]
      denom = 1.0 if denom < eps else denom
      out[r, j] = bins[r, lo] + (u - cdf[lo]) / denom * (bins[r, hi] - bins[r, lo])
  return out


SDFS = np.array([-3.0, -0.5, -0.1, -1e-4, 0.0, 1e-4, 0.05, 0.3, 2.0, 40.0, -40.0])


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_volsdf_matches_reference(beta):
  got = density.volsdf_density(jnp.asarray(SDFS, jnp.float32), beta)
  want = [ref_volsdf(s, beta) for s in SDFS]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-30)
  assert np.all(np.isfinite(got))


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_neus_matches_reference(beta):
  sdfs = SDFS[np.abs(SDFS / beta) < 700]  # math.exp overflow in the reference
  got = density.neus_density(jnp.asarray(sdfs, jnp.float32), beta)
  np.testing.assert_allclose(got, [ref_neus(s, beta) for s in sdfs], rtol=1e-5, atol=1e-30)


def test_volsdf_gradient_exact_at_zero():
  # d/ds (1/b) Psi(-s) = -(0.5/b^2) exp(-|s|/b); lab4d's sign() form gives 0 at s=0.
  beta = 0.2
  g = jax.grad(lambda s: density.volsdf_density(s, beta))(0.0)
  np.testing.assert_allclose(g, -0.5 / beta**2, rtol=1e-6)
  g_far = jax.grad(lambda s: density.volsdf_density(s, beta))(-60.0)
  assert np.isfinite(g_far)


@pytest.mark.parametrize("fn", [density.volsdf_density, density.neus_density])
def test_density_check_grads(fn):
  with jax.enable_x64(True):
    s = jnp.asarray([-0.3, -0.01, 0.02, 0.4], jnp.float64)
    check_grads(fn, (s, jnp.float64(0.15)), order=1, modes=("fwd", "rev"))


def test_alpha_weights_match_loop_and_sum_to_opacity():
  rng = np.random.default_rng(0)
  sigma = rng.uniform(0, 20, (4, 9))
  sigma[0] = 0.0  # empty ray
  sigma[1, 3] = 1e4  # opaque wall
  deltas = rng.uniform(0.01, 0.2, (4, 9))
  w, t_after = compositing.alpha_weights(jnp.asarray(sigma, jnp.float32),
                                         jnp.asarray(deltas, jnp.float32))
  want_w, want_t = ref_weights(sigma, deltas)
  np.testing.assert_allclose(w, want_w, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(t_after, want_t, atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(compositing.opacity(w), 1.0 - want_t[:, -1], atol=1e-6)
  np.testing.assert_allclose(w[1, 4:], 0.0, atol=1e-6)


def test_composite_matches_loop():
  rng = np.random.default_rng(1)
  w = rng.uniform(0, 0.2, (3, 6))
  vals = rng.normal(size=(3, 6, 5))
  valid = (rng.uniform(size=(3, 6)) > 0.3).astype(np.float64)
  got_n = compositing.composite(jnp.asarray(w), jnp.asarray(vals))
  got_raw = compositing.composite(jnp.asarray(w), jnp.asarray(vals), normalize=False)
  got_m = compositing.masked_composite(jnp.asarray(w), jnp.asarray(vals), jnp.asarray(valid))
  for r in range(3):
    total = sum(w[r])
    raw = sum(w[r, i] * vals[r, i] for i in range(6))
    np.testing.assert_allclose(got_raw[r], raw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_n[r], raw / (total + 1e-6), rtol=1e-5, atol=1e-6)
    wm = [w[r, i] * valid[r, i] for i in range(6)]
    np.testing.assert_allclose(
        got_m[r], sum(wm[i] * vals[r, i] for i in range(6)) / (sum(wm) + 1e-6),
        rtol=1e-5, atol=1e-6)
  depth = compositing.expected_depth(jnp.asarray(w), jnp.asarray(vals[..., 0]))
  np.testing.assert_allclose(depth, got_n[:, 0], rtol=1e-6)
  bg = compositing.over_background(got_n[:, :3], compositing.opacity(jnp.asarray(w)), 1.0)
  np.testing.assert_allclose(bg, got_raw[:, :3] + (1 - w.sum(-1, keepdims=True)),
                             rtol=1e-4, atol=1e-5)


def test_detached_composite_blocks_weight_gradient():
  w = jnp.asarray([[0.2, 0.5, 0.1]])
  v = jnp.asarray([[1.0, 2.0, 3.0]])
  g = jax.grad(lambda w: compositing.composite(w, v, detach_weights=True).sum())(w)
  np.testing.assert_array_equal(g, 0.0)


def test_compositing_check_grads():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    sdf = jnp.asarray(rng.normal(0, 0.3, (2, 7)))
    deltas = jnp.asarray(rng.uniform(0.05, 0.2, (2, 7)))
    vals = jnp.asarray(rng.normal(size=(2, 7, 3)))

    def render(sdf, beta, vals):
      w, _ = compositing.alpha_weights(density.volsdf_density(sdf, beta), deltas)
      return compositing.composite(w, vals), compositing.opacity(w)

    check_grads(render, (sdf, jnp.float64(0.1), vals), order=1, modes=("fwd", "rev"))


def test_uniform_depths_and_ray_points():
  nf = jnp.asarray([[1.0, 3.0], [0.5, 0.9]])
  d = sampling.uniform_depths(nf, 5)
  np.testing.assert_allclose(d[0], [1.0, 1.5, 2.0, 2.5, 3.0], rtol=1e-6)
  np.testing.assert_allclose(d[1], np.linspace(0.5, 0.9, 5), rtol=1e-6)
  dirs = jnp.asarray([[0.3, -0.4, 1.0], [0.0, 0.0, 1.0]])
  pts, deltas = sampling.ray_points(dirs, d)
  chex.assert_shape(pts, (2, 5, 3))
  np.testing.assert_allclose(pts[0, 2], 2.0 * np.array([0.3, -0.4, 1.0]), rtol=1e-6)
  for r in range(2):
    for i in range(5):
      j = min(i, 3)
      np.testing.assert_allclose(deltas[r, i], np.linalg.norm(pts[r, j + 1] - pts[r, j]),
                                 rtol=1e-5)


def test_stratified_depths_stay_in_their_intervals():
  d = sampling.uniform_depths(jnp.asarray([[1.0, 2.0]]), 6)
  s = sampling.stratified_depths(jax.random.PRNGKey(3), d)
  mids = np.concatenate([[1.0], 0.5 * (d[0, 1:] + d[0, :-1]), [2.0]])
  assert np.all(s[0] >= mids[:-1]) and np.all(s[0] <= mids[1:])


def test_sample_pdf_matches_reference():
  rng = np.random.default_rng(4)
  bins = np.sort(rng.uniform(0, 5, (3, 8)), axis=-1)
  weights = rng.uniform(0, 1, (3, 7))
  weights[1] = 0.0  # degenerate: uniform after eps
  weights[2, :5] = 0.0  # mass only at the end
  got = sampling.sample_pdf(jnp.asarray(bins, jnp.float32), jnp.asarray(weights, jnp.float32), 11)
  np.testing.assert_allclose(got, ref_sample_pdf(bins, weights, 11), rtol=1e-4, atol=1e-4)


def test_importance_depths_concentrate_near_surface():
  d = sampling.uniform_depths(jnp.asarray([[1.0, 3.0]]), 32)
  sdf = 2.0 - d  # surface at depth 2
  w, _ = compositing.alpha_weights(density.volsdf_density(sdf, 0.02),
                                   sampling.ray_points(jnp.asarray([[0.0, 0.0, 1.0]]), d)[1])
  merged = sampling.importance_depths(d, w, 32)
  chex.assert_shape(merged, (1, 64))
  assert np.all(np.diff(np.asarray(merged[0])) >= 0)
  extra = np.setdiff1d(np.round(np.asarray(merged[0]), 6), np.round(np.asarray(d[0]), 6))
  assert np.median(np.abs(extra - 2.0)) < 0.1
