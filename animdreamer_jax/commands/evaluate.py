"""Score predicted per-frame meshes against a video's ground truth.

  animdreamer eval --pred PATH --gt DIR [--out JSON] [--no-align] [--samples N]
                   [--limb-fraction 0.35]

PATH is a mesh-sequence NPZ, a folder of per-frame OBJ files (sorted by name,
numbers compared as numbers; --pattern picks which files) or a run folder of
`animdreamer extract` (its meshes.npz); DIR is a video folder with gt/ (from
`animdreamer synth`). Both meshes are sampled uniformly by
area; unless --no-align, one similarity transform (scale, rotation,
translation) for the whole sequence moves the prediction onto the ground truth
first. Prints Chamfer distance and F-scores at 1/2/5% of the GT rest-pose
bounding-box diagonal for the whole surface and for its parts (eval.parts): the
seen and never-seen parts, limbs (the lowest --limb-fraction of the rest pose's
height) and the body above them, and, when gt/joints.npz names the joints, the
legs / tail / ears / head / torso chains; writes them per frame and averaged to
--out as JSON. When PATH is a run folder (or its meshes.npz) that holds a
skeleton.json and the ground truth has joint positions, the skeleton is scored
too, through the same alignment (key "rig", `eval.rig_metrics`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import time
from typing import Any

import numpy as np

from animdreamer_jax import assets
from animdreamer_jax import files
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.eval import metrics
from animdreamer_jax.eval import parts as parts_lib
from animdreamer_jax.eval import rig_metrics
from animdreamer_jax.eval import run_scores
from animdreamer_jax.eval import surface_sampling
from animdreamer_jax.skeleton import skeleton_file

FORMAT_NAME = "animdreamer-eval"
FORMAT_VERSION = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--pred", required=True,
                      help="predicted meshes: a mesh-sequence .npz, a folder of per-frame .obj, "
                           "or a run folder (its meshes.npz; its skeleton.json is scored too)")
  parser.add_argument("--gt", required=True, help="video folder with gt/ (ground truth)")
  parser.add_argument("--out", default=None, help="write the scores to this JSON file")
  parser.add_argument("--no-align", action="store_true",
                      help="score as is (prediction already in the GT world frame, e.g. "
                           "synthetic runs); default: fit one similarity transform")
  parser.add_argument("--samples", type=int, default=10000,
                      help="surface samples per mesh and frame (default 10000)")
  parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
  parser.add_argument("--pattern", default="*.obj",
                      help="which files of a --pred folder are frames (default *.obj)")
  parser.add_argument("--limb-fraction", type=float, default=parts_lib.LIMB_FRACTION,
                      help="the 'limbs' part: GT vertices in this lowest share of the rest "
                           f"pose's height range (default {parts_lib.LIMB_FRACTION})")


def _natural_key(path: pathlib.Path) -> list:
  return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


def run_folder_of(path: str | os.PathLike) -> pathlib.Path | None:
  """The `animdreamer extract` run folder that `--pred` names (it or its meshes.npz), or None.

  A run folder holds meshes.npz next to motion.npz.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    folder = path
  elif path.is_file() and path.name == "meshes.npz":
    folder = path.parent
  else:
    return None
  if (folder / "meshes.npz").is_file() and (folder / "motion.npz").is_file():
    return folder
  return None


def load_predicted_meshes(path: str | os.PathLike, pattern: str = "*.obj"
                          ) -> tuple[np.ndarray, np.ndarray]:
  """Reads predicted meshes from a mesh-sequence NPZ or a folder of OBJs.

  Args:
    path: .npz file, a run folder (its meshes.npz), or a folder whose files
      matching `pattern` are the frames in natural order (frame-2.obj before
      frame-10.obj).
    pattern: glob for the frame files of a folder.

  Returns:
    vertices (T, V, 3) float32 and faces (F, 3) when all frames share one face
    list, else (T, F, 3) padded with zero-area faces.

  Raises:
    UserError: missing or unreadable files, no frames.
  """
  path = pathlib.Path(path)
  run_dir = run_folder_of(path)
  if run_dir is not None:
    path = run_dir / "meshes.npz"
  if path.is_dir():
    files = sorted((p for p in path.glob(pattern) if p.is_file()), key=_natural_key)
    if not files:
      raise UserError(f"{path}: no files matching {pattern!r}")
    meshes = [assets.read_obj(p) for p in files]
    vertices = [m[0] for m in meshes]
    faces = [m[1] for m in meshes]
    if all(f.shape == faces[0].shape and np.array_equal(f, faces[0]) for f in faces) and \
        all(v.shape == vertices[0].shape for v in vertices):
      return np.stack(vertices).astype(np.float32), faces[0].astype(np.int32)
    return surface_sampling.pad_mesh_frames(vertices, faces)
  if not path.exists():
    raise UserError(f"{path}: not found")
  if path.suffix.lower() == ".obj":
    vertices, faces = assets.read_obj(path)
    return vertices[None].astype(np.float32), faces.astype(np.int32)
  if path.suffix.lower() != ".npz":
    raise UserError(f"{path}: expected a mesh-sequence .npz or a folder of .obj files")
  sequence = assets.load_sequence_npz(path)
  return (np.asarray(sequence.vertices, np.float32),
          np.asarray(sequence.faces, np.int32))


def _fmt(value: float | None, spec: str) -> str:
  return "-" if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
  """The short human-readable summary printed by the command."""
  lines = []
  alignment = report["alignment"]
  if alignment["enabled"]:
    t = alignment["translation"]
    lines.append(f"alignment: scale {alignment['scale']:.4f}, rotation "
                 f"{alignment['rotation_angle_deg']:.2f} deg, translation "
                 f"({t[0]:.3f}, {t[1]:.3f}, {t[2]:.3f}), ICP {alignment['icp_iterations']} "
                 "iterations")
  else:
    lines.append("alignment: none (--no-align)")
  lines.append(f"{report['num_frames']} frames, {report['samples_per_frame']} samples per mesh "
               f"and frame; distances in units of the GT rest bbox diagonal "
               f"(L = {report['normalisation_length']:.4g})")
  labels = [f"{100 * tau:g}%" for tau in report["thresholds"]]
  header = f"{'surface':<8} {'area':>5} {'CD':>8} {'acc':>8} {'comp':>8}" + "".join(
      f" {'F@' + label:>7}" for label in labels)
  lines.append(header)
  for part, scores in report["mean"].items():
    area = report["area_fraction"][part]
    row = (f"{part:<8} {100 * area:>4.0f}% {_fmt(scores['chamfer'], '8.5f')} "
           f"{_fmt(scores['accuracy'], '8.5f')} {_fmt(scores['completeness'], '8.5f')}")
    row += "".join(f" {_fmt(scores['fscore@' + label], '7.2f')}" for label in labels)
    lines.append(row)
  lines.append(f"limbs: the lowest {100 * report['limb_fraction']:g}% of the rest pose's height "
               f"({report['up_axis']} up); body: the rest")
  if not report["chains_recorded"]:
    lines.append("(no gt/joints.npz: no legs / tail / head split by joint names)")
  if "rig" in report:
    lines.append(rig_metrics.summary_line(report["rig"]))
  return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
  start = time.time()
  if args.samples < 1:
    raise UserError(f"--samples: must be positive, got {args.samples}")
  video = video_lib.load_video(args.gt, mmap=True)
  if video.gt is None:
    raise UserError(f"{pathlib.Path(args.gt) / 'gt'}: missing (this video has no ground "
                    "truth to score against)")
  gt = video.gt
  parts = parts_lib.ground_truth_parts(gt, args.limb_fraction)
  pred_vertices, pred_faces = load_predicted_meshes(args.pred, args.pattern)
  gt_vertices = np.asarray(gt.meshes.vertices, np.float32)
  if pred_vertices.shape[0] != gt_vertices.shape[0]:
    raise UserError(f"{args.pred}: {pred_vertices.shape[0]} frames, but the ground truth "
                    f"in {args.gt} has {gt_vertices.shape[0]}")
  rest = np.asarray(gt.rest_vertices, np.float64)
  norm_length = float(np.linalg.norm(rest.max(0) - rest.min(0)))
  report = metrics.evaluate_sequence(
      pred_vertices, pred_faces, gt_vertices, np.asarray(gt.meshes.faces, np.int32),
      parts=parts, norm_length=norm_length,
      num_samples=args.samples, align=not args.no_align, seed=args.seed)
  run_dir = run_folder_of(args.pred)
  if run_dir is not None and (run_dir / skeleton_file.FILE_NAME).is_file():
    rig = run_scores.rig_scores_of_run(run_dir, gt, report["alignment"]["matrix"])
    if rig is None:
      print(f"rig: not scored ({pathlib.Path(args.gt) / 'gt' / 'meshes.npz'} has no joint "
            "positions)")
    else:
      report["rig"] = rig
  payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
             "pred": str(args.pred), "gt": str(args.gt), "seed": args.seed,
             **report, "seconds": round(time.time() - start, 3)}
  print(format_table(payload))
  if args.out:
    files.save_json(args.out, payload)
    print(f"wrote {args.out}")
  return 0
