r"""The generation benchmark and the paper's ablations at CPU scale, one table.

Each variant is one `animdreamer generate` of the same source run with the
same config and budget, changed only by its overrides (`VARIANTS`), scored
against the target video's ground truth: Chamfer, F@2%, limb recall@2% and
limb F@2%, the rig's CD-J2J, and how well the source's motion was kept (joint
drift, bone-length variation). A finished variant is read back, not rerun.
`--reference RUN` adds a row for an extraction of the target from its own video
(same budget): what generation is compared with.

  python3 experiments/generation_ablation.py --run runs/bench/qfox.run \
      --target runs/bench/qwolf_walk_orbit --out runs/gen \
      --config configs/generate_bench_cpu_oracle.py --reference runs/bench/qwolf.run --source-row \
      [--variants full,no_skel,no_bone,no_skel_no_bone,canonical,start_bones] [--video V]

Writes OUT/<variant>/ (run folders) and OUT/summary.md, OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from animdreamer_jax.commands import generate  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.eval import run_scores  # noqa: E402

VARIANTS = {
    "full": [],
    "no_skel": [("loss.weights.skeleton", "0")],
    "no_bone": [("loss.weights.bone_inside", "0")],
    "no_skel_no_bone": [("loss.weights.skeleton", "0"), ("loss.weights.bone_inside", "0")],
    "canonical": [("generate.warp", "false")],
    "start_bones": [("generate.start", "bones")],
}
COLUMNS = ("chamfer", "F@2%", "limb recall@2%", "limb F@2%", "CD-J2J %", "joint drift",
           "bone-length var.", "wall min")


def row(metrics: dict, wall_seconds) -> dict:
  mean = metrics["mean"]["all"]
  kept = metrics.get("motion_kept", {})
  limbs = metrics["mean"].get("limbs", {})
  rig = (metrics.get("rig") or {}).get("mean", {})
  return {"chamfer": mean.get("chamfer"), "F@2%": mean.get("fscore@2%"),
          "limb recall@2%": limbs.get("recall@2%"), "limb F@2%": limbs.get("fscore@2%"),
          "CD-J2J %": rig.get("cd_j2j_pct_diag"), "joint drift": kept.get("joint_drift"),
          "bone-length var.": kept.get("bone_length_variation"),
          "wall min": None if wall_seconds is None else wall_seconds / 60.0}


def fmt(value) -> str:
  if value is None:
    return "-"
  return f"{value:.4f}" if abs(value) < 1 else f"{value:.1f}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--run", required=True)
  parser.add_argument("--target", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--config", required=True)
  parser.add_argument("--reference", default=None)
  parser.add_argument("--video", default=None)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--source-row", action="store_true",
                      help="add the source run itself, scored against the target")
  args = parser.parse_args(argv)
  names = [n.strip() for n in args.variants.split(",") if n.strip()]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    print(f"error: --variants: unknown {', '.join(unknown)}; use {', '.join(VARIANTS)}",
          file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  rows = {}
  if args.reference:
    ref = pathlib.Path(args.reference)
    metrics = json.loads((ref / "metrics.json").read_text())
    wall = json.loads((ref / "run.json").read_text()).get("wall_seconds")
    rows["reference: extract the target from its own video"] = row(metrics, wall)
  target = video_lib.load_video(args.target)
  if args.source_row:
    # The source run as it is, scored against the target: what generation starts from.
    copy = out / "source_as_is"
    if not (copy / "metrics.json").is_file():
      shutil.copytree(args.run, copy, dirs_exist_ok=True,
                      ignore=shutil.ignore_patterns("checkpoints*", "tensorboard", "metrics.json"))
      run_scores.score_run(copy, target)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics["motion_kept"] = generate.motion_kept_of(pathlib.Path(args.run), pathlib.Path(args.run))
    rows["source run as it is (no generation)"] = row(metrics, None)
  for name in names:
    workdir = out / name
    if not (workdir / "metrics.json").is_file() or not (workdir / "run.json").is_file():
      t0 = time.time()
      print(f"== {name}", flush=True)
      generate.run_generation(args.config, args.run, workdir, target=args.target, video=args.video,
                              overrides=VARIANTS[name])
      print(f"   {time.time() - t0:.0f} s", flush=True)
    metrics = json.loads((workdir / "metrics.json").read_text())
    # Cheap, so always recomputed (a run scored by an earlier definition is brought up to date).
    metrics["motion_kept"] = generate.motion_kept_of(pathlib.Path(args.run), workdir)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    wall = json.loads((workdir / "run.json").read_text()).get("wall_seconds")
    rows[name] = row(metrics, wall)
  lines = ["| variant | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
  for name, values in rows.items():
    lines.append(f"| {name} | " + " | ".join(fmt(values[c]) for c in COLUMNS) + " |")
  table = "\n".join(lines)
  (out / "summary.md").write_text(table + "\n")
  (out / "summary.json").write_text(json.dumps(rows, indent=1))
  print(table)
  return 0


if __name__ == "__main__":
  sys.exit(main())
