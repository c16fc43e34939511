"""The whole pipeline on the bundled demo animal (the Khronos Fox, third_party/khronos_fox).

  animdreamer demo [--out runs/demo] [--frames 64] [--res 128] [--camera orbit]

For now: renders the benchmark video of the fox into OUT/video (the same as
`animdreamer synth`) and scores the ground truth against itself with
`animdreamer eval` (Chamfer 0, F-score 100: a check of the benchmark itself),
writing OUT/eval_gt.json. Reconstruction slots in between in later versions.
OUT/video is replaced when it exists.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import time

from animdreamer_jax.errors import UserError

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_ASSET = REPO_ROOT / "third_party" / "khronos_fox" / "Fox.gltf"
DEMO_CLIP = "Walk"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
  parser.add_argument("--frames", type=int, default=64, help="number of frames (default 64)")
  parser.add_argument("--res", type=int, default=128, help="image size in pixels (default 128)")
  parser.add_argument("--camera", choices=("orbit", "arc", "fixed"), default="orbit",
                      help="camera path (default orbit)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_subcommand(module_name: str, argv: list[str]) -> int:
  """Runs another subcommand's module with its own parser (its flags are its API)."""
  module = importlib.import_module(module_name)
  parser = argparse.ArgumentParser(prog=module_name)
  module.add_arguments(parser)
  return int(module.run(parser.parse_args(argv)) or 0)


def run(args: argparse.Namespace) -> int:
  if not DEMO_ASSET.is_file():
    raise UserError(f"{DEMO_ASSET}: the bundled demo animal is missing (install from the "
                    "repository with `pip install -e .`)")
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  video_dir = out / "video"
  print(f"[demo] 1/2 synth: {DEMO_ASSET.name} clip {DEMO_CLIP}, {args.frames} frames, "
        f"{args.res} px, {args.camera} camera -> {video_dir}")
  synth_argv = ["--asset", str(DEMO_ASSET), "--clip", DEMO_CLIP, "--frames", str(args.frames),
                "--res", str(args.res), "--camera", args.camera, "--out", str(video_dir),
                "--overwrite"]
  if args.quiet:
    synth_argv.append("--quiet")
  _run_subcommand("animdreamer_jax.commands.synth", synth_argv)

  try:
    importlib.import_module("animdreamer_jax.commands.evaluate")
  except ModuleNotFoundError:
    print("[demo] 2/2 eval: not available in this build; skipped")
  else:
    print("[demo] 2/2 eval: ground truth against itself (expect Chamfer 0, F-score 100)")
    _run_subcommand("animdreamer_jax.commands.evaluate",
                    ["--pred", str(video_dir / "gt" / "meshes.npz"), "--gt", str(video_dir),
                     "--out", str(out / "eval_gt.json")])
  print(f"[demo] done in {time.perf_counter() - start:.1f} s; look at "
        f"{video_dir / 'contact_sheet.png'}")
  return 0
