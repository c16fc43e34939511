"""`animdreamer <subcommand>`: the one command-line entry point.

Each subcommand lives in its own module, which defines
  add_arguments(parser: argparse.ArgumentParser) -> None
  run(args: argparse.Namespace) -> int | None
and is imported only when that subcommand runs (so `--help` stays fast and a
subcommand's heavy imports never slow the others down).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from animdreamer_jax import allocator
from animdreamer_jax.errors import UserError

# name -> (module, one-line help). Order is the order shown by --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("animdreamer_jax.commands.demo",
             "run the whole pipeline on the bundled demo animal"),
    "synth": ("animdreamer_jax.commands.synth",
              "render a rigged/animated asset into a benchmark video folder"),
    "eval": ("animdreamer_jax.commands.evaluate",
             "score predicted per-frame meshes against a video's ground truth"),
    "preprocess": ("animdreamer_jax.commands.preprocess",
                   "turn an ordinary video (file or frames) into a video folder"),
    "extract": ("animdreamer_jax.commands.extract",
                "train an animatable model from a video folder"),
    "skeleton": ("animdreamer_jax.commands.skeleton",
                 "build a finished run's joint tree (skeleton.json, skeleton.png)"),
    "generate": ("animdreamer_jax.commands.generate",
                 "a new animatable model on an extracted skeleton and motion, by CSD"),
    "export": ("animdreamer_jax.commands.export",
               "export a trained run as a rigged, animated glTF"),
    "reanimate": ("animdreamer_jax.commands.reanimate",
                  "drive a trained model with another run's motion"),
    "convert-mvdream": ("animdreamer_jax.commands.convert_mvdream",
                        "convert MVDream PyTorch weights to a Flax tree"),
    "convert-dinov2": ("animdreamer_jax.commands.convert_dinov2",
                       "convert DINOv2 PyTorch weights to a Flax tree (video features)"),
    "sample": ("animdreamer_jax.commands.sample",
               "text -> 4 views with the MVDream prior (DDIM)"),
    "bench": ("animdreamer_jax.commands.bench",
              "benchmarks that print ratios measured in the same run"),
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="animdreamer",
      description="Animatable 3D models from monocular videos and text (JAX).")
  sub = parser.add_subparsers(dest="command", metavar="<subcommand>")
  for name, (module, help_text) in SUBCOMMANDS.items():
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.set_defaults(_module=module)
  return parser


def main(argv: list[str] | None = None) -> int:
  if argv is None:  # the real command line (not a test calling main): jemalloc first, if here
    allocator.setup()
  argv = list(sys.argv[1:] if argv is None else argv)
  parser = build_parser()
  # First pass only finds the subcommand; its own flags are added afterwards so
  # that only the chosen module is imported.
  if not argv or argv[0] not in SUBCOMMANDS:
    parser.parse_args(argv or ["--help"])
    return 2
  name = argv[0]
  module_name, help_text = SUBCOMMANDS[name]
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name == module_name:
      print(f"error: subcommand '{name}' is not available in this build",
            file=sys.stderr)
      return 2
    raise
  sub_parser = argparse.ArgumentParser(prog=f"animdreamer {name}",
                                       description=module.__doc__ or help_text,
                                       formatter_class=argparse.RawDescriptionHelpFormatter)
  module.add_arguments(sub_parser)
  args = sub_parser.parse_args(argv[1:])
  try:
    # A multi-host launch (JAX_COORDINATOR_ADDRESS, ...) joins its peers before any device use.
    from animdreamer_jax import parallel  # pylint: disable=import-outside-toplevel
    parallel.initialize_distributed()
    return int(module.run(args) or 0)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
