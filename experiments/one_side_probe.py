"""Per-round diagnostics of the first rounds of an extraction (the one-side collapse).

  python3 experiments/one_side_probe.py --video VIDEO --config configs/extract_bench_cpu.py \
      --rounds 3 --out PROBE.json [--config.key=value ...]

Trains with the product's plan and trainer (the same steps and schedules as
`animdreamer extract` with that config: the schedules keep the config's full
length) and stops after --rounds rounds. After every round it records what
tells a collapsing surface from a forming one:
  proxy_vertices, sdf_min, inside_share  the canonical SDF on the proxy grid,
  beta                                   the density's VolSDF beta,
  root_to_prior_deg / root_to_gt_deg     mean and max rotation angle between the
                                         learned root poses and the video's
                                         (noisy) cameras / the exact cameras,
  root_spin_deg                          mean rotation between consecutive
                                         frames' root poses minus the exact one,
  root_relative_deg                      mean over all frame pairs (i, j) of the angle
                                         between R_i R_j^T and the exact one: the
                                         error a global rotation of the object
                                         frame (a gauge freedom) leaves unchanged.
Losses per step are in the run's TensorBoard. Prints one line per round and
writes the list as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from animdreamer_jax import settings as settings_lib  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.stages.extraction import plan as plan_lib  # noqa: E402
from animdreamer_jax.stages.extraction import settings as settings_mod  # noqa: E402
from animdreamer_jax.train import loop  # noqa: E402


def rotation_angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Angle of a_i^T b_i for (T, 3, 3) rotations, degrees."""
  rel = np.einsum("tji,tjk->tik", a, b)
  cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)
  return np.degrees(np.arccos(cos))


def relative_error_deg(rotations: np.ndarray, exact: np.ndarray) -> float:
  """Mean over frame pairs of angle((R_i R_j^T)^T (E_i E_j^T)) in degrees (gauge-invariant)."""
  rel = np.einsum("iab,jcb->ijac", rotations, rotations)
  rel_exact = np.einsum("iab,jcb->ijac", exact, exact)
  t = rotations.shape[0]
  angles = rotation_angles_deg(rel.reshape(t * t, 3, 3), rel_exact.reshape(t * t, 3, 3))
  return float(angles.reshape(t, t)[np.triu_indices(t, 1)].mean())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--video", required=True)
  parser.add_argument("--config", required=True)
  parser.add_argument("--rounds", type=int, default=3, help="stop after this many rounds")
  parser.add_argument("--out", required=True, help="JSON file; the run folder is OUT without .json")
  settings_lib.accept_overrides(parser)
  args = parser.parse_args(argv)
  config = settings_lib.load_config(args.config, args.config_overrides)
  settings = settings_mod.from_config(config)
  video = video_lib.load_video(args.video)
  workdir = pathlib.Path(args.out).with_suffix(".run")
  shutil.rmtree(workdir, ignore_errors=True)
  plan = plan_lib.build_plan(settings, video, source=args.video)
  trainer = loop.Trainer(plan, settings.train, workdir)
  prior = video.w2c[:, :3, :3]
  exact = video.gt.w2c[:, :3, :3] if video.gt is not None else None
  model = plan.model
  rows = []

  def on_round(state, round_index, stats):
    root = trainer.root_poses(state.params)[:, :3, :3]
    row = {"round": round_index, **stats,
           "beta": float(np.asarray(model.apply(state.params, method="beta"))),
           "root_to_prior_deg": float(rotation_angles_deg(root, prior).mean()),
           "root_to_prior_max_deg": float(rotation_angles_deg(root, prior).max())}
    if exact is not None:
      to_gt = rotation_angles_deg(root, exact)
      step_model = rotation_angles_deg(root[:-1], root[1:])
      step_exact = rotation_angles_deg(exact[:-1], exact[1:])
      row.update(root_to_gt_deg=float(to_gt.mean()), root_to_gt_max_deg=float(to_gt.max()),
                 root_spin_deg=float(np.abs(step_model - step_exact).mean()),
                 root_relative_deg=relative_error_deg(root, exact))
    rows.append(row)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)
    return round_index >= args.rounds

  loop.train(trainer, progress=False, on_round=on_round)
  pathlib.Path(args.out).write_text(json.dumps(rows, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
