"""Tests of the noise schedule, epsilon parameterisation, CFG and DDIM (animdreamer_jax.prior.{schedule,
guidance,ddim})."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.prior import ddim, guidance, schedule


@pytest.fixture(scope="module")
def alphas_cumprod():
  return schedule.make_alphas_cumprod()


def test_alphas_cumprod_closed_form(alphas_cumprod):
  """alpha_bar_t = prod_{s<=t} (1 - beta_s), beta_s = (sqrt(b0) + s/(T-1) (sqrt(b1) - sqrt(b0)))^2."""
  chex.assert_shape(alphas_cumprod, (1000,))
  assert alphas_cumprod.dtype == np.float32
  lo, hi = math.sqrt(0.00085), math.sqrt(0.012)
  product, expected = 1.0, []
  for s in range(1000):
    product *= 1.0 - (lo + s * (hi - lo) / 999) ** 2
    expected.append(product)
  np.testing.assert_allclose(alphas_cumprod, expected, rtol=2e-7)
  assert alphas_cumprod[0] == np.float32(1 - 0.00085)
  assert 0.0046 < alphas_cumprod[-1] < 0.0047  # SD's well-known final alpha_bar (~0.00466)
  assert np.all(np.diff(alphas_cumprod) < 0)


def test_eps_parameterisation(alphas_cumprod):
  rng = np.random.default_rng(0)
  x0 = rng.standard_normal((3, 4, 4, 2)).astype(np.float32)
  noise = rng.standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 500, 999])
  x_t = schedule.q_sample(x0, t, noise, alphas_cumprod)
  a = alphas_cumprod[t].astype(np.float64)[:, None, None, None]
  np.testing.assert_allclose(x_t, np.sqrt(a) * x0 + np.sqrt(1 - a) * noise, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(schedule.predict_x0_from_eps(x_t, t, noise, alphas_cumprod), x0,
                             rtol=1e-4, atol=2e-4)
  np.testing.assert_allclose(schedule.predict_eps_from_x0(x_t, t, x0, alphas_cumprod), noise,
                             rtol=1e-4, atol=2e-4)


def test_ddim_timesteps():
  np.testing.assert_array_equal(ddim.ddim_timesteps(50), np.arange(1, 1000, 20))
  sched = ddim.make_ddim_schedule(schedule.make_alphas_cumprod(), 50)
  assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
  np.testing.assert_array_equal(sched.sigmas, 0)
  with pytest.raises(ValueError):
    ddim.ddim_timesteps(0)


def _slow_ddim(eps_fn, x, alphas_cumprod, num_steps, eta, noises):
  """LDM's DDIMSampler written out in float64: uniform steps + 1, a_prev = a[0] at the end."""
  ac = np.asarray(alphas_cumprod, np.float64)
  c = 1000 // num_steps
  steps = list(range(0, 1000, c))
  steps = [s + 1 for s in steps]
  x = np.asarray(x, np.float64)
  for i, t in enumerate(reversed(steps)):
    index = len(steps) - 1 - i
    a_t = ac[steps[index]]
    a_prev = ac[steps[index - 1]] if index > 0 else ac[0]
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    e_t = np.asarray(eps_fn(x.astype(np.float32), np.int32(t)), np.float64)
    pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
    x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma**2) * e_t + sigma * noises[i]
  return x


def _toy_eps(x, t):
  """A smooth, time-dependent stand-in for the UNet."""
  return 0.5 * jnp.tanh(x) + 0.3 * jnp.cos(t / 200.0) * x


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_sampler_matches_slow_reference(alphas_cumprod, eta):
  steps = 10
  key = jax.random.PRNGKey(4)
  x_T = jax.random.normal(jax.random.PRNGKey(5), (2, 4, 4, 3))
  sched = ddim.make_ddim_schedule(alphas_cumprod, steps, eta=eta)
  out_scan = jax.jit(lambda x, k: ddim.ddim_sample(_toy_eps, x, sched, k))(x_T, key)
  out_loop = ddim.ddim_sample_loop(_toy_eps, x_T, sched, key)
  keys = jax.random.split(key, steps)
  noises = [np.asarray(jax.random.normal(k, x_T.shape), np.float64) for k in keys]
  ref = _slow_ddim(_toy_eps, x_T, alphas_cumprod, steps, eta, noises)
  np.testing.assert_allclose(out_scan, ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out_loop, out_scan, rtol=1e-5, atol=1e-5)


def test_ddim_recovers_point_mass(alphas_cumprod):
  """Data = one point x0: the exact eps keeps eps fixed, and DDIM (eta 0) lands on
  sqrt(a_0) x0 + sqrt(1 - a_0) eps, a_0 = alpha_bar[0] being the final 'previous' alpha."""
  x0 = jnp.array([[0.7, -1.2, 0.1]])
  eps0 = jnp.array([[0.3, 0.9, -1.5]])
  sched = ddim.make_ddim_schedule(alphas_cumprod, 25)
  x_T = schedule.q_sample(x0, jnp.array([sched.timesteps[0]]), eps0, alphas_cumprod)

  def exact_eps(x, t):
    return schedule.predict_eps_from_x0(x, t[None], x0, alphas_cumprod)

  out = ddim.ddim_sample(exact_eps, x_T, sched)
  a0 = alphas_cumprod[0]
  np.testing.assert_allclose(out, np.sqrt(a0) * x0 + np.sqrt(1 - a0) * eps0, rtol=1e-4, atol=1e-4)


def test_ddim_step_returns_x0(alphas_cumprod):
  x = jnp.ones((1, 2)) * 0.4
  eps = jnp.array([[0.2, -0.1]])
  a, a_prev = alphas_cumprod[501], alphas_cumprod[481]
  x_prev, x0 = ddim.ddim_step(x, eps, a, a_prev, 0.0)
  np.testing.assert_allclose(x0, schedule.predict_x0_from_eps(x, jnp.array([501]), eps, alphas_cumprod),
                             rtol=1e-5)
  np.testing.assert_allclose(x_prev, np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps, rtol=1e-5)
  with pytest.raises(ValueError, match="PRNG key"):
    ddim.ddim_sample(_toy_eps, x, ddim.make_ddim_schedule(alphas_cumprod, 4, eta=0.5))


def test_classifier_free_guidance():
  rng = np.random.default_rng(1)
  u, c = rng.standard_normal((2, 4, 3, 3, 4)).astype(np.float32)
  np.testing.assert_allclose(guidance.classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u), rtol=1e-5)
  np.testing.assert_allclose(guidance.classifier_free_guidance(u, c, 1.0), c, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guidance.classifier_free_guidance(u, c, 0.0), u)
  both = np.concatenate([u, c])
  first, second = guidance.split_guidance_batch(both)
  np.testing.assert_array_equal(first, u)
  np.testing.assert_array_equal(second, c)
  first, second = guidance.split_guidance_batch(both, uncond_first=False)
  np.testing.assert_array_equal(first, c)


def test_rescale_to_cond_std():
  """Per object (4 views): out = r * s_c/s_g * g + (1 - r) g, with torch's unbiased std (same ratio)."""
  rng = np.random.default_rng(2)
  g = (3.0 * rng.standard_normal((8, 2, 2, 4))).astype(np.float32)
  c = rng.standard_normal((8, 2, 2, 4)).astype(np.float32)
  out = guidance.rescale_to_cond_std(g, c, 0.5, group_size=4)
  expected = np.empty_like(g, dtype=np.float64)
  for obj in range(2):
    sl = slice(4 * obj, 4 * obj + 4)
    factor = (np.std(c[sl], ddof=1) + 1e-8) / (np.std(g[sl], ddof=1) + 1e-8)
    expected[sl] = 0.5 * factor * g[sl] + 0.5 * g[sl]
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  np.testing.assert_allclose(guidance.rescale_to_cond_std(g, c, 0.0, 4), g, rtol=1e-6)
  full = guidance.rescale_to_cond_std(g, c, 1.0, 4)
  np.testing.assert_allclose(np.std(full[:4]), np.std(c[:4]), rtol=1e-5)
  with pytest.raises(ValueError):
    guidance.rescale_to_cond_std(g, c, 0.5, group_size=3)


@pytest.mark.parity
def test_schedule_matches_diffusers(alphas_cumprod):
  pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear")
  # diffusers builds the betas in float32, we in float64 (as LDM): agreement to float32 rounding.
  np.testing.assert_allclose(alphas_cumprod, ddpm.alphas_cumprod.numpy(), rtol=2e-6)


@pytest.mark.parity
@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_matches_diffusers(alphas_cumprod, eta):
  torch = pytest.importorskip("torch")
  diffusers = pytest.importorskip("diffusers")
  sch = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear", clip_sample=False,
                                set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")
  steps = 50
  sch.set_timesteps(steps)
  ours = ddim.make_ddim_schedule(alphas_cumprod, steps, eta=eta)
  np.testing.assert_array_equal(sch.timesteps.numpy(), ours.timesteps)
  key = jax.random.PRNGKey(6)
  x_T = jax.random.normal(jax.random.PRNGKey(7), (2, 4, 4, 3))
  keys = jax.random.split(key, steps)
  x = torch.from_numpy(np.asarray(x_T).copy())
  for i, t in enumerate(sch.timesteps):
    eps = torch.from_numpy(np.array(_toy_eps(jnp.asarray(x.numpy()), jnp.int32(int(t)))))
    noise = torch.from_numpy(np.array(jax.random.normal(keys[i], x_T.shape)))
    x = sch.step(eps, t, x, eta=eta, variance_noise=noise if eta > 0 else None).prev_sample
  out = ddim.ddim_sample(_toy_eps, x_T, ours, key)
  np.testing.assert_allclose(out, x.numpy(), rtol=1e-4, atol=1e-4)
