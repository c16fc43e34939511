"""Convert MVDream PyTorch weights into a Flax parameter folder (loaded later without torch).

  animdreamer convert-mvdream --ckpt sd-v2.1-base-4view.pt --out weights/mvdream

The official checkpoint `sd-v2.1-base-4view.pt` (about 5 GB) is published in the Hugging Face repository
MVDream/MVDream (https://huggingface.co/MVDream/MVDream); this tool never downloads it. Accepted inputs:
the `.pt` (needs torch: `pip install -e '.[parity]'`), the same tensors as `.safetensors`, or a
diffusers-format folder (unet/, vae/, text_encoder/). The output folder holds config.json and
unet/vae/text_encoder `.safetensors`; it is written atomically.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--ckpt", type=pathlib.Path, required=True,
                      help="sd-v2.1-base-4view.pt, a .safetensors with the same keys, or a diffusers folder")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
  parser.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                      help="storage dtype of the saved parameters (default float32)")
  parser.add_argument("--num-head-channels", type=int, default=64,
                      help="UNet channels per attention head (not stored in checkpoints; 64 for SD2.x)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
  if not args.ckpt.exists():
    raise UserError(convert.missing_checkpoint_message(args.ckpt))
  if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
    raise UserError(f"{args.out}: folder exists and is not empty (pass --overwrite to replace it)")
  start = time.time()
  result = convert.convert_checkpoint(args.ckpt, num_head_channels=args.num_head_channels,
                                      log=lambda message: print(message, flush=True))
  print(f"writing {args.out}", flush=True)
  convert.save_prior(result, args.out, dtype=args.dtype, overwrite=args.overwrite,
                     source=str(args.ckpt))
  parts = [p for p in ("unet", "vae", "text_encoder") if p in result]
  print(f"converted {', '.join(parts)} from {args.ckpt} to {args.out} "
        f"({len(result.get('ignored_keys', []))} keys ignored: schedule buffers) "
        f"in {time.time() - start:.0f} s")
  return 0
