"""The extraction stage end to end: video folder -> trained run folder with meshes and motion."""

from __future__ import annotations

import pathlib
import resource
import time
from typing import Optional

import jax
import ml_collections

from animdreamer_jax import files
from animdreamer_jax import settings as settings_lib
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.stages.extraction import outputs
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as settings_mod
from animdreamer_jax.train import loop


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
  loop.enable_compilation_cache(settings.train.compilation_cache)
  plan = plan_lib.build_plan(settings, video, source=str(video_dir), prior=prior)
  trainer = loop.Trainer(plan, settings.train, workdir)
  # A checkpoint from another config must fail before config.json is replaced.
  loop.check_resumable(trainer, resume)
  workdir.mkdir(parents=True, exist_ok=True)
  settings_lib.save_config(settings_mod.to_config(settings), workdir / "config.json")
  state, info = loop.train(trainer, resume=resume, progress=progress)
  results = outputs.write_outputs(trainer, state, settings, video, workdir, progress=progress)
  run_info = {**info, "stage": "extract", "video": str(video_dir.resolve()), "wall_seconds": time.time() - wall0,
              "cpu_seconds": time.process_time() - cpu0,
              # Peak resident memory of this process so far (Linux reports KiB).
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
              "device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
              "num_rounds": settings.train.num_rounds,
              "iters_per_round": settings.train.iters_per_round}
  files.save_json(workdir / "run.json", run_info)
  return {"workdir": str(workdir), **run_info, **results}
