"""Generates the MVDream UNet goldens (tests/data/mvdream/unet_*.npz) with the PyTorch diffusers reference.

    python3 tests/tools/make_unet_goldens.py            # needs torch + diffusers (the 'parity' extra)

Reference: diffusers' PyTorch `UNet2DConditionModel` with the SD2.1-base layout at a tiny size, plus
`class_embed_type="projection"` (a 16 -> E -> E MLP added to the time embedding = MVDream's `camera_embed`)
and, on every `attn1`, `JointViewsAttnProcessor` below, which attends over all views of an object as one
sequence (MVDream's `BasicTransformerBlock3D`).

LDM (official checkpoint) names come from diffusers' own `convert_ldm_unet_checkpoint`, inverted: the LDM
key names of the layout are enumerated from MVDream's constructor loop (`ldm_unet_key_names`), each gets a
unique tag, diffusers converts the tagged dict, and the tag found under each diffusers key gives the
diffusers -> LDM map. The map must cover the torch model's state dict exactly. diffusers calls the
projection class embedding `label_emb.0.{0,2}`; MVDream calls it `camera_embed.{0,2}` (renamed here).

Weights are not stored: `golden_ldm_state` derives every tensor from its LDM name with a counter-based hash
(splitmix64), as small integers times a power of two, so the same float32 values are rebuilt exactly by the
tests without torch. The .npz holds the config, the LDM key names and shapes, the diffusers names, the inputs
and the torch outputs (float32, on CPU).

The torch-free helpers (`GOLDEN_CONFIG`, `golden_ldm_state`, ...) are imported by tests/test_unet.py and
tests/test_convert.py; torch is imported only inside the functions that need it.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import zlib

import numpy as np

OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "mvdream"
GOLDEN_FILE = "unet_tiny.npz"
WEIGHT_SEED = 6

# SD2.1-base structure at 1/10 width: 4 levels (x1, x2, x4, x4), 2 ResBlocks, attention at the 3 finest
# levels, 16 channels per head (2/4/8 heads), context 64 wide, a 16-D camera.
GOLDEN_CONFIG = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 4, 4),
                     num_res_blocks=2, attention_resolutions=(4, 2, 1), num_head_channels=16,
                     transformer_depth=1, context_dim=64, camera_dim=16, norm_groups=32)
NUM_OBJECTS = 2
NUM_VIEWS = 4
LATENT_SIZE = 16
CONTEXT_LENGTH = 12


# --- torch-free part (used by the tests) ---------------------------------------------------------------

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a fixed, version-proof hash."""
  x = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
  x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
  x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
  return x ^ (x >> np.uint64(31))


def golden_tensor(name: str, shape: tuple[int, ...], seed: int = WEIGHT_SEED) -> np.ndarray:
  """A deterministic float32 tensor for the LDM key `name`: integers in [-127, 127] times 2^-k.

  Linear/conv weights have std ~ 1/sqrt(fan_in); 1-D `.weight`s (norm scales) are 1 + [-0.25, 0.25];
  biases lie in [-0.25, 0.25]. Every value is exactly representable in float32 (and bfloat16 keeps 8 bits).
  """
  size = int(np.prod(shape)) if shape else 1
  base = np.uint64((zlib.crc32(name.encode()) << 16) ^ (seed << 48))
  with np.errstate(over="ignore"):
    counters = base + np.arange(size, dtype=np.uint64) * np.uint64(0x632BE59BD9B4E019)
    hashed = _splitmix64(counters)
  levels = ((hashed >> np.uint64(33)) % np.uint64(255)).astype(np.int64) - 127
  levels = levels.astype(np.float32).reshape(shape)
  if name.endswith(".bias"):
    return levels * np.float32(2.0 ** -9)
  if len(shape) == 1:
    return np.float32(1.0) + levels * np.float32(2.0 ** -9)
  fan_in = int(np.prod(shape[1:]))
  # Uniform integers in [-127, 127] have std ~73.3: scale so that std ~ 1/sqrt(fan_in).
  exponent = round(math.log2(73.3 * math.sqrt(fan_in)))
  return levels * np.float32(2.0 ** -exponent)


def golden_ldm_state(key_names, key_shapes, prefix: str = "model.diffusion_model.",
                     seed: int = WEIGHT_SEED) -> dict[str, np.ndarray]:
  """The LDM-named UNet state dict of the goldens (names without prefix are hashed)."""
  return {prefix + str(name): golden_tensor(str(name), tuple(int(s) for s in shape), seed)
          for name, shape in zip(key_names, key_shapes)}


def golden_inputs(seed: int = 0) -> dict[str, np.ndarray]:
  """Latents (NHWC), timesteps, per-view contexts (one prompt per object) and MVDream orbit cameras."""
  rng = np.random.default_rng(seed)
  n = NUM_OBJECTS * NUM_VIEWS
  x = rng.standard_normal((n, LATENT_SIZE, LATENT_SIZE, 4)).astype(np.float32)
  timesteps = np.repeat(np.array([981.0, 421.0], np.float32), NUM_VIEWS)
  prompts = rng.standard_normal((NUM_OBJECTS, CONTEXT_LENGTH, GOLDEN_CONFIG["context_dim"]))
  context = np.repeat(prompts.astype(np.float32), NUM_VIEWS, axis=0)
  cameras = np.concatenate([_orbit_cameras_numpy(NUM_VIEWS, 15.0, 90.0),
                            _orbit_cameras_numpy(NUM_VIEWS, 30.0, 17.0)]).astype(np.float32)
  cotangent = rng.standard_normal((n, LATENT_SIZE, LATENT_SIZE, 4)).astype(np.float32)
  return dict(x=x, timesteps=timesteps, context=context, camera=cameras, cotangent=cotangent)


def _orbit_cameras_numpy(num_views: int, elevation: float, azimuth_start: float) -> np.ndarray:
  """MVDream `get_camera(..., blender_coord=True)`, written out in NumPy (float64)."""
  rows = []
  for azimuth in azimuth_start + np.arange(num_views) * 360.0 / num_views:
    e, a = np.radians(elevation), np.radians(azimuth)
    pos = np.array([np.cos(e) * np.sin(a), np.sin(e), np.cos(e) * np.cos(a)])
    forward = -pos / np.linalg.norm(pos)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, -forward, pos
    flip_yz = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], np.float64)
    rows.append((flip_yz @ c2w).reshape(16))
  return np.stack(rows)


def ldm_unet_key_names(cfg: dict) -> list[str]:
  """LDM/MVDream UNet state-dict names (without prefix), following MVDream's constructor loop.

  Uses diffusers' spelling `label_emb.0.{0,2}` for the camera MLP (renamed to `camera_embed` afterwards).
  """
  names = [f"time_embed.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
  names += [f"label_emb.0.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
  names += ["input_blocks.0.0.weight", "input_blocks.0.0.bias"]

  def resblock(prefix, skip):
    out = [f"{prefix}.{layer}.{p}" for layer in ("in_layers.0", "in_layers.2", "emb_layers.1",
                                                   "out_layers.0", "out_layers.3")
           for p in ("weight", "bias")]
    return out + ([f"{prefix}.skip_connection.{p}" for p in ("weight", "bias")] if skip else [])

  def transformer(prefix):
    out = [f"{prefix}.{layer}.{p}" for layer in ("norm", "proj_in", "proj_out") for p in ("weight", "bias")]
    for d in range(cfg["transformer_depth"]):
      block = f"{prefix}.transformer_blocks.{d}"
      for attn in ("attn1", "attn2"):
        out += [f"{block}.{attn}.to_{w}.weight" for w in "qkv"]
        out += [f"{block}.{attn}.to_out.0.{p}" for p in ("weight", "bias")]
      out += [f"{block}.{layer}.{p}" for layer in ("norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2")
              for p in ("weight", "bias")]
    return out

  mc = cfg["model_channels"]
  ch, ds, block, skips = mc, 1, 1, [mc]
  for level, mult in enumerate(cfg["channel_mult"]):
    for _ in range(cfg["num_res_blocks"]):
      names += resblock(f"input_blocks.{block}.0", ch != mult * mc)
      ch = mult * mc
      if ds in cfg["attention_resolutions"]:
        names += transformer(f"input_blocks.{block}.1")
      skips.append(ch)
      block += 1
    if level != len(cfg["channel_mult"]) - 1:
      names += [f"input_blocks.{block}.0.op.{p}" for p in ("weight", "bias")]
      skips.append(ch)
      block += 1
      ds *= 2
  names += resblock("middle_block.0", False) + transformer("middle_block.1")
  names += resblock("middle_block.2", False)
  block = 0
  for level in reversed(range(len(cfg["channel_mult"]))):
    mult = cfg["channel_mult"][level]
    for i in range(cfg["num_res_blocks"] + 1):
      names += resblock(f"output_blocks.{block}.0", ch + skips.pop() != mult * mc)
      ch = mult * mc
      sub = 1
      if ds in cfg["attention_resolutions"]:
        names += transformer(f"output_blocks.{block}.1")
        sub = 2
      if level and i == cfg["num_res_blocks"]:
        names += [f"output_blocks.{block}.{sub}.conv.{p}" for p in ("weight", "bias")]
        ds //= 2
      block += 1
  names += [f"out.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")]
  return names


# --- torch part ------------------------------------------------------------------------------------------


class JointViewsAttnProcessor:
  """attn1 over all views of an object: (objects*F, L, C) -> (objects, F*L, C) -> attention -> back."""

  def __init__(self, num_views: int):
    self.num_views = num_views

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
               **kwargs):
    import torch  # pylint: disable=import-outside-toplevel
    assert encoder_hidden_states is None and attention_mask is None
    assert attn.spatial_norm is None and attn.group_norm is None and not attn.residual_connection
    assert attn.rescale_output_factor == 1.0 and attn.norm_q is None and attn.norm_k is None
    n, length, channels = hidden_states.shape
    x = hidden_states.reshape(n // self.num_views, self.num_views * length, channels)
    heads = attn.heads

    def split(t):
      return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # (B, H, T, D)

    q, k, v = split(attn.to_q(x)), split(attn.to_k(x)), split(attn.to_v(x))
    weights = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    out = attn.to_out[1](attn.to_out[0](out))
    return out.reshape(n, length, channels)


def build_reference_unet(cfg: dict):
  """diffusers UNet2DConditionModel, SD2.1-base layout at `cfg`'s sizes, multi-view attn1."""
  from diffusers import UNet2DConditionModel  # pylint: disable=import-outside-toplevel
  widths = [m * cfg["model_channels"] for m in cfg["channel_mult"]]
  levels = range(len(widths))
  has_attn = [2 ** level in cfg["attention_resolutions"] for level in levels]
  unet = UNet2DConditionModel(
      sample_size=LATENT_SIZE, in_channels=cfg["in_channels"], out_channels=cfg["out_channels"],
      down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in has_attn),
      up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(has_attn)),
      block_out_channels=tuple(widths), layers_per_block=cfg["num_res_blocks"],
      cross_attention_dim=cfg["context_dim"],
      attention_head_dim=tuple(w // cfg["num_head_channels"] for w in widths),  # = heads in diffusers
      use_linear_projection=True, transformer_layers_per_block=cfg["transformer_depth"],
      class_embed_type="projection", projection_class_embeddings_input_dim=cfg["camera_dim"],
      flip_sin_to_cos=True, freq_shift=0, norm_num_groups=cfg["norm_groups"], norm_eps=1e-5,
      act_fn="silu", upcast_attention=False)
  processors = {name: (JointViewsAttnProcessor(NUM_VIEWS) if name.endswith("attn1.processor") else proc)
                for name, proc in unet.attn_processors.items()}
  unet.set_attn_processor(processors)
  return unet.eval()


def diffusers_to_ldm_names(unet, cfg: dict) -> dict[str, str]:
  """{diffusers name: LDM name} from diffusers' LDM -> diffusers conversion, inverted with unique tags."""
  from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint  # pylint: disable=import-outside-toplevel
  ldm_names = ldm_unet_key_names(cfg)
  tagged = {"model.diffusion_model." + name: ("tag", i) for i, name in enumerate(ldm_names)}
  converted = convert_ldm_unet_checkpoint(tagged, dict(unet.config))
  mapping = {}
  for diffusers_name, tag in converted.items():
    assert tag is not None and tag[0] == "tag", f"{diffusers_name}: not produced from an LDM key"
    mapping[diffusers_name] = ldm_names[tag[1]].replace("label_emb.0.", "camera_embed.")
  torch_names = set(unet.state_dict())
  assert set(mapping) == torch_names, (sorted(set(mapping) ^ torch_names)[:10])
  assert len(set(mapping.values())) == len(ldm_names), "LDM keys not used exactly once"
  return mapping


def run_reference(unet, ldm_to_diffusers: dict[str, str], state: dict[str, np.ndarray],
                  inputs: dict[str, np.ndarray], dtype=None) -> dict[str, np.ndarray]:
  """Loads the LDM-named `state` (no prefix) into the torch UNet; eps and d<eps, cotangent>/dx (NHWC)."""
  import torch  # pylint: disable=import-outside-toplevel
  dtype = dtype or torch.float32
  torch_state = {ldm_to_diffusers[k]: torch.from_numpy(np.asarray(v)) for k, v in state.items()}
  unet.load_state_dict(torch_state, strict=True)
  unet.to(dtype)
  to = lambda a: torch.from_numpy(np.asarray(a)).to(dtype)
  x = to(inputs["x"]).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
  out = unet(x, to(inputs["timesteps"]), encoder_hidden_states=to(inputs["context"]),
             class_labels=to(inputs["camera"])).sample
  (out * to(inputs["cotangent"]).permute(0, 3, 1, 2)).sum().backward()
  return dict(eps=out.detach().permute(0, 2, 3, 1).double().numpy(),
              vjp_x=x.grad.detach().permute(0, 2, 3, 1).double().numpy())


def generate(cfg: dict | None = None) -> dict[str, np.ndarray]:
  """Everything the golden file holds (computed live; torch + diffusers needed)."""
  import diffusers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  cfg = dict(GOLDEN_CONFIG if cfg is None else cfg)
  torch.manual_seed(0)
  unet = build_reference_unet(cfg)
  diffusers_to_ldm = diffusers_to_ldm_names(unet, cfg)
  ldm_to_diffusers = {v: k for k, v in diffusers_to_ldm.items()}
  shapes = {diffusers_to_ldm[k]: tuple(v.shape) for k, v in unet.state_dict().items()}
  ldm_names = sorted(shapes)
  state = golden_ldm_state(ldm_names, [shapes[k] for k in ldm_names], prefix="")
  inputs = golden_inputs()
  out32 = run_reference(unet, ldm_to_diffusers, state, inputs)
  out64 = run_reference(unet, ldm_to_diffusers, state, inputs, dtype=torch.float64)
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  print(f"torch float32 vs float64: eps {rel(out32['eps'], out64['eps']):.2e}, "
        f"vjp {rel(out32['vjp_x'], out64['vjp_x']):.2e} (max abs error / max abs value)")
  width = max(len(n) for n in ldm_names)
  return dict(
      config_json=np.array(__import__("json").dumps({k: (list(v) if isinstance(v, tuple) else v)
                                                     for k, v in cfg.items()})),
      num_views=np.int64(NUM_VIEWS), weight_seed=np.int64(WEIGHT_SEED),
      ldm_names=np.array(ldm_names, dtype=f"<U{width}"),
      ldm_shapes=np.array([list(shapes[k]) + [0] * (4 - len(shapes[k])) for k in ldm_names], np.int64),
      ldm_ranks=np.array([len(shapes[k]) for k in ldm_names], np.int64),
      diffusers_names=np.array([ldm_to_diffusers[k] for k in ldm_names]),
      **inputs,
      eps=out32["eps"].astype(np.float32), vjp_x=out32["vjp_x"].astype(np.float32),
      eps_float64=out64["eps"].astype(np.float32),
      versions=np.array(f"torch {torch.__version__}, diffusers {diffusers.__version__}"))


def golden_shapes(golden) -> list[tuple[int, ...]]:
  """The LDM shapes stored in a golden file (padded rows + ranks) as tuples."""
  return [tuple(int(s) for s in row[:rank]) for row, rank in zip(golden["ldm_shapes"], golden["ldm_ranks"])]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=OUT_DIR)
  args = parser.parse_args()
  data = generate()
  args.out.mkdir(parents=True, exist_ok=True)
  path = args.out / GOLDEN_FILE
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez_compressed(tmp, **data)
  tmp.replace(path)
  print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB): {data['versions']}")


if __name__ == "__main__":
  main()
