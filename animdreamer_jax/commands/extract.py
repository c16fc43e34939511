"""Train an animatable model from a video folder, then export meshes and scores.

  bin/animdreamer extract --config configs/extract_demo_cpu.py --video DIR --workdir RUN \\
      [--config.train.num_rounds=4 ...] [--resume]

Any config field can be overridden with --config.<a.b>=<value> (type-checked;
an unknown key is an error). A run folder that already holds a checkpoint is
resumed automatically (--resume only makes a missing checkpoint an error).
The run folder ends with config.json, model.json, checkpoints/, tensorboard/,
rest.obj/.npz, meshes.npz (per-frame meshes), motion.npz, bones_rest.obj,
reconstruction.mp4, contact_sheet.png, run.json and, when the video has ground
truth, metrics.json (docs/formats.md, "Run folder").
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, Sequence

from animdreamer_jax import parallel
from animdreamer_jax import settings
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.eval import run_scores
from animdreamer_jax.stages.extraction import run as extraction_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, help="config file (configs/extract_*.py)")
  parser.add_argument("--video", required=True, help="video folder (see `animdreamer synth`)")
  parser.add_argument("--workdir", required=True, help="run folder (created; resumed if it has a checkpoint)")
  parser.add_argument("--resume", action="store_true",
                      help="require a checkpoint in --workdir and continue from it")
  parser.epilog = "Override config fields with --config.<key>=<value>, e.g. --config.train.num_rounds=2"
  settings.accept_overrides(parser)


def run_extraction(config: Any, video_dir: str | pathlib.Path, workdir: str | pathlib.Path,
                   resume: bool = False, overrides: Sequence[Any] = (),
                   progress: bool = True, video=None) -> dict:
  """Trains on a video, writes the run folder and scores it; the `demo` command calls this.

  Args:
    config: an ml_collections ConfigDict or the path of a config file.
    video_dir: the video folder.
    workdir: the run folder.
    resume: require an existing checkpoint (a run folder with one is resumed anyway).
    overrides: (key, value-string) pairs or "--config.k=v" strings.
    progress: show the progress bar.
    video: `video_dir` already loaded, when the caller has it (read once).

  Returns:
    `stages.extraction.run.run_extraction`'s result plus "metrics" (dict, or None
    without ground truth) and "metrics_path".

  Raises:
    UserError: bad config, video or run folder; nothing is written in that case.
  """
  if isinstance(config, (str, pathlib.Path)):
    config = settings.load_config(config, overrides)
  elif overrides:
    config = settings.apply_overrides(config, [tuple(o) for o in overrides])
  if video is None:
    video = video_lib.load_video(video_dir)
  result = extraction_run.run_extraction(config, video_dir, workdir, resume=resume,
                                         progress=progress, video=video)
  result["metrics"] = result["metrics_path"] = None
  if video.gt is not None and parallel.is_primary():
    result["metrics"] = run_scores.score_run(workdir, video)
    result["metrics_path"] = str(pathlib.Path(workdir) / "metrics.json")
  return result


def _fmt(x: Any) -> str:
  return "n/a" if x is None else f"{x:.4g}"


def run(args: argparse.Namespace) -> int:
  result = run_extraction(args.config, args.video, args.workdir, resume=args.resume,
                          overrides=getattr(args, "config_overrides", []))
  if not parallel.is_primary():
    return 0  # several hosts: process 0 wrote the run folder and reports it
  print(f"run folder: {result['workdir']}")
  print(f"per-frame meshes: {result['meshes']}")
  if result.get("redone_rounds"):
    print(f"redone rounds: {result['redone_rounds']} (the surface vanished, left its box or broke up; "
          "redone with the root pose held: see rounds.jsonl)")
  metrics = result.get("metrics")
  if metrics:
    mean = metrics["mean"]["all"]
    print(f"chamfer: {_fmt(mean.get('chamfer'))} (normalised units; 0.02 = 2% of the bbox diagonal)"
          f"  F@2%: {_fmt(mean.get('fscore@2%'))}  F@5%: {_fmt(mean.get('fscore@5%'))}"
          f"  {run_scores.limb_summary(metrics)}")
    if "unseen" in metrics["mean"]:
      unseen = metrics["mean"]["unseen"]
      print(f"never-seen side: chamfer {_fmt(unseen.get('chamfer'))}  F@2% {_fmt(unseen.get('fscore@2%'))}")
    if "rig" in metrics:
      print(rig_metrics.summary_line(metrics["rig"]))
    print(f"metrics: {result['metrics_path']}")
  else:
    print("the video has no ground truth: no metrics")
  return 0


__all__ = ["add_arguments", "run", "run_extraction", "UserError"]
