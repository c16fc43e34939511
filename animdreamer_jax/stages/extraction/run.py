"""The extraction stage end to end: video folder -> trained run folder with meshes and motion."""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Optional

import ml_collections

from animdreamer_jax import files
from animdreamer_jax import parallel
from animdreamer_jax import settings as settings_lib
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.losses import reconstruction
from animdreamer_jax.stages.extraction import outputs
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as settings_mod
from animdreamer_jax.train import loop


def fit_to_video(settings, video, progress: bool = True):
  """The settings (extraction's or generation's) with the loss terms the video cannot feed
  turned off (a real video has no depth, and no features without DINOv2), one notice each."""
  loss, notices = reconstruction.fit_to_video(settings.loss, video.depth is not None,
                                              video.feature_dim > 0)
  for notice in notices if progress else ():
    print(f"notice: {notice}", flush=True)
  return dataclasses.replace(settings, loss=loss)


def run_extraction(config: ml_collections.ConfigDict, video_dir: str | pathlib.Path,
                   workdir: str | pathlib.Path, resume: bool = False, progress: bool = True,
                   prior: Optional[tuple] = None, video=None) -> dict:
  """Trains on a video (or resumes) and writes the run folder.

  Args:
    config: the extraction config (a ConfigDict, e.g. from `settings.load_config`).
    video_dir: the video folder.
    workdir: the run folder (a folder with a checkpoint is resumed).
    resume: require an existing checkpoint.
    progress: show the progress bar and log lines.
    prior: (DiffusionPrior, params, text) replacing the one `csd.prior` names.
    video: `video_dir` already loaded (`data.video.load_video`), when the caller has it.

  Returns:
    {"workdir", "steps", "train_seconds", "rollbacks", "resumed_from",
     "wall_seconds", "cpu_seconds", "peak_rss_mb", ... and `outputs.write_outputs`'s keys}.

  Raises:
    UserError: bad config, video or run folder (nothing is written), no surface.
  """
  settings = settings_mod.from_config(config)
  video_dir, workdir = pathlib.Path(video_dir), pathlib.Path(workdir)
  wall0, cpu0 = time.time(), time.process_time()
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{workdir}: exists and is not a folder")
  if video is None:
    video = video_lib.load_video(video_dir)
  settings = fit_to_video(settings, video, progress)
  loop.enable_compilation_cache(settings.train.compilation_cache)
  plan = plan_lib.build_plan(settings, video, source=str(video_dir), prior=prior)
  trainer = loop.Trainer(plan, settings.train, workdir, parallel.make_layout(settings.parallel))
  # A checkpoint from another config must fail before config.json is replaced.
  loop.check_resumable(trainer, resume)
  workdir.mkdir(parents=True, exist_ok=True)
  if parallel.is_primary():
    settings_lib.save_config(settings_mod.to_config(settings), workdir / "config.json")
  state, info = loop.train(trainer, resume=resume, progress=progress)
  if not parallel.is_primary():  # several hosts: process 0 writes the run folder
    return {"workdir": str(workdir), **info}
  results = outputs.write_outputs(trainer, state, settings, video, workdir, progress=progress)
  run_info = {**info, "stage": "extract", "video": str(video_dir.resolve()),
              **loop.process_stats(wall0, cpu0, trainer)}
  files.save_json(workdir / "run.json", run_info)
  return {"workdir": str(workdir), **run_info, **results}
