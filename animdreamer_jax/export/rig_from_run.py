"""A finished extraction run folder -> the arrays of a rigged, animated asset.

Reads (all written by `animdreamer extract`, through `stages.run_folder`):
  config.json   the resolved config (model sizes, render.blend, ...);
  rest.npz      rest mesh: vertices (V, 3), faces (F, 3), vertex_colors (V, 3);
  motion.npz    object_to_camera (T, 4, 4), bone_quat/bone_trans (T, B, 4/3),
                rest_bone_quat/rest_bone_trans, bone_log_scale (B, 3), and,
                when present, w2c (T, 4, 4) (the video's cameras);
  meshes.npz    the model's per-frame meshes (its fps, and the check below);
  checkpoints/  the trained parameters (orbax, train/checkpoint.py);
  skeleton.json optional, the joint tree over the bones (skeleton/skeleton_file.py):
                with it the glb's joints form that tree (gltf_writer's tree
                layout, merged skin weights), without it one flat joint per bone.

From the checkpoint it takes the skinning weights that the model's forward
warp really uses at the rest vertices: softmax(-(Mahalanobis^2 + delta)) with
the delta-skinning MLP at the mean time code (motion.npz's
rest_skin_weights leave the delta out). With those weights the model's forward
warp of any bone motion is a pure function of arrays
(`model_forward_warp`), which the export compares with what a glTF player
shows.

Root motion (object -> world) needs the video's cameras: world = the video's
world frame, root_t = w2c_t^-1 * object_to_camera_t (identity where the learned
root pose matches the cameras; the remainder is the animal's own motion). The
cameras come from motion.npz (key w2c) or from the video folder (`video_dir`);
without them there is no root motion.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import assets
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import motion_file
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.model import skinning
from animdreamer_jax.model.skinning import Bones
from animdreamer_jax.render import posing
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder



@dataclasses.dataclass(frozen=True)
class RunRig:
  """Everything the export needs from one run folder.

  Attributes:
    rig: gltf_writer.Rig (object frame; root_to_world set when cameras are known).
    run_dir: the run folder.
    blend: the model's blending ("dqs" or "lbs", config.render.blend).
    object_to_camera: (T, 4, 4) learned root poses.
    log_scale: (B, 3) Gaussian bone log-scales.
    root_source: where the root motion came from (for the log).
    meshes_frame: the frame of meshes.npz ("object", "camera" or "world").
    meshes_vertices: (T, V, 3) meshes.npz's vertices (the extraction's own
      forward warp, in meshes_frame).
    intrinsics: (T, 4) learned intrinsics, or None.
    skeleton: the run's skeleton when the rig is a tree (rig.tree), else None.
  """
  rig: gltf_writer.Rig
  run_dir: pathlib.Path
  blend: str
  object_to_camera: np.ndarray
  log_scale: np.ndarray
  root_source: str
  meshes_frame: str
  meshes_vertices: np.ndarray
  intrinsics: Optional[np.ndarray] = None
  skeleton: Optional[skeleton_file.Skeleton] = None


# ----------------------------------------------------------------------------
# Pure numerics.


def model_forward_warp(rest_vertices: jnp.ndarray, weights: jnp.ndarray, rest_quat: jnp.ndarray,
                       rest_trans: jnp.ndarray, bone_quat: jnp.ndarray, bone_trans: jnp.ndarray,
                       blend: str = "dqs") -> jnp.ndarray:
  """The model's forward warp (canonical -> frame object space) with given weights.

  Same per-point function as the renderer's `SkinningWarp.forward`
  (`skinning.warp_point` of the rest -> frame relative transforms), with the
  frame-independent forward weights precomputed.

  Args:
    rest_vertices: (V, 3) canonical points.
    weights: (V, B) forward skinning weights.
    rest_quat, rest_trans: (B, 4), (B, 3) rest bones.
    bone_quat, bone_trans: (T, B, 4), (T, B, 3) bones per frame.
    blend: "dqs" or "lbs".
  Returns:
    (T, V, 3) posed points in each frame's object space.
  """
  rest = Bones(quat=rest_quat, trans=rest_trans)

  def one_frame(quat, trans):
    rel = skinning.relative_transforms(rest, Bones(quat=quat, trans=trans))
    return jax.vmap(lambda x, w: skinning.warp_point(x, w, rel, blend))(rest_vertices, weights)

  return jax.vmap(one_frame)(bone_quat, bone_trans)


_jit_forward_warp = jax.jit(model_forward_warp, static_argnames=("blend",))


def forward_warp_np(rig: gltf_writer.Rig, weights: np.ndarray, blend: str) -> np.ndarray:
  """`model_forward_warp` for a Rig's arrays, one frame at a time (bounded memory). -> (T, V, 3)."""
  out = []
  for t in range(rig.num_frames):
    out.append(np.asarray(_jit_forward_warp(
        jnp.asarray(rig.rest_vertices, jnp.float32), jnp.asarray(weights, jnp.float32),
        jnp.asarray(rig.rest_bone_quat, jnp.float32), jnp.asarray(rig.rest_bone_trans, jnp.float32),
        jnp.asarray(rig.bone_quat[t:t + 1], jnp.float32),
        jnp.asarray(rig.bone_trans[t:t + 1], jnp.float32), blend=blend))[0])
  return np.stack(out).astype(np.float32)


def root_from_cameras(object_to_camera: np.ndarray, w2c: np.ndarray) -> np.ndarray:
  """Root motion object -> world: w2c_t^-1 object_to_camera_t, re-orthonormalised. (T, 4, 4)."""
  root = np.linalg.inv(np.asarray(w2c, np.float64)) @ np.asarray(object_to_camera, np.float64)
  # Nearest rotation (float32 inputs drift slightly off SO(3)).
  u, _, vt = np.linalg.svd(root[:, :3, :3])
  fix = np.linalg.det(u @ vt) < 0
  u[fix, :, -1] *= -1
  root[:, :3, :3] = u @ vt
  root[:, 3] = [0.0, 0.0, 0.0, 1.0]
  return root


# ----------------------------------------------------------------------------
# Reading the run folder.


def video_cameras(video_dir: str | pathlib.Path, num_frames: int
                  ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
  """(w2c (T, 4, 4), intrinsics (T, 4), (H, W)) of a video folder, checked against T."""
  video = video_lib.load_video(video_dir)
  if video.num_frames != num_frames:
    raise UserError(f"{video_dir}: the video has {video.num_frames} frames but the run has "
                    f"{num_frames}; pass the video the run was trained on")
  return (np.asarray(video.w2c, np.float64), np.asarray(video.intrinsics, np.float64),
          (video.height, video.width))


def run_skeleton(run_dir: pathlib.Path, rig_kind: Optional[str], num_bones: int
                 ) -> Optional[skeleton_file.Skeleton]:
  """The skeleton the glb's joints follow: None for a flat rig.

  Args:
    run_dir: the run folder.
    rig_kind: "tree" (skeleton.json required), "flat", or None (tree when the
      run has skeleton.json, flat otherwise).
    num_bones: the model's bone count (the skeleton must be made for it).
  Raises:
    UserError: an unknown kind, a tree without skeleton.json, a malformed
      skeleton or one made for another bone count.
  """
  if rig_kind not in (None,) + gltf_writer.RIG_KINDS:
    raise UserError(f"unknown rig {rig_kind!r} (choose from {', '.join(gltf_writer.RIG_KINDS)})")
  if rig_kind == "flat":
    return None
  skel = skeleton_file.load_of_run(run_dir)
  if skel is None:
    if rig_kind == "tree":
      raise UserError(f"{run_dir}: no {skeleton_file.FILE_NAME} for a tree rig (build it with "
                      "`animdreamer skeleton`, or export with --rig flat)")
    return None
  if skel.num_model_bones != num_bones:
    raise UserError(f"{run_dir / skeleton_file.FILE_NAME}: the skeleton is made for "
                    f"{skel.num_model_bones} model bones but the run has {num_bones}")
  return skel


def load_run_rig(run_dir: str | pathlib.Path, video_dir: Optional[str | pathlib.Path] = None,
                 name: Optional[str] = None, with_model: bool = True,
                 rig_kind: Optional[str] = None) -> RunRig:
  """Reads a finished run folder into a RunRig.

  Args:
    run_dir: the extraction run folder.
    video_dir: optional video folder the run was trained on (its cameras give
      the root motion when motion.npz has none).
    name: asset name (default: the run folder's name).
    with_model: restore the checkpoint for the exact forward weights (with
      delta skinning); False uses motion.npz's rest_skin_weights (tests, or
      models without delta skinning).
    rig_kind: the glb's joint layout, "tree" (the run's skeleton.json) or
      "flat" (one joint per bone); None: tree when the run has skeleton.json.
  Raises:
    UserError: unfinished run, missing checkpoint, inconsistent files, a tree
      rig without a usable skeleton.json.
  """
  run_dir = run_folder.check_finished(run_dir, need_checkpoint=with_model)
  settings = run_folder.load_settings(run_dir)
  rest = run_folder.load_npz(run_dir / "rest.npz")
  for key in ("vertices", "faces"):
    if key not in rest:
      raise UserError(f"{run_dir / 'rest.npz'}: missing key '{key}'")
  motion, num_frames, num_bones = run_folder.load_motion(run_dir)
  # Before the model is restored: a bad skeleton fails fast.
  skel = run_skeleton(run_dir, rig_kind, num_bones)
  meshes = assets.load_sequence_npz(run_dir / "meshes.npz")
  rest_vertices = np.asarray(rest["vertices"], np.float32)
  faces = np.asarray(rest["faces"], np.int32)
  if meshes.vertices.shape != (num_frames,) + rest_vertices.shape:
    raise UserError(f"{run_dir / 'meshes.npz'}: vertices {meshes.vertices.shape} do not match "
                    f"rest.npz ({rest_vertices.shape[0]} vertices) and motion.npz "
                    f"({num_frames} frames)")
  colors = rest.get("vertex_colors")
  if colors is not None and (colors.shape != rest_vertices.shape or colors.dtype != np.uint8):
    raise UserError(f"{run_dir / 'rest.npz'}: vertex_colors must be uint8 {rest_vertices.shape}")

  if with_model:
    model, params = run_folder.restore_model(run_dir, settings)
    if model.config.num_bones != num_bones:
      raise UserError(f"{run_dir}: the checkpoint has {model.config.num_bones} bones but "
                      f"motion.npz has {num_bones}")
    weights = posing.forward_skin_weights(model, params, rest_vertices)
    intrinsics = np.asarray(model.apply(params, jnp.arange(num_frames, dtype=jnp.int32),
                                        method="intrinsics"), np.float64)
  else:
    if "rest_skin_weights" not in motion:
      raise UserError(f"{run_dir / 'motion.npz'}: missing key 'rest_skin_weights'")
    weights = np.asarray(motion["rest_skin_weights"], np.float32)
    intrinsics = None

  object_to_camera = np.asarray(motion["object_to_camera"], np.float64)
  root, root_source = None, "none (no camera poses: motion.npz has no 'w2c'; pass the video)"
  if "w2c" in motion:
    root, root_source = root_from_cameras(object_to_camera, motion["w2c"]), "motion.npz w2c"
  elif video_dir is not None:
    w2c, video_intrinsics, _ = video_cameras(video_dir, num_frames)
    root, root_source = root_from_cameras(object_to_camera, w2c), f"{video_dir} cameras"
    if intrinsics is None:
      intrinsics = video_intrinsics

  rig = gltf_writer.Rig(
      rest_vertices=rest_vertices, faces=faces, skin_weights=weights,
      rest_bone_quat=np.asarray(motion["rest_bone_quat"], np.float32),
      rest_bone_trans=np.asarray(motion["rest_bone_trans"], np.float32),
      bone_quat=np.asarray(motion["bone_quat"], np.float32),
      bone_trans=np.asarray(motion["bone_trans"], np.float32),
      fps=float(meshes.fps), root_to_world=root, vertex_colors=colors,
      name=name or run_dir.resolve().name,
      tree=None if skel is None else gltf_writer.tree_from_skeleton(
          skel, weights, str(run_dir / skeleton_file.FILE_NAME)))
  rig = gltf_writer.validate_rig(rig, str(run_dir))
  blend = settings.render.blend
  mesh_frame = str(motion["mesh_frame"]) if "mesh_frame" in motion else "object"
  return RunRig(rig=rig, run_dir=run_dir, blend=blend, object_to_camera=object_to_camera,
                log_scale=np.asarray(motion["bone_log_scale"], np.float32),
                root_source=root_source, meshes_frame=mesh_frame,
                meshes_vertices=np.asarray(meshes.vertices, np.float32), intrinsics=intrinsics,
                skeleton=skel)


def model_meshes_in_frame(run: RunRig, posed_object: np.ndarray,
                          frame: str) -> Optional[np.ndarray]:
  """Model meshes (object frame, (T, V, 3)) in meshes.npz's frame, or None if unknown."""
  if frame == "object":
    return posed_object
  if frame == "camera":
    return transforms_np.to_camera(posed_object, run.object_to_camera).astype(np.float32)
  if frame == "world" and run.rig.root_to_world is not None:
    return transforms_np.to_camera(posed_object, run.rig.root_to_world).astype(np.float32)
  return None


def load_run_motion(run_dir: str | pathlib.Path, video_dir: Optional[str | pathlib.Path] = None):
  """The motion of a finished run (motion.npz + meshes.npz's fps; no checkpoint needed).

  Returns:
    motion_file.Motion (root motion = identity when the run has no cameras).
  Raises:
    UserError: not a finished run folder, or inconsistent files.
  """
  # The motion alone: its bones per frame and the frame rate of its meshes.
  run_dir = run_folder.check_finished(run_dir, need_checkpoint=False,
                                      files=("motion.npz", "meshes.npz"))
  motion, num_frames, _ = run_folder.load_motion(run_dir)
  fps = assets.load_sequence_npz(run_dir / "meshes.npz").fps
  object_to_camera = np.asarray(motion["object_to_camera"], np.float64)
  root = np.tile(np.eye(4), (num_frames, 1, 1))
  if "w2c" in motion:
    root = root_from_cameras(object_to_camera, motion["w2c"])
  elif video_dir is not None:
    root = root_from_cameras(object_to_camera, video_cameras(video_dir, num_frames)[0])
  return motion_file.validate_motion(motion_file.Motion(
      fps=float(fps),
      bone_to_object=transforms_np.rigid_matrix(motion["bone_quat"], motion["bone_trans"]),
      rest_bone_to_object=transforms_np.rigid_matrix(motion["rest_bone_quat"],
                                                   motion["rest_bone_trans"]),
      object_to_world=root, object_to_camera=object_to_camera,
      bone_log_scale=np.asarray(motion["bone_log_scale"], np.float64),
      source=str(run_dir)), str(run_dir / "motion.npz"))
