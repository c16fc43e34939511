"""The generation stage end to end: finished extraction run (+ target or prompt) -> a new run folder.

The new run folder has extraction's layout (`stages.extraction.outputs`), so
`export`, `reanimate`, `eval` and `skeleton` read it unchanged; its meshes are
posed with the source's motion, reconstruction.mp4 shows the source video next
to the generated animal in the same poses, generation.png the 4 CSD views
around two frames (the source model, the generated one and, oracle, the target)
and turntable.mp4 the generated animal from all around.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Optional

import cv2
import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from animdreamer_jax import files
from animdreamer_jax import parallel
from animdreamer_jax import settings as config_lib
from animdreamer_jax.assets import shading
from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import gradient as csd_gradient
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.csd import term as csd_term
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder
from animdreamer_jax.stages.extraction import outputs
from animdreamer_jax.stages.extraction import run as extraction_run
from animdreamer_jax.stages.generation import plan as plan_lib
from animdreamer_jax.stages.generation import settings as settings_mod
from animdreamer_jax.train import loop

SHEET_NAME = "generation.png"
SHEET_RESOLUTION = 96  # pixels per view on generation.png
SHEET_ELEVATION = 15.0  # degrees
SHEET_FOV = 50.0  # degrees
TURNTABLE_NAME = "turntable.mp4"
TURNTABLE_VIEWS = 24  # azimuths, 15 degrees apart


def source_video_dir(run_dir: pathlib.Path, video_dir: Optional[str]) -> pathlib.Path:
  """--video, or the video folder the run recorded in run.json."""
  if video_dir:
    return pathlib.Path(video_dir)
  recorded = None
  try:
    recorded = json.loads((run_dir / "run.json").read_text()).get("video")
  except (OSError, ValueError, AttributeError):
    pass  # an unreadable run.json records nothing

  if not recorded:
    raise UserError(f"{run_dir}: run.json does not record its video folder (a run of an earlier "
                    "version); pass the source video with --video")
  return pathlib.Path(recorded)


def load_source(run_dir: pathlib.Path):
  """(model, params, skeleton) of a finished extraction run; UserError if anything is missing."""
  run_folder.check_finished(run_dir)
  skel = skeleton_file.load_of_run(run_dir)
  if skel is None:
    raise UserError(f"{run_dir}: no {skeleton_file.FILE_NAME} (build it with `animdreamer skeleton "
                    f"--run {run_dir}`): generation keeps the source's skeleton")
  model, params = run_folder.restore_model(run_dir, run_folder.load_settings(run_dir))
  if skel.num_model_bones != model.config.num_bones:
    raise UserError(f"{run_dir / skeleton_file.FILE_NAME}: a skeleton over {skel.num_model_bones} "
                    f"bones, but the run's checkpoint has {model.config.num_bones}")
  return model, params, skel


def sheet_cameras(aabb: np.ndarray, frame: int, resolution: int = SHEET_RESOLUTION,
                  num_views: int = 4) -> cameras_lib.CsdCameras:
  """`num_views` views evenly around frame `frame` (4: azimuth 0/90/180/270, the CSD layout),
  framing the box."""
  center, size, radius = csd_term.object_bounds(jnp.asarray(aabb))
  distance = 0.6 * size / jnp.tan(0.5 * jnp.deg2rad(SHEET_FOV))
  azimuth = jnp.arange(num_views, dtype=jnp.float32) * (360.0 / num_views)
  w2c = cameras_lib.orbit_w2c(jnp.float32(SHEET_ELEVATION), azimuth, distance, center)
  margin = csd_settings.RADIUS_MARGIN * radius
  near_far = jnp.broadcast_to(jnp.stack([jnp.maximum(distance - margin, 1e-2), distance + margin]),
                              (num_views, 2))
  return cameras_lib.CsdCameras(
      w2c=w2c, intrinsics=jnp.broadcast_to(cameras_lib.pinhole_intrinsics(resolution, SHEET_FOV),
                                           (num_views, 4)),
      near_far=near_far, mvdream=cameras_lib.to_mvdream(w2c), frame=jnp.int32(frame),
      elevation=jnp.float32(SHEET_ELEVATION), azimuth=azimuth, fov=jnp.float32(SHEET_FOV),
      distance=distance)


def render_views(render, params, cameras, resolution: int) -> np.ndarray:
  """(V, R, R, 3) volume renders of `params` from `cameras` (`plan.view_renderer`'s render, jitted)."""
  uv = csd_gradient.image_pixels(resolution, 1)
  views = []
  for v in range(cameras.w2c.shape[0]):
    one = cameras._replace(w2c=cameras.w2c[v:v + 1], intrinsics=cameras.intrinsics[v:v + 1],
                           near_far=cameras.near_far[v:v + 1])
    views.append(np.asarray(render(params, one, uv)).reshape(resolution, resolution, 3))
  return np.stack(views)


def label(image: np.ndarray, text: str) -> np.ndarray:
  """A float image in [0, 1] as uint8 with `text` in its top-left corner (dark grey)."""
  image = np.ascontiguousarray(shading.to_uint8(np.clip(image, 0.0, 1.0)))
  cv2.putText(image, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (50, 50, 50), 1, cv2.LINE_AA)
  return image


def write_sheet(render, num_frames: int, source_params, state, target_renderer,
                workdir: pathlib.Path, resolution: int = SHEET_RESOLUTION) -> str:
  """generation.png: rows (source, generated[, target]) x 4 views, at 2 frames side by side."""
  aabb = np.asarray(state.aux["aabb"])
  blocks = []
  for frame in (0, num_frames // 2):
    cameras = sheet_cameras(aabb, frame, resolution)
    rows = [render_views(render, source_params, cameras, resolution),
            render_views(render, state.params, cameras, resolution)]
    if target_renderer is not None:
      rows.append(target_renderer.render_views(frame, np.asarray(cameras.w2c),
                                               np.asarray(cameras.intrinsics), resolution))
    names = ("source", "generated", "target")
    blocks.append(np.concatenate([label(np.concatenate(list(r), axis=1), f"{names[i]}, frame {frame}")
                                  for i, r in enumerate(rows)], axis=0))
  picture = np.concatenate(blocks, axis=1)
  files.save_png(workdir / SHEET_NAME, picture)
  return str(workdir / SHEET_NAME)


def write_turntable(render, params, aabb: np.ndarray, workdir: pathlib.Path,
                    resolution: int = SHEET_RESOLUTION) -> Optional[str]:
  """turntable.mp4: the generated animal at frame 0 from TURNTABLE_VIEWS azimuths (None when the
  video cannot be written, e.g. no ffmpeg: the run's other results stand)."""
  views = render_views(render, params, sheet_cameras(aabb, 0, resolution, TURNTABLE_VIEWS),
                       resolution)
  frames = [shading.to_uint8(np.clip(v, 0.0, 1.0)) for v in views]
  try:
    with files.atomic_path(workdir / TURNTABLE_NAME) as tmp:
      imageio.mimwrite(tmp, frames, fps=12, macro_block_size=1)
  except Exception:  # pylint: disable=broad-except
    return None
  return str(workdir / TURNTABLE_NAME)


def run_generation(config: ml_collections.ConfigDict, run_dir: str | pathlib.Path,
                   workdir: str | pathlib.Path, video_dir: Optional[str] = None,
                   target_dir: Optional[str] = None, resume: bool = False, progress: bool = True,
                   prior: Optional[tuple] = None, target=None) -> dict:
  """Generates (or resumes) a new animatable model from a finished extraction run.

  Args:
    config: the generation config (`settings.load_config` of a configs/generate_*.py).
    run_dir: the finished extraction run (model, motion, skeleton.json).
    workdir: the new run folder (a folder with a checkpoint is resumed).
    video_dir: the source video (default: the one the run recorded).
    target_dir: the oracle prior's target video folder (its gt/ is the new animal).
    resume: require an existing checkpoint.
    progress: progress bar and log lines.
    prior: (DiffusionPrior, params, text) replacing the configured prior.
    target: `target_dir` already loaded (`data.video.load_video`), when the caller has it.

  Returns:
    run.json's values plus `outputs.write_outputs`' keys and "sheet".

  Raises:
    UserError: bad config, run folder, video or target (nothing written), no surface.
  """
  run_dir, workdir = pathlib.Path(run_dir), pathlib.Path(workdir)
  wall0, cpu0 = time.time(), time.process_time()
  if workdir.resolve() == run_dir.resolve():
    raise UserError(f"--workdir {workdir}: is the source run; give generation its own folder")
  if workdir.exists() and not workdir.is_dir():
    raise UserError(f"{workdir}: exists and is not a folder")
  model, source_params, _ = load_source(run_dir)
  config = settings_mod.with_skeleton_file(config, str(run_dir / skeleton_file.FILE_NAME))
  settings = settings_mod.from_config(config)
  video_path = source_video_dir(run_dir, video_dir)
  video = video_lib.load_video(video_path)
  settings = extraction_run.fit_to_video(settings, video, progress)
  if video.num_frames != model.config.num_frames:
    raise UserError(f"{video_path}: {video.num_frames} frames, but the run's model has "
                    f"{model.config.num_frames}; pass the run's own video with --video")
  if target is None and target_dir:
    target = video_lib.load_video(target_dir)
  loop.enable_compilation_cache(settings.train.compilation_cache)
  plan = plan_lib.build_plan(settings, model, source_params, video, target=target, prior=prior,
                             source=str(video_path))
  trainer = loop.Trainer(plan, settings.train, workdir, parallel.make_layout(settings.parallel))
  loop.check_resumable(trainer, resume)
  workdir.mkdir(parents=True, exist_ok=True)
  if parallel.is_primary():
    config_lib.save_config(config_lib.to_config(settings), workdir / "config.json")
  state, info = loop.train(trainer, resume=resume, progress=progress)
  if not parallel.is_primary():  # several hosts: process 0 writes the run folder
    return {"workdir": str(workdir), **info}
  ext = settings_mod.as_extraction(settings, model.config)
  results = outputs.write_outputs(trainer, state, ext, video, workdir, progress=progress)
  target_renderer = None
  if target is not None and settings.csd.prior == "oracle":
    target_renderer = plan_lib.target_renderer(settings, target)
  # One compiled renderer for every picture (one view of SHEET_RESOLUTION^2 pixels a call).
  view_render = jax.jit(plan_lib.view_renderer(settings, model, video))
  results["sheet"] = write_sheet(view_render, video.num_frames,
                                 jax.tree_util.tree_map(jnp.asarray, source_params), state,
                                 target_renderer, workdir)
  results["turntable"] = write_turntable(view_render, state.params, np.asarray(state.aux["aabb"]),
                                         workdir)
  run_info = {**info, "stage": "generate", "source_run": str(run_dir), "video": str(video_path),
              "target": str(target_dir) if target_dir else None,
              **loop.process_stats(wall0, cpu0, trainer)}
  files.save_json(workdir / "run.json", run_info)
  return {"workdir": str(workdir), **run_info, **results}

