"""A new animatable model on a finished extraction run's skeleton and motion, by CSD (stage two).

  bin/animdreamer generate --config configs/generate_bench_cpu_oracle.py --run RUN --workdir NEW \\
      (--target VIDEO_DIR | --prompt TEXT) [--video SOURCE_VIDEO] [--config.key=value ...] [--resume]

RUN is a finished `animdreamer extract` run (checkpoint, motion, skeleton.json).
Training continues from its model: CSD views of random frames, rendered
through the source's motion, judged by the prior of the new animal, with
L_skel / L_bone and the regularisers; the source video's data terms fade out.

Priors: --target (the oracle: a video folder whose gt/ holds the new animal
moving with the source's motion, e.g. `animdreamer synth` of the Quaternius
Wolf Walk for a Fox Walk run), or --prompt with MVDream (converted weights in
--config.csd.mvdream.weights; the file to get is sd-v2.1-base-4view.pt from the
Hugging Face repository MVDream/MVDream, converted with `animdreamer
convert-mvdream`). --video: the source video when the run does not record it.

NEW ends with the extraction run layout (rest/per-frame meshes, motion.npz,
skeleton.json, reconstruction.mp4 = source video | generated animal in the same
poses, contact_sheet.png) plus generation.png (4 views around 2 frames: source,
generated and, with --target, the target), so `export`, `reanimate` and `eval`
work on it; with --target, metrics.json scores it against the target's ground
truth and adds how well the motion was kept (joint drift, bone-length variation).
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any, Optional, Sequence

from animdreamer_jax import files
from animdreamer_jax import parallel
from animdreamer_jax import settings
from animdreamer_jax.commands import sample
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import motion_kept
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.eval import run_scores
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder
from animdreamer_jax.stages.generation import run as generation_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--config", required=True, help="config file (configs/generate_*.py)")
  parser.add_argument("--run", required=True, help="finished extraction run folder (the source)")
  parser.add_argument("--workdir", required=True,
                      help="new run folder (created; resumed if it has a checkpoint)")
  parser.add_argument("--target", default=None,
                      help="oracle prior: video folder whose gt/ is the new animal in the source's motion")
  parser.add_argument("--prompt", default=None,
                      help="MVDream prior: the text (needs --config.csd.mvdream.weights)")
  parser.add_argument("--video", default=None,
                      help="the source run's video folder (default: the one its run.json records)")
  parser.add_argument("--resume", action="store_true",
                      help="require a checkpoint in --workdir and continue from it")
  parser.epilog = ("Override config fields with --config.<key>=<value>, e.g. "
                   "--config.loss.weights.skeleton=0")
  settings.accept_overrides(parser)


def check_mvdream_weights(weights: str) -> None:
  """One clear line naming the checkpoint to get when the converted weights are absent."""
  path = pathlib.Path(weights) if weights else None
  if path is None or not (path / "config.json").is_file():
    message = sample.missing_weights_message(path)
    raise UserError(message.replace("--weights", "--config.csd.mvdream.weights").replace(
        " (or use --tiny for a smoke test with random weights)", ""))


def prepare_config(config: Any, overrides: Sequence[Any] = (), prompt: Optional[str] = None,
                   target: Optional[str] = None):
  """The config with --prompt / --target applied: a prompt selects MVDream, a target the oracle."""
  if isinstance(config, (str, pathlib.Path)):
    config = settings.load_config(config, overrides)
  elif overrides:
    config = settings.apply_overrides(config, [tuple(o) for o in overrides])
  if prompt is not None and target is not None:
    raise UserError("--prompt and --target: give one prior (MVDream text or the oracle target)")
  if prompt is not None:
    if not prompt.strip():
      raise UserError("--prompt: empty text")
    config.csd.prior = "mvdream"
    config.csd.mvdream.prompt = prompt
    check_mvdream_weights(config.csd.mvdream.weights)
  elif target is not None:
    config.csd.prior = "oracle"
  return config


def motion_kept_of(run_dir: pathlib.Path, workdir: pathlib.Path) -> dict:
  """`eval.motion_kept` of a generated run folder against its source run."""
  return motion_kept.motion_kept(skeleton_file.load_of_run(run_dir),
                                 run_folder.load_npz(run_dir / "motion.npz"),
                                 run_folder.load_npz(workdir / "motion.npz"))


def score(workdir: pathlib.Path, run_dir: pathlib.Path, target) -> dict:
  """metrics.json against the target's ground truth, with "motion_kept" added."""
  metrics = run_scores.score_run(workdir, target)
  metrics["motion_kept"] = motion_kept_of(run_dir, workdir)
  files.save_json(workdir / "metrics.json", metrics)
  return metrics


def run_generation(config: Any, run_dir, workdir, *, target: Optional[str] = None,
                   prompt: Optional[str] = None, video: Optional[str] = None,
                   resume: bool = False, overrides: Sequence[Any] = (), progress: bool = True,
                   prior: Optional[tuple] = None) -> dict:
  """Generates, writes the run folder and, with a target with ground truth, scores it.

  Returns:
    `stages.generation.run.run_generation`'s result plus "metrics" (or None).
  """
  config = prepare_config(config, overrides, prompt, target)
  # Read once (a bad folder fails before anything is written): the prior's and the scores' target.
  target_video = video_lib.load_video(target) if target is not None else None
  result = generation_run.run_generation(config, run_dir, workdir, video_dir=video,
                                         target_dir=target, resume=resume, progress=progress,
                                         prior=prior, target=target_video)
  result["metrics"] = None
  if target_video is not None and target_video.gt is not None and parallel.is_primary():
    result["metrics"] = score(pathlib.Path(workdir), pathlib.Path(run_dir), target_video)
  return result


def _fmt(x: Any) -> str:
  return "n/a" if x is None else f"{x:.4g}"


def run(args: argparse.Namespace) -> int:
  result = run_generation(args.config, args.run, args.workdir, target=args.target,
                          prompt=args.prompt, video=args.video, resume=args.resume,
                          overrides=getattr(args, "config_overrides", []))
  if not parallel.is_primary():
    return 0  # several hosts: process 0 wrote the run folder and reports it
  print(f"run folder: {result['workdir']}")
  print(f"per-frame meshes: {result['meshes']}  views: {result['sheet']}")
  metrics = result.get("metrics")
  if metrics:
    mean = metrics["mean"]["all"]
    print(f"against the target: chamfer {_fmt(mean.get('chamfer'))}  F@2% "
          f"{_fmt(mean.get('fscore@2%'))}  {run_scores.limb_summary(metrics)}")
    if "rig" in metrics:
      print(rig_metrics.summary_line(metrics["rig"]))
    kept = metrics["motion_kept"]
    print(f"motion kept: joint drift {_fmt(kept['joint_drift'])} (normalised units), bone-length "
          f"variation {_fmt(kept['bone_length_variation'])} (source "
          f"{_fmt(kept['source_bone_length_variation'])})")
  return 0
