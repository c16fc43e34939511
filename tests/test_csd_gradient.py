"""CSD gradient: vs the analytic chain rule and finite differences, parameter groups,
patch-wise back-propagation, pixel subsets, the schedule; the loss-term form (a surrogate
in the one train step) against the explicit-vjp reference.

The model is the tiny ArticulatedModel with parameters drawn in NumPy from its
`eval_shape` structure (Flax's eager init compiles hundreds of tiny programs).
Renders are 3 x 3 pixels x 4 views; one jitted function per configuration.
"""

from __future__ import annotations

import math

import flax
import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import gradient
from animdreamer_jax.csd import priors
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.csd import term as csd_term
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax.prior import schedule as schedule_lib
from animdreamer_jax.render import warp_render

RES = 3
NUM_FRAMES = 4
T_FRACTION = 0.5  # t_min = t_max: t = 500 exactly
T_INDEX = 500
ABAR = schedule_lib.make_alphas_cumprod()
AABB = jnp.array([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]], jnp.float32)


def _numpy_params(model, seed=0):
  """Random parameters with the model's structure (kernels ~ N(0, 1/fan_in))."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.int32(0))
  rng = np.random.default_rng(seed)
  special = {"log_gauss": math.log(0.3), "logibeta": -math.log(0.1),
             "bone_logibeta": -math.log(0.05), "logsigma": 0.0,
             "base_logfocal": 0.0, "base_ppoint": 0.0}

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in special:
      return np.full(leaf.shape, special[name], np.float32)
    if name == "base_quat":
      return np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0], np.float32), leaf.shape).copy()
    if name.startswith("kernel"):
      return (rng.normal(size=leaf.shape) / math.sqrt(leaf.shape[0])).astype(np.float32)
    return (0.1 * rng.normal(size=leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module")
def tiny():
  config = articulated_model.tiny_config(video_lengths=(NUM_FRAMES,))
  model = articulated_model.ArticulatedModel(config)
  return model, _numpy_params(model)


def _linear_prior():
  """eps = m x_t + c with prior_params {"m": (), "c": latents-shaped}; pixel space, no text."""
  def eps_fn(pp, noisy, t, text, cams):
    del t, text, cams
    return pp["m"] * noisy + pp["c"]
  return priors.function_prior(eps_fn, conditional=False, name="linear")


def _renderer(model, settings):
  return csd_term.make_view_renderer(model, warp_render.RenderOptions(num_samples=settings.num_samples))


def _make_fn(model, settings, groups):
  """jit f(params, prior_params) -> (grads, images, metrics) for a fixed camera draw."""
  render = _renderer(model, settings)
  prior = _linear_prior()

  @jax.jit
  def f(params, prior_params):
    mask = csd_term.param_group_mask(params, groups)
    cams = csd_term.draw_cameras(jax.random.PRNGKey(7), AABB, NUM_FRAMES, settings)
    return csd_term.csd_gradient(render, params, mask, prior, prior_params, cams, None,
                                 jax.random.PRNGKey(11), T_FRACTION, T_FRACTION, settings)
  return f


_SETTINGS = csd_settings.CsdSettings(resolution=RES, num_samples=8, mode="sds", guidance_scale=1.0,
                                     rescale=0.0)


@pytest.fixture(scope="module")
def canonical_fn(tiny):
  return _make_fn(tiny[0], _SETTINGS, "canonical")


@pytest.fixture(scope="module")
def fg_results(tiny):
  """(full vjp, patch-wise) results with the "fg" groups, same prior inputs."""
  model, params = tiny
  a = ABAR[T_INDEX]
  prior_params = {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)),
                  "c": jnp.full((4, RES, RES, 3), 0.3, jnp.float32)}
  fg_fn = _make_fn(model, _SETTINGS, "fg")
  full = fg_fn(params, prior_params)
  import dataclasses  # pylint: disable=g-import-not-at-top
  patched = _make_fn(model, dataclasses.replace(_SETTINGS, patches=3), "fg")(params, prior_params)
  return full, patched, fg_fn, prior_params


def _flat(tree):
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)["params"], sep="/")


def _leaf(flat, prefix, kind=""):
  """The first parameter path under `prefix` whose last name starts with `kind`
  (the model's exact layer names are not this test's business)."""
  for path in sorted(flat):
    if (path == prefix or path.startswith(prefix + "/")) and path.split("/")[-1].startswith(kind):
      return path
  raise KeyError(f"no parameter under {prefix!r} named {kind}*")


def _perturb(params, path, index, delta):
  flat = _flat(params)
  leaf = np.array(flat[path])
  leaf.reshape(-1)[index] += delta
  flat[path] = leaf
  return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


# ----------------------------------------------------------------------------
# The gradient.


def test_gradient_is_the_chain_rule_and_matches_finite_differences(tiny, canonical_fn):
  """Linear prior eps = x_t / sqrt(1 - a) + c: the latent gradient is noise-free,
  w(t) (sqrt(a / (1 - a)) z + c) / V, so dL/dI = 2 x that (z = 2 I - 1), and the
  parameter gradient is sum_pixels dL/dI dI/dtheta with dI/dtheta by central differences."""
  _, params = tiny
  a = float(ABAR[T_INDEX])
  c = np.random.default_rng(1).normal(size=(4, RES, RES, 3)).astype(np.float32) * 0.3
  prior_params = {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)), "c": jnp.asarray(c)}
  grads, images, metrics = jax.device_get(canonical_fn(params, prior_params))
  images = np.asarray(images, np.float64)
  assert images.shape == (4, RES, RES, 3)
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert float(metrics["csd_t"]) == T_INDEX
  z = 2.0 * images - 1.0
  dl_dz = (1.0 - a) * (math.sqrt(a / (1.0 - a)) * z + c) / 4.0
  dl_di = 2.0 * dl_dz
  assert float(metrics["csd_loss"]) == pytest.approx(
      0.5 * np.sum(((1.0 - a) * (math.sqrt(a / (1.0 - a)) * z + c)) ** 2) / 4.0, rel=1e-4)
  flat_g = _flat(grads)
  checked = 0
  # Per leaf, the coordinate with the largest gradient (float32 differences of
  # 3 x 3 renders resolve about 1e-4 absolute).
  leaves = [_leaf(flat_g, prefix, kind) for prefix, kind in (
      ("canonical/rgb_out", "bias"), ("canonical/sdf_head", "bias"),
      ("canonical/sdf_trunk", "bias"), ("canonical/sdf_trunk", "kernel"),
      ("canonical/color_mlp", "kernel"))]
  coords = [(path, int(np.argmax(np.abs(np.asarray(flat_g[path]))))) for path in leaves]
  for path, index in coords:
    def central(h):
      plus = canonical_fn(_perturb(params, path, index, h), prior_params)[1]
      minus = canonical_fn(_perturb(params, path, index, -h), prior_params)[1]
      return (np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) / (2 * h)
    # Richardson extrapolation of two central differences: O(h^4).
    di = (4 * central(5e-3) - central(1e-2)) / 3
    want = float(np.sum(dl_di * di))
    got = float(np.asarray(flat_g[path]).reshape(-1)[index])
    assert abs(want) > 5e-3, path  # the coordinate matters for these renders
    assert got == pytest.approx(want, rel=2e-3, abs=1e-4), path
    checked += 1
  assert checked == 5


def test_zero_when_the_prior_returns_the_injected_noise(tiny, canonical_fn):
  """eps = x_t / sqrt(1 - a) - sqrt(a / (1 - a)) z equals the injected noise for the
  current renders z, so the CSD gradient vanishes (up to rounding)."""
  _, params = tiny
  a = float(ABAR[T_INDEX])
  m = jnp.float32(1.0 / math.sqrt(1.0 - a))
  zeros = jnp.zeros((4, RES, RES, 3), jnp.float32)
  reference, images, _ = canonical_fn(params, {"m": m, "c": zeros})
  z = 2.0 * images - 1.0
  c = (-math.sqrt(a / (1.0 - a)) * z).astype(jnp.float32)
  grads, _, metrics = canonical_fn(params, {"m": m, "c": c})
  ref_max = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(reference))
  got_max = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads))
  assert ref_max > 1e-3
  assert got_max <= 1e-5 * ref_max + 1e-9
  assert float(metrics["csd_loss"]) < 1e-10


def test_canonical_groups_only(tiny, canonical_fn):
  _, params = tiny
  a = float(ABAR[T_INDEX])
  grads, _, _ = canonical_fn(params, {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)),
                                      "c": jnp.full((4, RES, RES, 3), 0.3, jnp.float32)})
  mask = _flat(csd_term.param_group_mask(params, "canonical"))
  for path, g in _flat(grads).items():
    g = np.asarray(g)
    if mask[path]:
      continue
    assert np.all(g == 0.0), path  # exactly zero outside the groups
  flat = _flat(grads)
  for prefix in ("canonical/sdf_trunk", "canonical/sdf_head", "canonical/rgb_out",
                 "canonical/color_mlp"):
    path = _leaf(flat, prefix, "kernel")
    assert np.abs(np.asarray(flat[path])).max() > 0, path
  assert all(np.all(np.asarray(g) == 0) for p, g in flat.items() if p.startswith("bones/"))


def test_fg_groups_reach_bones_and_skinning(tiny, fg_results):
  """Bone, Gaussian-scale, delta-skinning and appearance leaves get gradient (checked against
  central differences of the renders, as in the canonical test); the rest is exactly zero."""
  _, params = tiny
  (grads, images, _), _, fg_fn, prior_params = fg_results
  a = float(ABAR[T_INDEX])
  dl_di = 2.0 * (1.0 - a) * (math.sqrt(a / (1.0 - a)) * (2.0 * np.asarray(images, np.float64) - 1.0)
                             + 0.3) / 4.0
  flat = _flat(grads)
  for path in (_leaf(flat, "bones", "bias"), "log_gauss"):
    index = int(np.argmax(np.abs(np.asarray(flat[path]))))

    def central(h):
      plus = fg_fn(_perturb(params, path, index, h), prior_params)[1]
      minus = fg_fn(_perturb(params, path, index, -h), prior_params)[1]
      return (np.asarray(plus, np.float64) - np.asarray(minus, np.float64)) / (2 * h)
    want = float(np.sum(dl_di * (4 * central(5e-3) - central(1e-2)) / 3))
    got = float(np.asarray(flat[path]).reshape(-1)[index])
    assert abs(want) > 1e-3, path
    assert got == pytest.approx(want, rel=5e-3, abs=1e-4), path
  mask = _flat(csd_term.param_group_mask(params, "fg"))
  for prefix in ("bones", "log_gauss", "delta_mlp", "delta_time", "canonical/sdf_head",
                 "appearance"):
    reached = [p for p in flat if p == prefix or p.startswith(prefix + "/")]
    assert max(np.abs(np.asarray(flat[p])).max() for p in reached) > 0, prefix
  for path, g in flat.items():
    if not mask[path]:
      assert np.all(np.asarray(g) == 0.0), path
  assert not any(m for p, m in mask.items() if p.startswith(("root_pose/", "intrinsics/",
                                                             "canonical/feature_mlp/")))


def test_patchwise_equals_the_full_vjp(fg_results):
  (full_g, full_im, full_m), (patch_g, patch_im, patch_m) = fg_results[:2]
  np.testing.assert_allclose(np.asarray(patch_im), np.asarray(full_im), rtol=1e-6, atol=1e-7)
  assert float(patch_m["csd_loss"]) == pytest.approx(float(full_m["csd_loss"]), rel=1e-6)
  for path, g in _flat(full_g).items():
    scale = float(np.abs(np.asarray(g)).max()) + 1e-12
    np.testing.assert_allclose(np.asarray(_flat(patch_g)[path]), np.asarray(g),
                               rtol=1e-4, atol=1e-5 * scale, err_msg=path)


def _subset_fn(model, settings, groups):
  """jit f(params, prior_params, pixels or None) -> csd_gradient with the cameras' pixels."""
  render = _renderer(model, settings)
  prior = _linear_prior()

  def f(params, prior_params, pixels):
    mask = csd_term.param_group_mask(params, groups)
    cams = csd_term.draw_cameras(jax.random.PRNGKey(7), AABB, NUM_FRAMES, settings)
    cams = cams._replace(pixels=pixels)
    return csd_term.csd_gradient(render, params, mask, prior, prior_params, cams, None,
                                 jax.random.PRNGKey(11), T_FRACTION, T_FRACTION, settings)
  return jax.jit(f)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_pixel_subsets_average_to_the_full_view_gradient(tiny, reduction):
  """A pixel-separable prior judged on disjoint subsets that tile every view: the subset
  gradients (reduction 'sum' scaled by R^2 / P) average to the full views' gradient,
  canonical and bone leaves alike (the estimator is unbiased), and each subset renders
  exactly the full render's pixels."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  model, params = tiny
  a = ABAR[T_INDEX]
  prior_params = {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)), "c": jnp.float32(0.3)}
  settings = dataclasses.replace(_SETTINGS, reduction=reduction)
  fn = _subset_fn(model, settings, "fg")
  full_g, full_im, _ = fn(params, prior_params, None)
  order = np.random.default_rng(5).permutation(RES * RES)
  parts = order.reshape(3, RES * RES // 3)  # 3 subsets of 3 pixels per view
  total = None
  for part in parts:
    pixels = np.stack([part % RES, part // RES], -1)
    pixels = jnp.asarray(np.broadcast_to(pixels, (4,) + pixels.shape), jnp.int32)
    g, im, _ = fn(params, prior_params, pixels)
    assert im.shape == (4, 1, part.size, 3)
    np.testing.assert_allclose(np.asarray(im)[:, 0],
                               np.asarray(full_im).reshape(4, -1, 3)[:, part], atol=1e-6)
    total = g if total is None else jax.tree_util.tree_map(jnp.add, total, g)
  mean = jax.tree_util.tree_map(lambda x: x / len(parts), total)
  flat_full, flat_mean = _flat(full_g), _flat(mean)
  for path in (_leaf(flat_full, "canonical/sdf_head", "bias"), _leaf(flat_full, "bones", "bias"),
               "log_gauss"):
    scale = float(np.abs(np.asarray(flat_full[path])).max())
    assert scale > 0, path
    np.testing.assert_allclose(np.asarray(flat_mean[path]), np.asarray(flat_full[path]),
                               rtol=1e-4, atol=1e-5 * scale, err_msg=path)


def test_sample_pixels_are_distinct_in_range_and_uniform():
  pixels = np.asarray(gradient.sample_pixels(jax.random.PRNGKey(3), 8, 4, 20))
  assert pixels.shape == (4, 20, 2) and pixels.dtype == np.int32
  assert pixels.min() >= 0 and pixels.max() < 8
  for view in pixels:
    assert len({tuple(p) for p in view}) == 20  # without replacement
  assert not np.array_equal(pixels[0], pixels[1])  # each view draws its own
  draws = np.asarray(jax.vmap(lambda k: gradient.sample_pixels(k, 4, 1, 8))(
      jax.random.split(jax.random.PRNGKey(4), 2000)))
  counts = np.bincount((draws[..., 1] * 4 + draws[..., 0]).reshape(-1), minlength=16)
  np.testing.assert_allclose(counts / counts.sum(), 1 / 16, atol=0.01)  # 16000 draws


def test_pixel_subsets_need_a_pixel_separable_prior(tiny):
  model, _ = tiny
  settings = csd_settings.CsdSettings(prior="oracle", resolution=4, pixels_per_view=5)
  whole_images = priors.function_prior(lambda pp, x, t, c, cams: x, conditional=False)
  with pytest.raises(UserError, match="pixels_per_view"):
    csd_term.make_csd_term(settings, whole_images, NUM_FRAMES, _renderer(model, _SETTINGS))
  with pytest.raises(UserError, match="pixels_per_view"):
    csd_settings.CsdSettings(resolution=4, pixels_per_view=17)
  with pytest.raises(UserError, match="patches"):
    csd_settings.CsdSettings(resolution=4, pixels_per_view=6, patches=4)


@pytest.mark.slow
def test_check_grads_of_render_through_the_warp(tiny):
  """jax.test_util.check_grads on theta -> <w, render o warp (theta)> for bone, skinning and
  canonical coordinates (the vjp CSD pulls its image gradient back through)."""
  model, params = tiny
  render = _renderer(model, _SETTINGS)
  flat = {k: jnp.asarray(v) for k, v in _flat(params).items()}
  bone_biases = sorted(p for p in flat if p.startswith("bones/") and p.endswith("bias"))
  paths = (bone_biases[0], bone_biases[-1], "log_gauss", _leaf(flat, "canonical/sdf_head", "bias"),
           _leaf(flat, "canonical/rgb_out", "bias"))
  counts = [min(3, int(np.size(flat[p]))) for p in paths]
  starts = [int(x) for x in np.cumsum([0] + counts)]
  theta0 = jnp.concatenate([jnp.ravel(flat[p])[:k] for p, k in zip(paths, counts)])
  weights = jnp.asarray(np.random.default_rng(5).normal(size=(4, RES * RES, 3)), jnp.float32)
  uv = gradient.image_pixels(RES, 4)
  cams = csd_term.draw_cameras(jax.random.PRNGKey(7), AABB, NUM_FRAMES, _SETTINGS)

  @jax.jit
  def f(theta):
    new = dict(flat)
    for i, p in enumerate(paths):
      piece = theta[starts[i]:starts[i + 1]]
      new[p] = jnp.ravel(flat[p]).at[:counts[i]].set(piece).reshape(flat[p].shape)
    p = {"params": flax.traverse_util.unflatten_dict(new, sep="/")}
    return jnp.sum(weights * render(p, cams, uv, None))

  jtu.check_grads(f, (theta0,), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


# ----------------------------------------------------------------------------
# CSD as a loss term: the surrogate's gradient is the explicit vjp.


def _term_gradient(model, params, settings, groups, prior_params):
  """Gradient and value of the CSD loss term (the train step's loss form) for a fixed key,
  with the same camera draw and prior randomness as `_make_fn`'s reference."""
  from animdreamer_jax.losses.term import StepContext  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  prior = _linear_prior()
  term = csd_term.make_csd_term(settings, prior, NUM_FRAMES, _renderer(model, settings))

  @jax.jit
  def f(params, prior_params):
    data = type("Data", (), {})()
    data.prior = {"params": prior_params, "text": None}
    mask = csd_term.param_group_mask(params, groups)
    kind = step_lib.StepKind("csd", (term,), trainable=mask)
    scalars = {"w_csd": jnp.float32(1.0), "csd_t_min": jnp.float32(T_FRACTION),
               "csd_t_max": jnp.float32(T_FRACTION), "alpha": jnp.float32(1.0)}
    ctx = StepContext(data=data, aux={"aabb": AABB}, scalars=scalars,
                      key=jax.random.PRNGKey(0), step=jnp.int32(0))

    def loss(p):
      return step_lib.total_loss(kind, step_lib._freeze(p, mask), ctx)  # pylint: disable=protected-access
    return jax.value_and_grad(loss, has_aux=True)(params)
  return f(params, prior_params)


@pytest.mark.parametrize("patches", [0, 3])
def test_loss_term_gradient_is_the_explicit_vjp(tiny, patches):
  """The CSD loss term inside the train step's loss (a surrogate injected into value_and_grad)
  has exactly the gradient of the explicit `jax.vjp` pull-back (`csd_gradient`) for the same
  views, timestep and noise, and its value is the CSD pseudo-loss; also patch by patch."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  model, params = tiny
  settings = dataclasses.replace(_SETTINGS, alpha=1.0, patches=patches)
  a = ABAR[T_INDEX]
  prior_params = {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)),
                  "c": jnp.asarray(np.random.default_rng(2).normal(size=(4, RES, RES, 3)) * 0.3,
                                   jnp.float32)}
  (value, metrics), grads = _term_gradient(model, params, settings, "fg", prior_params)
  # The term's key: fold_in(step key, term index 0), split into cameras and prior.
  k_cam, k_prior = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(0), 0))
  cams = csd_term.draw_cameras(k_cam, AABB, NUM_FRAMES, settings)
  mask = csd_term.param_group_mask(params, "fg")
  want, _, want_metrics = jax.jit(lambda p: csd_term.csd_gradient(
      _renderer(model, settings), p, mask, _linear_prior(), prior_params, cams, None, k_prior,
      T_FRACTION, T_FRACTION, settings))(params)
  assert float(value) == pytest.approx(float(want_metrics["csd_loss"]), rel=1e-6)
  assert float(metrics["csd_loss"]) == pytest.approx(float(want_metrics["csd_loss"]), rel=1e-6)
  flat_got, flat_want = _flat(grads), _flat(want)
  nonzero = 0
  for path, g in flat_want.items():
    scale = float(np.abs(np.asarray(g)).max()) + 1e-12
    np.testing.assert_allclose(np.asarray(flat_got[path]), np.asarray(g), rtol=1e-4,
                               atol=1e-5 * scale, err_msg=path)
    nonzero += scale > 1e-9
  assert nonzero > 5


# ----------------------------------------------------------------------------
# Latent gradient, guidance, reduction (no renderer).


def _cameras(n=4):
  return cameras_lib.sample_cameras(jax.random.PRNGKey(0), resolution=2, object_center=jnp.zeros(3),
                                    object_size=1.0, object_radius=0.8, frame=0, num_views=n)


def test_latent_gradient_sds_weighting():
  rng = np.random.default_rng(2)
  z = rng.normal(size=(4, 2, 2, 3)).astype(np.float32)
  noise = rng.normal(size=z.shape).astype(np.float32)
  prior = priors.function_prior(lambda pp, x, t, c, cams: 0.7 * x - 0.1, conditional=False)
  t = 321
  a = float(ABAR[t])
  x_t = math.sqrt(a) * z + math.sqrt(1 - a) * noise
  settings = csd_settings.CsdSettings(mode="sds", guidance_scale=50.0)
  got = gradient.latent_gradient(prior, None, jnp.asarray(z), jnp.asarray(noise), jnp.int32(t),
                                 _cameras(), None, settings)
  np.testing.assert_allclose(np.asarray(got), (1.0 - a) * (0.7 * x_t - 0.1 - noise), rtol=1e-5,
                             atol=1e-6)


def test_latent_gradient_cfg_batch_order_and_std_rescale():
  """Conditional prior eps = x_t * s + s / 10 with s = the context's first entry; cond
  context 2, uncond 1. Reference: CFG, x0 from eps, per-object population-std rescale."""
  rng = np.random.default_rng(3)
  z = rng.normal(size=(8, 2, 2, 4)).astype(np.float32)  # two objects x 4 views
  noise = rng.normal(size=z.shape).astype(np.float32)
  seen = {}

  def eps_fn(pp, x, t, ctx, cams):
    seen["batch"] = x.shape[0]
    seen["cams"] = cams.w2c.shape[0]
    s = ctx[:, 0, 0][:, None, None, None]
    return x * s + s / 10.0

  prior = priors.function_prior(eps_fn, conditional=True)
  cond, uncond = jnp.full((5, 6), 2.0), jnp.full((5, 6), 1.0)
  t, scale, rescale = 700, 7.5, 0.5
  a = float(ABAR[t])
  settings = csd_settings.CsdSettings(mode="recon", guidance_scale=scale, rescale=rescale)
  got = gradient.latent_gradient(prior, None, jnp.asarray(z), jnp.asarray(noise), jnp.int32(t),
                                 _cameras(8), (cond, uncond), settings)
  assert seen == {"batch": 16, "cams": 16}
  x_t = math.sqrt(a) * z.astype(np.float64) + math.sqrt(1 - a) * noise
  eps_c, eps_u = 2 * x_t + 0.2, 1 * x_t + 0.1
  eps = eps_u + scale * (eps_c - eps_u)
  x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
  x0_c = (x_t - math.sqrt(1 - a) * eps_c) / math.sqrt(a)
  want = np.empty_like(x0)
  for o in range(2):
    sl = slice(4 * o, 4 * o + 4)
    factor = (x0_c[sl].std() + 1e-8) / (x0[sl].std() + 1e-8)
    want[sl] = z[sl] - (rescale * factor * x0[sl] + (1 - rescale) * x0[sl])
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


def test_image_gradient_reduction_and_pixel_encoder():
  """Pixel prior: z = 2 I - 1, so dL/dI = 2 g / norm (norm = views or latent size)."""
  rng = np.random.default_rng(4)
  images = rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)
  a = float(ABAR[T_INDEX])
  m = 1.0 / math.sqrt(1 - a)
  prior = priors.function_prior(lambda pp, x, t, c, cams: m * x + 0.25, conditional=False)
  g = (1 - a) * (math.sqrt(a / (1 - a)) * (2 * images - 1) + 0.25)
  for reduction, norm in (("sum", 4.0), ("mean", float(images.size))):
    settings = csd_settings.CsdSettings(mode="sds", reduction=reduction)
    grad, metrics = gradient.image_gradient(prior, None, jnp.asarray(images), _cameras(), None,
                                            jax.random.PRNGKey(0), T_FRACTION, T_FRACTION, settings)
    np.testing.assert_allclose(np.asarray(grad), 2 * g / norm, rtol=2e-4, atol=1e-6)
    assert float(metrics["csd_loss"]) == pytest.approx(0.5 * np.sum(g * g) / norm, rel=1e-4)


def test_timestep_schedule():
  settings = csd_settings.CsdSettings(prior="oracle", anneal_fraction=0.8, weight=0.3)
  for step in (0, 10, 4000, 7999, 8000, 20000):
    lo, hi = csd_settings.timestep_fractions(settings, step, 10000)
    p = min(step / 8000, 1.0)
    assert lo == pytest.approx(0.98 + (0.02 - 0.98) * p)
    assert hi == pytest.approx(0.98 + (0.5 - 0.98) * p)
  s = csd_settings.scalars(settings, 8000, 9000)
  assert s["csd_t_min"] == pytest.approx(0.02)  # annealed over 0.8 x 9000 = 7200 steps
  assert s["csd_t_max"] == pytest.approx(0.5) and s["w_csd"] == pytest.approx(0.3)
  keys = jax.random.split(jax.random.PRNGKey(5), 4000)
  ts = np.asarray(jax.vmap(lambda k: gradient.sample_timestep(k, 0.02, 0.5, 1000))(keys))
  assert ts.min() == 20 and ts.max() == 500
  ts = np.asarray(jax.vmap(lambda k: gradient.sample_timestep(k, 0.98, 0.98, 1000))(keys[:10]))
  assert np.all(ts == 980)
  assert [csd_settings.is_csd_step(settings, i) for i in range(5)] == [True, False, True, False, True]
  assert not csd_settings.is_csd_step(csd_settings.CsdSettings(), 0)  # prior "none"


# ----------------------------------------------------------------------------
# Parameter groups, settings, the coarse-to-fine window.


def test_param_group_mask_presets_and_errors(tiny):
  _, params = tiny
  flat = _flat(csd_term.param_group_mask(params, "canonical"))
  for path, m in flat.items():
    want = any(path.startswith(g + "/") or path == g
               for g in articulated_model.CSD_DEFAULT_GROUPS)
    assert m == want, path
  custom = _flat(csd_term.param_group_mask(params, "canonical/rgb_out, log_gauss"))
  assert {p for p, m in custom.items() if m} == (
      {p for p in custom if p.startswith("canonical/rgb_out/")} | {"log_gauss"})
  with pytest.raises(UserError, match="param_groups"):
    csd_term.param_group_mask(params, "no_such_group")
  with pytest.raises(UserError, match="csd.mode"):
    csd_settings.CsdSettings(mode="dream")
  with pytest.raises(UserError, match="csd.patches"):
    csd_settings.CsdSettings(resolution=5, patches=4)
  with pytest.raises(UserError, match="csd.alpha"):
    csd_settings.CsdSettings(alpha=0.0)
  assert csd_settings.CsdSettings(num_samples=0).samples_per_ray(24) == 24


def test_csd_follows_the_reconstruction_coarse_to_fine_window(tiny):
  """With the reconstruction's alpha, CSD leaves the encoding bands that alpha switches
  off untouched (their first-layer kernel rows get exactly zero gradient); with all
  bands (alpha None) those rows do get gradient."""
  from animdreamer_jax.model import encoding  # pylint: disable=g-import-not-at-top
  model, params = tiny
  render = _renderer(model, _SETTINGS)
  prior = _linear_prior()
  a = ABAR[T_INDEX]
  prior_params = {"m": jnp.float32(1.0 / math.sqrt(1.0 - a)),
                  "c": jnp.full((4, RES, RES, 3), 0.3, jnp.float32)}

  @jax.jit
  def grads_at(params, alpha):
    mask = csd_term.param_group_mask(params, "canonical")
    cams = csd_term.draw_cameras(jax.random.PRNGKey(7), AABB, NUM_FRAMES, _SETTINGS)
    return csd_term.csd_gradient(render, params, mask, prior, prior_params, cams, None,
                                 jax.random.PRNGKey(11), T_FRACTION, T_FRACTION, _SETTINGS,
                                 alpha=alpha)[0]

  alpha = 0.4
  rows = np.asarray(encoding.fourier_row_scales(3, model.config.sdf_freqs, jnp.float32(alpha)))
  off = rows == 0
  assert off.any() and not off.all()
  windowed = _flat(grads_at(params, jnp.float32(alpha)))
  full = _flat(grads_at(params, None))
  first = _leaf(windowed, "canonical/sdf_trunk/hidden_0", "kernel")
  assert np.asarray(windowed[first]).shape[0] == off.size
  np.testing.assert_array_equal(np.asarray(windowed[first])[off], 0.0)
  assert np.abs(np.asarray(windowed[first])[~off]).max() > 0
  assert np.abs(np.asarray(full[first])[off]).max() > 0
  # The setting: < 0 follows the reconstruction's alpha, 1 = all bands, else a fixed one.
  scalars = {"alpha": jnp.float32(0.7)}
  assert float(csd_term.alpha_for_step(csd_settings.CsdSettings(), scalars)) == pytest.approx(0.7)
  assert csd_term.alpha_for_step(csd_settings.CsdSettings(alpha=1.0), scalars) is None
  assert float(csd_term.alpha_for_step(csd_settings.CsdSettings(alpha=0.5), scalars)) == 0.5
