r"""Extraction with and without CSD on one video, same config and steps; scores side by side.

  python3 experiments/csd_with_and_without.py --video DIR --out RUNS \
      --config configs/extract_bench_cpu_csd_oracle.py [--config.csd.weight=...] \
      [--runs none,oracle] [--seeds 0,1]

For each prior in --runs (and each training seed in --seeds) it trains into
RUNS/<prior>/ (RUNS/<prior>_s<seed>/ with several seeds) through `animdreamer
extract`'s own entry point (`commands.extract.run_extraction`: the extraction
stage, then its scores), with the config's csd.prior set to the arm's prior;
every arm gets the same config (--config.<key>=<value> overrides included)
and steps. It writes RUNS/summary.json (+ .md): Chamfer and F-score@2%
overall and on the seen / never-seen ground-truth surface (metrics.json), and
the novel-view PSNR / silhouette IoU (`eval.novel_views`: placed by the
evaluation's registration, and "world" by none), one row per run and, with
several seeds, the mean over seeds of each prior (the seed changes
initialisation, batches and CSD views; one seed's difference can be noise).
Oracle runs also leave RUNS/<run>/csd_views.png: 4 CSD views of a frame next
to the oracle's ground-truth renders, and RUNS/compare.png shows the ground
truth and every run's mesh from the video's camera and from the never-seen
side. Finished runs (their metrics.json present) are read back, not
retrained; an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

# The package of the checkout this script lives in (as bin/animdreamer does), not an installed one.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from animdreamer_jax import assets  # noqa: E402
from animdreamer_jax import files  # noqa: E402
from animdreamer_jax import settings as settings_lib  # noqa: E402
from animdreamer_jax.commands import extract as extract_command  # noqa: E402
from animdreamer_jax.csd import gradient  # noqa: E402
from animdreamer_jax.csd import priors  # noqa: E402
from animdreamer_jax.csd import settings as csd_settings  # noqa: E402
from animdreamer_jax.csd import term as csd_term  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.errors import UserError  # noqa: E402
from animdreamer_jax.eval import novel_views  # noqa: E402
from animdreamer_jax.geometry import transforms_np  # noqa: E402
from animdreamer_jax.stages import run_folder  # noqa: E402
from animdreamer_jax.stages.extraction import outputs  # noqa: E402
from animdreamer_jax.stages.extraction import settings as extraction_settings  # noqa: E402
from animdreamer_jax.train import loop  # noqa: E402

HEADLINE = (("all", "chamfer"), ("all", "fscore@2%"), ("unseen", "chamfer"),
            ("unseen", "fscore@2%"), ("seen", "chamfer"), ("seen", "fscore@2%"))
# Novel-view scores (`eval.novel_views`): PSNR / silhouette IoU over 4 views around the
# animal, with the model placed by the evaluation's registration or ("world_") by none.
NOVEL = ("psnr", "iou", "world_psnr", "world_iou")


class TrainingFailed(UserError):
  """A run that trained but left nothing to score (e.g. no surface): reported, not fatal."""


@dataclasses.dataclass(frozen=True)
class Arm:
  """One run of the experiment: its folder name, CSD prior and resolved config."""
  name: str
  prior: str
  config: object


def run_name(prior: str, seed: int, several_seeds: bool) -> str:
  """RUNS/<run>: the prior's name, with "_s<seed>" when several seeds are trained."""
  return f"{prior}_s{seed}" if several_seeds else prior


def arms(config_path: str, overrides, runs: str, seeds: str) -> list[Arm]:
  """Every run's config (the file, the overrides, then csd.prior and train.seed), checked.

  Raises:
    UserError: a bad --runs / --seeds value or config, before anything trains.
  """
  priors_ = [r.strip() for r in runs.split(",") if r.strip()]
  if not priors_:
    raise UserError("--runs: no prior given (e.g. none,oracle)")
  try:
    seed_list = [int(x) for x in seeds.split(",") if x.strip()]
  except ValueError as e:
    raise UserError(f"--seeds: {seeds!r} is not a comma-separated list of integers") from e
  several = len(seed_list) > 1
  out = []
  for prior in priors_:
    for seed in seed_list or [None]:
      extra = [("csd.prior", prior)] + ([] if seed is None else [("train.seed", str(seed))])
      config = settings_lib.load_config(config_path, list(overrides) + extra)
      settings = extraction_settings.from_config(config)  # every error before any training
      out.append(Arm(run_name(prior, settings.train.seed, several), prior, config))
  return out


def run_one(arm: Arm, video_dir: pathlib.Path, video, workdir: pathlib.Path,
            progress: bool = True) -> dict:
  """Trains one arm (resuming from a checkpoint in `workdir`), scores it, draws its pictures.

  Raises:
    TrainingFailed: training diverged or produced no surface (the next arm still runs).
  """
  try:
    result = extract_command.run_extraction(arm.config, video_dir, workdir, progress=progress,
                                            video=video)
  except (loop.TrainingDiverged, outputs.NoSurface) as e:
    raise TrainingFailed(str(e)) from e
  run = {k: result.get(k) for k in ("steps", "train_seconds", "rollbacks", "metrics")}
  if video.gt is not None:
    run["novel_views"] = novel_views.score_run(workdir, video)
    if arm.prior == "oracle":
      save_csd_views(workdir, video, workdir / "csd_views.png")
  return run


def finished_run(workdir: pathlib.Path) -> dict | None:
  """A run folder's result if it finished (metrics.json written), else None."""
  path = workdir / "metrics.json"
  if not path.is_file():
    return None
  run = {}
  if (workdir / "run.json").is_file():  # written by the stage: steps, train_seconds, ...
    run = json.loads((workdir / "run.json").read_text())
  views = workdir / novel_views.RESULT_FILE
  if views.is_file():
    run["novel_views"] = json.loads(views.read_text())
  return {**run, "metrics": json.loads(path.read_text())}


def save_csd_views(workdir: pathlib.Path, video, path: pathlib.Path, frame: int = 0,
                   seed: int = 0) -> None:
  """PNG: 4 CSD views of `frame` by the trained model (top) and the oracle's ground truth (bottom).

  The views are drawn as a CSD step draws them (around the run's final canonical box, its
  csd settings), at one elevation and every pixel rendered.
  """
  settings = run_folder.load_settings(workdir)
  model, params = run_folder.restore_model(workdir, settings)
  motion, _, _ = run_folder.load_motion(workdir)
  csd = dataclasses.replace(settings.csd, elevation_range=(15.0, 15.0), pixels_per_view=0)
  cameras = csd_term.draw_cameras(jax.random.PRNGKey(seed), jnp.asarray(motion["aabb"]),
                                  video.num_frames, csd)._replace(frame=jnp.int32(frame))
  render = csd_term.make_view_renderer(model, settings.render.options(
      num_samples=csd.samples_per_ray(settings.render.num_samples)))
  size = (csd_settings.NUM_VIEWS, csd.resolution, csd.resolution, 3)
  images = np.asarray(jax.jit(render)(
      params, cameras, gradient.image_pixels(csd.resolution, csd_settings.NUM_VIEWS))).reshape(size)
  renderer = priors.ground_truth_renderer(video, supersample=csd.oracle.supersample)
  truth = renderer.render_views(frame, np.asarray(cameras.w2c), np.asarray(cameras.intrinsics),
                                csd.resolution)
  grid = np.concatenate([np.concatenate(list(images), 1), np.concatenate(list(truth), 1)], 0)
  zoom = max(1, 512 // grid.shape[1])  # nearest-neighbour blow-up for people
  grid = np.repeat(np.repeat(grid, zoom, 0), zoom, 1)
  files.save_png(path, (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))


def opposite_camera(w2c: np.ndarray, centre: np.ndarray) -> np.ndarray:
  """The camera (4, 4) turned 180 degrees about the world +Y axis through `centre`: the
  side a camera arc never saw."""
  turn = np.diag([-1.0, 1.0, -1.0, 1.0])  # rotation by 180 degrees about +Y
  to_centre, back = np.eye(4), np.eye(4)
  to_centre[:3, 3], back[:3, 3] = -centre, centre
  return np.asarray(w2c, np.float64) @ back @ turn @ to_centre


def save_comparison(video, runs: dict, path: pathlib.Path, frame: int | None = None,
                    size: int = 192) -> None:
  """PNG: the ground truth and each run's mesh at one frame, seen from the video's camera
  (left) and from the opposite, never-seen side (right); one row per mesh, the runs'
  meshes placed by the evaluation's alignment (metrics.json), grey shading.

  Args:
    video: a `data.video.Video` with ground truth.
    runs: {label: run folder with meshes.npz and metrics.json}.
    path: the PNG.
    frame: the frame shown (default: the middle one).
    size: pixels per panel.
  """
  gt = video.gt
  frame = video.num_frames // 2 if frame is None else int(frame)
  truth = np.asarray(gt.meshes.vertices[frame], np.float64)
  cams = [np.asarray(gt.w2c[frame], np.float64)]
  cams.append(opposite_camera(cams[0], 0.5 * (truth.min(0) + truth.max(0))))
  k = np.asarray(gt.intrinsics[frame], np.float64) * size / max(video.height, video.width)
  meshes = [("ground truth", truth, np.asarray(gt.meshes.faces))]
  for label, workdir in runs.items():
    workdir = pathlib.Path(workdir)
    if not (workdir / "meshes.npz").is_file() or not (workdir / "metrics.json").is_file():
      continue
    seq = assets.load_sequence_npz(workdir / "meshes.npz")
    align = np.asarray(json.loads((workdir / "metrics.json").read_text())["alignment"]["matrix"],
                       np.float64)
    verts = transforms_np.to_camera(seq.vertices[frame], align)  # the similarity, as a transform
    meshes.append((label, verts, np.asarray(seq.faces)))
  rows = []
  for _, verts, faces in meshes:
    panels = []
    for w2c in cams:
      panels.append(outputs.shade_mesh(transforms_np.to_camera(verts, w2c), faces, k, size, size,
                                       np.ones(3)))
    rows.append(np.concatenate(panels, 1))
  grid = np.concatenate(rows, 0)
  files.save_png(path, (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
  files.save_text(path.with_suffix(".txt"),
                  f"frame {frame}; rows: " + ", ".join(label for label, _, _ in meshes)
                  + "; left: the video's camera, right: the never-seen side\n")


def summarise(results: dict, groups: dict | None = None) -> tuple[dict, str]:
  """{run: {part/metric: value}} and a markdown table.

  Args:
    results: {run name: a run's result (its "metrics", "novel_views" and "train_seconds")}.
    groups: {label: [run names]}: adds a row "<label> (mean of n)" with the
      mean of each score over those runs (runs without metrics are skipped).
  """
  keys = [f"{part}/{name}" for part, name in HEADLINE] + [f"novel/{name}" for name in NOVEL]
  table = {}
  for run, result in results.items():
    metrics = result.get("metrics") or {}
    mean = metrics.get("mean", {})
    table[run] = {f"{part}/{name}": mean.get(part, {}).get(name) for part, name in HEADLINE}
    views = result.get("novel_views") or {}
    for name in NOVEL:
      table[run][f"novel/{name}"] = views.get(name)
    table[run]["train_seconds"] = result.get("train_seconds")
    table[run]["steps"] = result.get("steps")
    if result.get("error"):
      table[run]["error"] = result["error"]
  for label, runs in (groups or {}).items():
    rows = [table[r] for r in runs if r in table and table[r][keys[0]] is not None]
    if len(rows) < 2:
      continue
    table[f"{label} (mean of {len(rows)})"] = {
        k: (float(np.mean(values)) if values else None)
        for k in keys + ["train_seconds"]
        for values in [[row[k] for row in rows if row.get(k) is not None]]}
  header = ("| run | " + " | ".join(f"{p} {m}" for p, m in HEADLINE) + " | "
            + " | ".join(f"novel {m}" for m in NOVEL) + " | train s |")
  lines = [header, "|" + " --- |" * (len(keys) + 2)]
  for run, row in table.items():
    if row.get("error"):
      lines.append(f"| {run} | failed: {row['error']} |")
      continue
    cells = [("n/a" if row.get(k) is None else f"{row[k]:.4g}") for k in keys]
    secs = row.get("train_seconds")
    lines.append(f"| {run} | " + " | ".join(cells) + " | "
                 + ("n/a" if secs is None else f"{secs:.0f}") + " |")
  return table, "\n".join(lines) + "\n"


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      epilog="Override config fields with --config.<key>=<value>, e.g. "
             "--config.optim.root_pose_warmup_fraction=0.1 (every arm gets them)")
  parser.add_argument("--video", required=True, help="video folder with ground truth (gt/)")
  parser.add_argument("--out", required=True, help="folder of the runs and the summary")
  parser.add_argument("--config", required=True, help="config file (configs/extract_*.py)")
  parser.add_argument("--runs", default="none,oracle", help="comma-separated csd priors to train")
  parser.add_argument("--seeds", default="",
                      help="comma-separated training seeds (config.train.seed; default: the config's)")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  try:
    rest, overrides = settings_lib.split_overrides(argv)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  args = parser.parse_args(rest)
  out, video_dir = pathlib.Path(args.out), pathlib.Path(args.video)
  results, groups, failed = {}, {}, []
  try:
    runs = arms(args.config, overrides, args.runs, args.seeds)
    for arm in runs:
      groups.setdefault(arm.prior, []).append(arm.name)
    several = any(len(names) > 1 for names in groups.values())  # several seeds: their means
    video = video_lib.load_video(video_dir)
    for arm in runs:
      workdir = out / arm.name
      done = finished_run(workdir)
      if done is not None:
        print(f"== {arm.name}: {workdir} (finished earlier; read back)", flush=True)
        if video.gt is not None and "novel_views" not in done:  # stopped before them
          done["novel_views"] = novel_views.score_run(workdir, video)
        results[arm.name] = done
      else:
        print(f"== {arm.name}: {workdir}", flush=True)
        try:
          results[arm.name] = run_one(arm, video_dir, video, workdir, progress=not args.quiet)
        except TrainingFailed as e:  # an outcome to report (e.g. no surface), not bad input
          print(f"{arm.name} failed: {e}", file=sys.stderr, flush=True)
          results[arm.name] = {"error": str(e)}
          failed.append(arm.name)
      table, text = summarise(results, groups if several else None)
      out.mkdir(parents=True, exist_ok=True)
      files.save_json(out / "summary.json", table, indent=2)
      files.save_text(out / "summary.md", text)
      print(text, flush=True)
    if video.gt is not None:
      save_comparison(video, {name: out / name for name in results}, out / "compare.png")
      print(f"meshes side by side: {out / 'compare.png'}", flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if failed:
    print(f"error: {len(failed)} run(s) failed: {', '.join(failed)} (see summary.md)",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
