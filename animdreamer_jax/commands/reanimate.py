"""Drive a trained model with another run's motion (or a motion file) and export it.

  bin/animdreamer reanimate --run RUN --motion OTHER_RUN_OR_MOTION_FILE --out OUT.glb
      [--rig flat|tree] [--no-root-motion] [--blend lbs|dqs] [--no-viewer] [--no-videos]

--motion is another extraction run folder (its motion.npz) or a motion file
(.json / .npz, see animdreamer_jax/export/motion_file.py; `animdreamer export`
writes one next to every .glb). The bones are matched by index, so the two
must have the same number of bones; each bone of RUN then moves as the source
bone moved, relative to its own rest pose (rest_run * rest_src^-1 * src_t).
The root motion and the frame rate come from the motion. Other bone counts
are an error until skeleton retargeting exists. The glb's joints follow RUN's
skeleton.json as a tree when it has one (--rig as for `animdreamer export`).

Writes the same files as `animdreamer export` (OUT.glb, OUT.html,
OUT.motion.json, OUT.meshes.npz, OUT_frames/, OUT_animation.mp4,
OUT.export.json), for the new motion; nothing when an input is bad.
"""

from __future__ import annotations

import argparse
import pathlib

from animdreamer_jax.commands import export as export_cmd
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import motion_file
from animdreamer_jax.export import rig_from_run
from animdreamer_jax.stages import run_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--run", required=True, help="finished extraction run folder (the model)")
  parser.add_argument("--motion", required=True,
                      help="another run folder, or a motion file (.json / .npz)")
  parser.add_argument("--out", required=True, help="output .glb (siblings share its stem)")
  export_cmd.add_rig_argument(parser)
  parser.add_argument("--no-root-motion", action="store_true",
                      help="keep the root joint still")
  parser.add_argument("--blend", choices=("dqs", "lbs"), default=None,
                      help="model blending for the written per-frame meshes (default: the run's)")
  parser.add_argument("--no-viewer", action="store_true", help="skip the HTML viewer page")
  parser.add_argument("--no-videos", action="store_true", help="skip the MP4 video")
  parser.add_argument("--size", type=int, default=256, help="video frame size (pixels)")


def load_motion_source(source: str | pathlib.Path):
  """A run folder or a motion file -> motion_file.Motion (UserError if neither)."""
  source = pathlib.Path(source)
  if source.is_dir():
    return rig_from_run.load_run_motion(source)
  if not source.exists():
    raise UserError(f"{source}: motion not found (expected a run folder or a .json/.npz motion "
                    "file)")
  return motion_file.load_motion(source)


def run(args: argparse.Namespace) -> int:
  out = export_cmd.check_out_path(args.out)
  # The cheap checks first: a bad motion fails before the model is restored.
  motion = load_motion_source(args.motion)
  run_folder.check_finished(args.run)
  num_bones = rig_from_run.load_run_motion(args.run).num_bones
  if motion.num_bones != num_bones:
    raise UserError(f"{args.motion}: the motion has {motion.num_bones} bones but the model in "
                    f"{args.run} has {num_bones}; re-animation needs the same bone count "
                    "(retargeting between different skeletons is not implemented)")
  target = rig_from_run.load_run_rig(args.run, rig_kind=args.rig)
  rig = motion_file.retarget_direct(target.rig, motion, where=str(args.motion))
  job = export_cmd.ExportJob(
      rig=rig, weights=target.rig.skin_weights, model_blend=target.blend, out=out,
      root_motion=not args.no_root_motion, blend=args.blend, log_scale=None,
      object_to_camera=None, viewer=not args.no_viewer, videos=not args.no_videos,
      size=args.size,
      extra_log={"run": str(target.run_dir), "motion_source": str(args.motion),
                 "skeleton": export_cmd.skeleton_source(target),
                 "retargeting": "direct (bone by bone, same count)",
                 "asset_extras": {"source_run": str(target.run_dir),
                                  "motion_source": str(args.motion)}})
  log = export_cmd.export_rig(job)
  print(f"re-animated {target.run_dir} with {args.motion} ({motion.num_frames} frames, "
        f"{motion.num_bones} bones)")
  print(export_cmd._summary(log))  # pylint: disable=protected-access
  return 0
