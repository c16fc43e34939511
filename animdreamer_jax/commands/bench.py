"""Benchmarks that print ratios measured in the same run (never timed tests).

  animdreamer bench step [...]   jitted render+loss+grad step: achieved FLOP/s / dense matmul FLOP/s
  animdreamer bench unet [...]   MVDream UNet forward+VJP: JAX vs the PyTorch diffusers reference
  animdreamer bench csd [...]    one CSD train step (render, VAE, MVDream with CFG, pull-back, AdamW)

`animdreamer bench <which> --help` lists each benchmark's own flags.
"""

from __future__ import annotations

import argparse
import importlib

from animdreamer_jax.errors import UserError

BENCHMARKS = ("step", "unet", "csd")  # modules animdreamer_jax.bench.<name>


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("which", choices=BENCHMARKS, help="which benchmark")
  parser.add_argument("rest", nargs=argparse.REMAINDER,
                      help="the benchmark's own flags (see `bench <which> --help`)")


def run(args: argparse.Namespace) -> int:
  name = f"animdreamer_jax.bench.{args.which}"
  try:
    module = importlib.import_module(name)
  except ModuleNotFoundError as e:
    if e.name != name:  # a missing dependency inside the benchmark is a bug to see, not hide
      raise
    raise UserError(f"benchmark '{args.which}' is not available in this build") from e
  parser = argparse.ArgumentParser(prog=f"animdreamer bench {args.which}",
                                   description=module.__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  module.add_arguments(parser)
  return int(module.run(parser.parse_args(args.rest)) or 0)
