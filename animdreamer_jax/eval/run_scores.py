"""Scores of a finished run against its video's ground truth -> the run's metrics.json.

The run's per-frame meshes (meshes.npz, in `extract.mesh_frame`) are scored
against the ground-truth world meshes with one similarity for the sequence
(`metrics.evaluate_sequence`). Unless the meshes are already camera-frame (or
`extract.camera_frame_metrics` is off), the camera-frame scores are added
under "camera_frame": each frame's mesh through the learned root pose against
the ground truth through the noise-free cameras (lab4d's protocol). Both are
also scored per part (`eval.parts`: seen / unseen, limbs / body, joint chains).
"""

from __future__ import annotations

import pathlib

import numpy as np

from animdreamer_jax import assets
from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import metrics as metrics_lib
from animdreamer_jax.eval import parts as parts_lib
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.stages import run_folder


def camera_frame_meshes(vertices: np.ndarray, mesh_frame: str, motion: dict) -> np.ndarray:
  """(T, V, 3) meshes of `mesh_frame` in each frame's camera (the learned root poses)."""
  if mesh_frame == "camera":
    return vertices
  if mesh_frame == "object":
    return transforms_np.to_camera(vertices, np.asarray(motion["object_to_camera"], np.float64))
  return transforms_np.to_camera(vertices, np.asarray(motion["w2c"], np.float64))


def score_run(run_dir: str | pathlib.Path, video,
              limb_fraction: float = parts_lib.LIMB_FRACTION) -> dict:
  """metrics.json's content for a finished run on a video with ground truth (written atomically).

  `limb_fraction`: the lowest share of the rest pose's height that is "limbs".

  Raises:
    UserError: the video has no ground truth, or the run is unfinished.
  """
  run_dir = pathlib.Path(run_dir)
  if video.gt is None:
    raise UserError("the video has no ground truth (gt/) to score the run against")
  run_folder.check_finished(run_dir, need_checkpoint=False)
  settings = run_folder.load_settings(run_dir).extract
  motion, _, _ = run_folder.load_motion(run_dir)
  meshes = assets.load_sequence_npz(run_dir / "meshes.npz")
  gt = video.gt
  gt_world = np.asarray(gt.meshes.vertices)
  gt_cam = transforms_np.to_camera(gt_world, np.asarray(gt.w2c, np.float64))
  mesh_frame = settings.mesh_frame
  parts = parts_lib.ground_truth_parts(gt, limb_fraction)
  result = metrics_lib.evaluate_sequence(
      meshes.vertices, meshes.faces, gt_cam if mesh_frame == "camera" else gt_world,
      gt.meshes.faces, parts=parts, num_samples=settings.eval_samples)
  result["mesh_frame"] = mesh_frame
  if mesh_frame != "camera" and settings.camera_frame_metrics:
    cam = metrics_lib.evaluate_sequence(
        camera_frame_meshes(meshes.vertices, mesh_frame, motion), meshes.faces, gt_cam,
        gt.meshes.faces, parts=parts, num_samples=settings.eval_samples)
    result["camera_frame"] = {"mean": cam["mean"], "alignment": cam["alignment"]}
  files.save_json(run_dir / "metrics.json", result)
  return result


def limb_summary(report: dict) -> str:
  """"limb recall@2% R, limb F@2% F" for the one-line summaries (n/a: no limbs part)."""
  limbs = report["mean"].get("limbs", {})
  text = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
  return (f"limb recall@2% {text(limbs.get('recall@2%'))}, "
          f"limb F@2% {text(limbs.get('fscore@2%'))}")
