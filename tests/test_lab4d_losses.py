"""Loss functions against slow, obvious NumPy references written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from animdreamer_jax.losses import lab4d_losses as losses
from animdreamer_jax.render import warp_render

jax.config.update("jax_enable_x64", False)


def ref_mean_over_positive(v):
  v = np.asarray(v, np.float64).ravel()
  pos = v[v > 0]
  return pos.mean() if pos.size else 0.0


def ref_balance(mask, valid):
  # lab4d get_mask_balance_wt, written as loops.
  mask = np.asarray(mask, np.float64)
  valid = np.asarray(valid, np.float64)
  if mask.sum() > 0 and (1 - mask).sum() > 0:
    total = valid.sum()
    npos = sum(m for m, v in zip(mask.ravel(), valid.ravel()) if v > 0)
    nneg = sum(1 - m for m, v in zip(mask.ravel(), valid.ravel()) if v > 0)
    return 0.5 * total / npos * mask + 0.5 * total / nneg * (1 - mask)
  return np.ones_like(mask)


def _rng(seed=0):
  return np.random.default_rng(seed)


def test_mean_over_positive_matches_boolean_indexing():
  v = _rng().uniform(-1, 1, (5, 7)).clip(0)
  np.testing.assert_allclose(losses.mean_over_positive(jnp.asarray(v)), ref_mean_over_positive(v),
                             rtol=1e-6)
  assert float(losses.mean_over_positive(jnp.zeros(4))) == 0.0


def test_mask_balance_weight():
  rng = _rng(1)
  mask = (rng.uniform(size=(4, 9)) > 0.7).astype(np.float32)
  valid = (rng.uniform(size=(4, 9)) > 0.2).astype(np.float32)
  np.testing.assert_allclose(losses.mask_balance_weight(jnp.asarray(mask), jnp.asarray(valid)),
                             ref_balance(mask, valid), rtol=1e-5)
  # All foreground: every pixel weighs 1.
  np.testing.assert_allclose(losses.mask_balance_weight(jnp.ones((3, 3))), np.ones((3, 3)))
  # Balanced weights give each class half of the total weight.
  w = np.asarray(losses.mask_balance_weight(jnp.asarray(mask)))
  np.testing.assert_allclose((w * mask).sum(), (w * (1 - mask)).sum(), rtol=1e-5)


def test_silhouette_loss():
  rng = _rng(2)
  opacity = rng.uniform(size=(3, 16))
  mask = (rng.uniform(size=(3, 16)) > 0.5).astype(np.float32)
  valid = (rng.uniform(size=(3, 16)) > 0.1).astype(np.float32)
  ref = ref_mean_over_positive((opacity - mask) ** 2 * ref_balance(mask, valid) * valid)
  got = losses.silhouette_loss(jnp.asarray(opacity), jnp.asarray(mask), jnp.asarray(valid))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  check_grads(lambda o: losses.silhouette_loss(o, jnp.asarray(mask), jnp.asarray(valid)),
              (jnp.asarray(opacity, jnp.float32),), order=1, modes=("rev",), atol=1e-2, rtol=1e-2)


def test_rgb_depth_feature_flow_reprojection():
  rng = _rng(3)
  n, k, c = 4, 10, 16
  fg = (rng.uniform(size=(n, k)) > 0.4).astype(np.float32)
  rgb, rgb_t = rng.uniform(size=(2, n, k, 3))
  ref_rgb = ref_mean_over_positive((rgb - rgb_t) ** 2 * fg[..., None])
  np.testing.assert_allclose(losses.rgb_loss(jnp.asarray(rgb), jnp.asarray(rgb_t), jnp.asarray(fg)),
                             ref_rgb, rtol=1e-5)

  d, d_t = rng.uniform(1, 2, size=(2, n, k))
  np.testing.assert_allclose(losses.depth_loss(jnp.asarray(d), jnp.asarray(d_t), jnp.asarray(fg)),
                             ref_mean_over_positive(np.abs(d - d_t) * fg), rtol=1e-5)

  f, f_t = rng.normal(size=(2, n, k, c))
  ref_feat = ref_mean_over_positive(np.sqrt(((f - f_t) ** 2).sum(-1)) * fg)
  np.testing.assert_allclose(losses.feature_loss(jnp.asarray(f), jnp.asarray(f_t), jnp.asarray(fg)),
                             ref_feat, rtol=1e-5)

  flow, flow_t = rng.normal(scale=5, size=(2, n, k, 2))
  valid = rng.uniform(-1, 1, size=(n, k))
  ref_flow = ref_mean_over_positive(
      np.sqrt(((flow - flow_t) ** 2).sum(-1)) * (valid > 0) * fg / 128.0)
  got = losses.flow_loss(jnp.asarray(flow), jnp.asarray(flow_t), jnp.asarray(valid), jnp.asarray(fg), 128.0)
  np.testing.assert_allclose(got, ref_flow, rtol=1e-5)
  check_grads(lambda x: losses.flow_loss(x, jnp.asarray(flow_t), jnp.asarray(valid), jnp.asarray(fg), 128.0),
              (jnp.asarray(flow, jnp.float32),), order=1, modes=("fwd", "rev"), atol=1e-2, rtol=1e-2)

  ref_rep = ref_mean_over_positive(np.sqrt(((flow - flow_t) ** 2).sum(-1)) * fg / 64.0)
  np.testing.assert_allclose(
      losses.reprojection_loss(jnp.asarray(flow), jnp.asarray(flow_t), jnp.asarray(fg), 64.0), ref_rep,
      rtol=1e-5)


def test_flow_loss_gradient_finite_at_zero_error():
  flow = jnp.zeros((1, 2, 2))
  g = jax.grad(lambda x: losses.flow_loss(x, flow, jnp.ones((1, 2)), jnp.ones((1, 2)), 1.0))(flow)
  assert np.all(np.isfinite(np.asarray(g)))


def test_soft_argmax_match_against_loop():
  rng = _rng(4)
  q = rng.normal(size=(2, 3, 8))
  cf = rng.normal(size=(5, 8))
  cx = rng.normal(size=(5, 3))
  valid = np.array([True, False, True, True, False])
  log_t = 0.3
  ref = np.zeros((2, 3, 3))
  for i in range(2):
    for j in range(3):
      s = np.array([q[i, j] @ cf[m] * np.exp(log_t) if valid[m] else -np.inf for m in range(5)])
      p = np.exp(s - s.max())
      p /= p.sum()
      ref[i, j] = (p[:, None] * cx).sum(0)
  got = losses.soft_argmax_match(jnp.asarray(q), jnp.asarray(cf), jnp.asarray(cx), jnp.float32(log_t),
                                 jnp.asarray(valid))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  # Gradient w.r.t. the candidate features and the temperature.
  check_grads(lambda f, t: losses.soft_argmax_match(jnp.asarray(q, jnp.float32), f,
                                                    jnp.asarray(cx, jnp.float32), t),
              (jnp.asarray(cf, jnp.float32), jnp.float32(log_t)), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2)


def test_cycle_and_eikonal():
  rng = _rng(5)
  cyc = rng.uniform(size=(6, 8))
  w = rng.uniform(size=(6, 8))
  ref = ref_mean_over_positive((w / w.sum(-1, keepdims=True) * cyc).sum(-1))
  np.testing.assert_allclose(losses.cycle_loss(jnp.asarray(cyc), jnp.asarray(w)), ref, rtol=1e-5)
  # The weights are detached: no gradient reaches them.
  g = jax.grad(lambda ww: losses.cycle_loss(jnp.asarray(cyc), ww))(jnp.asarray(w))
  np.testing.assert_allclose(g, 0.0)

  grad = rng.normal(size=(6, 8, 3))
  term = (np.linalg.norm(grad, axis=-1) - 1) ** 2
  np.testing.assert_allclose(warp_render.eikonal_term(jnp.asarray(grad)), term, rtol=1e-5)
  ray_mask = np.array([1, 0, 1, 0, 0, 1])
  ref_e = ref_mean_over_positive(term.mean(-1) * ray_mask)
  np.testing.assert_allclose(losses.eikonal_loss(jnp.asarray(term), jnp.asarray(ray_mask)), ref_e, rtol=1e-5)


def test_skinning_regularisers():
  rng = _rng(6)
  logits = rng.normal(size=(4, 5, 7))
  ref = np.zeros((4, 5))
  for i in range(4):
    for j in range(5):
      p = np.exp(logits[i, j] - logits[i, j].max())
      p /= p.sum()
      ref[i, j] = -np.log(p[np.argmax(logits[i, j])])
  np.testing.assert_allclose(losses.skin_entropy(jnp.asarray(logits)), ref, rtol=1e-5)
  np.testing.assert_allclose(losses.skin_entropy_loss(jnp.asarray(ref)), ref.mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.delta_skin_loss(jnp.asarray(ref)), ref.mean(), rtol=1e-6)


def test_gauss_skin_consistency_and_gauss_mask():
  rng = _rng(7)
  dens = rng.uniform(0.01, 0.99, size=64)
  occ = rng.uniform(size=64)
  eps = 1e-6
  bce = -(occ * np.log(dens) + (1 - occ) * np.log(1 - dens))
  ref = (bce * ref_balance((occ > 0.5).astype(float), np.ones(64))).mean()
  np.testing.assert_allclose(losses.gauss_skin_consistency_loss(jnp.asarray(dens), jnp.asarray(occ)), ref,
                             rtol=1e-5)
  # The occupancy is a target: no gradient.
  g = jax.grad(lambda o: losses.gauss_skin_consistency_loss(jnp.asarray(dens), o))(jnp.asarray(occ))
  np.testing.assert_allclose(g, 0.0)
  del eps
  gm, op = rng.uniform(size=(2, 3, 5))
  np.testing.assert_allclose(losses.gauss_mask_loss(jnp.asarray(gm), jnp.asarray(op)),
                             ref_mean_over_positive((gm - op) ** 2), rtol=1e-5)


def test_camera_prior():
  rng = _rng(8)
  a, b = rng.normal(size=(2, 5, 4, 4))
  np.testing.assert_allclose(losses.camera_prior_loss(jnp.asarray(a), jnp.asarray(b)),
                             ((a - b) ** 2).mean(), rtol=1e-5)


@pytest.mark.parametrize("fn", [losses.rgb_loss])
def test_jit_and_shapes(fn):
  x = jnp.ones((2, 3, 3))
  out = jax.jit(fn)(x, x * 0.5, jnp.ones((2, 3)))
  assert out.shape == ()
  np.testing.assert_allclose(out, 0.25)
