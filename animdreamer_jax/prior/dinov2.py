"""DINOv2 ViT (S/14 by default) in Flax linen: the image features lab4d and AnimatableDreamer train on.

The network of facebookresearch/dinov2 (`dinov2_vits14`): a 14 x 14 patch embedding, a class token,
learned position embeddings for a 37 x 37 grid (518 px) resized to the image's grid by PyTorch's bicubic
interpolation (`align_corners=False`, a = -0.75), pre-LN blocks (LayerNorm eps 1e-6, fused q/k/v with bias,
layer scale on both branches, exact-erf GELU MLP) and a final LayerNorm. `Dinov2` returns every token
after the final norm, (B, 1 + h w, D): token 0 is the class token, the rest the h x w patch grid in raster
order (what HF's `Dinov2Model(...).last_hidden_state` returns).

Parameter names mirror the original checkpoint (`dinov2_vits14_pretrain.pth`): `blocks.3.attn.qkv.weight`
<-> `blocks.3/attn/qkv/kernel` (transposed). `convert_dinov2_state` also reads HF's `Dinov2Model` state dict
(facebook/dinov2-small: `encoder.layer.3.attention.attention.query.weight`, ...; transformers >= 5
names them `attention.q_proj` in memory), fusing q/k/v.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import convert
from animdreamer_jax.prior import norms
from animdreamer_jax.prior import text_encoder

CHECKPOINT_NAME = "dinov2_vits14_pretrain.pth"
CHECKPOINT_URL = ("https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth "
                  "(or the Hugging Face repository facebook/dinov2-small)")
FORMAT = "animdreamer_jax.dinov2/1"
WEIGHTS_FILE = "dinov2.safetensors"
# ImageNet statistics the network was trained with (inputs are (rgb - mean) / std).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class Dinov2Config:
  """Sizes (defaults: ViT-S/14, the model lab4d uses; ViT-B/14: embed_dim 768, num_heads 12)."""
  patch_size: int = 14
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_hidden: int = 1536  # MLP width (4 x embed_dim)
  position_grid: int = 37  # the position embeddings cover a grid this wide (518 px / 14)
  layer_norm_eps: float = 1e-6

  def __post_init__(self):
    if self.embed_dim % self.num_heads:
      raise UserError(f"Dinov2Config: embed_dim {self.embed_dim} is not a multiple of num_heads "
                      f"{self.num_heads}")

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> "Dinov2Config":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise UserError(f"{where}: unknown DINOv2 config keys {unknown}")
    return cls(**{k: int(v) if k != "layer_norm_eps" else float(v) for k, v in values.items()})


def cubic_resize_matrix(size_in: int, size_out: int, a: float = -0.75) -> np.ndarray:
  """(size_out, size_in) weights of PyTorch's 1-D bicubic resize (align_corners=False, borders
  clamped): out = W @ in. Separable: a 2-D resize is W_h @ X @ W_w^T."""
  scale = size_in / size_out
  weights = np.zeros((size_out, size_in), np.float64)

  def kernel(x):
    x = abs(x)
    if x <= 1:
      return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
      return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0

  for i in range(size_out):
    source = (i + 0.5) * scale - 0.5
    base = int(np.floor(source))
    frac = source - base
    for tap in range(-1, 3):
      weights[i, min(max(base + tap, 0), size_in - 1)] += kernel(tap - frac)
  return weights.astype(np.float32)


def resize_position_embeddings(table: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """(1 + G^2, D) class + G x G patch position embeddings -> (1 + h w, D) for an h x w grid."""
  side = int(round((table.shape[0] - 1) ** 0.5))
  patches = table[1:].reshape(side, side, -1).astype(jnp.float32)
  rows = jnp.asarray(cubic_resize_matrix(side, grid[0]))
  cols = jnp.asarray(cubic_resize_matrix(side, grid[1]))
  resized = jnp.einsum("hi,ijd,wj->hwd", rows, patches, cols, precision="highest")
  return jnp.concatenate([table[:1].astype(jnp.float32), resized.reshape(grid[0] * grid[1], -1)])


class Attention(nn.Module):
  """Multi-head self-attention with a fused q/k/v projection (`qkv`) and an output `proj`."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 2, 0)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * head_dim**-0.5, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(batch, length, width)
    return nn.Dense(width, dtype=self.dtype, name="proj")(out)


class LayerScale(nn.Module):
  """x * gamma (per channel)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    gamma = self.param("gamma", nn.initializers.constant(1e-5), (x.shape[-1],))
    return x * gamma.astype(x.dtype)


class Block(nn.Module):
  """x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""
  config: Dinov2Config
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    h = norms.layer_norm(cfg.layer_norm_eps, "norm1")(x).astype(self.dtype)
    x = x + LayerScale(name="ls1")(Attention(cfg.num_heads, self.dtype, name="attn")(h))
    h = norms.layer_norm(cfg.layer_norm_eps, "norm2")(x).astype(self.dtype)
    mlp = text_encoder.Mlp(cfg.mlp_hidden, self.dtype, names=("fc1", "fc2"), name="mlp")
    return x + LayerScale(name="ls2")(mlp(h))


class Dinov2(nn.Module):
  """Normalised images (B, H, W, 3) -> tokens (B, 1 + h w, D) float32 after the final norm
  (h = H // patch, w = W // patch; pixels beyond whole patches are ignored, as a strided conv does).

  Attributes:
    config: sizes.
    dtype: activation dtype (norms and softmax stay float32).
  """
  config: Dinov2Config = Dinov2Config()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    cfg = self.config
    batch = images.shape[0]
    grid = (images.shape[1] // cfg.patch_size, images.shape[2] // cfg.patch_size)
    if min(grid) < 1:
      raise UserError(f"DINOv2: images of {images.shape[1:3]} px are smaller than one "
                      f"{cfg.patch_size}-px patch")
    patches = nn.Conv(cfg.embed_dim, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                      padding="VALID", dtype=self.dtype, name="patch_embed.proj")(images)
    patches = patches.reshape(batch, grid[0] * grid[1], cfg.embed_dim).astype(jnp.float32)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, cfg.embed_dim))
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, 1 + cfg.position_grid ** 2, cfg.embed_dim))
    x = jnp.concatenate([jnp.broadcast_to(cls, (batch, 1, cfg.embed_dim)), patches], axis=1)
    x = (x + resize_position_embeddings(pos[0], grid)[None]).astype(self.dtype)
    for i in range(cfg.depth):
      x = Block(cfg, self.dtype, name=f"blocks.{i}")(x)
    return norms.layer_norm(cfg.layer_norm_eps, "norm")(x).astype(jnp.float32)


def init_dinov2_params(config: Dinov2Config, rng: jax.Array) -> dict:
  """Random parameters of `Dinov2(config)` (tests, tiny runs)."""
  images = jnp.zeros((1, config.patch_size, config.patch_size, 3), jnp.float32)
  return Dinov2(config).init(rng, images)["params"]


def dinov2_param_shapes(config: Dinov2Config) -> dict:
  """The parameter tree's ShapeDtypeStructs (no allocation)."""
  return jax.eval_shape(lambda: init_dinov2_params(config, jax.random.PRNGKey(0)))


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def apply_dinov2(params: Any, images: jax.Array, config: Dinov2Config,
                 dtype: Any = jnp.float32) -> jax.Array:
  """Jitted pure wrapper: normalised images (B, H, W, 3) -> tokens (B, 1 + h w, D)."""
  return Dinov2(config, dtype=dtype).apply({"params": params}, images)


def normalise_images(rgb: np.ndarray | jax.Array) -> jax.Array:
  """RGB in [0, 1] (..., 3) -> the network's input ((rgb - mean) / std)."""
  return (jnp.asarray(rgb, jnp.float32) - jnp.asarray(IMAGE_MEAN)) / jnp.asarray(IMAGE_STD)


# --- conversion from the PyTorch state dicts ---------------------------------------------------

_HF_PREFIXES = ("dinov2.", "model.")
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight",  # the hub checkpoint's spelling
    "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight",  # transformers >= 5 in memory
    "attention.o_proj.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}
_HF_TOP = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
# Keys of the checkpoints that the features do not use.
_IGNORED = ("mask_token", "embeddings.mask_token", "pooler.dense.weight", "pooler.dense.bias")


def hf_to_original(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """HF `Dinov2Model` state dict -> the original checkpoint's names (q, k, v fused into qkv)."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
  for key, value in state.items():
    for prefix in _HF_PREFIXES:
      if key.startswith(prefix):
        key = key[len(prefix):]
    value = np.asarray(value)
    if key in _HF_TOP:
      out[_HF_TOP[key]] = value
      continue
    match = _HF_LAYER.match(key)
    if match is None:
      if key in _IGNORED:
        continue
      raise UserError(f"DINOv2 checkpoint: unexpected key {key!r}")
    layer, rest = match.groups()
    part = re.match(r"^attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)$",
                    rest)
    if part:
      which = part.group(1) or {"q": "query", "k": "key", "v": "value"}[part.group(2)]
      qkv.setdefault((layer, part.group(3)), {})[which] = value
    elif rest in _HF_RENAMES:
      out[f"blocks.{layer}.{_HF_RENAMES[rest]}"] = value
    else:
      raise UserError(f"DINOv2 checkpoint: unexpected key {key!r}")
  for (layer, leaf), parts in qkv.items():
    if set(parts) != {"query", "key", "value"}:
      raise UserError(f"DINOv2 checkpoint: layer {layer} lacks some of query/key/value {leaf}")
    out[f"blocks.{layer}.attn.qkv.{leaf}"] = np.concatenate(
        [parts["query"], parts["key"], parts["value"]], axis=0)
  return out


def config_from_state(state: Mapping[str, Any]) -> Dinov2Config:
  """The sizes of an original-named state dict (heads: 64 channels each, as every DINOv2 size)."""
  try:
    proj = np.shape(state["patch_embed.proj.weight"])
    pos = np.shape(state["pos_embed"])
    fc1 = np.shape(state["blocks.0.mlp.fc1.weight"])
  except KeyError as e:
    raise UserError(f"DINOv2 checkpoint: {e.args[0]} missing (not a DINOv2 ViT state dict)") from None
  depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k)))
  embed_dim = int(proj[0])
  grid = int(round((pos[1] - 1) ** 0.5))
  if grid * grid != pos[1] - 1:
    raise UserError(f"DINOv2 checkpoint: pos_embed {pos} is not a class token + square grid")
  return Dinov2Config(patch_size=int(proj[2]), embed_dim=embed_dim, depth=depth,
                      num_heads=max(1, embed_dim // 64), mlp_hidden=int(fc1[0]),
                      position_grid=grid)


def convert_dinov2_state(state: Mapping[str, Any], config: Dinov2Config | None = None
                         ) -> tuple[Dinov2Config, dict]:
  """A DINOv2 state dict (original or HF names) -> (config, Flax params), every key used.

  Raises:
    UserError: unknown or missing keys, or shapes that do not fit the config (one line each).
  """
  if any(k.startswith(("embeddings.", "encoder.", "dinov2.")) for k in state):
    state = hf_to_original(state)
  state = {k: np.asarray(v) for k, v in state.items() if k not in _IGNORED}
  config = config or config_from_state(state)
  expected = convert.flatten_params(dinov2_param_shapes(config))
  params: dict[str, np.ndarray] = {}
  used = set()
  for flax_key, spec in expected.items():
    *path, leaf = flax_key.split("/")
    if not path:  # cls_token, pos_embed
      torch_key, transform = leaf, lambda a: a
    elif leaf == "kernel":
      torch_key = ".".join(path) + ".weight"
      transform = (lambda a: np.transpose(a, (2, 3, 1, 0))) if len(spec.shape) == 4 else np.transpose
    else:
      torch_key = ".".join(path) + "." + {"scale": "weight", "bias": "bias", "gamma": "gamma"}[leaf]
      transform = lambda a: a  # noqa: E731
    if torch_key not in state:
      raise UserError(f"DINOv2 checkpoint: {torch_key} missing for {config}")
    value = transform(state[torch_key]).astype(np.float32)
    if tuple(value.shape) != tuple(spec.shape):
      raise UserError(f"DINOv2 checkpoint: {torch_key} has shape {tuple(state[torch_key].shape)}, "
                      f"which does not fit {config}")
    params[flax_key] = value
    used.add(torch_key)
  unused = sorted(set(state) - used)
  if unused:
    raise UserError(f"DINOv2 checkpoint: unexpected keys {unused[:5]}{' ...' if len(unused) > 5 else ''}")
  return config, convert.unflatten_params(params)


def read_checkpoint(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict of a .pth/.pt (torch needed), a .safetensors file, or an HF folder."""
  path = pathlib.Path(path)
  if path.is_dir():
    candidates = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not candidates:
      raise UserError(f"{path}: no *.safetensors or *.bin weights in this folder")
    state: dict[str, np.ndarray] = {}
    for file in candidates:
      state.update(convert.read_state_dict(file))
    return state
  if not path.is_file():
    raise UserError(f"{path}: not found. The DINOv2 ViT-S/14 weights are {CHECKPOINT_NAME} "
                    f"({CHECKPOINT_URL})")
  return convert.read_state_dict(path)


def save_dinov2(config: Dinov2Config, params: Mapping[str, Any], out_dir: str | os.PathLike,
                source: str = "", overwrite: bool = False) -> pathlib.Path:
  """Writes {config.json, dinov2.safetensors} atomically."""
  out_dir = convert.check_output_folder(out_dir, overwrite)
  with files.atomic_folder(out_dir, replace=True) as tmp:
    flat = {k: np.ascontiguousarray(np.asarray(v, np.float32))
            for k, v in convert.flatten_params(params).items()}
    save_file(flat, str(tmp / WEIGHTS_FILE))
    (tmp / "config.json").write_text(json.dumps(
        {"format": FORMAT, "dinov2": config.to_dict(), "source": source}, indent=1))
  return out_dir


def load_dinov2(directory: str | os.PathLike) -> tuple[Dinov2Config, dict]:
  """(config, params) of a converted folder, every shape checked (UserError names what is wrong)."""
  directory = pathlib.Path(directory)
  config_path = directory / "config.json"
  if not config_path.is_file():
    raise UserError(f"{directory}: no converted DINOv2 weights here (config.json missing). Convert "
                    f"{CHECKPOINT_NAME} ({CHECKPOINT_URL}) with `animdreamer convert-dinov2 "
                    f"--ckpt {CHECKPOINT_NAME} --out {directory}`")
  meta = convert.read_json(config_path)
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    raise UserError(f"{config_path}: not a converted DINOv2 folder (format {FORMAT!r} expected)")
  config = Dinov2Config.from_dict(meta.get("dinov2", {}), where=str(config_path))
  weights = directory / WEIGHTS_FILE
  if not weights.is_file():
    raise UserError(f"{weights}: missing")
  got = {k: np.asarray(v) for k, v in convert.read_safetensors(weights).items()}
  convert.check_param_shapes(str(weights), convert.flatten_params(dinov2_param_shapes(config)), got,
                             config)
  return config, convert.unflatten_params(got)
