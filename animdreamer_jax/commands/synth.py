"""Render an animated asset into a benchmark video folder (the on-disk video format).

  animdreamer synth --asset PATH [--clip NAME] [--frames N] [--res R]
                    [--camera orbit|arc|fixed] [--arc-degrees 60] [--seed S]
                    [--rot-noise-deg X] [--trans-noise Y] [--background r,g,b]
                    [--fps F] --out DIR

PATH is a rigged glTF (.glb / .gltf) or a mesh-sequence NPZ. The sequence is
normalised (centre of the rest-pose bounding box at the origin, its diagonal 1)
and filmed by a camera that looks at the animal from slightly above: `orbit`
circles it once over the clip, `arc` sweeps --arc-degrees so one side is never
seen, `fixed` stays put. DIR receives RGB, mask, depth, exact forward/backward
flow (gaps 1, 2, 4, 8), a 16-channel oracle feature (stand-in for DINOv2),
cameras, ground truth under gt/ and contact_sheet.png. Nothing appears at DIR
unless everything was written.
"""

from __future__ import annotations

import argparse
import pathlib
import time

from animdreamer_jax import assets
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError


def _background(text: str) -> tuple[float, float, float]:
  try:
    rgb = tuple(float(x) for x in text.split(","))
  except ValueError:
    rgb = ()
  if len(rgb) != 3 or not all(0 <= c <= 1 for c in rgb):
    raise argparse.ArgumentTypeError(f"'{text}': expected three numbers in [0, 1], e.g. 1,1,1")
  return rgb


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--asset", required=True, help=".glb, .gltf or mesh-sequence .npz")
  parser.add_argument("--clip", default=None, help="animation clip name (glTF; default: the first)")
  parser.add_argument("--frames", type=int, default=64, help="number of frames (clips loop)")
  parser.add_argument("--res", type=int, default=128, help="image height = width in pixels")
  parser.add_argument("--camera", choices=("orbit", "arc", "fixed"), default="orbit",
                      help="camera path")
  parser.add_argument("--arc-degrees", type=float, default=60.0, help="span of the arc path")
  parser.add_argument("--azimuth", type=float, default=60.0,
                      help="start of the orbit / centre of the arc / fixed view, degrees "
                           "(0 = facing the head, 90 = the animal's +X side)")
  parser.add_argument("--elevation", type=float, default=15.0, help="camera elevation, degrees")
  parser.add_argument("--fov", type=float, default=40.0, help="field of view, degrees")
  parser.add_argument("--seed", type=int, default=0, help="seed of the camera noise")
  parser.add_argument("--rot-noise-deg", type=float, default=0.0,
                      help="std of per-frame camera rotation noise (degrees) in cameras.npz")
  parser.add_argument("--trans-noise", type=float, default=0.0,
                      help="std of per-frame camera-centre noise (normalised units) in cameras.npz")
  parser.add_argument("--background", type=_background, default=(1.0, 1.0, 1.0),
                      help="background colour r,g,b in [0, 1] (default 1,1,1)")
  parser.add_argument("--fps", type=float, default=None,
                      help="frame rate of the sampled clip (default: the asset's own / 30)")
  parser.add_argument("--out", required=True, help="video folder to create")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
  out = pathlib.Path(args.out)
  if out.exists() and not args.overwrite:
    raise UserError(f"{out}: already exists (pass --overwrite to replace it)")
  if args.frames < 1:
    raise UserError(f"--frames {args.frames}: must be at least 1")
  if args.res < 8:
    raise UserError(f"--res {args.res}: must be at least 8")
  if args.fps is not None and not args.fps > 0:
    raise UserError(f"--fps {args.fps}: must be positive")
  if args.rot_noise_deg < 0 or args.trans_noise < 0:
    raise UserError("--rot-noise-deg/--trans-noise: must be >= 0")
  if not 0 < args.fov < 180:
    raise UserError(f"--fov {args.fov}: must be in (0, 180)")
  start = time.perf_counter()
  asset = pathlib.Path(args.asset)
  seq = assets.load_sequence(asset, clip=args.clip, num_frames=args.frames, fps=args.fps)
  options = synthetic.SynthOptions(
      resolution=args.res, camera_path=args.camera, arc_degrees=args.arc_degrees,
      azimuth_degrees=args.azimuth, elevation_degrees=args.elevation, fov_degrees=args.fov,
      rot_noise_deg=args.rot_noise_deg, trans_noise=args.trans_noise, seed=args.seed,
      background=tuple(args.background))
  source = {"asset": str(asset), "asset_name": asset.name, "clip": args.clip,
            "num_frames": args.frames, "resolution": args.res}
  video = synthetic.synthesize(seq, options, source=source, progress=not args.quiet)
  video_lib.write_video(out, video, overwrite=args.overwrite)
  seen = float(video.gt.face_visible.mean()) if video.gt is not None else float("nan")
  print(f"wrote {out}: {video.num_frames} frames {video.height}x{video.width}, "
        f"camera {args.camera}, {100 * seen:.1f}% of faces seen, "
        f"{time.perf_counter() - start:.1f} s")
  return 0
