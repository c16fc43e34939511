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
from animdreamer_jax.eval import comparison
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
  files.save_png(run_dir / "comparison.png", comparison_of_run(
      meshes, result["alignment"]["matrix"], gt, mesh_frame, (video.height, video.width),
      parts_lib.limb_vertices(np.asarray(gt.rest_vertices), limb_fraction)))
  files.save_json(run_dir / "metrics.json", result)
  return result


def comparison_of_run(meshes, alignment: list, gt, mesh_frame: str, image_size: tuple[int, int],
                      limb_vertices: np.ndarray) -> np.ndarray:
  """comparison.png of a run: its meshes through the score's alignment next to the ground truth."""
  matrix = np.asarray(alignment, np.float64)
  aligned = np.asarray(meshes.vertices, np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
  w2c = np.asarray(gt.w2c, np.float64)
  if mesh_frame == "camera":  # aligned to the camera-frame ground truth: back to the world
    aligned = transforms_np.to_camera(aligned, np.linalg.inv(w2c))
  frames = np.linspace(0, aligned.shape[0] - 1, min(comparison.FRAMES, aligned.shape[0]))
  return comparison.comparison_picture(
      aligned, np.asarray(meshes.faces), np.asarray(gt.meshes.vertices),
      np.asarray(gt.meshes.faces), w2c, np.asarray(gt.intrinsics), image_size,
      frames.round().astype(int).tolist(), limb_vertices)


def limb_summary(report: dict) -> str:
  """"limb recall@2% R, limb F@2% F" for the one-line summaries (n/a: no limbs part)."""
  limbs = report["mean"].get("limbs", {})
  text = lambda x: "n/a" if x is None else f"{x:.1f}"  # noqa: E731
  return (f"limb recall@2% {text(limbs.get('recall@2%'))}, "
          f"limb F@2% {text(limbs.get('fscore@2%'))}")
