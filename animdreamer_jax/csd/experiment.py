r"""Extraction with and without CSD on one video, same config and steps; scores side by side.

  python3 -m animdreamer_jax.csd.experiment --video DIR --out RUNS \
      --config configs/extract_demo_cpu.py [--config.csd.weight=...] [--runs none,oracle]

For each prior in --runs it trains into RUNS/<prior>/ with the extraction
trainer (train/loop.py), CSD mixed in through `csd.hook.install`, and writes
RUNS/summary.json (+ .md): Chamfer and F-score@2% overall and on the seen /
never-seen ground-truth surface (animdreamer_jax.eval, via the trainer's
metrics.json), plus RUNS/<prior>/csd_views.png: the 4 CSD views of a frame next
to the oracle's ground-truth renders. Until the trainer's config carries a
`csd` section itself, this adds `csd_config()` to the loaded config.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

from animdreamer_jax.errors import UserError

HEADLINE = (("all", "chamfer"), ("all", "fscore@2%"), ("unseen", "chamfer"),
            ("unseen", "fscore@2%"), ("seen", "chamfer"), ("seen", "fscore@2%"))


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


def run_one(config, video_dir: pathlib.Path, workdir: pathlib.Path, progress: bool = True) -> dict:
  """Trains (resuming if RUN has a checkpoint) and writes the trainer's outputs."""
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
  state, info = loop.train(trainer, resume=False, progress=progress)
  info["train_seconds"] = time.time() - start
  outputs = extract_outputs.write_outputs(trainer, state, workdir, progress=progress)
  if installed and str(config.csd.prior) == "oracle":
    save_csd_views(trainer, state, workdir / "csd_views.png")
  return {**info, **outputs, "csd": installed}


def save_csd_views(trainer, state, path: pathlib.Path, frame: int = 0, seed: int = 0) -> None:
  """PNG: the 4 CSD views of `frame` (top) and the oracle's ground truth (bottom)."""
  import jax  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import csd_step  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import hook  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import prior_interface  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import extract_outputs  # pylint: disable=g-import-not-at-top
  config = trainer.config
  settings = csd_step.CsdSettings.from_config(config.csd, int(config.render.num_samples))
  import dataclasses  # pylint: disable=g-import-not-at-top
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


def summarise(results: dict) -> tuple[dict, str]:
  """{prior: {part/metric: value}} and a markdown table."""
  table = {}
  for prior, result in results.items():
    metrics = result.get("metrics") or {}
    mean = metrics.get("mean", {})
    table[prior] = {f"{part}/{name}": mean.get(part, {}).get(name) for part, name in HEADLINE}
    table[prior]["train_seconds"] = result.get("train_seconds")
    table[prior]["steps"] = result.get("steps")
  header = "| run | " + " | ".join(f"{p} {m}" for p, m in HEADLINE) + " | train s |"
  lines = [header, "|" + " --- |" * (len(HEADLINE) + 2)]
  for prior, row in table.items():
    cells = [("n/a" if row[f"{p}/{m}"] is None else f"{row[f'{p}/{m}']:.4g}") for p, m in HEADLINE]
    secs = row["train_seconds"]
    lines.append(f"| {prior} | " + " | ".join(cells) + f" | {secs:.0f} |")
  return table, "\n".join(lines) + "\n"


def main(argv=None) -> int:
  from animdreamer_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  argv = sys.argv[1:] if argv is None else list(argv)
  rest, overrides = config_lib.split_overrides(argv)
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--video", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", required=True)
  parser.add_argument("--runs", default="none,oracle", help="comma-separated csd priors to train")
  args = parser.parse_args(rest)
  out = pathlib.Path(args.out)
  results = {}
  try:
    for prior in [r.strip() for r in args.runs.split(",") if r.strip()]:
      config = load_config(args.config, list(overrides) + [("csd.prior", prior)])
      print(f"== {prior}: {out / prior}", flush=True)
      results[prior] = run_one(config, pathlib.Path(args.video), out / prior)
      table, text = summarise(results)
      out.mkdir(parents=True, exist_ok=True)
      (out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
      (out / "summary.md").write_text(text)
      print(text, flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
