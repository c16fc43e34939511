"""MVDream's multi-view UNet in Flax linen: the SD2.1-base UNet plus a camera MLP and multi-view attention.

Layout (the official `sd-v2.1-base-4view` sizes are the `UNetConfig` defaults): a 3x3 input conv, then per
level `num_res_blocks` ResBlocks (each followed by a `SpatialTransformer3D` at the attention levels) and a
stride-2 downsample between levels, a middle ResBlock/transformer/ResBlock, the mirrored decoder that
concatenates the encoder skips, and GroupNorm/SiLU/conv to the predicted noise. The embedding added in every
ResBlock is `time_embed(timestep) + camera_embed(camera)`.

Multi-view: `attn1` (self-attention) of each transformer block attends jointly over the tokens of all
`num_views` views of one object; cross-attention to the text and the feed-forward stay per view. Views of one
object must be contiguous in the batch (index `object * num_views + view`).

Parameter names equal the LDM state-dict names (`input_blocks.1.1/transformer_blocks.0/attn1/to_q/kernel`
<-> `input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`), so conversion is a rename plus a transpose
(see `prior/convert.py`).

Tensors are NHWC inside and at the boundary: latents are (N, H, W, 4) with N = objects * num_views.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import norms
from animdreamer_jax.prior.attention import CrossAttention

# LDM's GroupNorm32 (ResBlocks, output head) uses torch's default eps; its transformers use 1e-6.
RESBLOCK_NORM_EPS = 1e-5
TRANSFORMER_GROUP_NORM_EPS = 1e-6
LAYER_NORM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Sizes of the multi-view UNet (defaults: MVDream `sd-v2.1-base-4view`, 866M + 1.66M params).

  Attributes:
    in_channels: latent channels in.
    out_channels: predicted-noise channels out.
    model_channels: channels of level 0 (a multiple of `norm_groups`).
    channel_mult: per-level channel multipliers; len = number of levels.
    num_res_blocks: ResBlocks per level in the encoder (the decoder has one more).
    attention_resolutions: downsample factors (1, 2, 4, ...) whose levels have transformers.
    num_head_channels: channels per attention head (heads = channels // num_head_channels).
    transformer_depth: transformer blocks per SpatialTransformer3D.
    context_dim: width of the text context (1024 for OpenCLIP ViT-H).
    camera_dim: length of the flattened camera (16); None = no camera MLP.
    norm_groups: GroupNorm groups (32 in LDM).
  """
  in_channels: int = 4
  out_channels: int = 4
  model_channels: int = 320
  channel_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  attention_resolutions: tuple[int, ...] = (4, 2, 1)
  num_head_channels: int = 64
  transformer_depth: int = 1
  context_dim: int = 1024
  camera_dim: int | None = 16
  norm_groups: int = 32

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
    object.__setattr__(self, "attention_resolutions",
                       tuple(int(r) for r in self.attention_resolutions))
    for mult in self.channel_mult:
      channels = mult * self.model_channels
      if channels % self.norm_groups:
        raise UserError(f"UNetConfig: {channels} channels are not a multiple of "
                        f"norm_groups={self.norm_groups}")
      if self.has_attention_somewhere and channels % self.num_head_channels:
        raise UserError(f"UNetConfig: {channels} channels are not a multiple of "
                        f"num_head_channels={self.num_head_channels}")

  @property
  def has_attention_somewhere(self) -> bool:
    return bool(self.attention_resolutions)

  @property
  def time_embed_dim(self) -> int:
    return 4 * self.model_channels

  def level_has_attention(self, level: int) -> bool:
    return 2 ** level in self.attention_resolutions

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out["channel_mult"] = list(self.channel_mult)
    out["attention_resolutions"] = list(self.attention_resolutions)
    return out

  @classmethod
  def from_dict(cls, values: dict[str, Any], where: str = "unet config") -> "UNetConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise UserError(f"{where}: unknown keys {unknown}")
    return cls(**values)

  @classmethod
  def tiny(cls) -> "UNetConfig":
    """A CPU-sized config with the same structure (4 levels, attention at the 3 finest, several heads)."""
    return cls(model_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=1, num_head_channels=16,
               context_dim=32)


def timestep_embedding(timesteps: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """LDM's sinusoidal timestep embedding, cos half first (diffusers: flip_sin_to_cos=True, shift 0).

  Args:
    timesteps: (N,) integer or float timesteps.
    dim: even embedding width.
    max_period: the longest period.

  Returns:
    (N, dim) float32: [cos(t f_i), sin(t f_i)] with f_i = max_period^(-i / (dim / 2)), i < dim / 2.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(timesteps, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _conv3x3(features: int, dtype: jnp.dtype, name: str, stride: int = 1) -> nn.Conv:
  # Explicit symmetric padding: 'SAME' with stride 2 pads (0, 1) and would not match torch's padding=1.
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), dtype=dtype,
                 name=name)


class ResBlock(nn.Module):
  """LDM ResBlock (no scale-shift norm): GN-SiLU-conv, + Dense(SiLU(emb)), GN-SiLU-conv, + skip."""
  out_channels: int
  groups: int = 32
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    """x: (N, H, W, Cin); emb: (N, E) -> (N, H, W, out_channels)."""
    h = norms.group_norm(self.groups, RESBLOCK_NORM_EPS, "in_layers.0")(x)
    h = _conv3x3(self.out_channels, self.dtype, "in_layers.2")(nn.silu(h).astype(self.dtype))
    e = nn.Dense(self.out_channels, dtype=self.dtype, name="emb_layers.1")(nn.silu(emb))
    h = h + e[:, None, None, :].astype(h.dtype)
    h = norms.group_norm(self.groups, RESBLOCK_NORM_EPS, "out_layers.0")(h)
    h = _conv3x3(self.out_channels, self.dtype, "out_layers.3")(nn.silu(h).astype(self.dtype))
    if x.shape[-1] == self.out_channels:
      skip = x.astype(self.dtype)
    else:
      skip = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype, name="skip_connection")(x)
    return skip + h


class Downsample(nn.Module):
  """Stride-2 3x3 conv with symmetric padding 1 (LDM key `op`)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, H, W, C) -> (N, ceil(H/2), ceil(W/2), C)."""
    return _conv3x3(x.shape[-1], self.dtype, "op", stride=2)(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2, then a 3x3 conv (LDM key `conv`)."""
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (N, H, W, C) -> (N, 2H, 2W, C)."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv3x3(x.shape[-1], self.dtype, "conv")(x)


class GEGLU(nn.Module):
  """Dense to 2*inner, split into (value, gate), value * GELU(gate) with the exact erf GELU."""
  inner_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., C) -> (..., inner_dim)."""
    value, gate = jnp.split(nn.Dense(2 * self.inner_dim, dtype=self.dtype, name="proj")(x), 2, axis=-1)
    return value * nn.gelu(gate, approximate=False)


class FeedForward(nn.Module):
  """LDM FeedForward with GEGLU: `net.0` (GEGLU to 4C), `net.2` (Dense back to C)."""
  mult: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (..., C) -> (..., C)."""
    h = GEGLU(self.mult * x.shape[-1], dtype=self.dtype, name="net.0")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="net.2")(h)


class BasicTransformerBlock3D(nn.Module):
  """Multi-view self-attention, per-view cross-attention, per-view GEGLU feed-forward (pre-LN, residual)."""
  num_heads: int
  head_dim: int
  num_views: int
  dtype: jnp.dtype = jnp.float32
  fused_attention: bool = False
  query_chunk: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x: (N, L, C) with N = objects * num_views; context: (N, Lc, Cc) -> (N, L, C)."""
    n, length, channels = x.shape
    attn = lambda name: CrossAttention(self.num_heads, self.head_dim, dtype=self.dtype,
                                       fused=self.fused_attention, query_chunk=self.query_chunk,
                                       name=name)
    # attn1 sees all views of an object as one sequence: (objects, views * L, C), view-major.
    h = norms.layer_norm(LAYER_NORM_EPS, "norm1")(x).astype(self.dtype)
    h = h.reshape(n // self.num_views, self.num_views * length, channels)
    x = x + attn("attn1")(h).reshape(n, length, channels)
    h = norms.layer_norm(LAYER_NORM_EPS, "norm2")(x).astype(self.dtype)
    x = x + attn("attn2")(h, context.astype(self.dtype))
    h = norms.layer_norm(LAYER_NORM_EPS, "norm3")(x).astype(self.dtype)
    x = x + FeedForward(dtype=self.dtype, name="ff")(h)
    return x


class SpatialTransformer3D(nn.Module):
  """GN(eps 1e-6), Dense proj_in, transformer blocks over the H*W tokens, Dense proj_out, + input."""
  num_heads: int
  head_dim: int
  num_views: int
  depth: int = 1
  groups: int = 32
  dtype: jnp.dtype = jnp.float32
  fused_attention: bool = False
  query_chunk: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    """x: (N, H, W, C); context: (N, Lc, Cc) -> (N, H, W, C)."""
    n, height, width, channels = x.shape
    inner = self.num_heads * self.head_dim
    h = norms.group_norm(self.groups, TRANSFORMER_GROUP_NORM_EPS, "norm")(x).astype(self.dtype)
    h = nn.Dense(inner, dtype=self.dtype, name="proj_in")(h.reshape(n, height * width, channels))
    for d in range(self.depth):
      h = BasicTransformerBlock3D(self.num_heads, self.head_dim, self.num_views, dtype=self.dtype,
                                  fused_attention=self.fused_attention, query_chunk=self.query_chunk,
                                  name=f"transformer_blocks.{d}")(h, context)
    h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
    return h.reshape(n, height, width, channels) + x.astype(self.dtype)


class MultiViewUNet(nn.Module):
  """The MVDream noise predictor eps(x_t, t, text, camera).

  Attributes:
    config: sizes (`UNetConfig()` = the official model).
    dtype: activation dtype (jnp.bfloat16 for GPU memory); params, norms, softmax and the output are float32.
    remat: `jax.checkpoint` each ResBlock and transformer (recompute activations in the backward pass).
    fused_attention: use `jax.nn.dot_product_attention` (flash kernels on GPU).
    attention_query_chunk: if > 0, attention in blocks of this many queries, each rematerialised in the
      backward pass: gradients through the UNet never hold a whole 4096 x 4096 attention matrix.
  """
  config: UNetConfig = UNetConfig()
  dtype: jnp.dtype = jnp.float32
  remat: bool = False
  fused_attention: bool = False
  attention_query_chunk: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, timesteps: jax.Array, context: jax.Array,
               camera: jax.Array | None = None, *, num_views: int) -> jax.Array:
    """Predicts the noise.

    Args:
      x: (N, H, W, in_channels) noisy latents, N = objects * num_views, views of an object contiguous;
        H and W divisible by 2^(levels - 1).
      timesteps: (N,) diffusion timesteps in [0, 1000).
      context: (N, Lc, context_dim) text states (per view; repeat an object's prompt over its views).
      camera: (N, camera_dim) flattened cameras (see `prior.camera_embedding`), or None to omit the
        camera term.
      num_views: static Python int, views per object (4 for MVDream); N % num_views == 0.

    Returns:
      (N, H, W, out_channels) float32 predicted noise.
    """
    cfg = self.config
    n = x.shape[0]
    if n % num_views:
      raise ValueError(f"batch {n} is not a multiple of num_views={num_views}")
    resblock_cls = nn.remat(ResBlock) if self.remat else ResBlock
    transformer_cls = nn.remat(SpatialTransformer3D) if self.remat else SpatialTransformer3D

    def resblock(out_channels, name):
      return resblock_cls(out_channels, groups=cfg.norm_groups, dtype=self.dtype, name=name)

    def transformer(channels, name):
      return transformer_cls(channels // cfg.num_head_channels, cfg.num_head_channels, num_views,
                             depth=cfg.transformer_depth, groups=cfg.norm_groups, dtype=self.dtype,
                             fused_attention=self.fused_attention,
                             query_chunk=self.attention_query_chunk, name=name)

    # Embedding MLPs stay in float32: they are tiny and feed every ResBlock.
    ted = cfg.time_embed_dim
    emb = nn.Dense(ted, name="time_embed.0")(timestep_embedding(timesteps, cfg.model_channels))
    emb = nn.Dense(ted, name="time_embed.2")(nn.silu(emb))
    if camera is not None:
      if cfg.camera_dim is None:
        raise ValueError("this UNet has no camera MLP (camera_dim=None) but a camera was given")
      cam = nn.Dense(ted, name="camera_embed.0")(jnp.asarray(camera, jnp.float32))
      emb = emb + nn.Dense(ted, name="camera_embed.2")(nn.silu(cam))
    context = jnp.asarray(context).astype(self.dtype)

    h = _conv3x3(cfg.model_channels, self.dtype, "input_blocks.0.0")(x.astype(self.dtype))
    skips = [h]
    block = 1
    for level, mult in enumerate(cfg.channel_mult):
      for _ in range(cfg.num_res_blocks):
        h = resblock(mult * cfg.model_channels, f"input_blocks.{block}.0")(h, emb)
        if cfg.level_has_attention(level):
          h = transformer(h.shape[-1], f"input_blocks.{block}.1")(h, context)
        skips.append(h)
        block += 1
      if level != len(cfg.channel_mult) - 1:
        h = Downsample(dtype=self.dtype, name=f"input_blocks.{block}.0")(h)
        skips.append(h)
        block += 1

    h = resblock(h.shape[-1], "middle_block.0")(h, emb)
    h = transformer(h.shape[-1], "middle_block.1")(h, context)
    h = resblock(h.shape[-1], "middle_block.2")(h, emb)

    block = 0
    for level in reversed(range(len(cfg.channel_mult))):
      channels = cfg.channel_mult[level] * cfg.model_channels
      for i in range(cfg.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = resblock(channels, f"output_blocks.{block}.0")(h, emb)
        sub = 1
        if cfg.level_has_attention(level):
          h = transformer(channels, f"output_blocks.{block}.1")(h, context)
          sub = 2
        if level and i == cfg.num_res_blocks:
          h = Upsample(dtype=self.dtype, name=f"output_blocks.{block}.{sub}")(h)
        block += 1

    h = norms.group_norm(cfg.norm_groups, RESBLOCK_NORM_EPS, "out.0")(h)
    h = _conv3x3(cfg.out_channels, self.dtype, "out.2")(nn.silu(h).astype(self.dtype))
    return h.astype(jnp.float32)


def init_unet_params(config: UNetConfig, rng: jax.Array, latent_size: int | None = None,
                     num_views: int = 1) -> dict:
  """Random parameters (Flax default initialisers) for `MultiViewUNet(config)`; returns the 'params' tree.

  The sizes do not depend on `latent_size` (default: the smallest the levels allow) or `num_views`.
  """
  n = num_views
  latent_size = latent_size or 2 ** (len(config.channel_mult) - 1)
  x = jnp.zeros((n, latent_size, latent_size, config.in_channels), jnp.float32)
  context = jnp.zeros((n, 2, config.context_dim), jnp.float32)
  camera = None if config.camera_dim is None else jnp.zeros((n, config.camera_dim), jnp.float32)
  variables = MultiViewUNet(config).init(rng, x, jnp.zeros((n,), jnp.float32), context, camera,
                                         num_views=num_views)
  return variables["params"]


def unet_param_shapes(config: UNetConfig) -> dict:
  """The params tree of `MultiViewUNet(config)` as jax.ShapeDtypeStruct leaves (no memory, no compute)."""
  return jax.eval_shape(lambda: init_unet_params(config, jax.random.PRNGKey(0)))
