"""MVDream PyTorch weights -> Flax parameter trees saved as safetensors (no torch needed to load them).

Sources accepted by `convert_checkpoint`:
  * the official single file `sd-v2.1-base-4view.pt` (a flat LDM state dict; read with
    `torch.load(..., weights_only=True)`, torch needed) or the same tensors as `.safetensors` (no torch);
  * a diffusers-format folder: `unet/`, `vae/`, `text_encoder/` with `*.safetensors` (or `*.bin`, torch
    needed) and `config.json`. The UNet may use LDM names (as MVDream's diffusers ports ship it) or diffusers
    `UNet2DConditionModel` names with `class_embedding` as the camera MLP.

The LDM checkpoint is split by prefix:
  model.diffusion_model.*   -> the UNet (`convert_unet_state`, names mirror LDM: rename + transpose)
  first_stage_model.*       -> the VAE (`prior.vae.convert_vae_state`)
  cond_stage_model.model.*  -> the OpenCLIP text tower (`prior.text_encoder.convert_text_encoder_state`)
Every source key is consumed or explicitly ignored (`IGNORED_TOP_LEVEL_KEYS`: the DDPM schedule buffers,
which `prior.schedule` rebuilds in float64); anything else is an error, as is any shape mismatch.

UNet renames (Flax path joined by '.' == LDM key, leaf names mapped):
  .../kernel -> .weight, transposed: Dense (in, out) <- Linear (out, in); Conv HWIO <- OIHW
  .../scale  -> .weight (GroupNorm / LayerNorm);  .../bias -> .bias
  e.g. input_blocks.1.1/transformer_blocks.0/attn1/to_q/kernel <- input_blocks.1.1.transformer_blocks.0.
  attn1.to_q.weight.T

Output folder (written atomically):
  config.json               {"format", "unet": UNetConfig, "vae": ..., "text_encoder": ..., "source", ...}
  unet.safetensors          flattened keys 'a/b/c' of the Flax tree, float32 (or --dtype float16)
  vae.safetensors, text_encoder.safetensors   (when the source has them)
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import struct
from typing import Any, Callable, Mapping

import numpy as np
from safetensors.numpy import save_file

from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import text_encoder
from animdreamer_jax.prior import vae
from animdreamer_jax.prior.unet import UNetConfig, unet_param_shapes

CHECKPOINT_NAME = "sd-v2.1-base-4view.pt"
CHECKPOINT_URL = "https://huggingface.co/MVDream/MVDream"
FORMAT = "animdreamer_jax.mvdream/1"

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.model."

# LatentDiffusionInterface.register_schedule buffers: derived from the beta schedule, rebuilt in float64.
IGNORED_TOP_LEVEL_KEYS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2",
)

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def missing_checkpoint_message(path: str | os.PathLike) -> str:
  return (f"{path}: not found. The MVDream weights are the file {CHECKPOINT_NAME} (about 5 GB), published "
          f"in the Hugging Face repository MVDream/MVDream ({CHECKPOINT_URL}); download it yourself, then "
          f"run `animdreamer convert-mvdream --ckpt {CHECKPOINT_NAME} --out weights/mvdream`")


# --- reading state dicts -----------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """All tensors of a .safetensors file as numpy arrays (memory-mapped; BF16 widened to float32).

  A small reader of the documented format (8-byte little-endian header length, JSON header, raw data)
  so that bfloat16 files load without torch.
  """
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      if header_len > 100_000_000:
        raise ValueError("header too large")
      header = json.loads(f.read(header_len))
  except FileNotFoundError:
    raise UserError(f"{path}: not found") from None
  except (struct.error, ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not a safetensors file ({e})") from None
  data_start = 8 + header_len
  size = path.stat().st_size
  raw = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start,
                  shape=(size - data_start,)) if size > data_start else np.zeros((0,), np.uint8)
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, (begin, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
      raise UserError(f"{path}: corrupt header entry for '{name}'") from None
    if end > raw.shape[0] or begin > end:
      raise UserError(f"{path}: tensor '{name}' lies outside the file (truncated?)")
    chunk = raw[begin:end]
    if dtype == "BF16":
      bits = chunk.view(np.uint16).astype(np.uint32) << 16
      array = bits.view(np.float32).reshape(shape)
    elif dtype in _SAFETENSORS_DTYPES:
      array = chunk.view(_SAFETENSORS_DTYPES[dtype]).reshape(shape)
    else:
      raise UserError(f"{path}: tensor '{name}' has unsupported dtype {dtype}")
    out[name] = array
  return out


def read_torch_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A PyTorch state dict (`.pt`/`.ckpt`/`.bin`) as numpy arrays; needs torch, loads weights only."""
  path = pathlib.Path(path)
  try:
    # torch is the optional `parity` extra: imported only when a PyTorch file is read.
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"{path}: reading PyTorch files needs torch, which is not installed; convert the "
                    "file to .safetensors elsewhere, or install the optional extra: "
                    "python3 -m pip install -e '.[parity]'") from None
  try:
    try:
      # Memory-mapped: the 5 GB checkpoint is not copied into RAM before conversion.
      state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:
      if "mmap" not in str(e):
        raise
      state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
  except FileNotFoundError:
    raise UserError(f"{path}: not found") from None
  except Exception as e:  # torch raises many types for corrupt / non-weights pickles.
    raise UserError(f"{path}: cannot be read as a PyTorch state dict ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''})") from None
  if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]  # Lightning-style wrapper.
  if not isinstance(state, Mapping):
    raise UserError(f"{path}: does not hold a state dict (got {type(state).__name__})")
  out = {}
  for name, tensor in state.items():
    if not hasattr(tensor, "detach"):
      raise UserError(f"{path}: entry '{name}' is not a tensor ({type(tensor).__name__})")
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
      tensor = tensor.float()
    out[name] = tensor.numpy()
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A flat name -> numpy array dict from `.safetensors` or a PyTorch file."""
  path = pathlib.Path(path)
  if not path.exists():
    raise UserError(missing_checkpoint_message(path))
  if path.suffix == ".safetensors":
    return read_safetensors(path)
  return read_torch_checkpoint(path)


# --- UNet --------------------------------------------------------------------------------------


def flax_path_to_torch_key(path: tuple[str, ...]) -> str:
  """('input_blocks.1.0', 'in_layers.2', 'kernel') -> 'input_blocks.1.0.in_layers.2.weight'."""
  return ".".join(path[:-1] + (_LEAF_TO_TORCH.get(path[-1], path[-1]),))


def _torch_to_flax_layout(key: str, value: np.ndarray, target_shape: tuple[int, ...],
                          leaf: str) -> np.ndarray:
  """Transposes a torch tensor into the Flax layout of `target_shape`; UserError on mismatch."""
  value = np.asarray(value)
  if leaf == "kernel":
    if len(target_shape) == 4 and value.ndim == 4:
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif len(target_shape) == 2 and value.ndim == 4 and value.shape[2:] == (1, 1):
      value = value[:, :, 0, 0].T  # a 1x1 conv used as a Dense (non-linear SpatialTransformer)
    elif len(target_shape) == 2 and value.ndim == 2:
      value = value.T  # (out, in) -> (in, out)
  if value.shape != tuple(target_shape):
    raise UserError(f"{key}: shape {tuple(np.shape(value))} (after the Flax transpose) does not match "
                    f"the expected {tuple(target_shape)}")
  return value


def infer_unet_config(state: Mapping[str, Any], prefix: str = LDM_UNET_PREFIX,
                      num_head_channels: int = 64) -> UNetConfig:
  """Reads the UNet sizes off LDM-named tensor shapes (heads are not stored: `num_head_channels`)."""
  def shape(name: str) -> tuple[int, ...]:
    if prefix + name not in state:
      raise UserError(f"{prefix}{name}: missing from the checkpoint (no LDM UNet under '{prefix}')")
    return tuple(np.shape(state[prefix + name]))

  model_channels, in_channels = shape("input_blocks.0.0.weight")[:2]
  out_channels = shape("out.2.weight")[0]
  levels: list[list[tuple[int, bool]]] = [[]]
  block = 1
  while True:
    if prefix + f"input_blocks.{block}.0.op.weight" in state:
      levels.append([])
    elif prefix + f"input_blocks.{block}.0.in_layers.2.weight" in state:
      channels = shape(f"input_blocks.{block}.0.in_layers.2.weight")[0]
      has_attention = prefix + f"input_blocks.{block}.1.proj_in.weight" in state
      levels[-1].append((channels, has_attention))
    else:
      break
    block += 1
  res_blocks = {len(level) for level in levels}
  if len(res_blocks) != 1 or 0 in res_blocks:
    raise UserError(f"{prefix}input_blocks: unexpected layout ({[len(l) for l in levels]} ResBlocks "
                    "per level)")
  channel_mult, attention_resolutions = [], []
  for level, blocks in enumerate(levels):
    if blocks[-1][0] % model_channels:
      raise UserError(f"{prefix}input_blocks: level {level} width {blocks[-1][0]} is not a multiple of "
                      f"{model_channels}")
    channel_mult.append(blocks[-1][0] // model_channels)
    if blocks[0][1]:
      attention_resolutions.append(2 ** level)
  depth_re = re.compile(re.escape(prefix) + r"middle_block\.1\.transformer_blocks\.(\d+)\.")
  depth = len({m.group(1) for k in state if (m := depth_re.match(k))})
  context_dim = shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
  camera_dim = (shape("camera_embed.0.weight")[1] if prefix + "camera_embed.0.weight" in state
                else None)
  return UNetConfig(in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
                    channel_mult=tuple(channel_mult), num_res_blocks=res_blocks.pop(),
                    attention_resolutions=tuple(sorted(attention_resolutions, reverse=True)),
                    num_head_channels=num_head_channels, transformer_depth=max(depth, 1),
                    context_dim=context_dim, camera_dim=camera_dim)


def convert_unet_state(state: Mapping[str, Any], prefix: str = LDM_UNET_PREFIX,
                       config: UNetConfig | None = None, num_head_channels: int = 64
                      ) -> tuple[dict, set[str], UNetConfig]:
  """LDM-named UNet tensors (MVDream's `model.diffusion_model.*`) -> `MultiViewUNet` params.

  Args:
    state: flat name -> array; may hold other models' keys too (only `prefix` keys are read).
    prefix: where the UNet lives.
    config: expected sizes; inferred from the shapes when None (with `num_head_channels`).
    num_head_channels: channels per head when inferring (64 in SD2.x / MVDream).

  Returns:
    (params, consumed_keys, config): a nested dict of float32 numpy arrays, the keys of `state` used, and
    the config.

  Raises:
    UserError: a missing key, an unexpected key under `prefix`, or a shape mismatch (names the key).
  """
  config = config or infer_unet_config(state, prefix, num_head_channels)
  shapes = unet_param_shapes(config)
  params: dict = {}
  consumed: set[str] = set()

  def visit(tree: Mapping[str, Any], path: tuple[str, ...], out: dict) -> None:
    for name, sub in tree.items():
      if isinstance(sub, Mapping):
        visit(sub, path + (name,), out.setdefault(name, {}))
        continue
      key = prefix + flax_path_to_torch_key(path + (name,))
      if key not in state:
        raise UserError(f"{key}: missing from the checkpoint (expected for {config})")
      out[name] = _torch_to_flax_layout(key, state[key], sub.shape, name).astype(np.float32)
      consumed.add(key)

  visit(shapes, (), params)
  unexpected = sorted(k for k in state if k.startswith(prefix) and k not in consumed)
  if unexpected:
    more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
    raise UserError(f"{unexpected[0]}: unexpected UNet key for {config} "
                    f"({', '.join(unexpected[:5])}{more})")
  return params, consumed, config


# diffusers UNet2DConditionModel -> LDM names (ResNet sub-layers, then block positions).
_RESNET_RENAMES = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."),
                   ("time_emb_proj.", "emb_layers.1."), ("norm2.", "out_layers.0."),
                   ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."))
_TOP_RENAMES = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
                "class_embedding.linear_1.": "camera_embed.0.",
                "class_embedding.linear_2.": "camera_embed.2.",
                "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}


def diffusers_unet_to_ldm(state: Mapping[str, Any], layers_per_block: int | None = None
                         ) -> dict[str, Any]:
  """Renames a diffusers `UNet2DConditionModel` state dict to LDM names (MVDream: class_embedding = camera).

  Inverse of diffusers' `convert_ldm_unet_checkpoint` for the SD2.x layout (checked against it in
  tests/test_convert.py through the committed goldens).

  Raises:
    UserError: a key this layout does not have.
  """
  if layers_per_block is None:
    res = [int(m.group(1)) for k in state if (m := re.match(r"down_blocks\.\d+\.resnets\.(\d+)\.", k))]
    if not res:
      raise UserError("diffusers UNet: no down_blocks.*.resnets.* keys")
    layers_per_block = max(res) + 1
  stride = layers_per_block + 1
  up_with_attention = {m.group(1) for k in state if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}

  def resnet(rest: str) -> str:
    for old, new in _RESNET_RENAMES:
      if rest.startswith(old):
        return new + rest[len(old):]
    return rest

  out = {}
  for key, value in state.items():
    new = None
    for old, repl in _TOP_RENAMES.items():
      if key.startswith(old):
        new = repl + key[len(old):]
    if new is None and (m := re.match(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)):
      side, b, kind, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
      index = 1 + b * stride + j if side == "down" else b * stride + j
      blocks = "input_blocks" if side == "down" else "output_blocks"
      new = (f"{blocks}.{index}.0.{resnet(rest)}" if kind == "resnets"
             else f"{blocks}.{index}.1.{rest}")
    elif new is None and (m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)):
      new = f"input_blocks.{(int(m.group(1)) + 1) * stride}.0.op.{m.group(2)}"
    elif new is None and (m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key)):
      sub = 2 if m.group(1) in up_with_attention else 1
      new = f"output_blocks.{int(m.group(1)) * stride + layers_per_block}.{sub}.conv.{m.group(2)}"
    elif new is None and (m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)):
      kind, j, rest = m.group(1), int(m.group(2)), m.group(3)
      new = (f"middle_block.{2 * j}.{resnet(rest)}" if kind == "resnets"
             else f"middle_block.{2 * j + 1}.{rest}")
    if new is None:
      raise UserError(f"{key}: not a key of a diffusers UNet2DConditionModel with the SD2 layout")
    out[new] = value
  return out


# --- whole checkpoints -------------------------------------------------------------------------


def _split_and_convert_ldm(state: Mapping[str, Any], num_head_channels: int,
                           log: Callable[[str], None]) -> dict[str, Any]:
  """The official single-file layout -> {'unet': (cfg, params), 'vae': ..., 'text_encoder': ...}."""
  result: dict[str, Any] = {}
  consumed: set[str] = set()
  if not any(k.startswith(LDM_UNET_PREFIX) for k in state):
    raise UserError(f"checkpoint: no '{LDM_UNET_PREFIX}*' keys; is this an MVDream/LDM checkpoint? "
                    f"(first keys: {', '.join(list(state)[:3])})")
  log("converting the UNet")
  params, used, cfg = convert_unet_state(state, LDM_UNET_PREFIX, num_head_channels=num_head_channels)
  result["unet"] = (cfg.to_dict(), params)
  consumed |= used
  if any(k.startswith(LDM_VAE_PREFIX) for k in state):
    log("converting the VAE")
    params, used = vae.convert_vae_state(state, LDM_VAE_PREFIX)
    result["vae"] = (vae.vae_config_from_state(state, LDM_VAE_PREFIX).to_dict(), params)
    consumed |= set(used)
  if any(k.startswith(LDM_TEXT_PREFIX) for k in state):
    log("converting the text encoder")
    params, used = text_encoder.convert_text_encoder_state(state, LDM_TEXT_PREFIX)
    result["text_encoder"] = (
        text_encoder.text_encoder_config_from_state(state, LDM_TEXT_PREFIX).to_dict(), params)
    consumed |= set(used)
  ignored = sorted(k for k in state if k in IGNORED_TOP_LEVEL_KEYS)
  leftover = sorted(k for k in state if k not in consumed and k not in IGNORED_TOP_LEVEL_KEYS)
  if leftover:
    more = f" and {len(leftover) - 5} more" if len(leftover) > 5 else ""
    raise UserError(f"{leftover[0]}: checkpoint key neither converted nor on the ignore list "
                    f"({', '.join(leftover[:5])}{more})")
  result["ignored_keys"] = ignored
  return result


def _check_all_used(where, state: Mapping[str, Any], used, ignored) -> None:
  leftover = sorted(set(state) - set(used) - set(ignored))
  if leftover:
    more = f" and {len(leftover) - 5} more" if len(leftover) > 5 else ""
    raise UserError(f"{where}: {leftover[0]}: key neither converted nor on the ignore list "
                    f"({', '.join(leftover[:5])}{more})")


def _vae_config_from_diffusers(config_json: Mapping[str, Any]) -> vae.VaeConfig:
  """VaeConfig from a diffusers `vae/config.json` (SD defaults for absent entries)."""
  widths = [int(c) for c in config_json.get("block_out_channels", (128, 256, 512, 512))]
  return vae.VaeConfig(
      in_channels=int(config_json.get("in_channels", 3)),
      out_channels=int(config_json.get("out_channels", 3)), base_channels=widths[0],
      channel_mult=tuple(c // widths[0] for c in widths),
      num_res_blocks=int(config_json.get("layers_per_block", 2)),
      z_channels=int(config_json.get("latent_channels", 4)),
      norm_groups=int(config_json.get("norm_num_groups", 32)),
      scale_factor=float(config_json.get("scaling_factor", 0.18215)))


# HF CLIPTextModel -> OpenCLIP text tower names (per block; q/k/v are concatenated into in_proj).
_HF_CLIP_BLOCK_RENAMES = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                          "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
# Present in some HF exports, unused by the text tower: the position-id buffer, a projection head.
_HF_CLIP_IGNORED = ("embeddings.position_ids", "text_projection.weight")


def hf_clip_text_to_open_clip(state: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
  """transformers `CLIPTextModel` state dict -> OpenCLIP text-tower names (no prefix).

  Keys may carry the `text_model.` level (transformers v4 files) or not (v5).

  Returns:
    (open_clip_state, ignored_keys).

  Raises:
    UserError: a key this mapping does not know.
  """
  out: dict[str, np.ndarray] = {}
  qkv: dict[int, dict[str, np.ndarray]] = {}
  ignored = []
  for full_key, value in state.items():
    key = full_key.removeprefix("text_model.")
    if key in _HF_CLIP_IGNORED:
      ignored.append(full_key)
      continue
    if key == "embeddings.token_embedding.weight":
      out["token_embedding.weight"] = value
    elif key == "embeddings.position_embedding.weight":
      out["positional_embedding"] = value
    elif key.startswith("final_layer_norm."):
      out["ln_final." + key.rsplit(".", 1)[1]] = value
    elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
      block, layer, kind = int(m.group(1)), m.group(2), m.group(3)
      if m2 := re.fullmatch(r"self_attn\.([qkv])_proj", layer):
        qkv.setdefault(block, {})[m2.group(1) + kind] = np.asarray(value)
      elif layer in _HF_CLIP_BLOCK_RENAMES:
        out[f"transformer.resblocks.{block}.{_HF_CLIP_BLOCK_RENAMES[layer]}.{kind}"] = value
      else:
        raise UserError(f"{full_key}: not a key of a transformers CLIPTextModel")
    else:
      raise UserError(f"{full_key}: not a key of a transformers CLIPTextModel")
  for block, parts in qkv.items():
    for kind in ("weight", "bias"):
      names = [c + kind for c in "qkv"]
      missing = [n for n in names if n not in parts]
      if missing:
        raise UserError(f"encoder.layers.{block}.self_attn: missing {missing[0][0]}_proj.{kind}")
      out[f"transformer.resblocks.{block}.attn.in_proj_{kind}"] = np.concatenate(
          [parts[n] for n in names], axis=0)
  return out, ignored


def _find_weights_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
  for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors", f"{stem}.bin", f"{stem}.fp16.bin"):
    if (folder / name).is_file():
      return folder / name
  raise UserError(f"{folder}: no {stem}.safetensors (or .bin) in this diffusers folder")


def read_json(path: pathlib.Path) -> dict:
  """A JSON file's content ({} when absent; UserError when not JSON)."""
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    return {}
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path}: not valid JSON ({e})") from None


def _convert_diffusers_folder(folder: pathlib.Path, num_head_channels: int,
                              log: Callable[[str], None]) -> dict[str, Any]:
  """A diffusers-format folder (unet/, vae/, text_encoder/) -> the same result as the LDM route."""
  result: dict[str, Any] = {"ignored_keys": []}
  unet_dir = folder / "unet"
  if not unet_dir.is_dir():
    raise UserError(f"{folder}: not a diffusers folder (no unet/ subfolder)")
  unet_config = read_json(unet_dir / "config.json")
  state = read_state_dict(_find_weights_file(unet_dir, "diffusion_pytorch_model"))
  if any(k.startswith(("down_blocks.", "conv_in.")) for k in state):
    state = diffusers_unet_to_ldm(state, unet_config.get("layers_per_block"))
    heads = unet_config.get("num_attention_heads") or unet_config.get("attention_head_dim")
    channels = unet_config.get("block_out_channels")
    if isinstance(heads, (list, tuple)) and channels:
      num_head_channels = int(channels[0]) // int(heads[0])
    elif isinstance(heads, int) and channels:
      num_head_channels = int(channels[0]) // heads
  else:
    num_head_channels = int(unet_config.get("num_head_channels", num_head_channels) or num_head_channels)
  log("converting the UNet")
  params, _, cfg = convert_unet_state(state, "", num_head_channels=num_head_channels)
  result["unet"] = (cfg.to_dict(), params)
  if (folder / "vae").is_dir():
    log("converting the VAE")
    state = read_state_dict(_find_weights_file(folder / "vae", "diffusion_pytorch_model"))
    params, used = vae.convert_vae_diffusers_state(state, "")
    config = _vae_config_from_diffusers(read_json(folder / "vae" / "config.json"))
    _check_all_used(folder / "vae", state, used, ignored=())
    result["vae"] = (config.to_dict(), params)
  if (folder / "text_encoder").is_dir():
    log("converting the text encoder")
    state = read_state_dict(_find_weights_file(folder / "text_encoder", "model"))
    open_clip_state, ignored = hf_clip_text_to_open_clip(state)
    hf_config = read_json(folder / "text_encoder" / "config.json")
    width = int(np.shape(open_clip_state["token_embedding.weight"])[1])
    head_dim = width // int(hf_config.get("num_attention_heads", width // 64))
    # An HF export holds exactly the blocks that run (23 for SD2 / MVDream): skip none.
    config = text_encoder.text_encoder_config_from_state(open_clip_state, "", head_dim=head_dim,
                                                 skip_last_layers=0)
    params, used = text_encoder.convert_text_encoder_state(open_clip_state, "", config)
    _check_all_used(folder / "text_encoder", open_clip_state, used, ignored=())
    result["text_encoder"] = (config.to_dict(), params)
    result["ignored_keys"] += [f"text_encoder/{k}" for k in ignored]
  return result


def convert_checkpoint(path: str | os.PathLike, num_head_channels: int = 64,
                       log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
  """Converts an MVDream checkpoint file or diffusers folder.

  Returns:
    {'unet': (config_dict, params), 'vae': ..., 'text_encoder': ... (when present), 'ignored_keys': [..]}
    with params nested dicts of float32 numpy arrays.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    return _convert_diffusers_folder(path, num_head_channels, log)
  log(f"reading {path}")
  return _split_and_convert_ldm(read_state_dict(path), num_head_channels, log)


# --- saving and loading the Flax trees ---------------------------------------------------------


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x} (Flax module names contain '.', so the separator is '/')."""
  out = {}
  for name, sub in tree.items():
    if "/" in name:
      raise ValueError(f"parameter name {name!r} contains '/'")
    if isinstance(sub, Mapping):
      out.update(flatten_params(sub, prefix + name + "/"))
    else:
      out[prefix + name] = sub
  return out


def unflatten_params(flat: Mapping[str, Any]) -> dict:
  """Inverse of `flatten_params`."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split("/")
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def check_output_folder(out_dir: str | os.PathLike, overwrite: bool) -> pathlib.Path:
  """The folder a converter may write: absent, empty, or replaced with `overwrite` (UserError)."""
  out_dir = pathlib.Path(out_dir)
  if out_dir.exists() and not out_dir.is_dir():
    raise UserError(f"{out_dir}: exists and is not a folder")
  if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
    raise UserError(f"{out_dir}: folder exists and is not empty (pass --overwrite to replace it)")
  return out_dir


def check_param_shapes(where: str, expected: Mapping[str, Any], got: Mapping[str, Any],
                       config: Any) -> None:
  """UserError naming the first key missing from, unexpected in, or of another shape in `got`
  (flattened parameters read from `where`) than in `expected` (for `config`)."""
  for key in sorted(set(expected) | set(got)):
    if key not in got:
      raise UserError(f"{where}: {key} missing")
    if key not in expected:
      raise UserError(f"{where}: {key} unexpected for {config}")
    if tuple(got[key].shape) != tuple(expected[key].shape):
      raise UserError(f"{where}: {key} has shape {tuple(got[key].shape)}, expected "
                      f"{tuple(expected[key].shape)} for {config}")


def save_prior(result: Mapping[str, Any], out_dir: str | os.PathLike, dtype: str = "float32",
               overwrite: bool = False, source: str = "") -> pathlib.Path:
  """Writes `convert_checkpoint`'s result to `out_dir` atomically (temp folder + rename)."""
  out_dir = check_output_folder(out_dir, overwrite)
  np_dtype = {"float32": np.float32, "float16": np.float16}[dtype]
  # An existing folder is replaced: one with files only with `overwrite` (checked above).
  with files.atomic_folder(out_dir, replace=True) as tmp:
    config: dict[str, Any] = {"format": FORMAT, "dtype": dtype, "source": source,
                              "ignored_keys": list(result.get("ignored_keys", []))}
    for part in ("unet", "vae", "text_encoder"):
      if part not in result:
        continue
      part_config, params = result[part]
      config[part] = part_config
      flat = {k: np.ascontiguousarray(np.asarray(v).astype(np_dtype))
              for k, v in flatten_params(params).items()}
      save_file(flat, str(tmp / f"{part}.safetensors"))
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
  return out_dir


def load_prior_config(directory: str | os.PathLike) -> dict[str, Any]:
  """The config.json of a converted folder (UserError with the download hint when missing)."""
  directory = pathlib.Path(directory)
  path = directory / "config.json"
  if not path.is_file():
    raise UserError(f"{directory}: no converted MVDream weights here (config.json missing). Convert "
                    f"{CHECKPOINT_NAME} (published at {CHECKPOINT_URL}) with `animdreamer "
                    f"convert-mvdream --ckpt {CHECKPOINT_NAME} --out {directory}`")
  config = read_json(path)
  if config.get("format") != FORMAT:
    raise UserError(f"{path}: format {config.get('format')!r}, expected {FORMAT!r}")
  return config


def load_params(directory: str | os.PathLike, part: str) -> dict:
  """One part's params ('unet', 'vae', 'text_encoder') as a nested dict of numpy arrays."""
  path = pathlib.Path(directory) / f"{part}.safetensors"
  if not path.is_file():
    raise UserError(f"{path}: missing ({part} weights were not in the converted checkpoint)")
  return unflatten_params({k: np.asarray(v) for k, v in read_safetensors(path).items()})


def load_unet(directory: str | os.PathLike) -> tuple[UNetConfig, dict]:
  """(UNetConfig, params) from a converted folder; params checked against the config's shapes."""
  config = load_prior_config(directory)
  if "unet" not in config:
    raise UserError(f"{directory}/config.json: no 'unet' entry")
  unet_config = UNetConfig.from_dict(config["unet"], where=f"{directory}/config.json unet")
  params = load_params(directory, "unet")
  check_param_shapes(f"{directory}/unet.safetensors", flatten_params(unet_param_shapes(unet_config)),
                     flatten_params(params), unet_config)
  return unet_config, params


def load_prior_params(directory: str | os.PathLike) -> dict[str, Any]:
  """Everything in a converted folder: {'config': dict, 'unet': params, 'vae': ..., 'text_encoder': ...}.

  Parts missing from the source are absent from the dict. The UNet params are shape-checked.
  """
  config = load_prior_config(directory)
  out: dict[str, Any] = {"config": config}
  _, out["unet"] = load_unet(directory)
  for part in ("vae", "text_encoder"):
    if part in config:
      out[part] = load_params(directory, part)
  return out
