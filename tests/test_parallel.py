"""Many devices (`animdreamer_jax.parallel`): a step split over 2 devices gives the 1-device
parameters, runs split over 2 devices resume on 1 (and back), several hosts give the same
checkpoint as one host, and settings that do not split are one clear error.

Several devices on this CPU: each check runs `tests/parallel_worker.py` in a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=2 (this process has one device);
two hosts are two local processes joined by jax.distributed.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from animdreamer_jax import parallel
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction
from animdreamer_jax.train import loop

import parallel_worker as worker
import test_train_e2e as e2e

WORKER = pathlib.Path(__file__).with_name("parallel_worker.py")
TWO_DEVICES = "--xla_force_host_platform_device_count=2"


def _env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k not in parallel.DISTRIBUTED_VARIABLES}
  env.update(extra)
  return env


def _worker(*args, env=None, timeout=600) -> str:
  """Runs the worker; its last stdout line (or fails with its stderr's tail)."""
  proc = subprocess.run([sys.executable, str(WORKER), *map(str, args)], capture_output=True,
                        text=True, env=env or _env(XLA_FLAGS=TWO_DEVICES), timeout=timeout)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.strip().splitlines()
  return lines[-1] if lines else ""


tiny_video = e2e.tiny_video


def test_one_step_on_two_devices_gives_the_one_device_parameters(tiny_video, tmp_path):
  """A reconstruction step and a CSD step (text-conditional prior: its CFG batch split too),
  from the same state and batch on 1 and on 2 devices: the new parameters agree to float
  rounding while the step itself moves them far more; the 2-device program really is split
  (an all-reduce in its HLO, results on both devices); settings that do not split over 2
  devices are one clear error naming the setting."""
  out = tmp_path / "steps.json"
  _worker("steps", tiny_video, out)
  result = json.loads(out.read_text())
  for kind in ("reconstruction", "csd"):
    r = result[kind]
    assert r["applied"] == [1, 1], kind
    assert r["devices"] == [1, 2] and r["all_reduce"] == [False, True], kind
    assert r["max_change"] > 1e-4, kind
    assert r["max_diff"] < 1e-5 and r["max_diff"] < 1e-2 * r["max_change"], (kind, r)
    np.testing.assert_allclose(r["loss"][1], r["loss"][0], rtol=1e-5)
  errors = result["errors"]
  assert errors["pixels"].startswith("config.csd.pixels_per_view = 7 does not split over 2 "
                                     "devices (config.parallel.devices)")
  assert errors["too_many"] == "config.parallel.devices = 3: only 2 cpu device(s) here"


def _checkpoint_steps(workdir: pathlib.Path) -> list[int]:
  manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta"))
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def test_a_run_on_two_devices_resumes_on_one(tiny_video, tmp_path):
  """A tiny extraction (oracle CSD on every 2nd step) on 2 devices writes a complete run folder
  (run.json: 2 devices), and this 1-device process resumes its training from its last
  checkpoint."""
  workdir = tmp_path / "run"
  first = json.loads(_worker("extract", tiny_video, workdir, 1, 2))
  assert first == {"steps": 3, "resumed_from": None, "num_devices": 2, "num_processes": 1}
  assert json.loads((workdir / "run.json").read_text())["num_devices"] == 2
  assert (workdir / "metrics.json").is_file() and (workdir / "rest.obj").is_file()
  second = _train_here(tiny_video, workdir, rounds=2)
  assert second == {"steps": 6, "resumed_from": 3, "num_devices": 1}
  assert _checkpoint_steps(workdir)[-1] == 6


def _train_here(video, workdir, rounds: int) -> dict:
  """The worker's `train` in this (1-device) process: `rounds` rounds, resumed if it can be."""
  settings = extraction.from_config(worker.oracle_config(rounds, 0))
  plan = plan_lib.build_plan(settings, video_lib.load_video(video))
  trainer = loop.Trainer(plan, settings.train, workdir, parallel.make_layout(settings.parallel))
  _, info = loop.train(trainer, progress=False)
  return {"steps": info["steps"], "resumed_from": info["resumed_from"],
          "num_devices": trainer.layout.num_devices}


@pytest.mark.slow  # the reverse of the test above (~1.5 min)
def test_a_run_on_one_device_resumes_on_two(tiny_video, tmp_path):
  """The reverse: trained here on 1 device, resumed by a 2-device process (training and
  checkpoints only)."""
  workdir = tmp_path / "run"
  first = _train_here(tiny_video, workdir, rounds=1)
  assert first == {"steps": 3, "resumed_from": None, "num_devices": 1}
  second = json.loads(_worker("train", tiny_video, workdir, 2, 2, "--resume"))
  assert second == {"steps": 6, "resumed_from": 3, "num_devices": 2}
  assert _checkpoint_steps(workdir)[-1] == 6


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _restore_leaves(workdir: pathlib.Path, step: int) -> dict:
  manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state", "meta"))
  try:
    return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore())).state
  finally:
    manager.close()


@pytest.mark.slow  # two 2-process runs (~3 min)
def test_two_hosts_give_the_checkpoint_of_one_host_with_two_devices(tiny_video, tmp_path):
  """Two processes of one device each (jax.distributed on localhost, the launch variables of
  the README) train the tiny run; process 0 alone writes the run folder; its checkpoint is
  the one a single process with 2 devices writes."""
  one_host = tmp_path / "one_host"
  _worker("train", tiny_video, one_host, 1, 2)
  two_hosts = tmp_path / "two_hosts"
  env = _env(JAX_COORDINATOR_ADDRESS=f"localhost:{_free_port()}", JAX_NUM_PROCESSES="2")
  procs = [subprocess.Popen([sys.executable, str(WORKER), "extract", str(tiny_video),
                             str(two_hosts), "1", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**env, "JAX_PROCESS_ID": str(i)})
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  primary = json.loads(outs[0][0].strip().splitlines()[-1])
  assert primary["num_devices"] == 2 and primary["num_processes"] == 2
  assert json.loads((two_hosts / "run.json").read_text())["num_processes"] == 2
  a, b = _restore_leaves(one_host, 3), _restore_leaves(two_hosts, 3)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(np.asarray(b[key]), np.asarray(a[key]), atol=1e-6, err_msg=key)


def test_initialize_distributed_reads_the_launch_variables():
  """Nothing set: one process, no jax.distributed; some but not all of the three: one clear
  error naming the missing ones; non-integers: one clear error."""
  assert parallel.initialize_distributed({}) is False
  assert parallel.initialize_distributed({"SLURM_NTASKS": "1"}) is False
  with pytest.raises(UserError, match="^JAX_COORDINATOR_ADDRESS set but not JAX_NUM_PROCESSES, "
                                      "JAX_PROCESS_ID: a multi-host run needs all three$"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "localhost:1234"})
  with pytest.raises(UserError, match="JAX_NUM_PROCESSES / JAX_PROCESS_ID: not integers"):
    parallel.initialize_distributed({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two",
                                     "JAX_PROCESS_ID": "0"})


def test_importing_the_commands_starts_no_jax_backend():
  """jax.distributed.initialize must come before any backend: no import may create one."""
  code = ("import jax._src.xla_bridge as xb\n"
          "import animdreamer_jax.commands.extract, animdreamer_jax.commands.generate, "
          "animdreamer_jax.commands.bench, animdreamer_jax.commands.demo\n"
          "print(bool(xb._backends))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(),
                        cwd=pathlib.Path(__file__).parent.parent, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "False"


def test_one_device_layout_leaves_the_step_as_it_was():
  """One device: no mesh, `split` returns its input, `place` too, and the step is a plain jit."""
  layout = parallel.make_layout(parallel.ParallelSettings(devices=1))
  assert layout.mesh is None and layout.num_devices == 1
  tree = {"a": np.arange(3.0)}
  assert layout.split(tree) is tree and layout.place(tree) is tree
  assert parallel.make_layout().num_devices == jax.device_count()
  with pytest.raises(UserError, match="^config.parallel.devices: must be >= 0"):
    parallel.ParallelSettings(devices=-1)
  with pytest.raises(UserError, match=r"^config.parallel.devices = 2: only 1 cpu device\(s\) here$"):
    parallel.make_layout(parallel.ParallelSettings(devices=2))
