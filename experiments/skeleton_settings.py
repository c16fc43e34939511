"""Skeleton construction settings against the ground-truth rig, on finished runs.

  python3 experiments/skeleton_settings.py --runs RUN:VIDEO[,RUN:VIDEO...] --out TABLE.md \
      [--variants default,alpha_0,alpha_0.5,...]

Each run's model is sampled once (`stages.skeleton_of_run.bone_samples`), then
every variant's skeleton is built in memory (`skeleton.construct.build`) and
scored like `animdreamer eval` scores skeleton.json (`eval.run_scores.rig_scores_of_run`,
through the alignment recorded in the run's metrics.json). Nothing in the run
folders changes. Prints and writes a Markdown table: joints, depth, pruned,
CD-J2J / J2B / B2B (% of the diagonal), edge precision / recall, share inside.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.eval import run_scores  # noqa: E402
from animdreamer_jax.skeleton import construct  # noqa: E402
from animdreamer_jax.stages import run_folder  # noqa: E402
from animdreamer_jax.stages import skeleton_of_run  # noqa: E402

DEFAULT = construct.SkeletonSettings()
VARIANTS = {
    "default": {},
    "alpha_0": {"alpha": 0.0},
    "alpha_0.5": {"alpha": 0.5},
    "alpha_1": {"alpha": 1.0},
    "root_central": {"root": "central"},
    "min_mass_0.02": {"min_mass": 0.02},
    "min_mass_0.005": {"min_mass": 0.005},
    "max_outside_0.02": {"max_outside": 0.02},
    "merge_0.01": {"max_merge_error": 0.01},
    "merge_any": {"max_merge_error": float("inf")},
}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", required=True, help="RUN:VIDEO pairs, comma-separated")
  parser.add_argument("--out", required=True, help="Markdown table to write")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="names from VARIANTS")
  args = parser.parse_args(argv)
  variants = args.variants.split(",")
  for name in variants:
    if name not in VARIANTS:
      parser.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
  rows = ["| run | variant | joints | depth | pruned | min mass % | CD-J2J | CD-J2B | CD-B2B | edge P | edge R | inside |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for pair in args.runs.split(","):
    run, video_dir = pair.split(":")
    run_dir = pathlib.Path(run)
    settings = run_folder.load_settings(run_dir)
    model, params = run_folder.restore_model(run_dir, settings)
    rest = run_folder.load_npz(run_dir / "rest.npz")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    gt = video_lib.load_video(video_dir).gt
    samples = skeleton_of_run.bone_samples(model, params, np.asarray(rest["vertices"], np.float32),
                                           DEFAULT)
    for name in variants:
      skel = construct.build(samples, dataclasses.replace(DEFAULT, **VARIANTS[name]))
      r = run_scores.rig_scores_of_run(run_dir, gt, metrics["alignment"]["matrix"], skel=skel)
      m = r["mean"]
      row = (f"| {run_dir.name} | {name} | {skel.num_joints} | {skel.depth()} | {len(skel.pruned)} | "
             f"{100 * skel.skin_mass.min():.2f} | "
             f"{m['cd_j2j_pct_diag']:.2f} | {m['cd_j2b_pct_diag']:.2f} | {m['cd_b2b_pct_diag']:.2f} | "
             f"{r['edge_precision']:.2f} | {r['edge_recall']:.2f} | "
             f"{100 * r['inside_rest_mesh']:.0f}% |")
      print(row, flush=True)
      rows.append(row)
  pathlib.Path(args.out).write_text("\n".join(rows) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
