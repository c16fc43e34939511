"""MVDream checkpoint conversion: LDM and diffusers names, whole checkpoints, files, errors, the CLI.

Torch-free by default: the LDM-named tensors come from the golden generators' helpers
(tests/tools/make_{unet,text_vae}_goldens.py). Tests that write `.pt` files or build diffusers folders with
the PyTorch libraries are marked `parity`; the test on the real checkpoint runs only when
ANIMDREAMER_MVDREAM_CKPT points at `sd-v2.1-base-4view.pt`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from animdreamer_jax import cli
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import convert
from animdreamer_jax.prior.convert import (IGNORED_TOP_LEVEL_KEYS, convert_checkpoint, convert_unet_state,
                                           diffusers_unet_to_ldm, flatten_params, load_prior_params,
                                           load_unet, read_safetensors, read_state_dict, save_prior)
from animdreamer_jax.prior.unet import UNetConfig

PREFIX = "model.diffusion_model."


def load_tool(repo_root, name):
  spec = importlib.util.spec_from_file_location(name, repo_root / "tests" / "tools" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def unet_golden(repo_root):
  tool = load_tool(repo_root, "make_unet_goldens")
  g = dict(np.load(repo_root / "tests" / "data" / "mvdream" / tool.GOLDEN_FILE))
  g["config"] = UNetConfig.from_dict(json.loads(str(g["config_json"])))
  g["state"] = tool.golden_ldm_state(g["ldm_names"], tool.golden_shapes(g))
  return g


@pytest.fixture(scope="module")
def full_checkpoint(repo_root, unet_golden):
  """A whole MVDream-layout state dict: tiny UNet + VAE + OpenCLIP text tower + schedule buffers."""
  text_vae = load_tool(repo_root, "make_text_vae_goldens")
  state = dict(unet_golden["state"])
  state.update(text_vae.ldm_vae_state())
  state.update(text_vae.ldm_text_state())
  betas = np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
  for i, name in enumerate(IGNORED_TOP_LEVEL_KEYS):
    state[name] = (betas * (i + 1)).astype(np.float32)
  return state


# --- UNet names -------------------------------------------------------------------------------------------


def test_unet_ldm_names_convert_completely_and_infer_the_config(unet_golden):
  state = unet_golden["state"]
  params, consumed, config = convert_unet_state(state, num_head_channels=16)
  assert config == unet_golden["config"]
  assert consumed == set(state)
  # Spot checks of the layout changes, indexed independently.
  conv = state[PREFIX + "input_blocks.4.0.in_layers.2.weight"]  # (out, in, kh, kw)
  kernel = params["input_blocks.4.0"]["in_layers.2"]["kernel"]  # (kh, kw, in, out)
  assert kernel.shape == (3, 3, conv.shape[1], conv.shape[0])
  for o, i, ky, kx in [(0, 0, 0, 0), (5, 17, 2, 1), (63, 31, 1, 2)]:
    assert kernel[ky, kx, i, o] == conv[o, i, ky, kx]
  linear = state[PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight"]  # (out, in)
  dense = params["middle_block.1"]["transformer_blocks.0"]["attn2"]["to_k"]["kernel"]
  assert dense.shape == linear.shape[::-1] and dense[7, 3] == linear[3, 7]
  np.testing.assert_array_equal(params["camera_embed.0"]["kernel"], state[PREFIX + "camera_embed.0.weight"].T)
  np.testing.assert_array_equal(params["out.0"]["scale"], state[PREFIX + "out.0.weight"])


def test_diffusers_unet_names_map_back_to_ldm(unet_golden):
  """Our diffusers -> LDM renames invert diffusers' own LDM -> diffusers conversion (stored in the golden)."""
  ldm = {str(k): v for k, v in zip(unet_golden["ldm_names"], range(len(unet_golden["ldm_names"])))}
  diffusers_state = {str(d): ldm[str(k)] for k, d in zip(unet_golden["ldm_names"],
                                                          unet_golden["diffusers_names"])}
  assert diffusers_unet_to_ldm(diffusers_state) == ldm
  assert diffusers_unet_to_ldm(diffusers_state, layers_per_block=2) == ldm
  with pytest.raises(UserError, match="down_blocks.0.mystery.weight"):
    diffusers_unet_to_ldm({**diffusers_state, "down_blocks.0.mystery.weight": 0})


def test_unet_conversion_errors_name_the_key(unet_golden):
  state = dict(unet_golden["state"])
  config = unet_golden["config"]
  key = PREFIX + "output_blocks.5.2.conv.weight"
  missing = {k: v for k, v in state.items() if k != key}
  with pytest.raises(UserError, match=f"{key}: missing"):
    convert_unet_state(missing, config=config)
  extra = {**state, PREFIX + "output_blocks.5.9.weight": np.zeros(3, np.float32)}
  with pytest.raises(UserError, match="output_blocks.5.9.weight: unexpected"):
    convert_unet_state(extra, config=config)
  key = PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"
  wrong = {**state, key: np.zeros((32, 65), np.float32)}
  with pytest.raises(UserError, match=f"{key}: shape"):
    convert_unet_state(wrong, config=config)
  with pytest.raises(UserError, match="no LDM UNet"):
    convert_unet_state({"foo": np.zeros(1)})


# --- whole checkpoints and files ----------------------------------------------------------------------------


def test_full_checkpoint_safetensors_round_trip(tmp_path, full_checkpoint, unet_golden):
  src = tmp_path / "tiny-4view.safetensors"
  save_file(full_checkpoint, str(src))
  result = convert_checkpoint(src, num_head_channels=16)
  assert set(result) == {"unet", "vae", "text_encoder", "ignored_keys"}
  assert result["ignored_keys"] == sorted(IGNORED_TOP_LEVEL_KEYS)
  out = save_prior(result, tmp_path / "weights", source=str(src))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-4view.safetensors", "weights"]  # no temp left
  loaded = load_prior_params(out)
  assert loaded["config"]["unet"] == unet_golden["config"].to_dict()
  assert loaded["config"]["text_encoder"]["num_layers"] == 3
  assert loaded["config"]["vae"]["base_channels"] == 32
  expected, _, _ = convert_unet_state(unet_golden["state"], config=unet_golden["config"])
  got = flatten_params(loaded["unet"])
  assert got.keys() == flatten_params(expected).keys()
  for k, v in flatten_params(expected).items():
    np.testing.assert_array_equal(got[k], v)
  for part in ("vae", "text_encoder"):
    assert flatten_params(loaded[part]).keys() == flatten_params(result[part][1]).keys()
  config, params = load_unet(out)
  assert config == unet_golden["config"]

  with pytest.raises(UserError, match="not empty"):
    save_prior(result, out)
  save_prior(result, out, dtype="float16", overwrite=True)
  assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
  assert read_safetensors(out / "unet.safetensors")["out.2/kernel"].dtype == np.float16


def test_unknown_checkpoint_keys_are_errors(tmp_path, full_checkpoint):
  state = {**full_checkpoint, "model_ema.decay": np.zeros((), np.float32)}
  with pytest.raises(UserError, match="model_ema.decay: checkpoint key neither converted nor on the ignore"):
    convert._split_and_convert_ldm(state, 16, print)
  with pytest.raises(UserError, match="no 'model.diffusion_model"):
    convert._split_and_convert_ldm({"first_stage_model.x": np.zeros(1)}, 16, print)


def _write_safetensors_by_hand(path: pathlib.Path, tensors: dict[str, tuple[str, tuple, bytes]]) -> None:
  header, blobs, offset = {}, [], 0
  for name, (dtype, shape, blob) in tensors.items():
    header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  raw = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_safetensors_reader_bf16_and_corrupt_files(tmp_path):
  values = np.array([[1.0, -2.5, 3.140625], [0.0, 1e-3, -65280.0]], np.float32)
  bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bfloat16
  half = np.array([0.5, -1.25], np.float16)
  path = tmp_path / "mixed.safetensors"
  _write_safetensors_by_hand(path, {"a": ("BF16", values.shape, bf16.tobytes()),
                                    "b": ("F16", half.shape, half.tobytes())})
  got = read_safetensors(path)
  expected = (bf16.astype(np.uint32) << 16).view(np.float32)
  np.testing.assert_array_equal(got["a"], expected)
  assert got["a"].dtype == np.float32 and got["b"].dtype == np.float16
  np.testing.assert_array_equal(got["b"], half)

  truncated = tmp_path / "truncated.safetensors"
  truncated.write_bytes(path.read_bytes()[:-3])
  with pytest.raises(UserError, match="truncated.safetensors: tensor 'b' lies outside"):
    read_safetensors(truncated)
  garbage = tmp_path / "garbage.safetensors"
  garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
  with pytest.raises(UserError, match="garbage.safetensors: not a safetensors file"):
    read_safetensors(garbage)


def test_missing_checkpoint_says_where_to_get_it(tmp_path):
  with pytest.raises(UserError, match="sd-v2.1-base-4view.pt.*MVDream/MVDream"):
    read_state_dict(tmp_path / "nope.pt")
  with pytest.raises(UserError, match="config.json missing.*sd-v2.1-base-4view.pt"):
    load_prior_params(tmp_path / "not-converted")


def test_pt_without_torch_suggests_safetensors(tmp_path, monkeypatch):
  path = tmp_path / "model.pt"
  path.write_bytes(b"not really a pickle")
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
  with pytest.raises(UserError, match=r"model.pt: reading PyTorch files needs torch.*safetensors.*parity"):
    read_state_dict(path)


def test_cli_convert_and_errors(tmp_path, full_checkpoint, capsys):
  code = cli.main(["convert-mvdream", "--ckpt", str(tmp_path / "sd-v2.1-base-4view.pt"),
                   "--out", str(tmp_path / "w")])
  err = capsys.readouterr().err
  assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
  assert "huggingface.co/MVDream/MVDream" in err
  src = tmp_path / "ckpt.safetensors"
  save_file(full_checkpoint, str(src))
  args = ["convert-mvdream", "--ckpt", str(src), "--out", str(tmp_path / "w"), "--num-head-channels", "16"]
  assert cli.main(args) == 0
  assert (tmp_path / "w" / "unet.safetensors").is_file()
  assert cli.main(args) == 2
  assert "--overwrite" in capsys.readouterr().err
  assert cli.main(args + ["--overwrite"]) == 0


def test_diffusers_folder_with_unet_only(tmp_path, unet_golden):
  """A diffusers-format folder (UNet2DConditionModel names + config.json) converts to the same params."""
  unet_dir = tmp_path / "folder" / "unet"
  unet_dir.mkdir(parents=True)
  state = {str(d): unet_golden["state"][PREFIX + str(k)]
           for k, d in zip(unet_golden["ldm_names"], unet_golden["diffusers_names"])}
  save_file(state, str(unet_dir / "diffusion_pytorch_model.safetensors"))
  cfg = unet_golden["config"]
  widths = [m * cfg.model_channels for m in cfg.channel_mult]
  (unet_dir / "config.json").write_text(json.dumps({
      "block_out_channels": widths, "layers_per_block": cfg.num_res_blocks,
      "attention_head_dim": [w // cfg.num_head_channels for w in widths]}))
  result = convert_checkpoint(tmp_path / "folder")
  assert result["unet"][0] == cfg.to_dict()
  expected, _, _ = convert_unet_state(unet_golden["state"], config=cfg)
  for k, v in flatten_params(expected).items():
    np.testing.assert_array_equal(flatten_params(result["unet"][1])[k], v)


# --- with torch ---------------------------------------------------------------------------------------------


@pytest.mark.parity
def test_pt_checkpoint_matches_safetensors(tmp_path, full_checkpoint):
  torch = pytest.importorskip("torch")
  src = tmp_path / "tiny.pt"
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in full_checkpoint.items()}, src)
  from_pt = convert_checkpoint(src, num_head_channels=16)
  save_file(full_checkpoint, str(tmp_path / "tiny.safetensors"))
  from_st = convert_checkpoint(tmp_path / "tiny.safetensors", num_head_channels=16)
  for part in ("unet", "vae", "text_encoder"):
    a, b = flatten_params(from_pt[part][1]), flatten_params(from_st[part][1])
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a pickle at all")
  with pytest.raises(UserError, match="junk.pt: cannot be read"):
    read_state_dict(tmp_path / "junk.pt")


@pytest.mark.parity
def test_diffusers_folder_saved_by_the_libraries(tmp_path, repo_root, unet_golden, full_checkpoint):
  """save_pretrained of diffusers' UNet/VAE and transformers' CLIPTextModel -> same params as the LDM route."""
  pytest.importorskip("torch")
  pytest.importorskip("diffusers")
  import torch
  from diffusers import AutoencoderKL
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, convert_open_clip_checkpoint
  from transformers import CLIPTextConfig, CLIPTextModel

  unet_tool = load_tool(repo_root, "make_unet_goldens")
  text_vae = load_tool(repo_root, "make_text_vae_goldens")
  folder = tmp_path / "mvdream-diffusers"
  unet = unet_tool.build_reference_unet(unet_tool.GOLDEN_CONFIG)
  unet.load_state_dict({str(d): torch.from_numpy(unet_golden["state"][PREFIX + str(k)])
                        for k, d in zip(unet_golden["ldm_names"], unet_golden["diffusers_names"])})
  unet.save_pretrained(folder / "unet")

  vae = AutoencoderKL(**text_vae._diffusers_vae_config(text_vae.VAE_CONFIG))
  vae_state = convert_ldm_vae_checkpoint(text_vae.ldm_vae_state(), dict(vae.config))
  vae.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in vae_state.items()})
  vae.save_pretrained(folder / "vae")

  cfg = text_vae.TEXT_CONFIG
  text_config = CLIPTextConfig(vocab_size=cfg["vocab_size"], hidden_size=cfg["width"],
                               intermediate_size=cfg["mlp_width"], num_attention_heads=cfg["num_heads"],
                               num_hidden_layers=cfg["num_layers"] - cfg["skip_last_layers"],
                               max_position_embeddings=cfg["context_length"], hidden_act="gelu",
                               projection_dim=cfg["width"])
  text = CLIPTextModel(text_config)
  ldm_text = {k: torch.from_numpy(np.asarray(v)) for k, v in text_vae.ldm_text_state().items()}
  hf_text = convert_open_clip_checkpoint(text, ldm_text, prefix="cond_stage_model.model.")
  hf_text.pop("text_projection.weight", None)
  last = f"encoder.layers.{cfg['num_layers'] - 1}."  # SD2 exports drop the unused last block
  hf_text = {k: v for k, v in hf_text.items() if last not in k}
  if not any(k.startswith("text_model.") for k in text.state_dict()):  # transformers v5 layout
    hf_text = {k.removeprefix("text_model."): v for k, v in hf_text.items()}
  missing, unexpected = text.load_state_dict(hf_text, strict=False)
  assert not unexpected and all("position_ids" in k for k in missing)
  text.save_pretrained(folder / "text_encoder")

  from_folder = convert_checkpoint(folder)
  from_ldm = convert._split_and_convert_ldm(full_checkpoint, 16, print)
  assert from_folder["unet"][0] == from_ldm["unet"][0]
  for part in ("unet", "vae", "text_encoder"):
    a, b = flatten_params(from_folder[part][1]), flatten_params(from_ldm[part][1])
    assert a.keys() == b.keys(), part
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=0, atol=0, err_msg=f"{part} {k}")
  assert from_folder["text_encoder"][0]["skip_last_layers"] == 0
  assert from_folder["text_encoder"][0]["num_layers"] == cfg["num_layers"] - 1


# --- the real checkpoint ------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("ANIMDREAMER_MVDREAM_CKPT"),
                    reason="set ANIMDREAMER_MVDREAM_CKPT to sd-v2.1-base-4view.pt (or a converted folder)")
def test_real_checkpoint_converts_and_denoises(tmp_path):
  """Conversion, then a 4-view step at t=999 on pure noise: finite, and eps ~ the noise (correlation > 0.9)."""
  from animdreamer_jax.prior.camera_embedding import orbit_cameras
  from animdreamer_jax.prior.text_encoder import TextEncoderConfig, encode_text
  from animdreamer_jax.prior.tokenizer import tokenize
  from animdreamer_jax.prior.unet import MultiViewUNet

  source = pathlib.Path(os.environ["ANIMDREAMER_MVDREAM_CKPT"])
  if (source / "config.json").is_file():
    weights = source
  else:
    weights = tmp_path / "mvdream"
    save_prior(convert_checkpoint(source), weights, source=str(source))
  prior = load_prior_params(weights)
  config, unet_params = load_unet(weights)
  assert config == UNetConfig()
  text_config = TextEncoderConfig.from_dict(prior["config"]["text_encoder"])
  context = encode_text(prior["text_encoder"], jnp.asarray(tokenize(["a corgi, 3d asset"])), text_config)
  views = 4
  noise = jax.random.normal(jax.random.PRNGKey(0), (views, 32, 32, 4))
  eps = jax.jit(lambda p, x, c: MultiViewUNet(config).apply(
      {"params": p}, x, jnp.full((views,), 999), jnp.repeat(c, views, 0), orbit_cameras(views, 15.0, 90.0),
      num_views=views))(unet_params, noise, context)
  eps = np.asarray(eps)
  assert np.isfinite(eps).all()
  correlation = np.corrcoef(eps.ravel(), np.asarray(noise).ravel())[0, 1]
  assert correlation > 0.9, correlation
