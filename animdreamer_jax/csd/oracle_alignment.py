"""Registering the model to the ground truth for the oracle prior (host side, between rounds).

A monocular video fixes the object only up to scale and depth: a smaller
object nearer the camera renders the same frames, and with noisy cameras the
reconstruction settles anywhere along that family (the benchmark's 60-degree
arc runs end up 7% smaller and a quarter of the object size nearer). The
oracle prior renders the ground truth from the CSD cameras, which are placed
around the MODEL; without registration its targets show the animal shifted
and scaled, and CSD then fights the video.

`fit_camera_alignment` extracts the model's surface, poses it at a few frames
in each frame's video-camera space (root pose), and fits ONE similarity in
that space onto the ground truth's camera-space meshes with the evaluation's
registration (`eval.evaluate_sequence`, area samples + trimmed point-to-plane
ICP with scale). The evaluation aligns the same way, so the oracle sees the
model as the metrics do. Optionally (`csd.oracle_align_frames`) it then
refines that similarity frame by frame: each frame's root pose keeps its own
error (mostly a yaw the video cannot see), which a side view shows plainly.

`space="object"` (`csd.oracle_align_space`) fits the similarity in the
model's OBJECT frame instead, onto the ground truth's world frame: the frame
the extraction's metrics compare per-frame meshes in (mesh_frame "object").
The root poses then never enter the targets: the CSD views sit around the
model's frame-t object, and the ground truth is seen from the same place
relative to the same registration in every frame, so a root-pose error (the
video barely sees a yaw) does not turn the targets against the model.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from animdreamer_jax.geometry import mesh as mesh_lib

# A fitted rotation beyond this is a registration failure (the model and the
# ground truth share the video camera, so only small rotations are expected).
MAX_ROTATION_DEG = 45.0


def fit_similarity(pred_cam: np.ndarray, pred_faces: np.ndarray, gt_cam: np.ndarray,
                   gt_faces: np.ndarray, num_samples: int = 2000) -> tuple[np.ndarray, dict]:
  """One similarity (4, 4) mapping camera-space prediction meshes onto the ground truth.

  Args:
    pred_cam: (T, V, 3) model meshes in the video camera of each frame.
    pred_faces: (F, 3).
    gt_cam: (T, V', 3) ground-truth meshes in the same cameras.
    gt_faces: (F', 3).
    num_samples: surface samples per frame and side.

  Returns:
    (matrix (4, 4), {"scale", "rotation_deg", "chamfer"}).
  """
  from animdreamer_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  report = eval_lib.evaluate_sequence(pred_cam, pred_faces, gt_cam, gt_faces,
                                      num_samples=num_samples, align=True)
  alignment = report["alignment"]
  info = {"scale": float(alignment["scale"]),
          "rotation_deg": float(alignment["rotation_angle_deg"]),
          "chamfer": float(report["mean"]["all"]["chamfer"])}
  return np.asarray(alignment["matrix"], np.float64), info


def refine_per_frame(pred_cam: np.ndarray, pred_faces: np.ndarray, gt_cam: np.ndarray,
                     gt_faces: np.ndarray, matrix: np.ndarray, anchors: np.ndarray,
                     num_frames: int, num_samples: int = 1000) -> tuple[np.ndarray, dict]:
  """Per-frame similarities (num_frames, 4, 4): `matrix` refined at each anchor frame.

  The sequence similarity leaves each frame's own root-pose error (the video
  barely sees a yaw of a side-on animal, yet a side view does); refining it
  frame by frame shows the oracle's target in the model's own pose of that
  frame. Frames between anchors take the nearest anchor's refinement.

  Args:
    pred_cam: (A, V, 3) model meshes in the video camera of the anchor frames.
    pred_faces: (F, 3).
    gt_cam: (A, V', 3) ground-truth meshes in the same cameras.
    gt_faces: (F', 3).
    matrix: (4, 4) the sequence similarity (start of each refinement).
    anchors: (A,) sorted frame indices of the meshes.
    num_frames: T.
    num_samples: surface samples per side.

  Returns:
    ((T, 4, 4), {"rotation_deg": per-anchor residual rotation, "shift": per-anchor
    residual translation of the model's centroid}).
  """
  anchors = np.asarray(anchors)
  moved = pred_cam @ matrix[:3, :3].T + matrix[:3, 3]
  refined, rotations, shifts = [], [], []
  for i in range(anchors.size):
    residual, info = fit_similarity(moved[i:i + 1], pred_faces, gt_cam[i:i + 1], gt_faces,
                                    num_samples)
    if not np.isfinite(residual).all() or info["rotation_deg"] > MAX_ROTATION_DEG:
      residual = np.eye(4)
    centre = moved[i].mean(0)
    shifts.append(float(np.linalg.norm(residual[:3, :3] @ centre + residual[:3, 3] - centre)))
    rotations.append(float(info["rotation_deg"]))
    refined.append(residual @ matrix)
  nearest = np.abs(np.arange(num_frames)[:, None] - anchors[None, :]).argmin(axis=1)
  return np.stack(refined)[nearest], {"rotation_deg": rotations, "shift": shifts}


SPACES = ("camera", "object")


def fit_camera_alignment(trainer, state, num_frames: int = 8, mc_resolution: int = 48,
                         num_samples: int = 2000, per_frame_anchors: int = 0,
                         space: str = "camera") -> tuple[Optional[np.ndarray], dict]:
  """The model -> ground-truth similarity (video-camera or object space), or None if unusable.

  Args:
    trainer: train.loop.Trainer (its video must have ground truth).
    state: the current TrainState.
    num_frames: frames (evenly spaced) used for the fit.
    mc_resolution: marching-cubes grid of the model's surface.
    num_samples: surface samples per frame and side.
    per_frame_anchors: > 0: also refine it per frame at this many evenly
      spaced frames (`refine_per_frame`); the result is then (T, 4, 4).
      Camera space only.
    space: "camera": one similarity in video-camera space; "object": one
      similarity from the model's object frame onto the ground-truth world
      (for a GroundTruthRenderer with alignment_space "object").

  Returns:
    (matrix (4, 4) or (T, 4, 4), or None; info): None when the model has no
    surface yet or the registration rotates by more than MAX_ROTATION_DEG.
    Both spaces allow only small rotations: the model's object frame is the
    world frame of the video's cameras, which are the ground truth's plus noise.
  """
  from animdreamer_jax.train import extract_outputs  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.errors import UserError  # pylint: disable=g-import-not-at-top
  if space not in SPACES:
    raise UserError(f"config.csd.oracle_align_space: {space!r} unknown; use one of "
                    f"{', '.join(SPACES)}")
  if space == "object" and per_frame_anchors > 0:
    raise UserError("config.csd.oracle_align_frames: per-frame refinement is for "
                    "oracle_align_space=camera (an object-frame registration has no per-frame "
                    "root-pose error to refine); use 0")
  config, video = trainer.config, trainer.video
  params = state.params
  box = mesh_lib.extend_aabb(np.asarray(state.aux["aabb"]), config.train.mc_extend)
  rest_v, rest_f = mesh_lib.extract_mesh(trainer.sdf_fn(params), box, int(mc_resolution),
                                         largest=True)
  if rest_f.shape[0] == 0:
    return None, {"reason": "no surface"}
  gt = video.gt
  gt_faces = np.asarray(gt.meshes.faces)

  def evenly_spaced(count):
    return np.unique(np.linspace(0, video.num_frames - 1, count).round().astype(int))

  def camera_meshes(frames):
    """(model, ground truth) meshes of `frames` in each frame's video camera."""
    posed, roots = extract_outputs.posed_sequence(trainer.model, params, config, rest_v,
                                                  video.num_frames, frames=frames)
    pred = extract_outputs.to_camera(posed.astype(np.float64), roots.astype(np.float64))
    truth = extract_outputs.to_camera(np.asarray(gt.meshes.vertices, np.float64)[frames],
                                      np.asarray(gt.w2c, np.float64)[frames])
    return pred, truth

  frames = evenly_spaced(num_frames)
  if space == "object":
    posed, _ = extract_outputs.posed_sequence(trainer.model, params, config, rest_v,
                                              video.num_frames, frames=frames)
    truth = np.asarray(gt.meshes.vertices, np.float64)[frames]
    matrix, info = fit_similarity(posed.astype(np.float64), rest_f, truth, gt_faces, num_samples)
  else:
    pred_cam, gt_cam = camera_meshes(frames)
    matrix, info = fit_similarity(pred_cam, rest_f, gt_cam, gt_faces, num_samples)
  info["frames"] = frames.tolist()
  info["space"] = space
  if not np.isfinite(matrix).all() or info["rotation_deg"] > MAX_ROTATION_DEG:
    return None, {**info, "reason": "registration rotated too far"}

  if per_frame_anchors > 0:
    anchors = evenly_spaced(per_frame_anchors)
    pred_cam, gt_cam = camera_meshes(anchors)
    matrix, refine_info = refine_per_frame(pred_cam, rest_f, gt_cam, gt_faces, matrix, anchors,
                                           video.num_frames)
    info["per_frame"] = {"anchors": anchors.tolist(), **refine_info}
  return matrix, info
