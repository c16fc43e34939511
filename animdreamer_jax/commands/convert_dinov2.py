"""Convert DINOv2 PyTorch weights into a Flax parameter folder (for `preprocess --features dinov2`).

  animdreamer convert-dinov2 --ckpt dinov2_vits14_pretrain.pth --out weights/dinov2

The ViT-S/14 weights lab4d and AnimatableDreamer use are `dinov2_vits14_pretrain.pth` (about 85 MB,
https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth, what torch.hub's
`dinov2_vits14` loads; needs torch to read: `pip install -e '.[parity]'`) or the Hugging Face repository
facebook/dinov2-small (a folder with model.safetensors, read without torch). This tool never downloads.
The output folder holds config.json and dinov2.safetensors, written atomically.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import dinov2


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--ckpt", type=pathlib.Path, required=True,
                      help=f"{dinov2.CHECKPOINT_NAME}, a .safetensors, or an HF facebook/dinov2-small "
                           "folder")
  parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
  if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
    raise UserError(f"{args.out}: folder exists and is not empty (pass --overwrite to replace it)")
  start = time.time()
  config, params = dinov2.convert_dinov2_state(dinov2.read_checkpoint(args.ckpt))
  dinov2.save_dinov2(config, params, args.out, source=str(args.ckpt), overwrite=args.overwrite)
  print(f"converted {args.ckpt} ({config.depth} blocks, width {config.embed_dim}) to {args.out} in "
        f"{time.time() - start:.0f} s")
  return 0
