"""Tests of the OpenCLIP ViT-H/14 text encoder (animdreamer_jax.prior.text_encoder).

Goldens: tests/data/mvdream/text_tiny.npz from tests/tools/make_text_vae_goldens.py (transformers'
CLIPTextModel, penultimate hidden state + final LayerNorm, loaded through diffusers' OpenCLIP conversion).
"""

from __future__ import annotations

import importlib.util
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import text_encoder as te


def _load_tool(repo_root):
  spec = importlib.util.spec_from_file_location(
      "make_text_vae_goldens", repo_root / "tests" / "tools" / "make_text_vae_goldens.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def tool(repo_root):
  return _load_tool(repo_root)


@pytest.fixture(scope="module")
def golden(repo_root):
  with np.load(repo_root / "tests" / "data" / "mvdream" / "text_tiny.npz") as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def state(tool, golden):
  state = tool.ldm_text_state()
  assert tool.weights_checksum(state) == pytest.approx(float(golden["weights_checksum"]), rel=1e-12), \
      "the weight recipe in make_text_vae_goldens.py changed; regenerate the goldens"
  return state


def _relative_error(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _numpy_reference(state, cfg, tokens, prefix="cond_stage_model.model."):
  """Slow float64 OpenCLIP text tower straight from the state dict (torch layout, explicit loops)."""
  s = {k[len(prefix):]: np.asarray(v, np.float64) for k, v in state.items()}

  def layer_norm(x, name):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * s[name + ".weight"] + s[name + ".bias"]

  def gelu(x):
    from scipy.special import erf  # pylint: disable=import-outside-toplevel
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))

  width, heads = cfg.width, cfg.num_heads
  dh = width // heads
  outputs = []
  for ids in tokens:
    x = s["token_embedding.weight"][ids] + s["positional_embedding"][:len(ids)]
    length = len(ids)
    for i in range(cfg.num_layers - cfg.skip_last_layers):
      b = f"transformer.resblocks.{i}."
      h = layer_norm(x, b + "ln_1")
      qkv = h @ s[b + "attn.in_proj_weight"].T + s[b + "attn.in_proj_bias"]
      q, k, v = qkv[:, :width], qkv[:, width:2 * width], qkv[:, 2 * width:]
      attn = np.zeros_like(h)
      for head in range(heads):
        sl = slice(head * dh, (head + 1) * dh)
        for row in range(length):
          logits = q[row, sl] @ k[:row + 1, sl].T / np.sqrt(dh)  # causal: keys 0..row
          w = np.exp(logits - logits.max())
          attn[row, sl] = (w / w.sum()) @ v[:row + 1, sl]
      x = x + attn @ s[b + "attn.out_proj.weight"].T + s[b + "attn.out_proj.bias"]
      h = gelu(layer_norm(x, b + "ln_2") @ s[b + "mlp.c_fc.weight"].T + s[b + "mlp.c_fc.bias"])
      x = x + h @ s[b + "mlp.c_proj.weight"].T + s[b + "mlp.c_proj.bias"]
    outputs.append(layer_norm(x, "ln_final"))
  return np.stack(outputs)


@pytest.fixture(scope="module")
def converted(state, golden):
  cfg = te.TextEncoderConfig.from_dict(json.loads(str(golden["config"])))
  params, consumed = te.convert_text_encoder_state(state, config=cfg)
  return cfg, params, consumed


def test_converter_consumes_every_key(state, converted):
  cfg, params, consumed = converted
  assert consumed == set(state)
  assert te.text_encoder_config_from_state(state, head_dim=32) == cfg
  # Only the blocks that run have parameters; the last block is deliberately dropped.
  assert sorted(params["transformer"]) == [f"resblocks.{i}" for i in range(cfg.num_layers_run)]
  model_shapes = jax.eval_shape(lambda: te.init_text_encoder_params(cfg, jax.random.PRNGKey(0)))
  chex.assert_trees_all_equal_shapes(model_shapes, params)


def test_matches_transformers_golden(golden, converted):
  cfg, params, _ = converted
  out = te.encode_text(params, golden["tokens"], cfg)
  chex.assert_shape(out, (3, 77, cfg.width))
  err = _relative_error(out, golden["output"])
  assert err < 1e-4, err  # measured ~5e-7 (float32, CPU)


def test_matches_numpy_reference(state, golden, converted):
  cfg, params, _ = converted
  tokens = golden["tokens"][:2]
  out = te.encode_text(params, tokens, cfg)
  err = _relative_error(out, _numpy_reference(state, cfg, tokens))
  assert err < 1e-5, err


def test_causal_and_padding(converted, golden):
  """Position i depends on tokens <= i only; zero-padded positions still carry (causal) states."""
  cfg, params, _ = converted
  tokens = golden["tokens"][:1]
  changed = tokens.copy()
  changed[0, 10] = 5
  a, b = te.encode_text(params, tokens, cfg), te.encode_text(params, changed, cfg)
  np.testing.assert_array_equal(a[0, :10], b[0, :10])
  assert np.all(np.max(np.abs(a[0, 10:] - b[0, 10:]), axis=-1) > 1e-4)
  # Padding positions (token 0) after the end token are not masked out: they differ from each other.
  assert np.max(np.abs(a[0, 40] - a[0, 41])) > 1e-3


def test_last_block_is_not_run(state, converted, golden):
  cfg, _, _ = converted
  perturbed = dict(state)
  key = "cond_stage_model.model.transformer.resblocks.2.mlp.c_fc.weight"
  perturbed[key] = state[key] + 1.0
  params, _ = te.convert_text_encoder_state(perturbed, config=cfg)
  base, _ = te.convert_text_encoder_state(state, config=cfg)
  np.testing.assert_array_equal(te.encode_text(params, golden["tokens"], cfg),
                                te.encode_text(base, golden["tokens"], cfg))


def test_bfloat16_activations(converted, golden):
  cfg, params, _ = converted
  out = te.encode_text(params, golden["tokens"], cfg, dtype=jnp.bfloat16)
  assert out.dtype == jnp.float32
  err = _relative_error(out, golden["output"])
  assert err < 2e-2, err  # measured 7.5e-3


def test_converter_errors(state, converted):
  cfg, _, _ = converted
  missing = dict(state)
  del missing["cond_stage_model.model.transformer.resblocks.1.ln_2.bias"]
  with pytest.raises(UserError, match=r"resblocks\.1\.ln_2\.bias: missing"):
    te.convert_text_encoder_state(missing, config=cfg)
  wrong = dict(state)
  wrong["cond_stage_model.model.ln_final.weight"] = np.ones(7, np.float32)
  with pytest.raises(UserError, match=r"ln_final\.weight: shape \(7,\), expected \(64,\)"):
    te.convert_text_encoder_state(wrong, config=cfg)
  with pytest.raises(UserError, match="token_embedding.weight: missing"):
    te.convert_text_encoder_state({}, prefix="x.")


def test_default_config_is_vit_h():
  cfg = te.TextEncoderConfig()
  assert (cfg.width, cfg.num_heads, cfg.num_layers, cfg.num_layers_run, cfg.mlp_width) == \
      (1024, 16, 24, 23, 4096)
  shapes = jax.eval_shape(lambda: te.init_text_encoder_params(cfg, jax.random.PRNGKey(0)))
  count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
  # 49408*1024 + 77*1024 + 23 blocks * 12,596,224 + LN: the ViT-H text tower minus one block.
  assert count == 49408 * 1024 + 77 * 1024 + 23 * (4 * 1024 * 1024 + 4 * 1024 + 2 * 1024 * 4096
                                                  + 4096 + 1024 + 4 * 1024) + 2 * 1024


@pytest.mark.parity
def test_live_against_transformers(tool, state, golden, converted):
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  pytest.importorskip("diffusers")
  cfg, params, _ = converted
  ref = tool.torch_text_reference(state, tool.TEXT_CONFIG, golden["tokens"])
  np.testing.assert_allclose(ref, golden["output"], rtol=0, atol=1e-5 * np.abs(ref).max())
  assert _relative_error(te.encode_text(params, golden["tokens"], cfg), ref) < 1e-4
