"""The whole pipeline on the bundled demo animal (the Khronos Fox, third_party/khronos_fox).

  animdreamer demo [--out runs/demo] [--frames 32] [--res 128] [--camera orbit]

Steps, each the same as its own subcommand:
  1. synth    the fox's Walk clip -> OUT/video (benchmark video with ground truth)
  2. extract  configs/extract_demo_cpu.py on that video -> OUT/extract (run folder:
              checkpoints, rest mesh, per-frame meshes.npz, motion, pictures,
              metrics.json with Chamfer / F-score against the ground truth)
  3. export   rigged glTF OUT/export/fox.glb (+ viewer page when three.js is
              installed, videos, per-frame OBJs, motion file)
A re-run resumes the extraction from OUT/extract's checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import shutil
import time

from animdreamer_jax.commands import extract
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.eval import run_scores
from animdreamer_jax.export import viewer

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO_ASSET = REPO_ROOT / "third_party" / "khronos_fox" / "Fox.gltf"
DEMO_CLIP = "Walk"
DEMO_CONFIG = REPO_ROOT / "configs" / "extract_demo_cpu.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
  parser.add_argument("--frames", type=int, default=32, help="number of frames (default 32)")
  # 128 px: the legs' motion is learned from twice as fine pixels as at 64 px, at the same
  # rays per step (docs/results.md, "oracle ladder": limb recall 43 -> 51).
  parser.add_argument("--res", type=int, default=128, help="image size in pixels (default 128)")
  parser.add_argument("--camera", choices=("orbit", "arc", "fixed"), default="orbit",
                      help="camera path (default orbit)")
  parser.add_argument("--config", default=str(DEMO_CONFIG),
                      help="extraction config (default configs/extract_demo_cpu.py)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run_subcommand(module_name: str, argv: list[str]) -> int:
  """Runs another subcommand's module with its own parser (its flags are its API)."""
  module = importlib.import_module(module_name)
  parser = argparse.ArgumentParser(prog=module_name)
  module.add_arguments(parser)
  return int(module.run(parser.parse_args(argv)) or 0)


def _viewer_available() -> bool:
  try:
    viewer.three_package_dir()
  except UserError:
    return False
  return True


def run(args: argparse.Namespace) -> int:
  for path, what in ((DEMO_ASSET, "the bundled demo animal"), (pathlib.Path(args.config),
                                                               "the demo config")):
    if not path.is_file():
      raise UserError(f"{path}: {what} is missing (run from a checkout installed with "
                      "`pip install -e .`)")
  start = time.perf_counter()
  out = pathlib.Path(args.out)
  video_dir, run_dir, export_dir = out / "video", out / "extract", out / "export"

  if (video_dir / "video.json").is_file() and (run_dir / "checkpoints").is_dir():
    print(f"[demo] 1/3 synth: {video_dir} exists and {run_dir} has a checkpoint; reusing it")
  else:
    print(f"[demo] 1/3 synth: {DEMO_ASSET.name} clip {DEMO_CLIP}, {args.frames} frames, "
          f"{args.res} px, {args.camera} camera -> {video_dir}")
    synth_argv = ["--asset", str(DEMO_ASSET), "--clip", DEMO_CLIP, "--frames", str(args.frames),
                  "--res", str(args.res), "--camera", args.camera, "--out", str(video_dir),
                  "--overwrite"]
    if args.quiet:
      synth_argv.append("--quiet")
    _run_subcommand("animdreamer_jax.commands.synth", synth_argv)

  print(f"[demo] 2/3 extract: {pathlib.Path(args.config).name} -> {run_dir}")
  result = extract.run_extraction(args.config, video_dir, run_dir, progress=not args.quiet)

  print(f"[demo] 3/3 export: rigged glTF -> {export_dir / 'fox.glb'}")
  export_argv = ["--run", str(run_dir), "--out", str(export_dir / "fox.glb"),
                 "--video", str(video_dir)]
  if not _viewer_available():
    print("[demo]   (no HTML viewer: three.js is not installed; "
          "`npm ci --prefix animdreamer_jax/export/viewer_assets` adds it)")
    export_argv.append("--no-viewer")
  if export_dir.exists():
    shutil.rmtree(export_dir)
  _run_subcommand("animdreamer_jax.commands.export", export_argv)

  print(f"[demo] done in {time.perf_counter() - start:.0f} s")
  metrics = result.get("metrics")
  if metrics:
    mean = metrics["mean"]["all"]
    print(f"[demo] reconstruction vs ground truth: Chamfer {mean['chamfer']:.4f} "
          f"(normalised units: 0.02 = 2% of the bbox diagonal), F@2% {mean['fscore@2%']:.1f}, "
          f"F@5% {mean['fscore@5%']:.1f}, {run_scores.limb_summary(metrics)}  "
          f"({result['metrics_path']})")
    limbs = metrics["mean"].get("limbs", {})
    summary = {"chamfer": mean["chamfer"], "fscore@2%": mean["fscore@2%"],
               "fscore@5%": mean["fscore@5%"], "limb_recall@2%": limbs.get("recall@2%"),
               "limb_fscore@2%": limbs.get("fscore@2%"), "seconds": time.perf_counter() - start}
    rig = metrics.get("rig")
    if rig:
      print(f"[demo] skeleton vs the ground-truth rig: {rig_metrics.summary_line(rig)}")
      summary.update({"rig_joints": rig["num_joints"], "rig_depth": rig["depth"],
                      "rig_cd_j2j_pct_diag": rig["mean"]["cd_j2j_pct_diag"],
                      "rig_edge_precision": rig["edge_precision"],
                      "rig_edge_recall": rig["edge_recall"],
                      "rig_inside_rest_mesh": rig["inside_rest_mesh"]})
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=1))
  pictures = [run_dir / "comparison.png", run_dir / "skeleton.png", video_dir / "contact_sheet.png",
              run_dir / "contact_sheet.png", run_dir / "reconstruction.mp4", export_dir]
  # comparison.png (ground truth vs reconstruction) comes with the scores, first when present;
  # skeleton.png shows the rig the .glb carries.
  print(f"[demo] look at: {', '.join(str(p) for p in pictures if p.exists())}")
  return 0
