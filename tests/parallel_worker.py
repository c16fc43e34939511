"""Runs in a subprocess with several (forced) CPU devices for tests/test_parallel.py.

  python3 tests/parallel_worker.py steps VIDEO OUT.json   one step of each kind on 1 and on 2
                                                          devices; settings that do not split
  python3 tests/parallel_worker.py extract VIDEO RUN ROUNDS DEVICES [--resume]   (run folder)
  python3 tests/parallel_worker.py train VIDEO RUN ROUNDS DEVICES [--resume]     (loop only)

The device count comes from the caller's XLA_FLAGS (or, for several processes, from
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

from __future__ import annotations

import json
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the tests' helpers and the package

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import test_train_e2e as e2e  # noqa: E402
from animdreamer_jax import parallel  # noqa: E402
from animdreamer_jax.commands import extract as extract_cmd  # noqa: E402
from animdreamer_jax.csd import priors  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.errors import UserError  # noqa: E402
from animdreamer_jax.stages.extraction import plan as plan_lib  # noqa: E402
from animdreamer_jax.stages.extraction import settings as extraction  # noqa: E402
from animdreamer_jax.train import loop  # noqa: E402
from animdreamer_jax.train import state as state_lib  # noqa: E402
from animdreamer_jax.train import step as step_lib  # noqa: E402

TEXT_SHAPE = (3, 4)  # tokens x width of the test prior's text states


def text_prior() -> tuple:
  """A text-conditional pixel-space prior (its CFG batch is split like MVDream's)."""

  def eps_fn(prior_params, noisy, t, context, cameras):
    del cameras
    shift = jnp.mean(context, axis=(1, 2))[:, None, None, None]
    return prior_params["scale"] * noisy + shift + 1e-4 * t[:, None, None, None]

  text = (jnp.full(TEXT_SHAPE, 0.3), jnp.full(TEXT_SHAPE, -0.2))
  return priors.function_prior(eps_fn, name="text-test"), {"scale": jnp.float32(0.5)}, text


def tiny_config():
  """The e2e tests' tiny config with the product's compilation cache (shared with them)."""
  cache = extraction.defaults("tiny").train.compilation_cache
  loop.enable_compilation_cache(cache)
  return e2e.tiny_config(cache)


def csd_config():
  config = tiny_config()
  config.csd.update(prior="mvdream", every_k=2, resolution=8, num_samples=8, reduction="mean",
                    weight=1.0, object_size=1.0, param_groups="fg", guidance_scale=5.0)
  return config


def one_step(trainer: loop.Trainer, kind: str, host_state, scalars, devices: int) -> dict:
  """One `kind` step from `host_state` on `devices` devices -> new params, metrics, HLO facts."""
  layout = parallel.make_layout(parallel.ParallelSettings(devices=devices))
  step = step_lib.make_train_step(trainer.plan.kinds[kind], trainer.plan.tx, layout)
  state = layout.place(state_lib.to_device(host_state))
  data = layout.place(trainer.plan.data)
  hlo = step.lower(state, data, scalars).compile().as_text()
  new, metrics = step(state, data, scalars)
  return {"params": state_lib.to_host(new).params, "metrics": parallel.to_host(metrics),
          "all_reduce": "all-reduce" in hlo,
          "devices": len(jax.tree_util.tree_leaves(new.params)[0].sharding.device_set)}


def steps(video_dir: str, out: str) -> None:
  settings = extraction.from_config(csd_config())
  plan = plan_lib.build_plan(settings, video_lib.load_video(video_dir), prior=text_prior())
  trainer = loop.Trainer(plan, settings.train, pathlib.Path("/nonexistent"))
  state = plan.initial_state(True)
  state, _ = loop.update_geometry(state, trainer, ema=0.0)
  host = state_lib.to_host(state)
  result = {}
  for kind, index in ((plan_lib.RECONSTRUCTION, 1), (plan_lib.CSD, 0)):
    name, scalars = plan.schedule(index, trainer.total_steps)
    assert name == kind, (name, kind)
    one, two = (one_step(trainer, kind, host, scalars, n) for n in (1, 2))
    leaves = lambda r: jax.tree_util.tree_leaves(r["params"])  # noqa: E731
    result[kind] = {
        "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(leaves(one), leaves(two))),
        "max_change": max(float(np.max(np.abs(a - b)))
                          for a, b in zip(leaves(one), jax.tree_util.tree_leaves(host.params))),
        "loss": [float(one["metrics"]["loss"]), float(two["metrics"]["loss"])],
        "applied": [int(one["metrics"]["applied"]), int(two["metrics"]["applied"])],
        "all_reduce": [one["all_reduce"], two["all_reduce"]],
        "devices": [one["devices"], two["devices"]]}
  result["errors"] = errors(video_dir)
  pathlib.Path(out).write_text(json.dumps(result))


def oracle_config(rounds: int, devices: int):
  """The tiny extraction with oracle CSD on pixel subsets (its pure callback included)."""
  config = tiny_config()
  config.csd.update(prior="oracle", every_k=2, resolution=e2e.RES, pixels_per_view=24,
                    num_samples=8, reduction="mean", weight=0.1, object_size=1.0,
                    param_groups="fg")
  config.train.num_rounds = rounds
  config.parallel.devices = devices
  return config


def extract(video_dir: str, workdir: str, rounds: str, devices: str, resume: bool) -> None:
  config = oracle_config(int(rounds), int(devices))
  result = extract_cmd.run_extraction(config, video_dir, workdir, resume=resume, progress=False)
  print(json.dumps({"steps": result["steps"], "resumed_from": result["resumed_from"],
                    "num_devices": result.get("num_devices"),
                    "num_processes": result.get("num_processes")}))


def train(video_dir: str, workdir: str, rounds: str, devices: str, resume: bool) -> None:
  """Training and checkpoints only (no run-folder outputs)."""
  settings = extraction.from_config(oracle_config(int(rounds), int(devices)))
  plan = plan_lib.build_plan(settings, video_lib.load_video(video_dir))
  trainer = loop.Trainer(plan, settings.train, pathlib.Path(workdir),
                         parallel.make_layout(settings.parallel))
  _, info = loop.train(trainer, resume=resume, progress=False)
  print(json.dumps({"steps": info["steps"], "resumed_from": info["resumed_from"],
                    "num_devices": trainer.layout.num_devices}))


def errors(video_dir: str) -> dict:
  """The messages of a CSD pixel count and of a device count that do not fit 2 devices."""
  messages = {}
  video = video_lib.load_video(video_dir)
  config = csd_config()
  config.csd.update(prior="oracle", pixels_per_view=7)
  config.parallel.devices = 2
  settings = extraction.from_config(config)
  plan = plan_lib.build_plan(settings, video)
  try:
    loop.Trainer(plan, settings.train, pathlib.Path("/nonexistent"),
                 parallel.make_layout(settings.parallel))
  except UserError as e:
    messages["pixels"] = str(e)
  try:
    parallel.make_layout(parallel.ParallelSettings(devices=3))
  except UserError as e:
    messages["too_many"] = str(e)
  return messages


if __name__ == "__main__":
  parallel.initialize_distributed()
  command, args = sys.argv[1], sys.argv[2:]
  if command == "steps":
    steps(*args)
  elif command == "extract":
    extract(*args[:4], resume="--resume" in args)
  elif command == "train":
    train(*args[:4], resume="--resume" in args)
  else:
    raise SystemExit(f"unknown command {command}")
