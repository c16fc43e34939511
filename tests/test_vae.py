"""Tests of the SD VAE (animdreamer_jax.prior.vae).

Goldens: tests/data/mvdream/vae_tiny.npz from tests/tools/make_text_vae_goldens.py (diffusers' PyTorch
AutoencoderKL loaded from an LDM-named state dict through diffusers' `convert_ldm_vae_checkpoint`).
"""

from __future__ import annotations

import importlib.util
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from numpy.lib.stride_tricks import sliding_window_view

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import vae as V


@pytest.fixture(scope="module")
def tool(repo_root):
  spec = importlib.util.spec_from_file_location(
      "make_text_vae_goldens", repo_root / "tests" / "tools" / "make_text_vae_goldens.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def golden(repo_root):
  with np.load(repo_root / "tests" / "data" / "mvdream" / "vae_tiny.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def state(tool, golden):
  state = tool.ldm_vae_state()
  assert tool.weights_checksum(state) == pytest.approx(float(golden["weights_checksum"]), rel=1e-12), \
      "the weight recipe in make_text_vae_goldens.py changed; regenerate the goldens"
  return state


@pytest.fixture(scope="module")
def converted(state, golden):
  cfg = V.VaeConfig.from_dict(json.loads(str(golden["config"])))
  params, consumed = V.convert_vae_state(state, config=cfg)
  return cfg, params, consumed


def _encode(cfg, params, images):
  return V.encode_moments(params, images, cfg)


def _decode(cfg, params, z):
  return V.decode_latents(params, z * cfg.scale_factor, cfg)


def _relative_error(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


# --- slow float64 NumPy reference written from the LDM description (NCHW, torch layouts) ------------


class _NumpyVae:
  """LDM AutoencoderKL from the state dict: GroupNorm(32, 1e-6), SiLU, (0,1)-padded stride-2 downsample."""

  def __init__(self, state, cfg, prefix="first_stage_model."):
    self.s = {k[len(prefix):]: np.asarray(v, np.float64) for k, v in state.items()}
    self.cfg = cfg

  def conv(self, x, name, stride=1, pad=None):
    w, b = self.s[name + ".weight"], self.s[name + ".bias"]
    k = w.shape[-1]
    pad = (k // 2, k // 2) if pad is None else pad
    x = np.pad(x, ((0, 0), (0, 0), pad, pad))
    windows = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]

  def norm(self, x, name):
    n, c, h, w = x.shape
    g = x.reshape(n, 32, -1)
    g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + 1e-6)
    return g.reshape(n, c, h, w) * self.s[name + ".weight"][:, None, None] + \
        self.s[name + ".bias"][:, None, None]

  @staticmethod
  def silu(x):
    return x / (1 + np.exp(-x))

  def resblock(self, x, name):
    h = self.conv(self.silu(self.norm(x, name + ".norm1")), name + ".conv1")
    h = self.conv(self.silu(self.norm(h, name + ".norm2")), name + ".conv2")
    if name + ".nin_shortcut.weight" in self.s:
      x = self.conv(x, name + ".nin_shortcut")
    return x + h

  def attn(self, x, name):
    n, c, hh, ww = x.shape
    h = self.norm(x, name + ".norm")
    q, k, v = (self.conv(h, f"{name}.{p}").reshape(n, c, -1) for p in "qkv")
    logits = np.einsum("nci,ncj->nij", q, k) / np.sqrt(c)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("nij,ncj->nci", w, v).reshape(n, c, hh, ww)
    return x + self.conv(out, name + ".proj_out")

  def mid(self, x, name):
    return self.resblock(self.attn(self.resblock(x, name + ".block_1"), name + ".attn_1"),
                         name + ".block_2")

  def encode(self, images):
    cfg = self.cfg
    x = self.conv(images.transpose(0, 3, 1, 2), "encoder.conv_in")
    for i in range(len(cfg.channel_mult)):
      for j in range(cfg.num_res_blocks):
        x = self.resblock(x, f"encoder.down.{i}.block.{j}")
      if i != len(cfg.channel_mult) - 1:
        x = self.conv(np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1))),
                      f"encoder.down.{i}.downsample.conv", stride=2, pad=(0, 0))
    x = self.mid(x, "encoder.mid")
    x = self.conv(self.silu(self.norm(x, "encoder.norm_out")), "encoder.conv_out")
    moments = self.conv(x, "quant_conv").transpose(0, 2, 3, 1)
    mean, logvar = np.split(moments, 2, axis=-1)
    return mean, np.clip(logvar, -30, 20)

  def decode(self, z):
    cfg = self.cfg
    x = self.conv(self.conv(z.transpose(0, 3, 1, 2), "post_quant_conv"), "decoder.conv_in")
    x = self.mid(x, "decoder.mid")
    for i in reversed(range(len(cfg.channel_mult))):
      for j in range(cfg.num_res_blocks + 1):
        x = self.resblock(x, f"decoder.up.{i}.block.{j}")
      if i != 0:
        x = self.conv(x.repeat(2, axis=2).repeat(2, axis=3), f"decoder.up.{i}.upsample.conv")
    x = self.conv(self.silu(self.norm(x, "decoder.norm_out")), "decoder.conv_out")
    return x.transpose(0, 2, 3, 1)


# --- tests ------------------------------------------------------------------------------------------


def test_converter_consumes_every_key(state, converted):
  cfg, params, consumed = converted
  assert consumed == set(state)
  assert V.vae_config_from_state(state) == cfg
  model_shapes = jax.eval_shape(lambda: V.init_vae_params(cfg, jax.random.PRNGKey(0)))
  chex.assert_trees_all_equal_shapes(model_shapes, params)


def test_matches_diffusers_golden(golden, converted):
  cfg, params, _ = converted
  mean, logvar = _encode(cfg, params, golden["images"])
  chex.assert_shape([mean, logvar], (2, 8, 8, 4))
  decoded = _decode(cfg, params, golden["z"])
  chex.assert_shape(decoded, (2, 32, 32, 3))
  errors = [_relative_error(mean, golden["mean"]), _relative_error(logvar, golden["logvar"]),
            _relative_error(decoded, golden["decoded"])]
  assert max(errors) < 1e-4, errors  # measured ~1e-6..3e-6 (float32, CPU)


def test_matches_numpy_reference(state, golden, converted):
  cfg, params, _ = converted
  ref = _NumpyVae(state, cfg)
  images = golden["images"][:1]
  mean, logvar = _encode(cfg, params, images)
  ref_mean, ref_logvar = ref.encode(images)
  assert _relative_error(mean, ref_mean) < 1e-5
  assert _relative_error(logvar, ref_logvar) < 1e-5
  z = golden["z"][:1]
  assert _relative_error(_decode(cfg, params, z), ref.decode(z)) < 1e-5


def test_diffusers_naming_converter(state, golden, converted):
  """A diffusers-format state dict (names and tensor placement as diffusers' converter produced them)."""
  _, params, _ = converted
  diffusers_state = {}
  for name, source in zip(golden["diffusers_names"], golden["diffusers_sources"]):
    value = state[str(source)]
    if ".attentions." in name and name.endswith(".weight") and value.ndim == 4:
      value = value[:, :, 0, 0]  # diffusers stores the attention 1x1 convs as Linear weights
    diffusers_state["vae." + str(name)] = value
  params_d, consumed = V.convert_vae_diffusers_state(diffusers_state, prefix="vae.")
  assert consumed == set(diffusers_state)
  chex.assert_trees_all_equal(params_d, params)


def test_latent_scaling_and_posterior_sample(converted, golden):
  cfg, params, _ = converted
  assert cfg.scale_factor == 0.18215
  images = jnp.asarray(golden["images"])
  mean, logvar = _encode(cfg, params, images)
  key = jax.random.PRNGKey(3)
  noise = np.asarray(jax.random.normal(key, mean.shape))
  expected = 0.18215 * (np.asarray(mean) + np.exp(0.5 * np.asarray(logvar)) * noise)
  np.testing.assert_allclose(V.encode_to_latents(params, images, cfg, key=key), expected,
                             rtol=1e-5, atol=1e-6)


def test_logvar_is_clamped(converted, golden):
  cfg, params, _ = converted
  big = jax.tree_util.tree_map(lambda a: a, params)
  big["quant_conv"] = dict(params["quant_conv"])
  big["quant_conv"]["bias"] = np.concatenate([np.zeros(4), np.full(4, 1e3)]).astype(np.float32)
  _, logvar = _encode(cfg, big, golden["images"])
  np.testing.assert_array_equal(logvar, 20.0)


def test_encoder_gradient(tool):
  """The encoder is differentiated in CSD: check the VJP w.r.t. the images numerically.

  A two-level, one-block VAE keeps compilation short; it still has every layer type.
  """
  small = dict(tool.VAE_CONFIG, channel_mult=(1, 2), num_res_blocks=1)
  cfg = V.VaeConfig.from_dict(small)
  params, _ = V.convert_vae_state(tool.ldm_vae_state(small), config=cfg)
  images = jax.random.uniform(jax.random.PRNGKey(0), (1, 8, 8, 3), minval=-1, maxval=1)
  key = jax.random.PRNGKey(1)
  f = lambda x: V.encode_to_latents(params, x, cfg, key=key)
  check_grads(f, (images,), order=1, modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)
  grad = jax.grad(lambda x: jnp.sum(f(x) ** 2))(images)
  assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 0


def test_bfloat16_activations(converted, golden):
  cfg, params, _ = converted
  mean, _ = V.encode_moments(params, golden["images"], cfg, jnp.bfloat16)
  assert mean.dtype == jnp.float32
  err = _relative_error(mean, golden["mean"])
  assert err < 4e-2, err  # measured 1.3e-2


def test_converter_errors(state, converted):
  cfg, _, _ = converted
  missing = dict(state)
  del missing["first_stage_model.decoder.up.1.upsample.conv.bias"]
  with pytest.raises(UserError, match=r"decoder\.up\.1\.upsample\.conv\.bias: missing"):
    V.convert_vae_state(missing, config=cfg)
  wrong = dict(state)
  wrong["first_stage_model.encoder.mid.attn_1.q.weight"] = np.zeros((64, 64), np.float32)
  with pytest.raises(UserError, match=r"attn_1\.q\.weight: shape \(64, 64\), expected \(64, 64, 1, 1\)"):
    V.convert_vae_state(wrong, config=cfg)
  with pytest.raises(UserError, match="encoder.conv_in.weight: missing"):
    V.convert_vae_state({})
  with pytest.raises(UserError, match="down_blocks: missing"):
    V.convert_vae_diffusers_state({"x": np.zeros(1)})


def test_default_config_is_sd():
  cfg = V.VaeConfig()
  assert cfg.downsample_factor == 8 and cfg.scale_factor == 0.18215
  shapes = jax.eval_shape(lambda: V.init_vae_params(cfg, jax.random.PRNGKey(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  assert count == 83_653_863  # SD's AutoencoderKL (kl-f8): 34,163,592 encoder + 49,490,199 decoder + convs


@pytest.mark.parity
def test_live_against_diffusers(tool, state, golden, converted):
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  cfg, params, _ = converted
  ref = tool.torch_vae_reference(state, tool.VAE_CONFIG, golden["images"], golden["z"])
  for name in ("mean", "logvar", "decoded"):
    np.testing.assert_allclose(ref[name], golden[name], rtol=0, atol=1e-5 * np.abs(ref[name]).max())
  np.testing.assert_array_equal(ref["diffusers_names"], golden["diffusers_names"])
  mean, _ = _encode(cfg, params, golden["images"])
  assert _relative_error(mean, ref["mean"]) < 1e-4
  assert _relative_error(_decode(cfg, params, golden["z"]), ref["decoded"]) < 1e-4
