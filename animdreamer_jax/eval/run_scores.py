"""Scores of a finished run against its video's ground truth -> the run's metrics.json.

The run's per-frame meshes (meshes.npz, in `extract.mesh_frame`) are scored
against the ground-truth world meshes with one similarity for the sequence
(`metrics.evaluate_sequence`). Unless the meshes are already camera-frame (or
`extract.camera_frame_metrics` is off), the camera-frame scores are added
under "camera_frame": each frame's mesh through the learned root pose against
the ground truth through the noise-free cameras (lab4d's protocol). Both are
also scored per part (`eval.parts`: seen / unseen, limbs / body, joint chains).

When the run has a skeleton.json and the ground truth has joint positions, its
rig is scored too ("rig", `eval.rig_metrics`): the joints are posed per frame
with the run's bones, carried into meshes.npz's frame exactly as its meshes
were (`extraction.outputs.mesh_in_frame`), then through the same similarity
that aligned the meshes (`rig_scores_of_run`).
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
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder
from animdreamer_jax.stages.extraction import outputs as extraction_outputs


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
  rig = rig_scores_of_run(run_dir, gt, result["alignment"]["matrix"], mesh_frame,
                          gt_frame="camera" if mesh_frame == "camera" else "world")
  if rig is not None:
    result["rig"] = rig
  files.save_png(run_dir / "comparison.png", comparison_of_run(
      meshes, result["alignment"]["matrix"], gt, mesh_frame, (video.height, video.width),
      parts_lib.limb_vertices(np.asarray(gt.rest_vertices), limb_fraction)))
  files.save_json(run_dir / "metrics.json", result)
  return result


def ground_truth_has_joints(gt) -> bool:
  """Whether the ground truth records joint positions and parents (gt/meshes.npz)."""
  meshes = gt.meshes
  return (getattr(meshes, "joint_positions", None) is not None
          and getattr(meshes, "joint_parents", None) is not None)


def run_joints(skel: skeleton_file.Skeleton, motion: dict, mesh_frame: str,
               leaf_ends: bool = False) -> np.ndarray:
  """(T, K, 3) the skeleton's joints per frame in meshes.npz's frame `mesh_frame`.

  Posed with the run's bones (`skeleton_file.joint_positions`: object frame),
  then mapped like the meshes (`extraction.outputs.mesh_in_frame`: object ->
  camera by the learned root poses, -> world by the video's cameras).
  leaf_ends: also the leaf bones' ends, after the joints (`skeleton_file.joints_and_leaf_ends`).
  """
  bone, points, _ = skeleton_file.joints_and_leaf_ends(skel)
  if not leaf_ends:
    bone, points = skel.bone, skel.rest_position
  posed = skeleton_file.points_positions(
      bone, points, transforms_np.rigid_matrix(motion["rest_bone_quat"], motion["rest_bone_trans"]),
      transforms_np.rigid_matrix(motion["bone_quat"], motion["bone_trans"]))
  if mesh_frame == "world" and "w2c" not in motion:
    raise UserError("motion.npz: no 'w2c' (the video's cameras) to put the joints in the world "
                    "frame of meshes.npz")
  w2c = motion.get("w2c", np.tile(np.eye(4), (posed.shape[0], 1, 1)))
  return np.asarray(extraction_outputs.mesh_in_frame(
      posed, np.asarray(motion["object_to_camera"], np.float64), np.asarray(w2c, np.float64),
      mesh_frame), np.float64)


def rig_scores_of_run(run_dir: str | pathlib.Path, gt, alignment: list,
                      mesh_frame: str | None = None, gt_frame: str = "world",
                      skel: skeleton_file.Skeleton | None = None) -> dict | None:
  """Rig scores of a run's skeleton.json against the ground truth, or None without either.

  Args:
    run_dir: the run folder (skeleton.json, motion.npz, rest.npz).
    gt: the video's GroundTruth.
    alignment: the (4, 4) similarity that maps the run's meshes.npz onto the
      ground-truth meshes it was scored against (the report's alignment "matrix").
    mesh_frame: the frame of meshes.npz; None: motion.npz's "mesh_frame"
      ("object" when absent, as the export reads it).
    gt_frame: what `alignment` maps onto: "world" (the GT meshes as stored) or
      "camera" (each frame's GT mesh in its noise-free camera; the aligned joints
      are then taken back to the world by those cameras).
    skel: score this skeleton of the run instead of its skeleton.json
      (experiments comparing construction settings).
  Returns:
    `rig_metrics.score_skeleton`'s report, or None when the run has no
    skeleton.json or the ground truth no joints.
  Raises:
    UserError: unreadable or inconsistent files.
  """
  run_dir = pathlib.Path(run_dir)
  skel = skel or skeleton_file.load_of_run(run_dir)
  if skel is None or not ground_truth_has_joints(gt):
    return None
  motion, num_frames, num_bones = run_folder.load_motion(run_dir)
  if skel.num_model_bones != num_bones:
    raise UserError(f"{run_dir / skeleton_file.FILE_NAME}: made for {skel.num_model_bones} model "
                    f"bones, but motion.npz has {num_bones}")
  if mesh_frame is None:
    mesh_frame = str(motion["mesh_frame"]) if "mesh_frame" in motion else "object"
  gt_joints = np.asarray(gt.meshes.joint_positions, np.float64)
  if gt_joints.shape[0] != num_frames:
    raise UserError(f"{run_dir / 'motion.npz'}: {num_frames} frames, but the ground truth has "
                    f"{gt_joints.shape[0]}")
  matrix = np.asarray(alignment, np.float64)
  # Scored points: the joints and the leaf bones' ends (a bone has a head and a tail).
  joints = run_joints(skel, motion, mesh_frame, leaf_ends=True) @ matrix[:3, :3].T + matrix[:3, 3]
  _, _, parents = skeleton_file.joints_and_leaf_ends(skel)
  if gt_frame == "camera":
    joints = transforms_np.to_camera(joints, np.linalg.inv(np.asarray(gt.w2c, np.float64)))
  rest = run_folder.load_npz(run_dir / "rest.npz")
  if "vertices" not in rest or "faces" not in rest:
    raise UserError(f"{run_dir / 'rest.npz'}: missing 'vertices' or 'faces'")
  gt_rest = np.asarray(gt.rest_vertices, np.float64)
  report = rig_metrics.score_skeleton(
      joints, parents, gt_joints, gt.meshes.joint_parents,
      float(np.linalg.norm(gt_rest.max(0) - gt_rest.min(0))),
      gt_skin_weights=getattr(gt.meshes, "skin_weights", None),
      pred_rest_joints=skel.rest_position, rest_vertices=rest["vertices"],  # the joints only
      rest_faces=rest["faces"])
  # num_joints: the skeleton's joints; the scored points also hold the leaf bones' ends.
  report["num_leaf_ends"] = int(parents.shape[0] - skel.num_joints)
  report["num_joints"] = skel.num_joints
  return report


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
