r"""Extraction with and without CSD on one video, same config and steps; scores side by side.

  python3 -m animdreamer_jax.csd.experiment --video DIR --out RUNS \
      --config configs/extract_bench_cpu_csd_oracle.py [--config.csd.weight=...] \
      [--runs none,oracle] [--seeds 0,1]

For each prior in --runs (and each training seed in --seeds) it trains into
RUNS/<prior>/ (RUNS/<prior>_s<seed>/ with several seeds) with the extraction
trainer (train/loop.py), CSD mixed in through `csd.hook.install`, and writes
RUNS/summary.json (+ .md): Chamfer and F-score@2% overall and on the seen /
never-seen ground-truth surface (animdreamer_jax.eval, via the trainer's
metrics.json), one row per run and, with several seeds, the mean over seeds
of each prior (the seed changes initialisation, batches and CSD views; one
seed's difference can be noise). Oracle runs also leave
RUNS/<run>/csd_views.png: the 4 CSD views of a frame next to the oracle's
ground-truth renders, and RUNS/compare.png shows the ground truth and every
run's mesh from the video's camera and from the never-seen side. Finished
runs (their metrics.json present) are read back, not retrained, so an
interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

from animdreamer_jax.errors import UserError

HEADLINE = (("all", "chamfer"), ("all", "fscore@2%"), ("unseen", "chamfer"),
            ("unseen", "fscore@2%"), ("seen", "chamfer"), ("seen", "fscore@2%"))
# Novel-view scores (`novel_views`): PSNR / silhouette IoU over 4 views around the
# animal (and "_opposite": of the view opposite the video's camera alone), with the
# model placed by the evaluation's registration or ("world_") by none.
NOVEL_SCORES = ("psnr", "iou", "psnr_opposite", "iou_opposite")
NOVEL = ("psnr", "iou", "world_psnr", "world_iou")


def load_config(path: str, overrides):
  """The extraction config with a `csd` section, overrides applied (locked)."""
  from animdreamer_jax.csd import config as csd_config_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.load_config_file(path)
  if "csd" not in config:
    with config.unlocked():
      config.csd = csd_config_lib.csd_config()
    config.lock()
  return config_lib.apply_overrides(config, overrides)


class TrainingFailed(UserError):
  """A run that trained but left nothing to score (e.g. no surface): reported, not fatal."""


def run_one(config, video_dir: pathlib.Path, workdir: pathlib.Path, progress: bool = True) -> dict:
  """Trains (resuming if RUN has a checkpoint) and writes the trainer's outputs.

  Raises:
    TrainingFailed: training diverged or produced no surface (the next arm still runs).
  """
  from animdreamer_jax.csd import hook  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import extract_outputs  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import loop  # pylint: disable=g-import-not-at-top
  video = video_lib.load_video(video_dir)
  if hasattr(loop, "enable_compilation_cache") and "compilation_cache" in config.train:
    loop.enable_compilation_cache(str(config.train.compilation_cache))
  trainer = loop.Trainer(config, video, workdir, source=str(video_dir))
  installed = hook.install(trainer)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.save_config(config, workdir / "config.json")
  start = time.time()
  try:
    state, info = loop.train(trainer, resume=False, progress=progress)
    info["train_seconds"] = time.time() - start
    outputs = extract_outputs.write_outputs(trainer, state, workdir, progress=progress)
  except (loop.TrainingDiverged, extract_outputs.NoSurface) as e:
    raise TrainingFailed(str(e)) from e
  if installed and str(config.csd.prior) == "oracle":
    save_csd_views(trainer, state, workdir / "csd_views.png")
  metrics = outputs.get("metrics")
  if metrics and metrics.get("alignment", {}).get("matrix") is not None:
    # Two registrations of the model: the evaluation's (its mesh fitted to the ground
    # truth) and none ("world": the frame the video's cameras were given in).
    scores, picture = novel_views(trainer, state, np.asarray(metrics["alignment"]["matrix"]))
    world, world_picture = novel_views(trainer, state, np.eye(4))
    scores.update({f"world_{k}": v for k, v in world.items() if k in NOVEL_SCORES})
    extract_outputs.save_json(workdir / "novel_views.json", scores)
    for name, image in (("novel_views.png", picture), ("novel_views_world.png", world_picture)):
      zoom = max(1, 512 // image.shape[1])
      extract_outputs.save_png(workdir / name, (np.repeat(np.repeat(image, zoom, 0), zoom, 1)
                                                * 255 + 0.5).astype(np.uint8))
    outputs["novel_views"] = scores
  return {**info, **outputs, "csd": installed}


def photometric_scores(images: np.ndarray, opacity: np.ndarray, truth: np.ndarray,
                       truth_mask: np.ndarray) -> dict:
  """PSNR (dB, images in [0, 1]) and silhouette IoU (opacity > 0.5 vs the true mask).

  Args:
    images, truth: (N, H, W, 3) renders and ground truth over the same background.
    opacity: (N, H, W) the renders' opacity; truth_mask: (N, H, W) bool.
  """
  mse = float(np.mean((np.asarray(images, np.float64) - np.asarray(truth, np.float64)) ** 2))
  pred = np.asarray(opacity) > 0.5
  union = np.logical_or(pred, truth_mask).sum()
  iou = float(np.logical_and(pred, truth_mask).sum() / union) if union else 1.0
  return {"psnr": float(-10.0 * np.log10(max(mse, 1e-12))), "iou": iou}


def novel_views(trainer, state, object_to_world: np.ndarray, frames=None, resolution: int = 64,
                elevation: float = 15.0, fov: float = 40.0
                ) -> tuple[dict, np.ndarray]:
  """The model against the ground truth from 4 views around the animal at a few frames.

  The views orbit the ground-truth mesh of frame t at one elevation, azimuths 0, 90,
  180 and 270 degrees from the video's camera (180: the side a camera arc never saw),
  framing its bounding sphere; the model is seen from the same places through the
  evaluation's registration `object_to_world` (model object frame -> world, the one
  metrics.json reports), so runs with and without CSD are judged alike. The ground
  truth is lit as the video lit it (the model's colours are the video's pixels).

  Returns:
    ({"psnr", "iou", "psnr_opposite", "iou_opposite"}, picture (2 R x 4 R x 3 per frame
    row pair: model above, ground truth below)).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import cameras as cameras_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import csd_step  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import prior_interface  # pylint: disable=g-import-not-at-top
  config, video = trainer.config, trainer.video
  frames = (np.linspace(0, video.num_frames - 1, 4).round().astype(int) if frames is None
            else np.asarray(frames))
  align = np.asarray(object_to_world, np.float64)
  scale = float(np.cbrt(np.linalg.det(align[:3, :3])))
  settings = csd_step.CsdSettings(resolution=resolution,
                                  num_samples=int(config.render.num_samples),
                                  importance_samples=int(config.render.eval_importance_samples))
  renders = {}
  for background in (1.0, 0.0):
    render = csd_step.make_view_renderer(
        trainer.model, dataclasses.replace(settings, background=background),
        **csd_step.render_settings(config))
    renders[background] = jax.jit(render)
  renderer = prior_interface.ground_truth_renderer(video, supersample=2, lighting="video")
  uv = csd_step.image_pixels(resolution, 4)
  intrinsics = np.asarray(cameras_lib.pinhole_intrinsics(resolution, fov), np.float64)
  scores, rows = [], []
  for t in frames:
    verts = np.asarray(video.gt.meshes.vertices[t], np.float64)
    centre = 0.5 * (verts.min(0) + verts.max(0))
    radius = float(np.linalg.norm(verts - centre, axis=1).max())
    video_w2c = np.asarray(video.gt.w2c[t], np.float64)
    eye = -video_w2c[:3, :3].T @ video_w2c[:3, 3] - centre
    azimuth0 = np.degrees(np.arctan2(eye[0], eye[2]))
    distance = 1.15 * radius / np.sin(np.radians(fov / 2))
    world = np.asarray(cameras_lib.orbit_w2c(
        jnp.float32(elevation), jnp.asarray(azimuth0 + np.arange(4) * 90.0, jnp.float32),
        jnp.float32(distance), jnp.asarray(centre, jnp.float32)), np.float64)
    model_w2c = world @ align
    model_w2c[:, :3, :] /= scale  # a similarity divided by its scale: the same image
    near_far = np.tile([[max(distance - 1.3 * radius, 1e-2), distance + 1.3 * radius]],
                       (4, 1)) / scale
    cams = cameras_lib.CsdCameras(
        w2c=jnp.asarray(model_w2c, jnp.float32),
        intrinsics=jnp.asarray(np.tile(intrinsics, (4, 1)), jnp.float32),
        near_far=jnp.asarray(near_far, jnp.float32), mvdream=jnp.zeros((4, 16)),
        frame=jnp.int32(t), root_pose=jnp.eye(4), elevation=jnp.float32(elevation),
        azimuth=jnp.zeros(4), fov=jnp.float32(fov), distance=jnp.float32(distance))
    shape = (4, resolution, resolution, 3)
    white = np.asarray(renders[1.0](state.params, cams, uv)).reshape(shape)
    black = np.asarray(renders[0.0](state.params, cams, uv)).reshape(shape)
    opacity = 1.0 - (white - black).mean(-1)
    truth = renderer.render_views(int(t), world, np.tile(intrinsics, (4, 1)), resolution)
    renderer.background = np.zeros(3)
    truth_black = renderer.render_views(int(t), world, np.tile(intrinsics, (4, 1)), resolution)
    renderer.background = np.ones(3)
    mask = (truth - truth_black).mean(-1) < 0.5
    scores.append((photometric_scores(white, opacity, truth, mask),
                   photometric_scores(white[2:3], opacity[2:3], truth[2:3], mask[2:3])))
    rows += [np.concatenate(list(white), 1), np.concatenate(list(truth), 1)]
  out = {"psnr": float(np.mean([a["psnr"] for a, _ in scores])),
         "iou": float(np.mean([a["iou"] for a, _ in scores])),
         "psnr_opposite": float(np.mean([b["psnr"] for _, b in scores])),
         "iou_opposite": float(np.mean([b["iou"] for _, b in scores])),
         "frames": [int(t) for t in frames], "resolution": resolution}
  return out, np.clip(np.concatenate(rows, 0), 0, 1)


def save_csd_views(trainer, state, path: pathlib.Path, frame: int = 0, seed: int = 0) -> None:
  """PNG: the 4 CSD views of `frame` (top) and the oracle's ground truth (bottom)."""
  import jax  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import csd_step  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import hook  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import prior_interface  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import extract_outputs  # pylint: disable=g-import-not-at-top
  config = trainer.config
  settings = csd_step.CsdSettings.from_config(config.csd, int(config.render.num_samples))
  settings = dataclasses.replace(settings, fixed_frame=frame, elevation_range=(15.0, 15.0))
  render = csd_step.make_view_renderer(trainer.model, settings,
                                       **csd_step.render_settings(config))
  params = state.params
  cams = csd_step.draw_cameras(trainer.model, params, jax.random.PRNGKey(seed), state.aux["aabb"],
                               trainer.video.num_frames, settings)
  uv = csd_step.image_pixels(settings.resolution, settings.num_views)
  images = np.asarray(jax.jit(render)(params, cams, uv)).reshape(
      settings.num_views, settings.resolution, settings.resolution, 3)
  renderer = prior_interface.ground_truth_renderer(trainer.video,
                                                   **hook.oracle_render_options(config.csd))
  alignment = getattr(trainer, "csd_alignment", None)  # the oracle's last registration
  if alignment:
    renderer.set_alignment(np.asarray(alignment["matrix"]))
  w2c = np.asarray(renderer.world_cameras(cams))
  truth = renderer.render_views(frame, w2c, np.asarray(cams.intrinsics), settings.resolution)
  grid = np.concatenate([np.concatenate(list(images), 1), np.concatenate(list(truth), 1)], 0)
  zoom = max(1, 512 // grid.shape[1])  # nearest-neighbour blow-up for people
  grid = np.repeat(np.repeat(grid, zoom, 0), zoom, 1)
  extract_outputs.save_png(path, (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))


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
  from animdreamer_jax import assets  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import extract_outputs  # pylint: disable=g-import-not-at-top
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
    verts = np.asarray(seq.vertices[frame], np.float64) @ align[:3, :3].T + align[:3, 3]
    meshes.append((label, verts, np.asarray(seq.faces)))
  rows = []
  for _, verts, faces in meshes:
    panels = []
    for w2c in cams:
      cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
      image, _ = extract_outputs.shade_mesh(cam, faces, k, size, size, np.ones(3))
      panels.append(image)
    rows.append(np.concatenate(panels, 1))
  grid = np.concatenate(rows, 0)
  extract_outputs.save_png(path, (np.clip(grid, 0, 1) * 255 + 0.5).astype(np.uint8))
  (path.with_suffix(".txt")).write_text(
      f"frame {frame}; rows: " + ", ".join(label for label, _, _ in meshes)
      + "; left: the video's camera, right: the never-seen side\n")


def run_name(prior: str, seed: int, several_seeds: bool) -> str:
  """RUNS/<run>: the prior's name, with "_s<seed>" when several seeds are trained."""
  return f"{prior}_s{seed}" if several_seeds else prior


def summarise(results: dict, groups: dict | None = None) -> tuple[dict, str]:
  """{run: {part/metric: value}} and a markdown table.

  Args:
    results: {run name: run_one's result (its "metrics" and "train_seconds")}.
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


def finished_run(workdir: pathlib.Path) -> dict | None:
  """A run folder's result if it finished (metrics.json written), else None."""
  path = workdir / "metrics.json"
  if not path.is_file():
    return None
  run = {}
  if (workdir / "train_info.json").is_file():
    run = json.loads((workdir / "train_info.json").read_text())
  views = workdir / "novel_views.json"
  if views.is_file():
    run["novel_views"] = json.loads(views.read_text())
  return {**run, "metrics": json.loads(path.read_text())}


def main(argv=None) -> int:
  from animdreamer_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--video", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", required=True)
  parser.add_argument("--runs", default="none,oracle", help="comma-separated csd priors to train")
  parser.add_argument("--seeds", default="",
                      help="comma-separated training seeds (config.train.seed; default: the config's)")
  args = parser.parse_args(rest)
  out = pathlib.Path(args.out)
  results, groups, failed = {}, {}, []
  try:
    priors = [r.strip() for r in args.runs.split(",") if r.strip()]
    try:
      seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
      raise UserError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
    several = len(seeds) > 1
    for prior in priors:
      for seed in seeds or [None]:
        extra = [("csd.prior", prior)] + ([] if seed is None else [("train.seed", str(seed))])
        config = load_config(args.config, list(overrides) + extra)
        name = run_name(prior, int(config.train.seed), several)
        groups.setdefault(prior, []).append(name)
        workdir = out / name
        done = finished_run(workdir)
        if done is not None:
          print(f"== {name}: {workdir} (finished earlier; read back)", flush=True)
          results[name] = done
        else:
          print(f"== {name}: {workdir}", flush=True)
          try:
            results[name] = run_one(config, pathlib.Path(args.video), workdir)
            save_train_info(workdir, results[name])
          except TrainingFailed as e:  # an outcome to report (e.g. no surface), not bad input
            print(f"{name} failed: {e}", file=sys.stderr, flush=True)
            results[name] = {"error": str(e)}
            failed.append(name)
        table, text = summarise(results, groups if several else None)
        out.mkdir(parents=True, exist_ok=True)
        (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
        (out / "summary.md").write_text(text)
        print(text, flush=True)
    from animdreamer_jax.data import video as video_lib  # pylint: disable=g-import-not-at-top
    video = video_lib.load_video(args.video)
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


def save_train_info(workdir: pathlib.Path, result: dict) -> None:
  """train_info.json: the run's steps and training time (read back by `finished_run`)."""
  info = {k: result.get(k) for k in ("steps", "train_seconds", "rollbacks")}
  (workdir / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
  sys.exit(main())
