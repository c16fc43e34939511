"""The Stable Diffusion VAE (LDM `AutoencoderKL`, KL-f8) in Flax linen.

Semantics follow LDM's `ldm.modules.diffusionmodules.model.{Encoder,Decoder}` (= diffusers' AutoencoderKL):
- every GroupNorm has 32 groups and eps 1e-6; the non-linearity is SiLU;
- ResnetBlock: norm1, SiLU, conv1, norm2, SiLU, conv2, plus the input (a 1x1 `nin_shortcut` when the
  channel count changes);
- Downsample: pad right/bottom by one, then a 3x3 conv with stride 2 and no padding; Upsample: nearest x2
  then a 3x3 conv;
- a mid block (ResnetBlock, single-head spatial self-attention, ResnetBlock) in encoder and decoder, even
  though `attn_resolutions` is empty in SD;
- the encoder ends in 2 * z channels (mean, log-variance) followed by the 1x1 `quant_conv`; the log-variance
  is clamped to [-30, 20]; the decoder starts with the 1x1 `post_quant_conv`.
Latents for the UNet are `SCALE_FACTOR * z` with z a posterior sample (or its mean).

Tensors are NHWC: images (N, H, W, 3) in [-1, 1], latents (N, H/f, W/f, 4) with f = 2^(levels-1).
Parameter names mirror the LDM state dict (`encoder.down.1.block.0.conv1.weight` <->
`encoder/down.1/block.0/conv1/kernel`), so conversion is a rename plus a transpose.
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

SCALE_FACTOR = 0.18215
NORM_EPS = 1e-6
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


@dataclasses.dataclass(frozen=True)
class VaeConfig:
  """Sizes of the KL autoencoder (defaults: SD 1.x/2.x `first_stage_model`).

  Attributes:
    in_channels: image channels (3).
    out_channels: decoded image channels (3).
    base_channels: channels of level 0 (LDM `ch`, 128).
    channel_mult: per-level multipliers (1, 2, 4, 4): 3 downsamples, f = 8.
    num_res_blocks: ResnetBlocks per encoder level (the decoder has one more).
    z_channels: latent channels (4).
    norm_groups: GroupNorm groups (32).
    scale_factor: latent scale for the diffusion model (0.18215).
  """
  in_channels: int = 3
  out_channels: int = 3
  base_channels: int = 128
  channel_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  z_channels: int = 4
  norm_groups: int = 32
  scale_factor: float = SCALE_FACTOR

  def __post_init__(self):
    object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
    for m in self.channel_mult:
      if (m * self.base_channels) % self.norm_groups:
        raise UserError(f"VaeConfig: {m * self.base_channels} channels are not a multiple of "
                        f"norm_groups={self.norm_groups}")

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.channel_mult) - 1)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], where: str = "vae config") -> VaeConfig:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise UserError(f"{where}: unknown keys {unknown}")
    return cls(**dict(values))

  @classmethod
  def tiny(cls) -> VaeConfig:
    """A random-weights test size: channels 32/64/64, f = 4, the real block structure."""
    return cls(base_channels=32, channel_mult=(1, 2, 2))


def _conv(features: int, kernel: int, dtype: Any, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), padding=((pad, pad), (pad, pad)), dtype=dtype,
                 name=name)


class ResnetBlock(nn.Module):
  """LDM ResnetBlock without a time embedding: (N, H, W, C_in) -> (N, H, W, out_channels)."""
  out_channels: int
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(norms.group_norm(self.groups, NORM_EPS, "norm1")(x)).astype(self.dtype)
    h = _conv(self.out_channels, 3, self.dtype, "conv1")(h)
    h = nn.silu(norms.group_norm(self.groups, NORM_EPS, "norm2")(h)).astype(self.dtype)
    h = _conv(self.out_channels, 3, self.dtype, "conv2")(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, "nin_shortcut")(x.astype(self.dtype))
    return x + h


class AttnBlock(nn.Module):
  """Single-head self-attention over the H*W positions; q/k/v/proj_out are 1x1 convs (Dense here)."""
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, height, width, channels = x.shape
    h = norms.group_norm(self.groups, NORM_EPS, "norm")(x).astype(self.dtype)
    h = h.reshape(n, height * width, channels)
    q = nn.Dense(channels, dtype=self.dtype, name="q")(h)
    k = nn.Dense(channels, dtype=self.dtype, name="k")(h)
    v = nn.Dense(channels, dtype=self.dtype, name="v")(h)
    logits = jnp.einsum("nqc,nkc->nqk", q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(logits * channels**-0.5, axis=-1)
    h = jnp.einsum("nqk,nkc->nqc", weights.astype(v.dtype), v)
    h = nn.Dense(channels, dtype=self.dtype, name="proj_out")(h)
    return x + h.reshape(n, height, width, channels)


class Downsample(nn.Module):
  """Asymmetric pad (0, 1) on H and W, then a 3x3 conv with stride 2: (N, H, W, C) -> (N, H/2, W/2, C)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
    return nn.Conv(x.shape[-1], (3, 3), strides=(2, 2), padding="VALID", dtype=self.dtype,
                   name="conv")(x)


class Upsample(nn.Module):
  """Nearest-neighbour x2 then a 3x3 conv: (N, H, W, C) -> (N, 2H, 2W, C)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return _conv(x.shape[-1], 3, self.dtype, "conv")(x)


class MidBlock(nn.Module):
  """block_1 -> attn_1 -> block_2 at constant width."""
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = ResnetBlock(c, self.groups, self.dtype, name="block_1")(x)
    x = AttnBlock(self.groups, self.dtype, name="attn_1")(x)
    return ResnetBlock(c, self.groups, self.dtype, name="block_2")(x)


class _Level(nn.Module):
  """Holder of one resolution level (`down.i` / `up.i`): ResnetBlocks named `block.j` + resampler."""
  out_channels: int
  num_blocks: int
  resample: str | None  # "down", "up" or None
  groups: int = 32
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_blocks):
      x = ResnetBlock(self.out_channels, self.groups, self.dtype, name=f"block.{j}")(x)
    if self.resample == "down":
      x = Downsample(self.dtype, name="downsample")(x)
    elif self.resample == "up":
      x = Upsample(self.dtype, name="upsample")(x)
    return x


class Encoder(nn.Module):
  """Images (N, H, W, in) -> moments before `quant_conv`, (N, H/f, W/f, 2 z)."""
  config: VaeConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    g = cfg.norm_groups
    h = _conv(cfg.base_channels, 3, self.dtype, "conv_in")(x.astype(self.dtype))
    last = len(cfg.channel_mult) - 1
    for i, mult in enumerate(cfg.channel_mult):
      h = _Level(mult * cfg.base_channels, cfg.num_res_blocks, "down" if i != last else None, g,
                 self.dtype, name=f"down.{i}")(h)
    h = MidBlock(g, self.dtype, name="mid")(h)
    h = nn.silu(norms.group_norm(g, NORM_EPS, "norm_out")(h)).astype(self.dtype)
    return _conv(2 * cfg.z_channels, 3, self.dtype, "conv_out")(h)


class Decoder(nn.Module):
  """z after `post_quant_conv`, (N, h, w, z) -> images (N, f h, f w, out)."""
  config: VaeConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg = self.config
    g = cfg.norm_groups
    h = _conv(cfg.channel_mult[-1] * cfg.base_channels, 3, self.dtype, "conv_in")(
        z.astype(self.dtype))
    h = MidBlock(g, self.dtype, name="mid")(h)
    # LDM numbers decoder levels like the encoder's (up.0 is the finest) but runs them coarse to fine.
    for i in reversed(range(len(cfg.channel_mult))):
      h = _Level(cfg.channel_mult[i] * cfg.base_channels, cfg.num_res_blocks + 1,
                 "up" if i != 0 else None, g, self.dtype, name=f"up.{i}")(h)
    h = nn.silu(norms.group_norm(g, NORM_EPS, "norm_out")(h)).astype(self.dtype)
    return _conv(cfg.out_channels, 3, self.dtype, "conv_out")(h)


class AutoencoderKL(nn.Module):
  """KL autoencoder. `encode` -> (mean, logvar); `decode` -> images. Both NHWC, float32 out.

  Attributes:
    config: sizes.
    dtype: activation dtype (norms and the attention softmax stay float32).
  """
  config: VaeConfig = VaeConfig()
  dtype: Any = jnp.float32

  def setup(self):
    z2 = 2 * self.config.z_channels
    self.encoder = Encoder(self.config, self.dtype)
    self.decoder = Decoder(self.config, self.dtype)
    self.quant_conv = nn.Conv(z2, (1, 1), dtype=self.dtype)
    self.post_quant_conv = nn.Conv(self.config.z_channels, (1, 1), dtype=self.dtype)

  def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images (N, H, W, in) in [-1, 1] -> (mean, logvar), each (N, H/f, W/f, z), logvar clamped."""
    moments = self.quant_conv(self.encoder(images)).astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

  def decode(self, z: jax.Array) -> jax.Array:
    """z (N, h, w, z) (unscaled) -> images (N, f h, f w, out), roughly [-1, 1]."""
    return self.decoder(self.post_quant_conv(z.astype(self.dtype))).astype(jnp.float32)

  def __call__(self, images: jax.Array) -> jax.Array:
    """Reconstruction through the posterior mean (used for `init`)."""
    mean, _ = self.encode(images)
    return self.decode(mean)


def init_vae_params(config: VaeConfig, rng: jax.Array, image_size: int | None = None) -> dict:
  """Random parameters of `AutoencoderKL(config)` (for tests and `--tiny`)."""
  size = image_size or 2 * config.downsample_factor
  return AutoencoderKL(config).init(rng, jnp.zeros((1, size, size, config.in_channels)))["params"]


def posterior_sample(mean: jax.Array, logvar: jax.Array, noise: jax.Array) -> jax.Array:
  """Reparameterised draw of the diagonal Gaussian posterior: mean + exp(logvar / 2) * noise.

  All arrays share one shape (N, h, w, z); differentiable in mean and logvar.
  """
  return mean + jnp.exp(0.5 * logvar) * noise


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def encode_moments(params: Any, images: jax.Array, config: VaeConfig, dtype: Any = jnp.float32
                  ) -> tuple[jax.Array, jax.Array]:
  """Jitted `AutoencoderKL.encode`: images (N, H, W, 3) in [-1, 1] -> (mean, logvar) (N, H/f, W/f, z)."""
  return AutoencoderKL(config, dtype).apply({"params": params}, images, method=AutoencoderKL.encode)


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def encode_to_latents(params: Any, images: jax.Array, config: VaeConfig,
                      key: jax.Array | None = None, dtype: Any = jnp.float32) -> jax.Array:
  """Images (N, H, W, 3) in [-1, 1] -> diffusion latents `scale * z` (N, H/f, W/f, z).

  z is a posterior sample drawn with `key` (MVDream's SDS uses `.sample()`), or the posterior mean when
  `key` is None. Differentiable w.r.t. `images` (CSD backpropagates through it).
  """
  mean, logvar = encode_moments(params, images, config, dtype)
  z = mean if key is None else posterior_sample(mean, logvar, jax.random.normal(key, mean.shape))
  return config.scale_factor * z


@functools.partial(jax.jit, static_argnames=("config", "dtype"))
def decode_latents(params: Any, latents: jax.Array, config: VaeConfig,
                   dtype: Any = jnp.float32) -> jax.Array:
  """Diffusion latents (N, h, w, z) -> images (N, f h, f w, 3), unclipped, roughly [-1, 1]."""
  return AutoencoderKL(config, dtype).apply({"params": params}, latents / config.scale_factor,
                                            method=AutoencoderKL.decode)


# --- conversion ------------------------------------------------------------------------------------


def vae_config_from_state(state: Mapping[str, Any], prefix: str = "first_stage_model."
                         ) -> VaeConfig:
  """Infers `VaeConfig` from the shapes of an LDM-named VAE state dict."""
  def shape(name):
    key = prefix + name
    if key not in state:
      raise UserError(f"{key}: missing from the checkpoint (no LDM VAE under '{prefix}')")
    return np.shape(state[key])

  base, in_channels = shape("encoder.conv_in.weight")[:2]
  level = re.compile(re.escape(prefix) + r"encoder\.down\.(\d+)\.block\.(\d+)\.conv1\.weight$")
  found = [tuple(int(g) for g in m.groups()) for k in state if (m := level.match(k))]
  if not found:
    raise UserError(f"{prefix}encoder.down: no ResnetBlocks found")
  levels = max(i for i, _ in found) + 1
  blocks = max(j for _, j in found) + 1
  mult = tuple(int(shape(f"encoder.down.{i}.block.0.conv1.weight")[0]) // int(base)
               for i in range(levels))
  return VaeConfig(in_channels=int(in_channels),
                   out_channels=int(shape("decoder.conv_out.weight")[0]),
                   base_channels=int(base), channel_mult=mult, num_res_blocks=blocks,
                   z_channels=int(shape("post_quant_conv.weight")[0]))


def convert_vae_state(state: Mapping[str, Any], prefix: str = "first_stage_model.",
                      config: VaeConfig | None = None) -> tuple[dict, set[str]]:
  """LDM-named VAE state dict (as in MVDream's `.pt`) -> `AutoencoderKL` params.

  Renames (P = prefix): `P<path>.weight` -> `<path with '.' between module names as '/'>/kernel` for
  convs (OIHW -> HWIO) and the attention q/k/v/proj_out (1x1 convs -> Dense (in, out));
  GroupNorm `weight` -> `scale`; `bias` stays. Module paths keep LDM's numbered names (`down.1`,
  `block.0`, `up.2`), e.g. `P encoder.down.1.block.0.nin_shortcut.weight` ->
  `encoder/down.1/block.0/nin_shortcut/kernel`. LDM's loss module holds no tensors.

  Args:
    state: flat name -> array.
    prefix: where the VAE lives in `state`.
    config: expected sizes; inferred from the shapes when None.

  Returns:
    (params, consumed_keys): nested dict of float32 numpy arrays and the keys of `state` used.

  Raises:
    UserError: a missing key or a shape mismatch (the message names the key).
  """
  cfg = config or vae_config_from_state(state, prefix)
  reader = state_reader.StateReader(state, prefix)
  tensors = _LdmVaeTensors(reader, cfg)
  z = cfg.z_channels
  params = {"encoder": tensors.encoder(), "decoder": tensors.decoder(),
            "quant_conv": tensors.conv("quant_conv", 2 * z, 2 * z, 1),
            "post_quant_conv": tensors.conv("post_quant_conv", z, z, 1)}
  return params, reader.consumed


class _LdmVaeTensors:
  """The VAE's LDM-named tensors as `AutoencoderKL` parameter subtrees (see `convert_vae_state`)."""

  def __init__(self, reader: state_reader.StateReader, cfg: VaeConfig):
    self.reader = reader
    self.cfg = cfg
    self.chans = [m * cfg.base_channels for m in cfg.channel_mult]  # width per level

  def conv(self, name: str, c_in: int, c_out: int, k: int) -> dict:
    return {"kernel": self.reader.take(name + ".weight", (c_out, c_in, k, k)).transpose(2, 3, 1, 0),
            "bias": self.reader.take(name + ".bias", (c_out,))}

  def dense_1x1(self, name: str, c: int) -> dict:
    return {"kernel": self.reader.take(name + ".weight", (c, c, 1, 1))[:, :, 0, 0].T,
            "bias": self.reader.take(name + ".bias", (c,))}

  def norm(self, name: str, c: int) -> dict:
    return {"scale": self.reader.take(name + ".weight", (c,)),
            "bias": self.reader.take(name + ".bias", (c,))}

  def resblock(self, name: str, c_in: int, c_out: int) -> dict:
    p = {"norm1": self.norm(name + ".norm1", c_in),
         "conv1": self.conv(name + ".conv1", c_in, c_out, 3),
         "norm2": self.norm(name + ".norm2", c_out),
         "conv2": self.conv(name + ".conv2", c_out, c_out, 3)}
    if c_in != c_out:
      p["nin_shortcut"] = self.conv(name + ".nin_shortcut", c_in, c_out, 1)
    return p

  def mid(self, name: str, c: int) -> dict:
    return {"block_1": self.resblock(name + ".block_1", c, c),
            "attn_1": {"norm": self.norm(name + ".attn_1.norm", c),
                       **{k: self.dense_1x1(f"{name}.attn_1.{k}", c)
                          for k in ("q", "k", "v", "proj_out")}},
            "block_2": self.resblock(name + ".block_2", c, c)}

  def encoder(self) -> dict:
    cfg, chans = self.cfg, self.chans
    encoder = {"conv_in": self.conv("encoder.conv_in", cfg.in_channels, chans[0], 3)}
    c_prev = chans[0]
    for i, c in enumerate(chans):
      level = {}
      for j in range(cfg.num_res_blocks):
        level[f"block.{j}"] = self.resblock(f"encoder.down.{i}.block.{j}", c_prev, c)
        c_prev = c
      if i != len(chans) - 1:
        level["downsample"] = {"conv": self.conv(f"encoder.down.{i}.downsample.conv", c, c, 3)}
      encoder[f"down.{i}"] = level
    encoder["mid"] = self.mid("encoder.mid", chans[-1])
    encoder["norm_out"] = self.norm("encoder.norm_out", chans[-1])
    encoder["conv_out"] = self.conv("encoder.conv_out", chans[-1], 2 * cfg.z_channels, 3)
    return encoder

  def decoder(self) -> dict:
    cfg, chans = self.cfg, self.chans
    decoder = {"conv_in": self.conv("decoder.conv_in", cfg.z_channels, chans[-1], 3),
               "mid": self.mid("decoder.mid", chans[-1])}
    c_prev = chans[-1]
    for i in reversed(range(len(chans))):
      level = {}
      for j in range(cfg.num_res_blocks + 1):
        level[f"block.{j}"] = self.resblock(f"decoder.up.{i}.block.{j}", c_prev, chans[i])
        c_prev = chans[i]
      if i != 0:
        level["upsample"] = {"conv": self.conv(f"decoder.up.{i}.upsample.conv", chans[i],
                                               chans[i], 3)}
      decoder[f"up.{i}"] = level
    decoder["norm_out"] = self.norm("decoder.norm_out", chans[0])
    decoder["conv_out"] = self.conv("decoder.conv_out", chans[0], cfg.out_channels, 3)
    return decoder


# diffusers' VAE attention names (current, then the pre-0.14 ones) -> LDM's.
_DIFFUSERS_ATTN_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                         "to_out.0": "proj_out", "query": "q", "key": "k", "value": "v",
                         "proj_attn": "proj_out"}


def _diffusers_vae_key_to_ldm(name: str, num_levels: int) -> str | None:
  """One diffusers `AutoencoderKL` key (without prefix) -> its LDM name; None if unknown."""
  m = re.fullmatch(r"(encoder|decoder)\.(.*)", name)
  if not m:
    return name if re.fullmatch(r"(post_)?quant_conv\.(weight|bias)", name) else None
  part, rest = m.groups()
  rules = [
      (r"conv_norm_out\.(.*)", lambda g: f"norm_out.{g[0]}"),
      (r"(conv_in|conv_out)\.(.*)", lambda g: f"{g[0]}.{g[1]}"),
      (r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
       lambda g: f"down.{g[0]}.block.{g[1]}.{g[2]}"),
      (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)",
       lambda g: f"down.{g[0]}.downsample.conv.{g[1]}"),
      (r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)",
       lambda g: f"up.{num_levels - 1 - int(g[0])}.block.{g[1]}.{g[2]}"),
      (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)",
       lambda g: f"up.{num_levels - 1 - int(g[0])}.upsample.conv.{g[1]}"),
      (r"mid_block\.resnets\.(\d+)\.(.*)", lambda g: f"mid.block_{int(g[0]) + 1}.{g[1]}"),
      (r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)"
       r"\.(weight|bias)", lambda g: f"mid.attn_1.{_DIFFUSERS_ATTN_NAMES[g[0]]}.{g[1]}"),
  ]
  for pattern, build in rules:
    mm = re.fullmatch(pattern, rest)
    if mm:
      ldm = f"{part}.{build(mm.groups())}"
      return ldm.replace("conv_shortcut", "nin_shortcut")
  return None


def convert_vae_diffusers_state(state: Mapping[str, Any], prefix: str = ""
                               ) -> tuple[dict, set[str]]:
  """diffusers-format `AutoencoderKL` state dict (a `vae/` folder) -> `AutoencoderKL` params.

  Keys are renamed to LDM's (`down_blocks.i.resnets.j` -> `down.i.block.j`, `conv_shortcut` ->
  `nin_shortcut`, `up_blocks.k` -> `up.(L-1-k)`, `mid_block.resnets.r` -> `mid.block_(r+1)`,
  `mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}` (or the older
  `query/key/value/proj_attn`) -> `mid.attn_1.{norm,q,k,v,proj_out}`, `conv_norm_out` -> `norm_out`), the
  attention's Linear weights get 1x1 conv axes, and `convert_vae_state` does the rest.

  Returns:
    (params, consumed_keys) with consumed keys in the diffusers naming (with the prefix).
  """
  level_keys = {int(m.group(1)) for k in state
                if (m := re.match(re.escape(prefix) + r"encoder\.down_blocks\.(\d+)\.", k))}
  if not level_keys:
    raise UserError(f"{prefix}encoder.down_blocks: missing (not a diffusers AutoencoderKL)")
  num_levels = max(level_keys) + 1
  ldm_state, back = {}, {}
  for key, value in state.items():
    if not key.startswith(prefix):
      continue
    ldm = _diffusers_vae_key_to_ldm(key[len(prefix):], num_levels)
    if ldm is None:
      continue
    value = np.asarray(value)
    if ".attn_1." in ldm and ldm.endswith(".weight") and ".norm." not in ldm and value.ndim == 2:
      value = value[:, :, None, None]
    ldm_state[ldm] = value
    back[ldm] = key
  params, consumed = convert_vae_state(ldm_state, prefix="")
  return params, {back[k] for k in consumed}
