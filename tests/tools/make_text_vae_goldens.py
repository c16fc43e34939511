"""Generates the text-encoder and VAE goldens (tests/data/mvdream/{text,vae}_tiny.npz) from PyTorch.

    python3 tests/tools/make_text_vae_goldens.py        # needs torch + diffusers + transformers ('parity')

References (tiny random-weight configs, float32 on CPU):
- text: transformers' `CLIPTextModel` (the SD2.1 `text_encoder` architecture: exact GELU, LN eps 1e-5,
  causal mask) loaded from an OpenCLIP-named state dict through diffusers' own
  `convert_open_clip_checkpoint`. OpenCLIP's "penultimate" output is reproduced as
  `final_layer_norm(hidden_states[-2])` (MVDream runs all blocks but the last, then `ln_final`).
- VAE: diffusers' `AutoencoderKL` loaded (strictly) from an LDM-named state dict through diffusers'
  `convert_ldm_vae_checkpoint`; outputs are the posterior mean/logvar of `encode` and `decode(z)`.

The LDM/OpenCLIP state dicts (the names of the official `sd-v2.1-base-4view.pt`) are the source of truth:
their key names and shapes are enumerated here from the module layouts, and every tensor is drawn from
`np.random.RandomState` (whose streams NumPy keeps stable across versions) seeded by a CRC of its name, so
the tests rebuild the same float32 weights without torch. The .npz files hold the config, the inputs, the
reference outputs, a checksum of the weights and (VAE) diffusers' key names with the LDM key each came from.

The torch-free helpers (`TEXT_CONFIG`, `VAE_CONFIG`, `ldm_text_state`, `ldm_vae_state`, `text_inputs`,
`vae_inputs`, `weights_checksum`) are imported by tests/test_text_encoder.py and tests/test_vae.py; torch is
imported only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import zlib

import numpy as np

OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "mvdream"
TEXT_FILE = "text_tiny.npz"
VAE_FILE = "vae_tiny.npz"
TEXT_PREFIX = "cond_stage_model.model."
VAE_PREFIX = "first_stage_model."

# ViT-H-14 text tower structure at 1/16 width: 3 blocks (2 run + the skipped last one), 2 heads of 32,
# MLP ratio 4, the real 77-token context; a 1000-token vocabulary keeps the file-free weights small.
TEXT_CONFIG = dict(vocab_size=1000, context_length=77, width=64, num_heads=2, num_layers=3,
                   skip_last_layers=1, mlp_width=256)
# SD VAE structure at 1/4 width and 3 levels: 32/64/64 channels (GroupNorm 32), 2 ResnetBlocks per level
# (3 in the decoder), mid attention, f = 4.
VAE_CONFIG = dict(in_channels=3, out_channels=3, base_channels=32, channel_mult=(1, 2, 2),
                  num_res_blocks=2, z_channels=4)
WEIGHT_SEED = 7
IMAGE_SIZE = 32


# --- torch-free part (used by the tests) ---------------------------------------------------------------


def golden_tensor(name: str, shape: tuple[int, ...], seed: int = WEIGHT_SEED) -> np.ndarray:
  """Deterministic float32 values for the state-dict key `name`.

  Linear/conv weights: N(0, 1/fan_in); 1-D `.weight` (norm scales): 1 + N(0, 0.15^2); biases
  N(0, 0.1^2); embeddings N(0, 0.5^2); `logit_scale` 4.6.
  """
  rng = np.random.RandomState((zlib.crc32(name.encode()) + 7919 * seed) % (2**32))
  normal = rng.standard_normal(shape)
  if name.endswith("logit_scale"):
    value = np.full(shape, 4.6)
  elif name.endswith("embedding.weight") or name.endswith("positional_embedding"):
    value = 0.5 * normal
  elif name.endswith("bias"):
    value = 0.1 * normal
  elif len(shape) == 1:
    value = 1.0 + 0.15 * normal
  else:
    value = normal / np.sqrt(np.prod(shape[1:]))
  return value.astype(np.float32)


def ldm_text_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """OpenCLIP text-tower state-dict names (without prefix) -> shapes (all 24-style blocks)."""
  w, m = cfg["width"], cfg["mlp_width"]
  shapes = {"token_embedding.weight": (cfg["vocab_size"], w),
            "positional_embedding": (cfg["context_length"], w)}
  for i in range(cfg["num_layers"]):
    b = f"transformer.resblocks.{i}."
    shapes.update({b + "ln_1.weight": (w,), b + "ln_1.bias": (w,),
                   b + "attn.in_proj_weight": (3 * w, w), b + "attn.in_proj_bias": (3 * w,),
                   b + "attn.out_proj.weight": (w, w), b + "attn.out_proj.bias": (w,),
                   b + "ln_2.weight": (w,), b + "ln_2.bias": (w,),
                   b + "mlp.c_fc.weight": (m, w), b + "mlp.c_fc.bias": (m,),
                   b + "mlp.c_proj.weight": (w, m), b + "mlp.c_proj.bias": (w,)})
  shapes.update({"ln_final.weight": (w,), "ln_final.bias": (w,), "text_projection": (w, w),
                 "logit_scale": ()})
  return shapes


def ldm_vae_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """LDM AutoencoderKL state-dict names (without prefix) -> shapes."""
  shapes = {}
  chans = [m * cfg["base_channels"] for m in cfg["channel_mult"]]
  z = cfg["z_channels"]

  def conv(name, c_in, c_out, k):
    shapes[name + ".weight"] = (c_out, c_in, k, k)
    shapes[name + ".bias"] = (c_out,)

  def norm(name, c):
    shapes[name + ".weight"] = (c,)
    shapes[name + ".bias"] = (c,)

  def resblock(name, c_in, c_out):
    norm(name + ".norm1", c_in)
    conv(name + ".conv1", c_in, c_out, 3)
    norm(name + ".norm2", c_out)
    conv(name + ".conv2", c_out, c_out, 3)
    if c_in != c_out:
      conv(name + ".nin_shortcut", c_in, c_out, 1)

  def mid(name, c):
    resblock(name + ".block_1", c, c)
    norm(name + ".attn_1.norm", c)
    for k in ("q", "k", "v", "proj_out"):
      conv(f"{name}.attn_1.{k}", c, c, 1)
    resblock(name + ".block_2", c, c)

  conv("encoder.conv_in", cfg["in_channels"], chans[0], 3)
  c_prev = chans[0]
  for i, c in enumerate(chans):
    for j in range(cfg["num_res_blocks"]):
      resblock(f"encoder.down.{i}.block.{j}", c_prev, c)
      c_prev = c
    if i != len(chans) - 1:
      conv(f"encoder.down.{i}.downsample.conv", c, c, 3)
  mid("encoder.mid", chans[-1])
  norm("encoder.norm_out", chans[-1])
  conv("encoder.conv_out", chans[-1], 2 * z, 3)
  conv("quant_conv", 2 * z, 2 * z, 1)
  conv("post_quant_conv", z, z, 1)
  conv("decoder.conv_in", z, chans[-1], 3)
  mid("decoder.mid", chans[-1])
  c_prev = chans[-1]
  for i in reversed(range(len(chans))):
    for j in range(cfg["num_res_blocks"] + 1):
      resblock(f"decoder.up.{i}.block.{j}", c_prev, chans[i])
      c_prev = chans[i]
    if i != 0:
      conv(f"decoder.up.{i}.upsample.conv", chans[i], chans[i], 3)
  norm("decoder.norm_out", chans[0])
  conv("decoder.conv_out", chans[0], cfg["out_channels"], 3)
  return shapes


def ldm_text_state(cfg: dict = TEXT_CONFIG, prefix: str = TEXT_PREFIX) -> dict[str, np.ndarray]:
  """The OpenCLIP-named random text tower, as it sits in MVDream's checkpoint."""
  return {prefix + k: golden_tensor(prefix + k, s) for k, s in ldm_text_shapes(cfg).items()}


def ldm_vae_state(cfg: dict = VAE_CONFIG, prefix: str = VAE_PREFIX) -> dict[str, np.ndarray]:
  """The LDM-named random VAE, as it sits in MVDream's checkpoint."""
  return {prefix + k: golden_tensor(prefix + k, s) for k, s in ldm_vae_shapes(cfg).items()}


def weights_checksum(state: dict[str, np.ndarray]) -> float:
  """Order-independent float64 fingerprint of a state dict (detects drift of the weight recipe)."""
  return float(sum(np.sum(np.abs(v.astype(np.float64))) * (1 + zlib.crc32(k.encode()) % 97)
                   for k, v in state.items()))


def text_inputs(cfg: dict = TEXT_CONFIG, seed: int = 0) -> np.ndarray:
  """Token ids int32 (3, 77) shaped like real prompts: start, words, end, zero padding.

  Ids `vocab - 2` / `vocab - 1` stand for <start_of_text> / <end_of_text>; the last row fills all 77.
  """
  rng = np.random.RandomState(seed)
  length, start, end = cfg["context_length"], cfg["vocab_size"] - 2, cfg["vocab_size"] - 1
  tokens = np.zeros((3, length), np.int32)
  for row, n_words in enumerate((5, 17, length - 2)):
    ids = [start] + list(rng.randint(1, cfg["vocab_size"] - 2, size=n_words)) + [end]
    tokens[row, :len(ids)] = ids
  return tokens


def vae_inputs(cfg: dict = VAE_CONFIG, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Images (2, 32, 32, 3) in [-1, 1] and latents z (2, 8, 8, z) ~ N(0, 1), NHWC float32."""
  rng = np.random.RandomState(seed)
  f = 2 ** (len(cfg["channel_mult"]) - 1)
  images = rng.uniform(-1, 1, (2, IMAGE_SIZE, IMAGE_SIZE, cfg["in_channels"])).astype(np.float32)
  z = rng.standard_normal((2, IMAGE_SIZE // f, IMAGE_SIZE // f, cfg["z_channels"]))
  return images, z.astype(np.float32)


# --- torch part --------------------------------------------------------------------------------------


def torch_text_reference(state: dict[str, np.ndarray], cfg: dict, tokens: np.ndarray,
                         prefix: str = TEXT_PREFIX) -> np.ndarray:
  """Penultimate-layer states after the final LayerNorm from transformers' CLIPTextModel, (B, L, W)."""
  import torch
  import transformers
  from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

  config = transformers.CLIPTextConfig(
      vocab_size=cfg["vocab_size"], hidden_size=cfg["width"], intermediate_size=cfg["mlp_width"],
      num_hidden_layers=cfg["num_layers"], num_attention_heads=cfg["num_heads"],
      max_position_embeddings=cfg["context_length"], hidden_act="gelu", layer_norm_eps=1e-5,
      projection_dim=cfg["width"], bos_token_id=cfg["vocab_size"] - 2,
      eos_token_id=cfg["vocab_size"] - 1, pad_token_id=0)
  config._attn_implementation = "eager"  # noqa: SLF001  (explicit softmax, no fused kernel)
  model = transformers.CLIPTextModel(config).eval()
  checkpoint = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
  converted = convert_open_clip_checkpoint(model, checkpoint, prefix=prefix)
  # transformers v5 dropped the `text_model.` level from CLIPTextModel; v4 keeps it.
  own = set(model.state_dict())
  if not any(k.startswith("text_model.") for k in own):
    converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
  converted.pop("text_projection.weight", None)
  missing, unexpected = model.load_state_dict(converted, strict=False)
  if unexpected or set(missing) - {"text_model.embeddings.position_ids", "embeddings.position_ids"}:
    raise RuntimeError(f"CLIPTextModel load: missing {missing}, unexpected {unexpected}")
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(tokens).long(), output_hidden_states=True)
    penultimate = out.hidden_states[-2]
    final_norm = getattr(model, "text_model", model).final_layer_norm
    return final_norm(penultimate).numpy().astype(np.float32)


def _diffusers_vae_config(cfg: dict) -> dict:
  n = len(cfg["channel_mult"])
  return dict(in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
              down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
              block_out_channels=[m * cfg["base_channels"] for m in cfg["channel_mult"]],
              layers_per_block=cfg["num_res_blocks"], latent_channels=cfg["z_channels"],
              norm_num_groups=32, sample_size=IMAGE_SIZE)


def torch_vae_reference(state: dict[str, np.ndarray], cfg: dict, images: np.ndarray, z: np.ndarray
                       ) -> dict[str, np.ndarray]:
  """diffusers AutoencoderKL: posterior mean/logvar of `images` and `decode(z)` (NHWC), plus the
  diffusers key names with the LDM key each was converted from."""
  import torch
  from diffusers import AutoencoderKL
  from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

  dcfg = _diffusers_vae_config(cfg)
  vae = AutoencoderKL(**dcfg).eval()
  checkpoint = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
  converted = convert_ldm_vae_checkpoint(checkpoint, dcfg)
  vae.load_state_dict(converted, strict=True)
  # Which LDM tensor each diffusers key holds (values are all distinct random tensors).
  source = {}
  for dkey, dval in converted.items():
    flat = dval.numpy().reshape(-1)
    hits = [k for k, v in state.items() if v.size == flat.size and np.array_equal(v.reshape(-1), flat)]
    if len(hits) != 1:
      raise RuntimeError(f"{dkey}: {len(hits)} LDM tensors match")
    source[dkey] = hits[0]
  to_nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
  to_nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1).astype(np.float32)
  with torch.no_grad():
    posterior = vae.encode(to_nchw(images)).latent_dist
    decoded = vae.decode(to_nchw(z)).sample
  names = sorted(source)
  return {"mean": to_nhwc(posterior.mean), "logvar": to_nhwc(posterior.logvar),
          "decoded": to_nhwc(decoded), "diffusers_names": np.array(names),
          "diffusers_sources": np.array([source[n] for n in names])}


def generate_text() -> dict[str, np.ndarray]:
  state = ldm_text_state()
  tokens = text_inputs()
  return {"config": np.array(json.dumps(TEXT_CONFIG)), "tokens": tokens,
          "weights_checksum": np.float64(weights_checksum(state)),
          "output": torch_text_reference(state, TEXT_CONFIG, tokens)}


def generate_vae() -> dict[str, np.ndarray]:
  state = ldm_vae_state()
  images, z = vae_inputs()
  ref = torch_vae_reference(state, VAE_CONFIG, images, z)
  return {"config": np.array(json.dumps(VAE_CONFIG)), "images": images, "z": z,
          "weights_checksum": np.float64(weights_checksum(state)), **ref}


def _save(path: pathlib.Path, data: dict[str, np.ndarray]) -> None:
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **data)
  os.replace(tmp, path)
  print(f"wrote {path} ({path.stat().st_size} bytes)")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out-dir", type=pathlib.Path, default=OUT_DIR)
  args = parser.parse_args()
  args.out_dir.mkdir(parents=True, exist_ok=True)
  _save(args.out_dir / TEXT_FILE, generate_text())
  _save(args.out_dir / VAE_FILE, generate_vae())


if __name__ == "__main__":
  main()
