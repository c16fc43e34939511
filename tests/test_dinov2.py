"""DINOv2 (`prior.dinov2`): goldens from HF transformers' PyTorch `Dinov2Model`, the converter, the
weights folder and its errors.

The goldens (tests/data/dinov2/dinov2_tiny.npz, made by tests/tools/make_dinov2_goldens.py) hold no
weights: the HF-named tensors are rebuilt from their names, converted with `convert_dinov2_state`, and the
JAX tokens are compared with the stored torch tokens, at the trained position grid and at another one
(the bicubic resize of the position embeddings).
"""

from __future__ import annotations

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import dinov2


@pytest.fixture(scope="module")
def tool(repo_root):
  spec = importlib.util.spec_from_file_location(
      "make_dinov2_goldens", repo_root / "tests" / "tools" / "make_dinov2_goldens.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def golden(repo_root, tool):
  g = dict(np.load(repo_root / "tests" / "data" / "dinov2" / tool.GOLDEN_FILE))
  g["state"] = tool.golden_state(g["names"], json.loads(str(g["shape_json"])))
  g["config"], g["params"] = dinov2.convert_dinov2_state(g["state"])
  return g


def relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  return float(np.abs(actual - expected).max() / np.abs(expected).max())


def test_config_is_read_from_the_checkpoint(golden, tool):
  hf = tool.HF_CONFIG
  assert golden["config"] == dinov2.Dinov2Config(
      patch_size=hf["patch_size"], embed_dim=hf["hidden_size"], depth=hf["num_hidden_layers"],
      num_heads=hf["num_attention_heads"], mlp_hidden=hf["hidden_size"] * hf["mlp_ratio"],
      position_grid=hf["image_size"] // hf["patch_size"])


@pytest.mark.parametrize("index", [0, 1])
def test_tokens_match_the_pytorch_reference(golden, index):
  """float32: the torch tokens to 1e-5 of their scale; bfloat16 activations to 3e-2."""
  images = jnp.asarray(golden[f"images_{index}"])
  expected = golden[f"tokens_{index}"]
  got = dinov2.apply_dinov2(golden["params"], images, golden["config"])
  assert got.shape == expected.shape
  assert relative_error(got, expected) < 1e-5
  got_bf16 = dinov2.apply_dinov2(golden["params"], images, golden["config"], dtype=jnp.bfloat16)
  assert relative_error(got_bf16, expected) < 3e-2


def test_original_and_hf_names_convert_to_the_same_parameters(golden):
  original = dinov2.hf_to_original(golden["state"])
  assert "blocks.1.attn.qkv.weight" in original and "pos_embed" in original
  _, params = dinov2.convert_dinov2_state(original)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, golden["params"])


def test_position_resize_is_the_identity_on_the_trained_grid_and_keeps_constants():
  """Same size: exactly the table; any size: rows of the resize sum to 1 (a constant stays)."""
  rng = np.random.default_rng(0)
  table = rng.standard_normal((1 + 5 * 5, 3)).astype(np.float32)
  np.testing.assert_array_equal(dinov2.resize_position_embeddings(jnp.asarray(table), (5, 5)),
                                table)
  for size_in, size_out in ((5, 3), (5, 11), (8, 8), (37, 16)):
    weights = dinov2.cubic_resize_matrix(size_in, size_out)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-6)


def _slow_bicubic(values: np.ndarray, size_out: int, a: float = -0.75) -> np.ndarray:
  """PyTorch's 1-D bicubic (align_corners=False), one output at a time, written out."""
  n = len(values)
  out = []
  for i in range(size_out):
    x = (i + 0.5) * n / size_out - 0.5
    x0 = int(np.floor(x))
    t = x - x0
    taps = [values[min(max(x0 + k, 0), n - 1)] for k in (-1, 0, 1, 2)]
    w = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
         ((a + 2) * t - (a + 3)) * t * t + 1,
         ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
         ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
    out.append(sum(wk * vk for wk, vk in zip(w, taps)))
  return np.array(out)


def test_cubic_resize_matrix_against_a_written_out_interpolation():
  values = np.random.default_rng(1).standard_normal(7)
  for size_out in (3, 7, 16):
    np.testing.assert_allclose(dinov2.cubic_resize_matrix(7, size_out) @ values,
                               _slow_bicubic(values, size_out), atol=1e-6)


def test_saved_folder_loads_back_and_bad_weights_are_one_clear_error(golden, tmp_path):
  folder = dinov2.save_dinov2(golden["config"], golden["params"], tmp_path / "w", source="goldens")
  config, params = dinov2.load_dinov2(folder)
  assert config == golden["config"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, golden["params"])
  with pytest.raises(UserError, match=r"no converted DINOv2 weights here .*dinov2_vits14_pretrain"):
    dinov2.load_dinov2(tmp_path / "nowhere")
  # A checkpoint of another size: one error naming the key and both shapes.
  state = dict(golden["state"])
  state["encoder.layer.1.mlp.fc1.weight"] = np.zeros((64, 128), np.float32)
  with pytest.raises(UserError, match=r"^DINOv2 checkpoint: blocks.1.mlp.fc1.weight has shape "
                                      r"\(64, 128\), which does not fit"):
    dinov2.convert_dinov2_state(state)
  with pytest.raises(UserError, match=r"^DINOv2 checkpoint: unexpected key 'decoder.weight'$"):
    dinov2.convert_dinov2_state({**golden["state"], "decoder.weight": np.zeros(2)})
  with pytest.raises(UserError, match=r"^DINOv2 checkpoint: pos_embed missing"):
    dinov2.convert_dinov2_state({k: v for k, v in golden["state"].items()
                                 if k != "embeddings.position_embeddings"})
  # A converted folder whose weights do not fit its config.
  meta = json.loads((folder / "config.json").read_text())
  meta["dinov2"]["mlp_hidden"] = 256
  (folder / "config.json").write_text(json.dumps(meta))
  with pytest.raises(UserError, match=r"dinov2.safetensors: blocks.0/mlp/fc1/bias has shape \(512,\), "
                                      r"expected \(256,\)"):
    dinov2.load_dinov2(folder)


@pytest.mark.parity
def test_live_torch_reference_matches_goldens_and_jax(tool, golden):
  """With torch + transformers installed: the reference regenerated now gives the stored tokens."""
  pytest.importorskip("torch")
  pytest.importorskip("transformers")
  fresh = tool.generate()
  for i in range(len(tool.IMAGE_SIZES)):
    np.testing.assert_allclose(fresh[f"tokens_{i}"], golden[f"tokens_{i}"], rtol=0, atol=1e-5)
    got = dinov2.apply_dinov2(golden["params"], jnp.asarray(fresh[f"images_{i}"]), golden["config"])
    assert relative_error(got, fresh[f"tokens_{i}"]) < 1e-5


def test_convert_command_reads_an_hf_folder(golden, tmp_path, capsys):
  """`animdreamer convert-dinov2` on a facebook/dinov2-small-like folder (model.safetensors):
  the folder it writes loads back to the goldens' parameters; an occupied --out is one error."""
  from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
  from animdreamer_jax import cli  # pylint: disable=import-outside-toplevel
  hf = tmp_path / "dinov2-small"
  hf.mkdir()
  save_file({k: np.ascontiguousarray(v) for k, v in golden["state"].items()},
            str(hf / "model.safetensors"))
  out = tmp_path / "converted"
  assert cli.main(["convert-dinov2", "--ckpt", str(hf), "--out", str(out)]) == 0
  config, params = dinov2.load_dinov2(out)
  assert config == golden["config"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, golden["params"])
  capsys.readouterr()
  assert cli.main(["convert-dinov2", "--ckpt", str(hf), "--out", str(out)]) == 2
  assert "folder exists and is not empty" in capsys.readouterr().err


@pytest.mark.parity
def test_convert_reads_the_original_pth_layout(golden, tmp_path):
  """The torch.hub checkpoint's layout (`dinov2_vits14_pretrain.pth`: fused qkv, `ls1.gamma`)
  saved with torch converts to the same parameters."""
  torch = pytest.importorskip("torch")
  original = dinov2.hf_to_original(golden["state"])
  path = tmp_path / dinov2.CHECKPOINT_NAME
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in original.items()}, path)
  _, params = dinov2.convert_dinov2_state(dinov2.read_checkpoint(path))
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, golden["params"])
