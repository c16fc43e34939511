"""Turn an ordinary video (a phone clip of an animal) into the video folder `extract` reads.

  bin/animdreamer preprocess --video IN.mp4|FRAMES_DIR --out DIR (--box x0,y0,x1,y1 | --masks MASKS)
      [--cameras KEYFRAMES.json] [--features none|dinov2 --dinov2-weights W] [--res 128]
      [--fps F] [--start S --frames N] [--fov 53.13] [--yaw DEG --elevation DEG] [--flow-gaps 1,2]

Masks: yours (a folder of PNGs, a mask video, or lab4d's Annotations of .npy label maps), or GrabCut
tracking from a box around the animal in the first kept frame (no network). Flow: OpenCV DIS with a
forward-backward test, at frame gaps 1 and 2 (longer gaps on request: DIS gets them wrong where the
animal moves fast). Features: none (extract then turns its feature losses off), or DINOv2 ViT-S/14
from a folder written by `animdreamer convert-dinov2`. Cameras: intrinsics from --fov; the animal's
rotation from keyframes ({"0": {"yaw": 90, "elevation": 10}, ...}, yaw 0 = facing the camera) or a
constant --yaw/--elevation the root-pose MLP then learns from. The folder (docs/formats.md, version 2:
no depth, camera_path "real") ends with contact_sheet.png: check it before training.
"""

from __future__ import annotations

import argparse

from animdreamer_jax.errors import UserError
from animdreamer_jax.stages.preprocess import cameras
from animdreamer_jax.stages.preprocess import run as preprocess_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--video", required=True, help="a video file (mp4/mov/avi) or a folder of images")
  parser.add_argument("--out", required=True, help="the video folder to write")
  parser.add_argument("--box", default=None,
                      help="x0,y0,x1,y1: a box around the animal in the first kept frame (pixels)")
  parser.add_argument("--masks", default=None,
                      help="your masks: a folder of PNGs, a mask video, or lab4d Annotations (.npy)")
  parser.add_argument("--cameras", default=None,
                      help='keyframe rotations JSON: {"frame": {"yaw": deg, "elevation": deg}}')
  parser.add_argument("--features", choices=preprocess_run.FEATURE_CHOICES, default="none")
  parser.add_argument("--dinov2-weights", default=None, help="converted DINOv2 folder")
  parser.add_argument("--res", type=int, default=128, help="side of the square crop (default 128)")
  parser.add_argument("--fps", type=float, default=None, help="keep about this many frames a second")
  parser.add_argument("--start", type=int, default=0, help="first kept frame (after --fps)")
  parser.add_argument("--frames", type=int, default=None, help="number of kept frames")
  parser.add_argument("--fov", type=float, default=cameras.DEFAULT_FOV_DEGREES,
                      help="horizontal field of view of the full frame, degrees (default 53.13: "
                           "focal length = width, lab4d's)")
  parser.add_argument("--yaw", type=float, default=0.0,
                      help="constant camera yaw around the animal without --cameras (degrees)")
  parser.add_argument("--elevation", type=float, default=0.0,
                      help="constant camera elevation without --cameras (degrees)")
  parser.add_argument("--flow-gaps", default="1,2",
                      help="frame gaps of the flows (default 1,2: DIS is unreliable at 4 and 8)")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
  try:
    gaps = tuple(int(g) for g in args.flow_gaps.split(",") if g.strip())
  except ValueError:
    raise UserError(f"--flow-gaps {args.flow_gaps!r}: give frame gaps like 1,2") from None
  options = preprocess_run.PreprocessOptions(flow_gaps=gaps,
      resolution=args.res, fps=args.fps, start=args.start, frames=args.frames, box=args.box,
      masks=args.masks, features=args.features, dinov2_weights=args.dinov2_weights,
      keyframes=args.cameras, yaw=args.yaw, elevation=args.elevation, fov_degrees=args.fov)
  result = preprocess_run.preprocess(args.video, args.out, options, overwrite=args.overwrite)
  times = ", ".join(f"{k} {v:.1f} s" for k, v in result["seconds"].items())
  print(f"video folder: {result['out']} ({result['num_frames']} frames; crop x0, y0, side = "
        f"{result['crop']})")
  print(f"seconds per stage: {times}")
  print(f"check {result['out']}/contact_sheet.png, then: bin/animdreamer extract --config "
        f"configs/extract_demo_cpu.py --video {result['out']} --workdir RUN")
  return 0
