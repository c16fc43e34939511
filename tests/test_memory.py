"""Memory and speed levers of the train step: rematerialised field chunks, bfloat16 products.

References: the same computation in one piece (chunks), NumPy float64 products of the
bf16-rounded operands (narrow matmul, both layouts), the samples-first layout (feature-major).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import init
from animdreamer_jax.model import mlp
from animdreamer_jax.render import settings as render_settings
from animdreamer_jax.render import warp_render as wr


def small_mlp(params, x, a):
  """A per-row function of two inputs (rows independent), like the canonical field."""
  h = jnp.tanh(x @ params["w0"] + a * params["b0"])
  return {"out": h @ params["w1"], "norm": jnp.sum(h * h, -1)}


def mlp_params(key, width=8, dtype=jnp.float32):
  k0, k1, k2 = jax.random.split(key, 3)
  return {"w0": jax.random.normal(k0, (3, width), dtype),
          "b0": jax.random.normal(k1, (width,), dtype),
          "w1": jax.random.normal(k2, (width, 2), dtype)}


@pytest.mark.parametrize("chunk", [None, 5, 8, 37, 100])
def test_remat_chunks_equal_one_call_values_and_gradients(chunk):
  params = mlp_params(jax.random.PRNGKey(0))
  x = jax.random.normal(jax.random.PRNGKey(1), (37, 3))
  a = jax.random.normal(jax.random.PRNGKey(2), (37, 1))

  def loss(fn, p, x):
    out = fn(p, x)
    return jnp.sum(out["out"] ** 2) + jnp.sum(jnp.sin(out["norm"]))

  whole = lambda p, x: small_mlp(p, x, a)
  chunked = lambda p, x: wr.in_remat_chunks(functools.partial(small_mlp, p), chunk, x, a)
  want, got = whole(params, x), jax.jit(chunked)(params, x)
  for key in want:  # 37 rows in pieces of 5 / 8 pads the last piece: padding is cut off
    np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=key)
  g_want = jax.grad(functools.partial(loss, whole), argnums=(0, 1))(params, x)
  g_got = jax.jit(jax.grad(functools.partial(loss, chunked), argnums=(0, 1)))(params, x)
  for w, g in zip(jax.tree_util.tree_leaves(g_want), jax.tree_util.tree_leaves(g_got)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_remat_chunks_gradients_by_finite_differences():
  with jax.enable_x64(True):
    params = mlp_params(jax.random.PRNGKey(3), dtype=jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(4), (11, 3), jnp.float64)
    a = jnp.ones((11, 1), jnp.float64)
    fn = lambda p, x: wr.in_remat_chunks(functools.partial(small_mlp, p), 4, x, a)["out"]
    check_grads(fn, (params, x), order=2, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_remat_chunks_cut_the_compiled_backward_memory():
  """XLA's buffer assignment of a 4-layer, 256-wide MLP's gradient on 32768 rows."""
  key = jax.random.PRNGKey(5)
  ws = [jax.random.normal(k, (256 if i else 3, 256)) * 0.05
        for i, k in enumerate(jax.random.split(key, 4))]
  x = jax.random.normal(key, (32768, 3))

  def field(ws, x):
    h = x
    for w in ws:
      h = jax.nn.relu(h @ w)
    return jnp.sum(h, -1)

  def temp_bytes(chunk):
    loss = lambda ws: jnp.sum(wr.in_remat_chunks(functools.partial(field, ws), chunk, x) ** 2)
    return jax.jit(jax.grad(loss)).lower(ws).compile().memory_analysis().temp_size_in_bytes

  whole, chunked = temp_bytes(None), temp_bytes(4096)
  activation = 32768 * 256 * 4  # one layer's activations, bytes
  assert whole >= 3 * activation  # the layers' activations are kept for the backward pass
  assert chunked < whole / 4


def tiny_model(**changes):
  return am.ArticulatedModel(am.tiny_config(video_lengths=(4,), **changes))


def test_chunked_render_equals_the_whole_render():
  model = tiny_model()
  variables = init.init_variables(model, 0)
  uv = jnp.asarray(np.random.default_rng(0).uniform(0, 15, (2, 5, 2)), jnp.float32)
  frames, partners = jnp.array([0, 3]), jnp.array([3, 0])

  def render(variables, chunk):
    return wr.render_rays(model, variables, uv, frames, partners, near_far=jnp.array([0.2, 3.0]),
                          options=wr.RenderOptions(num_samples=12, eikonal_rays=2,
                                                   field_chunk=chunk))

  def loss(variables, chunk):
    out = render(variables, chunk)
    return (jnp.sum(out["rgb"]) + jnp.sum(out["opacity"]) + 0.01 * jnp.sum(out["flow"])
            + jnp.sum(out["feature"]) + jnp.sum(out["vis"]))

  whole = jax.jit(functools.partial(render, chunk=None))(variables)
  chunked = jax.jit(functools.partial(render, chunk=16))(variables)  # 120 samples: 8 pieces
  for key in ("rgb", "opacity", "depth", "flow", "feature", "vis", "cyc_dist", "sdf"):
    np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
  g_whole = jax.jit(jax.grad(functools.partial(loss, chunk=None)))(variables)
  g_chunked = jax.jit(jax.grad(functools.partial(loss, chunk=16)))(variables)
  flat_w = jax.tree_util.tree_leaves_with_path(g_whole)
  for (path, w), c in zip(flat_w, jax.tree_util.tree_leaves(g_chunked)):
    np.testing.assert_allclose(c, w, rtol=1e-4, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def bf16_round(a) -> np.ndarray:
  return np.asarray(jnp.asarray(a, jnp.float32).astype(jnp.bfloat16).astype(jnp.float32),
                    np.float64)


def layer_operands(seed: int, channels_first: bool = False):
  """x (2, 9, 16), a per-frame code c (2, 1, 4), kernels, bias, output gradient g (2, 9, 5);
  channels moved to the front when channels_first."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(2, 9, 16)).astype(np.float32)
  c = rng.normal(size=(2, 1, 4)).astype(np.float32)
  k, kc = rng.normal(size=(16, 5)).astype(np.float32), rng.normal(size=(4, 5)).astype(np.float32)
  b = rng.normal(size=(5,)).astype(np.float32)
  g = rng.normal(size=(2, 9, 5)).astype(np.float32)
  if channels_first:
    x, c, g = (np.ascontiguousarray(np.moveaxis(a, -1, 0)) for a in (x, c, g))
  return x, c, k, kc, b, g


def test_narrow_dense_and_its_gradients_against_rounded_float64_products():
  """Two inputs, one broadcast along the rows (a per-frame code), and a bias."""
  x, c, k, kc, b, g = layer_operands(6)
  fn = lambda x, c, k, kc, b: mlp.narrow_dense((x, c), (k, kc), b, jnp.dtype(jnp.bfloat16))
  y, vjp = jax.vjp(fn, x, c, k, kc, b)
  dx, dc, dk, dkc, db = vjp(jnp.asarray(g))
  assert all(a.dtype == jnp.float32 for a in (y, dx, dc, dk, dkc, db))
  assert dc.shape == c.shape
  xr, cr, kr, kcr, gr = map(bf16_round, (x, c, k, kc, g))
  np.testing.assert_allclose(y, xr @ kr + cr @ kcr + b, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, gr @ kr.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dc, (gr @ kcr.T).sum(1, keepdims=True), rtol=1e-5, atol=1e-4)
  # The kernel gradients are float32 products (XLA:CPU has no fast bf16 form of them).
  np.testing.assert_allclose(dk, np.einsum("abi,abj->ij", x, g), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dkc, np.einsum("ai,abj->ij", c[:, 0], g), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(db, gr.sum((0, 1)), rtol=1e-5, atol=1e-4)
  # ... and they are not the float32 products (the rounding is real).
  assert np.max(np.abs(np.asarray(y) - (x.astype(np.float64) @ k + c @ kc + b))) > 1e-3


def test_feature_major_dense_and_its_gradients_against_rounded_float64_products():
  """The channels-first layer: two inputs, one broadcast along the rows, and a bias."""
  x, c, k, kc, b, g = layer_operands(16, channels_first=True)
  fn = lambda x, c, k, kc, b: mlp.feature_major_dense((x, c), (k, kc), b, jnp.dtype(jnp.bfloat16))
  y, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(x, c, k, kc, b)
  dx, dc, dk, dkc, db = vjp(jnp.asarray(g))
  assert y.shape == (5, 2, 9) and dc.shape == c.shape
  assert all(a.dtype == jnp.float32 for a in (y, dx, dc, dk, dkc, db))
  xr, cr, kr, kcr, gr = map(bf16_round, (x, c, k, kc, g))
  g_c = bf16_round(g.sum(2, keepdims=True))  # the broadcast input's gradient, summed first
  np.testing.assert_allclose(y, np.einsum("irs,id->drs", xr, kr)
                             + np.einsum("irs,id->drs", cr, kcr) + b[:, None, None],
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, np.einsum("id,drs->irs", kr, gr), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dc, np.einsum("id,drs->irs", kcr, gr).sum(2, keepdims=True),
                             rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dk, np.einsum("irs,drs->id", xr, gr), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(dkc, np.einsum("irs,drs->id", cr, g_c), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(db, gr.sum((1, 2)), rtol=1e-5, atol=1e-4)
  assert np.max(np.abs(np.asarray(dk) - np.einsum("irs,drs->id", x, g))) > 1e-4  # rounded
  with pytest.raises(ValueError, match="one rank"):
    mlp.feature_major_dense((x, c[:, 0]), (k, kc), b, jnp.dtype(jnp.bfloat16))


def test_feature_major_dense_in_float32_passes_gradient_checks():
  """With float32 products the layer is exact: finite differences, first and second order."""
  rng = np.random.default_rng(17)
  x = jnp.asarray(rng.normal(size=(6, 7)), jnp.float32)
  c = jnp.asarray(rng.normal(size=(3, 1)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(6, 4)), jnp.float32)
  kc = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  fn = lambda x, c, k, kc, b: jnp.tanh(mlp.feature_major_dense((x, c), (k, kc), b,
                                                               jnp.dtype(jnp.float32)))
  check_grads(fn, (x, c, k, kc, b), order=2, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_feature_major_mlp_equals_the_samples_first_mlp():
  """Same parameters, same function: feature_major only changes the layout."""
  rng = np.random.default_rng(18)
  x = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  cond = jnp.asarray(rng.normal(size=(2, 1, 3)), jnp.float32)
  scale = jnp.asarray(rng.uniform(size=(7,)), jnp.float32)
  net = mlp.MLP(3, 8, 4, (2,))
  variables = net.init(jax.random.PRNGKey(3), x, cond, scale)
  fm = lambda a: jnp.moveaxis(a, -1, 0)
  want = net.apply(variables, x, cond, scale)
  got = net.apply(variables, fm(x), fm(cond), scale, feature_major=True)
  np.testing.assert_allclose(jnp.moveaxis(got, 0, -1), want, rtol=1e-5, atol=1e-5)
  loss = lambda v, f: jnp.sum(jnp.sin(f(v)))
  g_want = jax.grad(loss)(variables, lambda v: net.apply(v, x, cond, scale))
  g_got = jax.grad(loss)(variables, lambda v: net.apply(v, fm(x), fm(cond), scale,
                                                        feature_major=True))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g_want),
                          jax.tree_util.tree_leaves(g_got)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("num_freqs", [-1, 0, 3])
def test_feature_major_fourier_features_are_the_transposed_encoding(num_freqs):
  from animdreamer_jax.model import encoding
  x = jnp.asarray(np.random.default_rng(19).normal(size=(2, 5, 3)), jnp.float32)
  got = encoding.fourier_features_feature_major(x, num_freqs)
  want = encoding.fourier_features(x, num_freqs)
  assert got.shape == (want.shape[-1],) + x.shape[:-1]
  np.testing.assert_array_equal(np.moveaxis(np.asarray(got), 0, -1), want)


def test_bf16_train_step_compiles_and_runs():
  """XLA:CPU rejects some bf16 dot forms at run time; the trainer's own step must not make one."""
  from animdreamer_jax.bench import step as bench_step
  built = bench_step.build_step("tiny", 64, 8, field_chunk=256, matmul_dtype="bfloat16")
  state, metrics = built.compiled(built.state, built.data, built.scalars)
  assert np.isfinite(float(metrics["loss"]))


def test_bf16_layers_have_the_float32_layers_parameters():
  x = jnp.ones((3, 7))
  for layer in (mlp.TorchDense, mlp.MLP):
    args = (4,) if layer is mlp.TorchDense else (2, 8, 4, (1,))
    p32 = layer(*args).init(jax.random.PRNGKey(0), x)
    p16 = layer(*args, matmul_dtype="bfloat16").init(jax.random.PRNGKey(0), x)
    assert jax.tree_util.tree_structure(p32) == jax.tree_util.tree_structure(p16)
    for a, b in zip(jax.tree_util.tree_leaves(p32), jax.tree_util.tree_leaves(p16)):
      np.testing.assert_array_equal(a, b)


def test_narrow_products_differentiate_twice_like_float32():
  """The eikonal term differentiates a spatial gradient: second order through the products."""
  cfg = dict(video_lengths=(4,))
  f32 = am.ArticulatedModel(am.tiny_config(**cfg))
  bf16 = am.ArticulatedModel(am.tiny_config(matmul_dtype="bfloat16", **cfg))
  params = init.init_variables(f32, 1)
  points = jnp.asarray(np.random.default_rng(7).normal(0, 0.3, (64, 3)), jnp.float32)

  def eikonal_grad(model):
    def eikonal(variables):
      sdf_fn = lambda x: model.apply(variables, x, 0.6, method="sdf")
      _, grad = wr.sdf_and_gradient(sdf_fn, points)
      return jnp.sum(wr.eikonal_term(grad))
    return jax.jit(jax.value_and_grad(eikonal))(params)

  (v32, g32), (v16, g16) = eikonal_grad(f32), eikonal_grad(bf16)
  assert abs(float(v16) - float(v32)) < 0.02 * abs(float(v32))
  a = np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(g32)])
  b = np.concatenate([np.ravel(l) for l in jax.tree_util.tree_leaves(g16)])
  assert np.linalg.norm(a - b) < 0.05 * np.linalg.norm(a)
  assert np.linalg.norm(a - b) > 0  # the bf16 path really ran


def test_bf16_canonical_field_runs_its_products_in_bf16_and_stays_close():
  f32, bf16 = tiny_model(), tiny_model(matmul_dtype="bfloat16")
  variables = init.init_variables(f32, 2)
  x = jnp.asarray(np.random.default_rng(8).normal(0, 0.3, (32, 3)), jnp.float32)
  fields = lambda model: model.apply(variables, x, method="canonical")
  jaxpr = str(jax.make_jaxpr(lambda: fields(bf16))())
  assert "bf16" in jaxpr and "bf16" not in str(jax.make_jaxpr(lambda: fields(f32))())
  want, got = fields(f32), fields(bf16)
  for key in ("sdf", "rgb", "feature"):
    assert got[key].dtype == jnp.float32
    np.testing.assert_allclose(got[key], want[key], atol=3e-2, err_msg=key)


def test_bad_memory_settings_are_one_clear_error():
  with pytest.raises(UserError, match="model.matmul_dtype"):
    am.ModelConfig.from_dict({"matmul_dtype": "float16"})
  with pytest.raises(UserError, match="render.field_chunk"):
    render_settings.RenderSettings(field_chunk=-1)
  options = render_settings.RenderSettings(field_chunk=0).options()
  assert options.field_chunk is None
  assert render_settings.RenderSettings().image_options().field_chunk is None
  assert dataclasses.replace(render_settings.RenderSettings(), field_chunk=64).options(
  ).field_chunk == 64
