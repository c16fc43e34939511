"""MVDream UNet benchmark: JAX vs the PyTorch diffusers reference, and XLA's memory estimate at full size.

  animdreamer bench unet                    # both parts
  animdreamer bench unet --skip-memory      # speed only (needs torch + diffusers for the ratio)
  animdreamer bench unet --skip-speed       # memory only (no torch)

Speed: forward + VJP w.r.t. the input latents (what score distillation through the UNet needs), the same
random weights and inputs in both frameworks, float32, on this machine's CPU, timed in the same run; the
ratio torch_time / jax_time is printed (> 1: JAX faster). The outputs are compared as a sanity check.
The PyTorch side is diffusers' `UNet2DConditionModel` (SD2.1-base layout, `class_embed_type="projection"`
as the camera MLP) with a joint-view processor on every `attn1`.

Memory: the full-size 4-view model (866M params) at 32x32 latents with classifier-free guidance (8 latents),
lowered and compiled on CPU without running it; `compiled.memory_analysis()` gives the argument, output and
temporary buffer sizes. Reported for the forward pass (the guidance step) and forward + input-VJP, with and
without `jax.checkpoint` per block and query-chunked attention, in float32 and bfloat16 activations.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.bench import common
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior.convert import diffusers_unet_to_ldm, flatten_params, flax_path_to_torch_key
from animdreamer_jax.prior.unet import MultiViewUNet, UNetConfig, init_unet_params, unet_param_shapes

# torch and diffusers are optional (the parity extra): imported inside the functions of the
# PyTorch reference only, so the JAX side and the memory part run without them.


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model-channels", type=int, default=32, help="speed config width (full: 320)")
  parser.add_argument("--head-channels", type=int, default=32, help="speed config channels per head")
  parser.add_argument("--context-dim", type=int, default=128, help="speed config text width")
  parser.add_argument("--latent", type=int, default=32, help="latent H = W for the speed part")
  parser.add_argument("--objects", type=int, default=2, help="objects (x4 views) for the speed part")
  parser.add_argument("--context-length", type=int, default=77)
  parser.add_argument("--repeats", type=int, default=5, help="timed repetitions (median reported)")
  parser.add_argument("--skip-speed", action="store_true")
  parser.add_argument("--skip-memory", action="store_true")
  parser.add_argument("--memory-variants",
                      default="fwd,vjp,vjp-remat,vjp-chunk,vjp-remat-chunk,bf16-fwd,bf16-vjp-remat-chunk",
                      help="comma list of full-size variants for the memory part: [bf16-](fwd|vjp)"
                           "[-remat][-chunk] (chunk: attention in blocks of 512 queries)")


VIEWS = 4


def _inputs(config: UNetConfig, n: int, latent: int, context_length: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  return dict(x=rng.standard_normal((n, latent, latent, config.in_channels)).astype(np.float32),
              timesteps=np.repeat(rng.integers(20, 980, n // VIEWS), VIEWS).astype(np.float32),
              context=np.repeat(rng.standard_normal((n // VIEWS, context_length, config.context_dim)),
                                VIEWS, axis=0).astype(np.float32),
              camera=rng.standard_normal((n, config.camera_dim)).astype(np.float32),
              cotangent=rng.standard_normal((n, latent, latent, config.out_channels)).astype(np.float32))


def _jax_step(config: UNetConfig, dtype=jnp.float32, remat: bool = False, vjp: bool = True,
              query_chunk: int = 0):
  model = MultiViewUNet(config, dtype=dtype, remat=remat, attention_query_chunk=query_chunk)

  def forward(params, x, timesteps, context, camera):
    return model.apply({"params": params}, x, timesteps, context, camera, num_views=VIEWS)

  def forward_and_vjp(params, x, timesteps, context, camera, cotangent):
    eps, pullback = jax.vjp(lambda x: forward(params, x, timesteps, context, camera), x)
    return eps, pullback(cotangent)[0]

  return forward_and_vjp if vjp else forward


def _median_time(fn, repeats: int) -> float:
  return float(np.median(common.time_calls(fn, repeats)))


class _JointViewsProcessor:
  """diffusers attention processor: attn1 over all views of an object as one token sequence."""

  def __init__(self, num_views: int):
    self.num_views = num_views

  def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
               **kwargs):
    import torch.nn.functional as F
    n, length, channels = hidden_states.shape
    x = hidden_states.reshape(n // self.num_views, self.num_views * length, channels)

    def heads(t):
      return t.reshape(t.shape[0], t.shape[1], attn.heads, -1).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x)))
    out = attn.to_out[0](out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
    return out.reshape(n, length, channels)


def torch_reference(config: UNetConfig, params) -> "torch.nn.Module":  # noqa: F821
  """diffusers' UNet with `config`'s layout, multi-view attn1, loaded with the JAX `params`."""
  import torch
  from diffusers import UNet2DConditionModel
  widths = [m * config.model_channels for m in config.channel_mult]
  attention = [config.level_has_attention(level) for level in range(len(widths))]
  unet = UNet2DConditionModel(
      in_channels=config.in_channels, out_channels=config.out_channels,
      down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
      up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
      block_out_channels=tuple(widths), layers_per_block=config.num_res_blocks,
      cross_attention_dim=config.context_dim,
      attention_head_dim=tuple(w // config.num_head_channels for w in widths),
      use_linear_projection=True, transformer_layers_per_block=config.transformer_depth,
      class_embed_type="projection", projection_class_embeddings_input_dim=config.camera_dim,
      flip_sin_to_cos=True, freq_shift=0, norm_num_groups=config.norm_groups).eval()
  unet.set_attn_processor({name: (_JointViewsProcessor(VIEWS) if name.endswith("attn1.processor") else p)
                           for name, p in unet.attn_processors.items()})
  # Renaming a dict whose values are its own keys gives {LDM name: diffusers name}.
  ldm_to_diffusers = diffusers_unet_to_ldm({k: k for k in unet.state_dict()}, config.num_res_blocks)
  state = {}
  for key, value in flatten_params(params).items():
    path = tuple(key.split("/"))
    value = np.asarray(value)
    if path[-1] == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    state[ldm_to_diffusers[flax_path_to_torch_key(path)]] = torch.from_numpy(np.array(value))
  unet.load_state_dict(state, strict=True)
  for p in unet.parameters():
    p.requires_grad_(False)  # VJP w.r.t. the input only, as in JAX
  return unet


def bench_speed(args) -> None:
  config = UNetConfig(model_channels=args.model_channels, num_head_channels=args.head_channels,
                      context_dim=args.context_dim)
  n = args.objects * VIEWS
  inputs = _inputs(config, n, args.latent, args.context_length)
  params = jax.jit(lambda key: init_unet_params(config, key))(jax.random.PRNGKey(0))
  # Flax zero-initialises biases; give every parameter some value so no path is trivially zero.
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = jax.tree_util.tree_unflatten(
      treedef, [a + 0.02 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
  print(f"speed config: {config}\n  {n_params / 1e6:.1f}M params, {n} latents "
        f"({args.objects} objects x {VIEWS} views) of {args.latent}x{args.latent}, context "
        f"{args.context_length}x{config.context_dim}, float32, CPU ({os.cpu_count()} cores)")

  step = jax.jit(_jax_step(config))
  jax_args = (params, inputs["x"], inputs["timesteps"], inputs["context"], inputs["camera"],
              inputs["cotangent"])
  start = time.perf_counter()
  eps, vjp = jax.block_until_ready(step(*jax_args))
  print(f"  JAX compile + first run: {time.perf_counter() - start:.1f} s")
  jax_time = _median_time(lambda: jax.block_until_ready(step(*jax_args)), args.repeats)
  print(f"  JAX   forward + input VJP: {jax_time * 1e3:8.1f} ms (median of {args.repeats})")

  try:
    import torch
    import diffusers  # noqa: F401  (only whether it is installed)
  except ImportError:
    print("  PyTorch reference: torch/diffusers not installed (pip install -e '.[parity]'); no ratio")
    return
  torch.set_num_threads(os.cpu_count() or 1)
  unet = torch_reference(config, params)
  t = {k: torch.from_numpy(np.array(v)) for k, v in inputs.items()}
  x_nchw = t["x"].permute(0, 3, 1, 2).contiguous()
  cot_nchw = t["cotangent"].permute(0, 3, 1, 2).contiguous()

  def torch_step():
    x = x_nchw.clone().requires_grad_(True)
    out = unet(x, t["timesteps"], encoder_hidden_states=t["context"], class_labels=t["camera"]).sample
    (grad,) = torch.autograd.grad(out, x, cot_nchw)
    return out, grad

  out, grad = torch_step()  # warm-up
  torch_time = _median_time(torch_step, args.repeats)
  print(f"  torch forward + input VJP: {torch_time * 1e3:8.1f} ms (torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads)")
  rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())
  print(f"  agreement: eps {rel(np.asarray(eps), out.detach().permute(0, 2, 3, 1).numpy()):.1e}, "
        f"VJP {rel(np.asarray(vjp), grad.permute(0, 2, 3, 1).numpy()):.1e} (max error / max value)")
  print(f"  ratio torch / JAX = {torch_time / jax_time:.2f}  (> 1: JAX faster)")


def bench_memory(args) -> None:
  config = UNetConfig()
  n, latent = 2 * VIEWS, 32  # one object, 4 views, cond + uncond halves of CFG
  params = unet_param_shapes(config)
  param_bytes = sum(int(np.prod(a.shape)) * 4 for a in jax.tree_util.tree_leaves(params))
  spec = lambda shape: jax.ShapeDtypeStruct(shape, jnp.float32)
  data = (spec((n, latent, latent, 4)), spec((n,)), spec((n, 77, config.context_dim)),
          spec((n, config.camera_dim)))
  print(f"memory (XLA CPU estimate, compiled not run): full MVDream UNet, {n} latents "
        f"{latent}x{latent}, params {param_bytes / 2**30:.2f} GiB float32")
  print(f"  {'variant':22s} {'params+inputs':>13s} {'outputs':>9s} {'temporaries':>12s} {'peak':>9s} "
        f"{'compile':>8s}")
  variants = []
  for name in [v.strip() for v in args.memory_variants.split(",") if v.strip()]:
    parts = name.split("-")
    dtype = jnp.bfloat16 if parts[0] == "bf16" else jnp.float32
    parts = parts[1:] if parts[0] == "bf16" else parts
    if not parts or parts[0] not in ("fwd", "vjp") or not set(parts[1:]) <= {"remat", "chunk"}:
      raise UserError(f"--memory-variants: unknown variant '{name}' (e.g. fwd, vjp-remat, bf16-vjp-chunk)")
    variants.append((name, dtype, parts[0] == "vjp", "remat" in parts, 512 if "chunk" in parts else 0))
  for name, dtype, vjp, remat, chunk in variants:
    fn = _jax_step(config, dtype=dtype, remat=remat, vjp=vjp, query_chunk=chunk)
    start = time.perf_counter()
    extra = (spec((n, latent, latent, 4)),) if vjp else ()
    compiled = jax.jit(fn).lower(params, *data, *extra).compile()
    seconds = time.perf_counter() - start
    if compiled.memory_analysis() is None:
      print(f"  {name:22s} memory_analysis() unavailable on this backend")
      continue
    m = common.memory_figures(compiled)
    gib = lambda b: f"{b / common.GIB:.2f} GiB"  # noqa: E731
    print(f"  {name:22s} {gib(m['argument_size_in_bytes']):>13s} {gib(m['output_size_in_bytes']):>9s} "
          f"{gib(m['temp_size_in_bytes']):>12s} {gib(m['peak_bytes']):>9s} {seconds:7.0f}s", flush=True)


def run(args: argparse.Namespace) -> int:
  if not args.skip_speed:
    bench_speed(args)
  if not args.skip_memory:
    bench_memory(args)
  return 0
