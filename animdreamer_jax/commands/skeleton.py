"""Build (or rebuild) a finished run's skeleton: the joint tree over its Gaussian bones.

  bin/animdreamer skeleton --run RUN [--config.skeleton.alpha=0.5 ...]

`animdreamer extract` already writes one when it finishes; this command
rebuilds it, e.g. with other settings (any `config.skeleton.*` field, see
animdreamer_jax/skeleton/construct.py `SkeletonSettings`; the rest come from
the run's config.json). Writes RUN/skeleton.json (docs/formats.md, "Skeleton")
and RUN/skeleton.png (the tree over the rest mesh, front/side/top) and prints
one summary line. `animdreamer export` then writes the tree as the glTF
armature, and `animdreamer eval` scores it against a ground-truth rig.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import ml_collections

from animdreamer_jax import settings as settings_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.skeleton import construct
from animdreamer_jax.stages import run_folder
from animdreamer_jax.stages import skeleton_of_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--run", required=True, help="finished extraction run folder")
  parser.epilog = "Override skeleton settings with --config.skeleton.<field>=<value>"
  settings_lib.accept_overrides(parser)


def skeleton_settings(base: construct.SkeletonSettings,
                      overrides: Sequence[tuple[str, str]]) -> construct.SkeletonSettings:
  """`base` with `skeleton.*` overrides applied (UserError for any other key)."""
  for key, _ in overrides:
    if not key.startswith("skeleton."):
      raise UserError(f"config.{key}: only config.skeleton.* settings apply to an existing run")
  config = ml_collections.ConfigDict({"skeleton": settings_lib.to_config(base)})
  settings_lib.apply_overrides(config, overrides)
  return settings_lib.from_config(construct.SkeletonSettings, config.skeleton.to_dict(),
                                  "config.skeleton")


def run(args: argparse.Namespace) -> int:
  run_dir = run_folder.check_finished(args.run)
  base = run_folder.load_settings(run_dir).skeleton
  settings = skeleton_settings(base, getattr(args, "config_overrides", []))
  skeleton_of_run.build_for_run(run_dir, settings)
  print(f"wrote {run_dir / 'skeleton.json'} and {run_dir / skeleton_of_run.PICTURE_NAME}")
  return 0
