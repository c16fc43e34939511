"""MultiViewUNet: goldens from the PyTorch diffusers reference, NumPy references, multi-view properties.

The goldens (tests/data/mvdream/unet_tiny.npz, made by tests/tools/make_unet_goldens.py) hold no weights:
the LDM-named weights are rebuilt from their names by the generator's torch-free helpers, converted with
`prior.convert.convert_unet_state`, and the JAX outputs are compared with the stored torch outputs.
"""

from __future__ import annotations

import importlib.util
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from animdreamer_jax.prior import camera_embedding
from animdreamer_jax.prior.attention import chunked_dot_product_attention, dot_product_attention
from animdreamer_jax.prior.convert import convert_unet_state
from animdreamer_jax.prior.unet import (BasicTransformerBlock3D, MultiViewUNet, UNetConfig,
                                        timestep_embedding, unet_param_shapes)


def load_tool(repo_root, name):
  spec = importlib.util.spec_from_file_location(name, repo_root / "tests" / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tool(repo_root):
  return load_tool(repo_root, "make_unet_goldens")


@pytest.fixture(scope="module")
def golden(repo_root, tool):
  g = dict(np.load(repo_root / "tests" / "data" / "mvdream" / tool.GOLDEN_FILE))
  g["config"] = UNetConfig.from_dict(json.loads(str(g["config_json"])))
  state = tool.golden_ldm_state(g["ldm_names"], tool.golden_shapes(g))
  g["params"], _, _ = convert_unet_state(state, config=g["config"])
  return g


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (the error relative to the output's scale)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def random_params(shapes, rng: np.random.Generator) -> dict:
  """float32 N(0, 1/fan_in) kernels, 1 + N(0, 0.2^2) norm scales, N(0, 0.2^2) biases: no path is zero."""
  def draw(path, leaf):
    name = path[-1].key
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1]))
      return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(np.float32)
    offset = 1.0 if name == "scale" else 0.0
    return (offset + 0.2 * rng.standard_normal(leaf.shape)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(draw, shapes)


# On CPU, compiling a UNet costs far more than running it; LLVM optimisation level 0 halves the compile
# time and leaves the float semantics (no fast-math either way) unchanged.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def run_compiled(fn, *args):
  """jit(fn) compiled for these arguments with FAST_COMPILE, then run."""
  return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


# --- goldens (torch-free) -------------------------------------------------------------------------------


def test_golden_fp32_eps_and_input_vjp(golden):
  """fp32 eps and d<eps, cotangent>/dx match diffusers' PyTorch UNet (reached: ~2e-6 relative)."""
  g = golden
  model = MultiViewUNet(g["config"])

  def eps_and_vjp(params, x, cotangent):
    def f(x):
      return model.apply({"params": params}, x, g["timesteps"], g["context"], g["camera"],
                         num_views=int(g["num_views"]))
    eps, vjp = jax.vjp(f, x)
    return eps, vjp(cotangent)[0]

  eps, vjp_x = run_compiled(eps_and_vjp, g["params"], g["x"], g["cotangent"])
  chex.assert_shape(eps, g["eps"].shape)
  assert np.abs(g["eps"]).std() > 0.1  # the golden is not degenerate
  assert relative_error(eps, g["eps"]) < 2e-5
  assert relative_error(vjp_x, g["vjp_x"]) < 2e-5


def test_golden_bf16_within_stated_bound(golden):
  """bf16 activations (fp32 params, norms, softmax): within 6e-2 of the fp32 torch output (reached ~2.4e-2)."""
  g = golden
  model = MultiViewUNet(g["config"], dtype=jnp.bfloat16)
  eps = run_compiled(lambda p: model.apply({"params": p}, g["x"], g["timesteps"], g["context"],
                                           g["camera"], num_views=int(g["num_views"])), g["params"])
  assert eps.dtype == jnp.float32
  err = relative_error(eps, g["eps"])
  assert 1e-4 < err < 6e-2  # really ran in bf16, and stays close


def test_golden_torch_float32_agrees_with_float64(golden):
  """The stored reference itself is converged: torch fp32 vs fp64 differ by < 1e-5 relative."""
  assert relative_error(golden["eps"], golden["eps_float64"]) < 1e-5


# --- NumPy references -----------------------------------------------------------------------------------


def test_timestep_embedding_closed_form():
  t = np.array([0, 1, 17, 500, 999], np.float64)
  dim = 320
  out = np.asarray(timestep_embedding(jnp.asarray(t), dim))
  expected = np.zeros((len(t), dim))
  for row, step in enumerate(t):
    for i in range(dim // 2):
      freq = math.exp(-math.log(10000.0) * i / (dim // 2))
      expected[row, i] = math.cos(step * freq)
      expected[row, dim // 2 + i] = math.sin(step * freq)
  np.testing.assert_allclose(out, expected, atol=2e-4)  # fp32 arguments up to 999 rad


def _np_layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _np_attention(x, context, p, heads):
  """Loop over heads: softmax(q k^T / sqrt(d)) v, then to_out."""
  q, k, v = x @ p["to_q"]["kernel"], context @ p["to_k"]["kernel"], context @ p["to_v"]["kernel"]
  d = q.shape[-1] // heads
  out = np.zeros_like(q)
  for h in range(heads):
    sl = slice(h * d, (h + 1) * d)
    logits = q[:, sl] @ k[:, sl].T / math.sqrt(d)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    out[:, sl] = (w / w.sum(-1, keepdims=True)) @ v[:, sl]
  return out @ p["to_out.0"]["kernel"] + p["to_out.0"]["bias"]


def _np_transformer_block(p, x, context, num_views, heads):
  """MVDream BasicTransformerBlock3D in float64: attn1 over each object's F*L tokens, the rest per view."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  x = np.asarray(x, np.float64).copy()
  context = np.asarray(context, np.float64)
  n, length, channels = x.shape
  normed = _np_layer_norm(x, p["norm1"])
  for obj in range(n // num_views):
    views = slice(obj * num_views, (obj + 1) * num_views)
    tokens = normed[views].reshape(num_views * length, channels)
    x[views] += _np_attention(tokens, tokens, p["attn1"], heads).reshape(num_views, length, channels)
  for i in range(n):
    x[i] += _np_attention(_np_layer_norm(x[i], p["norm2"]), context[i], p["attn2"], heads)
  for i in range(n):
    h = _np_layer_norm(x[i], p["norm3"]) @ p["ff"]["net.0"]["proj"]["kernel"] + p["ff"]["net.0"]["proj"]["bias"]
    value, gate = np.split(h, 2, axis=-1)
    h = value * 0.5 * gate * (1 + erf(gate / math.sqrt(2)))
    x[i] += h @ p["ff"]["net.2"]["kernel"] + p["ff"]["net.2"]["bias"]
  return x


def test_chunked_attention_matches_plain_values_and_gradients():
  rng = np.random.default_rng(5)
  q, k, v, cotangent = (rng.standard_normal(s).astype(np.float32)
                        for s in [(2, 12, 3, 8), (2, 7, 3, 8), (2, 7, 3, 8), (2, 12, 3, 8)])

  def pulled_back(attention):
    out, vjp = jax.vjp(attention, q, k, v)
    return (out,) + vjp(cotangent)

  plain = run_compiled(lambda: pulled_back(dot_product_attention))
  for chunk in (4, 6, 5):  # 3 blocks, 2 blocks, and a size that falls back to the plain form
    chunked = run_compiled(lambda: pulled_back(lambda *a: chunked_dot_product_attention(*a, chunk)))
    for got, want in zip(chunked, plain):
      assert relative_error(got, want) < 1e-6


@pytest.mark.parametrize("num_views", [1, 3])
def test_transformer_block_matches_numpy(num_views):
  """num_views=1: ordinary per-image self-attention; num_views=3: joint attention over the views."""
  heads, head_dim, n, length = 2, 16, 6, 5
  block = BasicTransformerBlock3D(heads, head_dim, num_views)
  rng = np.random.default_rng(3)
  x = rng.standard_normal((n, length, heads * head_dim)).astype(np.float32)
  context = rng.standard_normal((n, 4, 24)).astype(np.float32)
  params = random_params(jax.eval_shape(block.init, jax.random.PRNGKey(0), x, context)["params"], rng)
  out = run_compiled(lambda p: block.apply({"params": p}, x, context), params)
  expected = _np_transformer_block(params, x, context, num_views, heads)
  assert relative_error(out, expected) < 1e-5


# --- multi-view properties on a small UNet --------------------------------------------------------------

SMALL = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2, 1),
                   num_head_channels=16, context_dim=32)
VIEWS = 4


@pytest.fixture(scope="module")
def small():
  rng = np.random.default_rng(0)
  params = random_params(unet_param_shapes(SMALL), rng)
  n = 2 * VIEWS
  inputs = dict(x=rng.standard_normal((n, 8, 8, 4)).astype(np.float32),
                timesteps=np.repeat(np.array([700.0, 80.0], np.float32), VIEWS),
                context=np.repeat(rng.standard_normal((2, 5, 32)).astype(np.float32), VIEWS, 0),
                camera=np.concatenate([camera_embedding.orbit_cameras(VIEWS, 15.0, 90.0),
                                       camera_embedding.orbit_cameras(VIEWS, 25.0, 10.0)]))
  return params, inputs


_COMPILED = {}


def small_apply(params, x, timesteps, context, camera, num_views, remat=False, fused=False):
  """The small UNet, compiled once per (shapes, num_views, remat, fused, camera or not)."""
  def fn(params, x, timesteps, context, camera):
    model = MultiViewUNet(SMALL, remat=remat, fused_attention=fused)
    return model.apply({"params": params}, x, timesteps, context, camera, num_views=num_views)

  args = (params, x, timesteps, context, camera)
  key = (x.shape, num_views, remat, fused, camera is None)
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)
  return np.asarray(_COMPILED[key](*args))


def test_one_view_is_per_image(small):
  """num_views=1: each image is processed alone (ordinary self-attention), so batching changes nothing."""
  params, inp = small
  batched = small_apply(params, **inp, num_views=1)
  pairs = {k: v[[5, 0]] for k, v in inp.items()}  # two images from different objects, swapped
  alone = small_apply(params, **pairs, num_views=1)
  assert relative_error(alone, batched[[5, 0]]) < 1e-5


def test_views_interact_within_an_object_only(small):
  params, inp = small
  base = small_apply(params, **inp, num_views=VIEWS)
  x = inp["x"].copy()
  x[VIEWS] += 1.0  # view 0 of object 1
  moved = small_apply(params, **{**inp, "x": x}, num_views=VIEWS)
  assert relative_error(moved[:VIEWS], base[:VIEWS]) < 1e-5  # object 0 untouched
  for view in range(1, VIEWS):  # the other views of object 1 see the change through attn1
    assert relative_error(moved[VIEWS + view], base[VIEWS + view]) > 1e-3
  single = small_apply(params, **inp, num_views=1)
  assert relative_error(single, base) > 1e-3  # joint attention differs from per-view attention


def test_permuting_views_and_cameras_permutes_outputs(small):
  params, inp = small
  base = small_apply(params, **inp, num_views=VIEWS)
  perm = np.concatenate([[2, 0, 3, 1], VIEWS + np.array([1, 3, 2, 0])])
  out = small_apply(params, **{k: v[perm] for k, v in inp.items()}, num_views=VIEWS)
  assert relative_error(out, base[perm]) < 1e-5


def test_camera_changes_output(small):
  params, inp = small
  base = small_apply(params, **inp, num_views=VIEWS)
  camera = np.asarray(inp["camera"]).copy()
  camera[0] = np.asarray(camera_embedding.orbit_cameras(1, 40.0, 200.0))[0]
  moved = small_apply(params, **{**inp, "camera": camera}, num_views=VIEWS)
  for view in range(VIEWS):  # view 0 directly, the others through attn1
    assert relative_error(moved[view], base[view]) > 1e-3
  assert relative_error(moved[VIEWS:], base[VIEWS:]) < 1e-5
  no_camera = small_apply(params, **{**inp, "camera": None}, num_views=VIEWS)
  assert relative_error(no_camera, base) > 1e-3


@pytest.mark.slow
def test_remat_and_fused_attention_match(small):
  """Remat per block and query-chunked attention change nothing in value or input gradient; fused attention
  is the same maths."""
  params, inp = small

  def grad_fn(remat, chunk=0):
    def loss(x):
      model = MultiViewUNet(SMALL, remat=remat, attention_query_chunk=chunk)
      out = model.apply({"params": params}, x, inp["timesteps"], inp["context"], inp["camera"],
                        num_views=VIEWS)
      return jnp.sum(out * jnp.cos(out))
    return jax.value_and_grad(loss)

  value, grad = run_compiled(grad_fn(False), inp["x"])
  value_remat, grad_remat = run_compiled(grad_fn(True), inp["x"])
  assert relative_error(value_remat, value) < 1e-5
  assert relative_error(grad_remat, grad) < 1e-5
  value_chunk, grad_chunk = run_compiled(grad_fn(True, chunk=64), inp["x"])  # 4 views x 64 tokens
  assert relative_error(value_chunk, value) < 1e-5
  assert relative_error(grad_chunk, grad) < 1e-5
  fused = small_apply(params, **inp, num_views=VIEWS, fused=True)
  assert relative_error(fused, small_apply(params, **inp, num_views=VIEWS)) < 1e-5


def test_batch_not_multiple_of_views_is_rejected(small):
  params, inp = small
  with pytest.raises(ValueError, match="num_views"):
    jax.eval_shape(lambda p: MultiViewUNet(SMALL).apply({"params": p}, *(v[:6] for v in inp.values()),
                                                        num_views=4), params)


# --- cameras ----------------------------------------------------------------------------------------------


def _np_get_camera(num_views, elevation, azimuth_start):
  """MVDream get_camera(blender_coord=True), written out independently (float64)."""
  out = []
  for k in range(num_views):
    e, a = math.radians(elevation), math.radians(azimuth_start + k * 360.0 / num_views)
    pos = np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    fwd = -pos
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -fwd], axis=1)
    c2w[:3, 3] = pos
    to_z_up = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
    out.append((to_z_up @ c2w).ravel())
  return np.stack(out)


def test_orbit_cameras_match_mvdream_get_camera():
  for elevation, start in [(15.0, 90.0), (0.0, 0.0), (-20.0, 33.0)]:
    np.testing.assert_allclose(np.asarray(camera_embedding.orbit_cameras(4, elevation, start)),
                               _np_get_camera(4, elevation, start), atol=1e-6)


def test_camera_from_opencv_w2c_matches_orbit():
  """An OpenCV look-at camera (y-up world) at distance 2.7 gives MVDream's orbit vector (distance dropped)."""
  elevation, start, views = 15.0, 90.0, 4
  w2cs = []
  for k in range(views):
    e, a = math.radians(elevation), math.radians(start + k * 90.0)
    centre = 2.7 * np.array([math.cos(e) * math.sin(a), math.sin(e), math.cos(e) * math.cos(a)])
    z = -centre / np.linalg.norm(centre)  # OpenCV: z forward
    x = np.cross(z, [0.0, 1.0, 0.0])  # x right (right-handed with y down)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = rot, -rot @ centre
    w2cs.append(w2c)
  cams = np.asarray(camera_embedding.camera_from_w2c(np.stack(w2cs)))
  np.testing.assert_allclose(cams, _np_get_camera(views, elevation, start), atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(cams.reshape(-1, 4, 4)[:, :3, 3], axis=-1), 1.0, atol=1e-6)


# --- live PyTorch reference (optional extra) ------------------------------------------------------------


@pytest.mark.parity
def test_live_torch_reference_matches_goldens_and_jax(tool, golden):
  """Regenerates the reference with torch + diffusers: same names, same outputs, and JAX still agrees."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  live = tool.generate()
  assert list(live["ldm_names"]) == list(golden["ldm_names"])
  assert list(live["diffusers_names"]) == list(golden["diffusers_names"])
  assert relative_error(live["eps"], golden["eps"]) < 1e-5
  assert relative_error(live["vjp_x"], golden["vjp_x"]) < 1e-5
  model = MultiViewUNet(golden["config"])
  eps = run_compiled(lambda p: model.apply({"params": p}, live["x"], live["timesteps"], live["context"],
                                           live["camera"], num_views=int(live["num_views"])),
                     golden["params"])
  assert relative_error(eps, live["eps"]) < 2e-5
