"""OpenCLIP ViT-H/14 text tower in Flax linen, as MVDream/SD2 use it ("penultimate" layer).

`FrozenOpenCLIPEmbedder(layer="penultimate")`: token embedding + learned positional embedding, pre-LN
transformer blocks with a causal mask (no padding mask: the zero-padded positions are ordinary tokens that
attend causally), an exact-erf GELU MLP (ViT-H-14 is not a `quick_gelu` model), **all but the last block**
run, then `ln_final`. The output is every one of the 77 token states, (B, 77, width), which feeds the
UNet's cross-attention. `text_projection` and `logit_scale` are not used.

Parameter names mirror OpenCLIP's state dict (`transformer.resblocks.3.attn.in_proj_weight` <->
`transformer/resblocks.3/attn/in_proj/kernel`), so `convert_text_encoder_state` is a rename plus a
transpose. The fused `in_proj` (q, k, v rows stacked) is kept fused.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import norms
from animdreamer_jax.prior import state_reader

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, used by OpenCLIP.


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """Sizes of the OpenCLIP text tower (defaults: ViT-H-14 as in SD2.1 / MVDream).

  Attributes:
    vocab_size: token vocabulary (49408 for the CLIP BPE).
    context_length: tokens per prompt (77).
    width: model width (1024).
    num_heads: attention heads (16; head dim 64).
    num_layers: transformer blocks in the checkpoint (24).
    skip_last_layers: blocks at the end that are not run (1 = "penultimate", as MVDream).
    mlp_width: hidden width of the MLP (4 * width).
  """
  vocab_size: int = 49408
  context_length: int = 77
  width: int = 1024
  num_heads: int = 16
  num_layers: int = 24
  skip_last_layers: int = 1
  mlp_width: int = 4096

  def __post_init__(self):
    if self.width % self.num_heads:
      raise UserError(f"TextEncoderConfig: width {self.width} is not a multiple of num_heads "
                      f"{self.num_heads}")
    if not 0 <= self.skip_last_layers < self.num_layers:
      raise UserError(f"TextEncoderConfig: skip_last_layers {self.skip_last_layers} must be in "
                      f"[0, num_layers={self.num_layers})")

  @property
  def num_layers_run(self) -> int:
    return self.num_layers - self.skip_last_layers

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], where: str = "text encoder config"
               ) -> TextEncoderConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise UserError(f"{where}: unknown keys {unknown}")
    return cls(**{k: int(v) for k, v in values.items()})

  @classmethod
  def tiny(cls) -> TextEncoderConfig:
    """A random-weights test size: width 64, 2 heads, 3 blocks (2 run), real vocabulary."""
    return cls(width=64, num_heads=2, num_layers=3, mlp_width=256)


def causal_mask(length: int) -> jax.Array:
  """Additive attention mask (length, length): 0 on and below the diagonal, -inf above."""
  above = jnp.triu(jnp.ones((length, length), bool), k=1)
  return jnp.where(above, -jnp.inf, 0.0).astype(jnp.float32)


class SelfAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch-first) with a fused q/k/v input projection and a mask.

  Attributes:
    num_heads: heads H; head dim D = width / H; logits scaled by D^-0.5.
    dtype: activation dtype (logits and softmax stay float32).
  """
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: (B, L, W); mask: additive (L, L). Returns (B, L, W)."""
    batch, length, width = x.shape
    head_dim = width // self.num_heads
    qkv = nn.Dense(3 * width, dtype=self.dtype, name="in_proj")(x)
    q, k, v = jnp.split(qkv.reshape(batch, length, 3, self.num_heads, head_dim), 3, axis=2)
    q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * head_dim**-0.5 + mask, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v).reshape(batch, length, width)
    return nn.Dense(width, dtype=self.dtype, name="out_proj")(out)


class ResidualAttentionBlock(nn.Module):
  """Pre-LN block: x += attn(ln_1(x), causal); x += mlp(ln_2(x))."""
  num_heads: int
  mlp_width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: (B, L, W) -> (B, L, W)."""
    h = norms.layer_norm(LAYER_NORM_EPS, "ln_1")(x).astype(self.dtype)
    x = x + SelfAttention(self.num_heads, dtype=self.dtype, name="attn")(h, mask)
    h = norms.layer_norm(LAYER_NORM_EPS, "ln_2")(x).astype(self.dtype)
    return x + Mlp(self.mlp_width, dtype=self.dtype, name="mlp")(h)


class Mlp(nn.Module):
  """Dense -> exact GELU -> Dense, named `names` (OpenCLIP's c_fc / c_proj; DINOv2's fc1 / fc2)."""
  hidden: int
  dtype: Any = jnp.float32
  names: tuple[str, str] = ("c_fc", "c_proj")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.Dense(self.hidden, dtype=self.dtype, name=self.names[0])(x)
    h = jax.nn.gelu(h, approximate=False)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name=self.names[1])(h)


class Transformer(nn.Module):
  """The first `num_layers` resblocks (named `resblocks.i`)."""
  num_layers: int
  num_heads: int
  mlp_width: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    for i in range(self.num_layers):
      block = ResidualAttentionBlock(self.num_heads, self.mlp_width, dtype=self.dtype,
                                     name=f"resblocks.{i}")
      x = block(x, mask)
    return x


class OpenClipTextEncoder(nn.Module):
  """Token ids (B, 77) -> penultimate-layer token states after `ln_final`, (B, 77, width) float32.

  Attributes:
    config: sizes.
    dtype: activation dtype (float32, or bfloat16 on accelerators; norms and softmax stay float32).
  """
  config: TextEncoderConfig = TextEncoderConfig()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.config
    length = tokens.shape[-1]
    if length > cfg.context_length:
      raise UserError(f"tokens: {length} positions exceed the context length {cfg.context_length}")
    x = nn.Embed(cfg.vocab_size, cfg.width, name="token_embedding")(tokens)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01),
                     (cfg.context_length, cfg.width))
    x = (x + pos[:length]).astype(self.dtype)
    x = Transformer(cfg.num_layers_run, cfg.num_heads, cfg.mlp_width, dtype=self.dtype,
                    name="transformer")(x, causal_mask(length))
    x = norms.layer_norm(LAYER_NORM_EPS, "ln_final")(x)
    return x.astype(jnp.float32)


def init_text_encoder_params(config: TextEncoderConfig, rng: jax.Array) -> dict:
  """Random parameters of `OpenClipTextEncoder(config)` (for tests and `--tiny`)."""
  tokens = jnp.zeros((1, config.context_length), jnp.int32)
  return OpenClipTextEncoder(config).init(rng, tokens)["params"]


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def encode_text(params: Any, tokens: jax.Array, config: TextEncoderConfig,
                dtype: Any = jnp.float32) -> jax.Array:
  """Jitted pure wrapper: tokens int (B, L) -> context (B, L, width) float32."""
  return OpenClipTextEncoder(config, dtype=dtype).apply({"params": params}, tokens)


# --- conversion from the OpenCLIP / LDM state dict ---------------------------------------------


def text_encoder_config_from_state(state: Mapping[str, Any],
                                   prefix: str = "cond_stage_model.model.",
                                   head_dim: int = 64, skip_last_layers: int = 1
                                  ) -> TextEncoderConfig:
  """Infers the sizes from tensor shapes; heads are not stored, so `width // head_dim` (64 in CLIP)."""
  key = prefix + "token_embedding.weight"
  if key not in state:
    raise UserError(f"{key}: missing from the checkpoint (no OpenCLIP text tower under '{prefix}')")
  vocab, width = np.shape(state[key])
  pos_key = prefix + "positional_embedding"
  if pos_key not in state:
    raise UserError(f"{pos_key}: missing from the checkpoint")
  block = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
  layers = {int(m.group(1)) for k in state if (m := block.match(k))}
  if not layers or layers != set(range(max(layers) + 1)):
    raise UserError(f"{prefix}transformer.resblocks: missing or non-contiguous blocks "
                    f"{sorted(layers)}")
  mlp_key = prefix + "transformer.resblocks.0.mlp.c_fc.weight"
  if mlp_key not in state:
    raise UserError(f"{mlp_key}: missing from the checkpoint")
  if width % head_dim:
    raise UserError(f"{key}: width {width} is not a multiple of the head dim {head_dim}")
  return TextEncoderConfig(vocab_size=int(vocab), context_length=int(np.shape(state[pos_key])[0]),
                           width=int(width), num_heads=int(width) // head_dim,
                           num_layers=len(layers), skip_last_layers=skip_last_layers,
                           mlp_width=int(np.shape(state[mlp_key])[0]))


def convert_text_encoder_state(state: Mapping[str, Any], prefix: str = "cond_stage_model.model.",
                               config: TextEncoderConfig | None = None
                              ) -> tuple[dict, set[str]]:
  """OpenCLIP text-tower state dict (as in MVDream's `.pt`) -> `OpenClipTextEncoder` params.

  Renames (`P` = prefix, `i` < num_layers_run; Linear weights are transposed to (in, out)):
    P token_embedding.weight            -> token_embedding/embedding
    P positional_embedding              -> positional_embedding
    P transformer.resblocks.i.ln_{1,2}.{weight,bias}   -> transformer/resblocks.i/ln_{1,2}/{scale,bias}
    P transformer.resblocks.i.attn.in_proj_{weight,bias} -> .../attn/in_proj/{kernel,bias}
    P transformer.resblocks.i.attn.out_proj.{weight,bias} -> .../attn/out_proj/{kernel,bias}
    P transformer.resblocks.i.mlp.c_{fc,proj}.{weight,bias} -> .../mlp/c_{fc,proj}/{kernel,bias}
    P ln_final.{weight,bias}            -> ln_final/{scale,bias}
  Deliberately unused, reported as consumed: the skipped last block(s), `text_projection`,
  `logit_scale`, `attn_mask` (a buffer some exports contain).

  Args:
    state: flat name -> array (numpy or anything `np.asarray` takes), e.g. the whole checkpoint.
    prefix: where the text tower lives in `state`.
    config: expected sizes; inferred from the shapes when None.

  Returns:
    (params, consumed_keys): a nested dict of float32 numpy arrays, and every key of `state` (with the
    prefix) that was used or deliberately ignored.

  Raises:
    UserError: a missing key or a shape mismatch (the message names the key).
  """
  cfg = config or text_encoder_config_from_state(state, prefix)
  reader = state_reader.StateReader(state, prefix)
  w = cfg.width

  def dense(name: str, n_in: int, n_out: int) -> dict:
    return {"kernel": reader.take(name + ".weight", (n_out, n_in)).T,
            "bias": reader.take(name + ".bias", (n_out,))}

  def norm(name: str) -> dict:
    return {"scale": reader.take(name + ".weight", (w,)), "bias": reader.take(name + ".bias", (w,))}

  blocks = {}
  for i in range(cfg.num_layers):
    name = f"transformer.resblocks.{i}"
    if i >= cfg.num_layers_run:
      for k in [k for k in state if k.startswith(prefix + name + ".")]:
        reader.consumed.add(k)
      continue
    blocks[f"resblocks.{i}"] = {
        "ln_1": norm(name + ".ln_1"),
        "attn": {
            "in_proj": {"kernel": reader.take(name + ".attn.in_proj_weight", (3 * w, w)).T,
                        "bias": reader.take(name + ".attn.in_proj_bias", (3 * w,))},
            "out_proj": dense(name + ".attn.out_proj", w, w),
        },
        "ln_2": norm(name + ".ln_2"),
        "mlp": {"c_fc": dense(name + ".mlp.c_fc", w, cfg.mlp_width),
                "c_proj": dense(name + ".mlp.c_proj", cfg.mlp_width, w)},
    }
  params = {
      "token_embedding": {"embedding": reader.take("token_embedding.weight", (cfg.vocab_size, w))},
      "positional_embedding": reader.take("positional_embedding", (cfg.context_length, w)),
      "transformer": blocks,
      "ln_final": norm("ln_final"),
  }
  for name in ("text_projection", "logit_scale", "attn_mask"):
    reader.skip(name)
  return params, reader.consumed
