"""Export a trained run as a rigged, animated glTF (+ viewer page, motion, meshes, videos).

  bin/animdreamer export --run RUN --out OUT.glb [--rig flat|tree] [--no-root-motion]
      [--blend lbs|dqs] [--video VIDEO_DIR] [--no-viewer] [--no-videos]

Writes, next to OUT.glb (same stem):
  OUT.glb              rest mesh + vertex colours, a root joint (root motion,
                       object -> world) and under it the skeleton's joint tree
                       (--rig tree, the default when the run has skeleton.json:
                       joints named and parented as the skeleton says, the
                       pruned bones' skin weight merged) or one joint per
                       Gaussian bone (--rig flat, the default without one),
                       top-4 skin weights, one clip "motion" at the video
                       frame rate
  OUT.html             a self-contained three.js page playing OUT.glb (offline)
  OUT.motion.json      root poses + bone transforms per frame (motion_file.py)
  OUT.meshes.npz       the model's own per-frame meshes (mesh-sequence NPZ) and
  OUT_frames/*.obj     the same as OBJ files, in the glTF's frame
  OUT_turntable.mp4    rest shape turning: colours | skinning + bone ellipsoids
  OUT_animation.mp4    the glTF posed by a glTF player, fixed camera
  OUT_reference.mp4    input frames | glTF posed, from each frame's camera (--video)
  OUT.export.json      the export log: glTF player vs the model's forward warp per
                       frame, joint stretch (tree), validator result, settings

A glTF player blends bones linearly with 4 influences; the model blends all
bones with dual quaternions (config render.blend). The log reports, per frame,
the distance between the two (and against the model's linear blending, where
only the top-4 truncation remains, and in the tree the pruned bones' weight
merged into other joints). --blend picks which of the model's
blendings the written per-frame meshes use (default: the run's). The player is
the project's glTF loader (assets.load_gltf), which composes the node hierarchy
from the file's own keys as the specification says, so the number holds for
either layout. In the tree the model's unlinked bones show as joint stretch: a
child joint's offset from its parent changes a little over the frames (the file
stores it, so the player stays exact); the log gives the largest change of each
child's offset, as a share of the rest bounding-box diagonal.

Root motion needs the video's cameras (motion.npz 'w2c', or --video).
Everything is written to a temporary folder first and moved into place at the
end (the .glb last); on an error nothing is left behind.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Optional

import numpy as np
from tqdm import tqdm

from animdreamer_jax import assets
from animdreamer_jax import files
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import motion_file
from animdreamer_jax.export import rig_from_run
from animdreamer_jax.export import videos
from animdreamer_jax.export import viewer
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.skeleton import skeleton_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--run", required=True, help="finished extraction run folder")
  parser.add_argument("--out", required=True, help="output .glb (siblings share its stem)")
  add_rig_argument(parser)
  parser.add_argument("--no-root-motion", action="store_true",
                      help="keep the root joint still (the animal articulates in place)")
  parser.add_argument("--blend", choices=("dqs", "lbs"), default=None,
                      help="model blending for the written per-frame meshes (default: the run's)")
  parser.add_argument("--video", default=None,
                      help="the run's video folder: cameras for root motion (if motion.npz has "
                           "none) and the reference-view video")
  parser.add_argument("--no-viewer", action="store_true", help="skip the HTML viewer page")
  parser.add_argument("--no-videos", action="store_true", help="skip the MP4 videos")
  parser.add_argument("--size", type=int, default=256, help="video frame size (pixels)")


def add_rig_argument(parser: argparse.ArgumentParser) -> None:
  """--rig (shared with `reanimate`)."""
  parser.add_argument("--rig", choices=gltf_writer.RIG_KINDS, default=None,
                      help="joint layout: the run's skeleton.json as a joint tree, or one flat "
                           "joint per Gaussian bone (default: tree when the run has "
                           "skeleton.json, flat otherwise)")


# ----------------------------------------------------------------------------
# Output paths and staging.


def output_paths(out: pathlib.Path) -> dict[str, pathlib.Path]:
  """Every file the export may write, keyed by role."""
  stem, parent = out.stem, out.parent
  return {"glb": out, "viewer": parent / f"{stem}.html",
          "motion": parent / f"{stem}.motion.json", "meshes": parent / f"{stem}.meshes.npz",
          "frames": parent / f"{stem}_frames", "turntable": parent / f"{stem}_turntable.mp4",
          "animation": parent / f"{stem}_animation.mp4",
          "reference": parent / f"{stem}_reference.mp4", "log": parent / f"{stem}.export.json"}


def check_out_path(out: str | os.PathLike) -> pathlib.Path:
  out = pathlib.Path(out)
  if out.suffix.lower() != ".glb":
    raise UserError(f"{out}: the output must be a .glb file")
  if out.exists() and out.is_dir():
    raise UserError(f"{out}: is a folder")
  parent = out.parent if str(out.parent) else pathlib.Path(".")
  if parent.exists() and not parent.is_dir():
    raise UserError(f"{parent}: not a folder")
  return out


class Staging:
  """A temp folder next to the outputs; `commit` moves files into place (the .glb last)."""

  def __init__(self, out: pathlib.Path):
    # Folders made here are removed again by `discard` (when still empty).
    self.made = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.stem}.export-tmp-", dir=out.parent))
    self.final = output_paths(out)
    self.written: list[str] = []

  def path(self, role: str) -> pathlib.Path:
    self.written.append(role)
    return self.dir / self.final[role].name

  def commit(self) -> dict[str, str]:
    # Every helper writes through `files` (0o644), so the staged files move as they are.
    order = [r for r in self.written if r != "glb"] + [r for r in self.written if r == "glb"]
    for role in order:
      src, dst = self.dir / self.final[role].name, self.final[role]
      if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
      os.replace(src, dst)
    shutil.rmtree(self.dir, ignore_errors=True)
    return {role: str(self.final[role]) for role in order}

  def discard(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)
    for folder in self.made:  # innermost first
      try:
        folder.rmdir()
      except OSError:
        break


# ----------------------------------------------------------------------------
# Measurements.


def frame_errors(a: np.ndarray, b: np.ndarray) -> dict:
  """Per-frame vertex distances between two (T, V, 3) sequences."""
  dist = np.linalg.norm(np.asarray(a, np.float64) - np.asarray(b, np.float64), axis=-1)
  return {"per_frame_max": [float(x) for x in dist.max(1)],
          "per_frame_mean": [float(x) for x in dist.mean(1)],
          "max": float(dist.max()), "mean": float(dist.mean())}


def truncated_weight(weights: np.ndarray, k: int) -> dict:
  """Skinning weight mass outside each vertex's top k (what a 4-influence player drops)."""
  sorted_w = -np.sort(-np.asarray(weights, np.float64), axis=1)
  rest = sorted_w[:, k:].sum(1)
  return {"max": float(rest.max()) if rest.size else 0.0, "mean": float(rest.mean())
          if rest.size else 0.0}


def joint_stretch_log(rig: gltf_writer.Rig, diagonal: float) -> Optional[dict]:
  """The tree's joint stretch (gltf_writer.joint_stretch) as shares of the diagonal; None if flat."""
  if rig.tree is None:
    return None
  share = gltf_writer.joint_stretch(rig) / diagonal
  children = np.flatnonzero(np.asarray(rig.tree.parent) >= 0)
  worst = int(children[np.argmax(share[children])]) if children.size else None
  return {"meaning": "largest change over the frames of each child joint's offset from its "
                     "parent (its local translation) from the rest offset, as a share of "
                     "rest_bbox_diagonal (the model's bones are not linked; the glb stores the "
                     "changing offsets, so the player stays exact)",
          "max": float(share[worst]) if worst is not None else 0.0,
          "max_joint": str(rig.tree.names[worst]) if worst is not None else None,
          "per_joint": {str(rig.tree.names[k]): float(share[k]) for k in children}}


def _progress(total: int, desc: str, enabled: bool):
  if not enabled:
    return None, lambda: None
  bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr)
  return bar, lambda: bar.update(1)


# ----------------------------------------------------------------------------
# The shared pipeline (also used by `reanimate`).


@dataclasses.dataclass
class ExportJob:
  """What to write. `weights` are the model's full forward weights (V, B)."""
  rig: gltf_writer.Rig
  weights: np.ndarray
  model_blend: str
  out: pathlib.Path
  root_motion: bool = True
  blend: Optional[str] = None
  log_scale: Optional[np.ndarray] = None
  object_to_camera: Optional[np.ndarray] = None
  intrinsics: Optional[np.ndarray] = None
  reference_rgb: Optional[np.ndarray] = None
  viewer: bool = True
  videos: bool = True
  size: int = 256
  extra_log: dict = dataclasses.field(default_factory=dict)
  progress: bool = True


def export_rig(job: ExportJob) -> dict:
  """Writes the .glb and its companions for `job`; returns the log dict."""
  start = time.time()
  rig = gltf_writer.validate_rig(job.rig, str(job.out))
  root_motion = bool(job.root_motion and rig.root_to_world is not None)
  if job.viewer:
    viewer.three_package_dir()  # fail before any work if three.js is missing
  frame_name = "world" if root_motion else "object"
  root = (np.asarray(rig.root_to_world, np.float64) if root_motion
          else np.tile(np.eye(4), (rig.num_frames, 1, 1)))
  # The model's own forward warp, both blendings (object frame -> export frame).
  posed = {b: transforms_np.to_camera(rig_from_run.forward_warp_np(rig, job.weights, b), root)
           for b in ("dqs", "lbs")}

  staging = Staging(job.out)
  try:
    glb_path = staging.path("glb")
    extras = {"fps": rig.fps, "num_frames": rig.num_frames, "root_motion": root_motion,
              "frame": frame_name, "model_blend": job.model_blend, **job.extra_log.get(
                  "asset_extras", {})}
    glb_info = gltf_writer.write_glb(glb_path, rig, root_motion=root_motion, extras=extras)

    # What a standard glTF player shows: the project's loader, at the key times.
    times = np.arange(rig.num_frames) / rig.fps
    player = assets.load_gltf(glb_path).pose(gltf_writer.CLIP_NAME, times).astype(np.float64)
    log = _comparison_log(job, rig, player, posed, frame_name, glb_info)
    log.update({k: v for k, v in job.extra_log.items() if k != "asset_extras"})
    log["khronos_validator"] = _khronos_check(glb_path, job.out)

    motion = motion_file.motion_from_rig(rig, job.object_to_camera, job.log_scale,
                                         source=str(job.extra_log.get("run", "")))
    motion_file.save_motion(staging.path("motion"), motion)
    _write_meshes(job, rig, posed[job.blend or job.model_blend].astype(np.float32), staging)

    if job.viewer:
      viewer.write_viewer(staging.path("viewer"), glb_path.read_bytes(), job.out.stem,
                          viewer.clip_bounds(player), rig.fps, rig.num_frames)

    if job.videos:
      log["videos"] = _write_videos(job, rig, player, root, staging)

    log["seconds"] = round(time.time() - start, 2)
    log_path = staging.path("log")
    files.save_json(log_path, log)
    log["files"] = staging.commit()
    return log
  except BaseException:
    staging.discard()
    raise


def _comparison_log(job: ExportJob, rig: gltf_writer.Rig, player: np.ndarray,
                    posed: dict[str, np.ndarray], frame_name: str, glb_info: dict) -> dict:
  """The export log's sizes and the glTF player vs the model's forward warp per frame."""
  extent = rig.rest_vertices.max(0) - rig.rest_vertices.min(0)
  diagonal = float(np.linalg.norm(extent))
  tree = {}
  if rig.tree is not None:
    pruned = np.setdiff1d(np.arange(rig.num_bones), rig.tree.bone)
    on_pruned = np.asarray(job.weights, np.float64)[:, pruned].sum(1)
    tree = {"joint_names": [str(n) for n in rig.tree.names],
            "joint_parents": [int(p) for p in rig.tree.parent],
            "joint_bones": [int(b) for b in rig.tree.bone],
            "pruned_bones": [int(b) for b in pruned],
            "weight_on_pruned_bones": {"max": float(on_pruned.max()),
                                       "mean": float(on_pruned.mean())}}
  return {
      "out": str(job.out), "root_motion": frame_name == "world", "frame": frame_name,
      "model_blend": job.model_blend, "meshes_blend": job.blend or job.model_blend,
      "fps": rig.fps, "num_frames": rig.num_frames,
      "num_vertices": int(rig.rest_vertices.shape[0]),
      "num_faces": int(rig.faces.shape[0]), "num_bones": rig.num_bones,
      "rig": rig.kind, "num_joints": rig.num_joints, **tree,
      "rest_bbox_diagonal": diagonal,
      "units": "the run's normalised units (distances below are absolute, "
               "rest_bbox_diagonal gives the scale)",
      "player": "animdreamer_jax.assets.load_gltf (glTF 2.0 LBS, 4 influences)",
      "player_vs_model_dqs": frame_errors(player, posed["dqs"]),
      "player_vs_model_lbs": frame_errors(player, posed["lbs"]),
      "model_dqs_vs_lbs": frame_errors(posed["dqs"], posed["lbs"]),
      "joint_stretch": joint_stretch_log(rig, diagonal),
      "weight_outside_top4": truncated_weight(rig.joint_skin_weights,
                                              gltf_writer.NUM_INFLUENCES),
      "glb": glb_info,
  }


def _khronos_check(glb_path: pathlib.Path, out: pathlib.Path) -> str | dict:
  """The Khronos validator's summary for the log (a note when it is not installed).

  Raises:
    RuntimeError: the validator reports errors.
  """
  validation = gltf_writer.khronos_validate(glb_path)
  if validation is None:
    return "not installed (" + viewer.INSTALL_HINT + ")"
  if validation["numErrors"]:
    raise RuntimeError(f"{out}: the Khronos validator reports "
                       f"{validation['numErrors']} errors: {validation['messages'][:3]}")
  return ({k: validation[k] for k in ("numErrors", "numWarnings", "numInfos", "numHints")}
          | {"messages": validation["messages"][:20]})


def _write_meshes(job: ExportJob, rig: gltf_writer.Rig, meshes: np.ndarray,
                  staging: Staging) -> None:
  """The (T, V, 3) per-frame meshes as a mesh-sequence NPZ and as OBJ files."""
  assets.save_sequence_npz(staging.path("meshes"), assets.MeshSequence(
      vertices=meshes, faces=rig.faces.astype(np.int32), fps=rig.fps,
      vertex_colors=rig.vertex_colors, rest_vertices=rig.rest_vertices.astype(np.float32),
      skin_weights=np.asarray(job.weights, np.float32)))
  frames_dir = staging.path("frames")
  frames_dir.mkdir()
  for t in range(rig.num_frames):
    assets.write_obj(frames_dir / f"{job.out.stem}_{t:05d}.obj", meshes[t], rig.faces,
                     rig.vertex_colors)


def _write_videos(job: ExportJob, rig: gltf_writer.Rig, player: np.ndarray, root: np.ndarray,
                  staging: Staging) -> dict:
  info = {}
  size = int(job.size)
  if job.log_scale is not None:
    count = 48
    bar, tick = _progress(count, "turntable", job.progress)
    frames = videos.turntable_frames(
        rig.rest_vertices, rig.faces, rig.vertex_colors, job.weights,
        transforms_np.rigid_matrix(rig.rest_bone_quat, rig.rest_bone_trans), job.log_scale,
        num_frames=count, size=size, progress=tick)
    if bar is not None:
      bar.close()
    videos.write_mp4(staging.path("turntable"), frames, fps=24.0)
    info["turntable"] = f"{count} frames, {size}x{2 * size}"
  bar, tick = _progress(rig.num_frames, "animation", job.progress)
  frames = videos.animation_frames(player, rig.faces, rig.vertex_colors, size=size, progress=tick)
  if bar is not None:
    bar.close()
  videos.write_mp4(staging.path("animation"), videos.upscale(frames), fps=rig.fps)
  info["animation"] = f"{rig.num_frames} frames, glTF player pose"
  if job.reference_rgb is not None and job.object_to_camera is not None \
      and job.intrinsics is not None:
    # Export frame -> camera: object_to_camera_t * root_t^-1.
    to_cam = np.asarray(job.object_to_camera, np.float64) @ np.linalg.inv(root)
    cam = (np.einsum("tij,tvj->tvi", to_cam[:, :3, :3], player) + to_cam[:, None, :3, 3])
    bar, tick = _progress(rig.num_frames, "reference", job.progress)
    frames = videos.reference_frames(job.reference_rgb, cam, rig.faces, rig.vertex_colors,
                                     job.intrinsics, progress=tick)
    if bar is not None:
      bar.close()
    videos.write_mp4(staging.path("reference"), videos.upscale(frames), fps=rig.fps)
    info["reference"] = "input | glTF posed from the learned cameras"
  return info


def skeleton_source(run_rig: rig_from_run.RunRig) -> Optional[str]:
  """The skeleton.json a tree rig came from (None for a flat rig), for the log."""
  if run_rig.skeleton is None:
    return None
  return str(run_rig.run_dir / skeleton_file.FILE_NAME)


def _summary(log: dict) -> str:
  d = log["rest_bbox_diagonal"]
  dq, lb = log["player_vs_model_dqs"], log["player_vs_model_lbs"]
  val = log["khronos_validator"]
  val_text = val if isinstance(val, str) else (f"{val['numErrors']} errors, "
                                               f"{val['numWarnings']} warnings")
  if log["rig"] == "tree":
    joints = (f"a tree of {log['num_joints']} joints over {log['num_bones']} bones "
              f"({len(log['pruned_bones'])} pruned) + root")
    lbs_note = ("top-4 truncation and the pruned bones' merged weight" if log["pruned_bones"]
                else "top-4 truncation only")
  else:
    joints = f"{log['num_bones']} flat bones + root"
    lbs_note = "top-4 truncation only"
  lines = [
      f"glTF: {log['files'].get('glb')} ({log['num_vertices']} vertices, {joints}, "
      f"{log['num_frames']} frames at {log['fps']:g} fps, root motion "
      f"{'on' if log['root_motion'] else 'off'})",
      f"glTF player (LBS, top-4) vs model forward warp, max / mean vertex distance "
      f"(rest bbox diagonal {d:.4g}):",
      f"  vs model DQS: {dq['max']:.3g} / {dq['mean']:.3g}  ({100 * dq['max'] / d:.3g}% / "
      f"{100 * dq['mean'] / d:.3g}% of the diagonal)",
      f"  vs model LBS: {lb['max']:.3g} / {lb['mean']:.3g}  ({lbs_note}; weight "
      f"outside the top 4: max {log['weight_outside_top4']['max']:.3g})",
  ]
  stretch = log.get("joint_stretch")
  if stretch is not None:
    where = f" ({stretch['max_joint']})" if stretch["max_joint"] is not None else ""
    lines.append(f"joint stretch (largest change of a child joint's offset from its parent): "
                 f"{100 * stretch['max']:.3g}% of the diagonal{where}")
  lines.append(f"Khronos validator: {val_text}")
  for role, path in log["files"].items():
    if role != "glb":
      lines.append(f"{role}: {path}")
  return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
  out = check_out_path(args.out)
  run_rig = rig_from_run.load_run_rig(args.run, video_dir=args.video, rig_kind=args.rig)
  reference_rgb = None
  if args.video is not None and not args.no_videos:
    reference_rgb = video_lib.load_video(args.video).rgb
  meshes_check = None
  expected = rig_from_run.model_meshes_in_frame(
      run_rig, rig_from_run.forward_warp_np(run_rig.rig, run_rig.rig.skin_weights, run_rig.blend),
      run_rig.meshes_frame)
  if expected is not None:
    dist = np.linalg.norm(expected - run_rig.meshes_vertices, axis=-1)
    meshes_check = {"frame": run_rig.meshes_frame, "max": float(dist.max()),
                    "mean": float(dist.mean())}
  job = ExportJob(
      rig=run_rig.rig, weights=run_rig.rig.skin_weights, model_blend=run_rig.blend, out=out,
      root_motion=not args.no_root_motion, blend=args.blend, log_scale=run_rig.log_scale,
      object_to_camera=run_rig.object_to_camera, intrinsics=run_rig.intrinsics,
      reference_rgb=reference_rgb, viewer=not args.no_viewer, videos=not args.no_videos,
      size=args.size,
      extra_log={"run": str(run_rig.run_dir), "root_source": run_rig.root_source,
                 "skeleton": skeleton_source(run_rig),
                 "meshes_npz_vs_recomputed_warp": meshes_check,
                 "asset_extras": {"source_run": str(run_rig.run_dir)}})
  log = export_rig(job)
  print(_summary(log))
  return 0
