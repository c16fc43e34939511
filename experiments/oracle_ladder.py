r"""Where are the legs lost? Named variants of one extraction, scored on the limbs.

  python3 experiments/oracle_ladder.py --video DIR --out RUNS \
      --config configs/extract_demo_cpu.py [--variants iii_learned,i_gt_warp] \
      [--config.<key>=<value> ...]

Each variant is a set of config overrides on top of the config (and the
command line's own overrides, which every variant gets):

  rungs of the oracle ladder (how much of the deformation is given)
    i_gt_warp          the ground truth's own deformation (`render.warp=ground_truth`, root
                       pose held at the noise-free cameras): only the canonical field is learned,
                       the ceiling of the shape pipeline at this resolution and step budget
    ii_gt_bones        bones started at the rig's joint centroids (`init.bones=ground_truth`,
                       as many bones as the rig moves the surface with), skinning and motion learned
    iii_learned        everything learned (the config as it is)
  levers, one at a time: see `LEVERS` below (`--variants` names them; `all` runs every rung
  and lever), on rung (iii) or, with --on RUNG, on top of that rung's overrides (e.g. the
  shape pipeline's own levers with the deformation given: --on i_gt_warp).

Each variant trains into RUNS/<variant>/ through `animdreamer extract`'s own
entry point (the extraction stage, then its scores: metrics.json with the
whole-surface and the limb scores, comparison.png), and RUNS/summary.md gets
one row per variant: Chamfer, F@2%, limb recall@2%, limb F@2%, wall seconds.
Finished variants (their metrics.json present) are read back, not retrained.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

# The package of the checkout this script lives in (as bin/animdreamer does), not an installed one.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from animdreamer_jax import files  # noqa: E402
from animdreamer_jax.commands import extract as extract_command  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.errors import UserError  # noqa: E402
from animdreamer_jax.model import init as init_lib  # noqa: E402

RUNGS = {
    "i_gt_warp": {"render.warp": "ground_truth", "optim.root_pose_warmup_fraction": "1.0"},
    "ii_gt_bones": {"init.bones": "ground_truth"},
    "iii_learned": {},
}
LEVERS = {
    "sharp_0.005": {"render.final_beta": "0.005"},
    "sharp_0.01": {"render.final_beta": "0.01"},
    "neus": {"render.density": "neus"},
    "eikonal_x0.1": {"loss.weights.eikonal": "1e-4"},
    "samples_x2": {"render.num_samples": "64"},
    "bones_24": {"model.num_bones": "24"},
    "steps_x2": {"train.iters_per_round": "120"},
    "rays_x2": {"data.pairs_per_batch": "16"},
    "lr_x3": {"optim.lr": "1.5e-3"},
    "flow_x4": {"loss.weights.flow": "2.0"},
}
VARIANTS = {**RUNGS, **LEVERS}


def variant_names(spec: str) -> list[str]:
  names = list(VARIANTS) if spec == "all" else [n for n in spec.split(",") if n]
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise UserError(f"--variants: unknown {unknown}; known: {list(VARIANTS)} or 'all'")
  return names


def summary_row(name: str, metrics: dict, seconds: float | None) -> dict:
  whole, limbs = metrics["mean"]["all"], metrics["mean"].get("limbs", {})
  return {"variant": name, "chamfer": whole["chamfer"], "f2": whole["fscore@2%"],
          "limb_recall2": limbs.get("recall@2%"), "limb_f2": limbs.get("fscore@2%"),
          "seconds": seconds}


def markdown(rows: list[dict], video: str, config: str) -> str:
  def fmt(value, spec):
    return "-" if value is None else format(value, spec)
  lines = [f"video `{video}`, config `{config}`", "",
           "| variant | Chamfer | F@2% | limb recall@2% | limb F@2% | wall s |",
           "| --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['variant']} | {fmt(r['chamfer'], '.4f')} | {fmt(r['f2'], '.1f')} | "
                 f"{fmt(r['limb_recall2'], '.1f')} | {fmt(r['limb_f2'], '.1f')} | "
                 f"{fmt(r['seconds'], '.0f')} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--video", required=True, help="video folder with gt/")
  parser.add_argument("--out", required=True, help="folder of the variants' run folders")
  parser.add_argument("--config", required=True, help="extraction config file")
  parser.add_argument("--on", default="iii_learned", choices=sorted(RUNGS),
                      help="the rung the levers are applied on (default iii_learned)")
  parser.add_argument("--variants", default="iii_learned,ii_gt_bones,i_gt_warp",
                      help=f"comma-separated names or 'all' (known: {', '.join(VARIANTS)})")
  args, extra = parser.parse_known_args(argv)
  try:
    overrides = list(extra)  # --config.<key>=<value> strings, checked by load_config
    names = variant_names(args.variants)
    video = video_lib.load_video(args.video)
    if video.gt is None:
      raise UserError(f"{args.video}: no gt/ (the ladder scores against ground truth)")
    out = pathlib.Path(args.out)
    rows = []
    for name in names:
      on_rung = name in LEVERS and args.on != "iii_learned"
      label = f"{args.on}+{name}" if on_rung else name
      workdir = out / label
      metrics_path = workdir / "metrics.json"
      seconds = None
      if not metrics_path.is_file():
        start = time.time()
        variant = [(k, v) for k, v in {**(RUNGS[args.on] if on_rung else {}),
                                        **VARIANTS[name]}.items()]
        if name == "ii_gt_bones" and not any("model.num_bones" in o for o in overrides):
          num_bones = init_lib.moving_joints(video.gt.meshes.skin_weights)
          variant.append(("model.num_bones", str(num_bones)))
        extract_command.run_extraction(args.config, args.video, workdir,
                                       overrides=overrides + variant, video=video)
        seconds = time.time() - start
        files.save_json(workdir / "ladder.json", {"variant": label, "seconds": seconds,
                                                  "overrides": dict(variant)})
      elif (workdir / "ladder.json").is_file():
        seconds = json.loads((workdir / "ladder.json").read_text()).get("seconds")
      rows.append(summary_row(label, json.loads(metrics_path.read_text()), seconds))
      text = markdown(rows, args.video, args.config)
      files.save_text(out / "summary.md", text)
      print(text, flush=True)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
