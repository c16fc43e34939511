"""`animdreamer bench`: flags and their errors, the shared figures, the host initialiser, and
tiny step and CSD benchmarks end to end (slow; paper scale runs on a GPU)."""
import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax import cli
from animdreamer_jax.bench import common
from animdreamer_jax.bench import csd as bench_csd
from animdreamer_jax.errors import UserError


def _bench(capsys, which, *args):
  """`animdreamer bench WHICH ARGS` in this process -> (exit code, stdout, stderr)."""
  try:
    code = cli.main(["bench", which, *args])
  except SystemExit as e:  # argparse's --help
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.parametrize("which", ["step", "unet", "csd"])
def test_each_benchmark_has_help(capsys, which):
  code, out, err = _bench(capsys, which, "--help")
  assert code == 0, err
  assert out.startswith(f"usage: animdreamer bench {which}")


@pytest.mark.parametrize("which, args, line", [
    ("csd", ["--resolution", "0"], "error: --resolution: must be >= 2"),
    ("csd", ["--patches", "3"],
     "error: --patches: 3 must divide the pixels of a view, --resolution^2 = 40000"),
    ("step", ["--rays", "100"],
     "error: --rays: 100 is not a multiple of 2 x --rays-per-frame (16); frames come in pairs"),
    ("step", ["--devices", "one"], "error: --devices 'one': give device counts like 1,2 (0: every "
     "device)"),
])
def test_bad_arguments_give_one_error_line(capsys, which, args, line):
  code, _, err = _bench(capsys, which, *args)
  assert code == 2
  assert err.strip().splitlines() == [line]


def test_memory_figures_count_donated_buffers_once():
  analysis = types.SimpleNamespace(argument_size_in_bytes=10 << 30, output_size_in_bytes=3 << 30,
                                   alias_size_in_bytes=2 << 30, temp_size_in_bytes=5 << 30,
                                   generated_code_size_in_bytes=0)
  figures = common.memory_figures(types.SimpleNamespace(memory_analysis=lambda: analysis))
  assert figures["peak_bytes"] == (10 + 3 - 2 + 5) << 30
  assert figures["peak_gib"] == 16.0 and figures["temp_gib"] == 5.0


def test_compiled_flops_of_a_matmul_and_none_is_an_error():
  a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
  b = jax.ShapeDtypeStruct((32, 16), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  assert common.compiled_flops(compiled, "test") == pytest.approx(2 * 64 * 32 * 16, rel=0.01)
  with pytest.raises(UserError, match="test: XLA's cost_analysis"):
    common.compiled_flops(types.SimpleNamespace(cost_analysis=lambda: {}), "test")


def test_host_random_params_follow_the_shapes_and_fan_in():
  spec = jax.ShapeDtypeStruct
  shapes = {"conv": {"kernel": spec((3, 3, 64, 32), jnp.float32), "bias": spec((32,), jnp.float32)},
            "norm": {"scale": spec((64,), jnp.float32), "bias": spec((64,), jnp.float32)},
            "dense": {"kernel": spec((512, 256), jnp.bfloat16)}}
  params = bench_csd.host_random_params(shapes, seed=0)
  assert jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), params) == \
      jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes)
  np.testing.assert_array_equal(params["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(params["norm"]["bias"], 0.0)
  np.testing.assert_array_equal(params["conv"]["bias"], 0.0)
  for kernel, fan_in in ((params["conv"]["kernel"], 3 * 3 * 64), (params["dense"]["kernel"], 512)):
    std = float(np.std(np.asarray(kernel, np.float32)))
    assert abs(std * np.sqrt(fan_in) - 1.0) < 0.03


@pytest.mark.slow
def test_tiny_csd_step_runs_and_reports_ratios_and_memory(capsys, tmp_path):
  out = tmp_path / "bench.json"
  code, stdout, stderr = _bench(capsys, "csd", "--model", "tiny", "--prior", "mvdream-tiny", "--resolution", "8",
               "--samples", "4", "--patches", "2", "--steps", "1", "--encode-resolution", "32",
               "--dtype", "float32", "--matmul-size", "256", "--json", str(out))
  assert code == 0, stderr
  assert "ratio achieved/matmul" in stdout
  r = json.loads(out.read_text())
  assert r["samples_per_step"] == 4 * 8 * 8 * 4
  assert np.isfinite(r["loss"]) and r["loss"] == pytest.approx(r["csd_loss"])  # w_csd = 1
  for name in ("step_flops", "step_s_best", "ratio_f32_matmul", "xla_peak_bytes"):
    assert r[name] > 0, name


@pytest.mark.slow
def test_tiny_reconstruction_step_runs_and_reports_the_ratio(capsys, tmp_path):
  out = tmp_path / "bench.json"
  code, stdout, stderr = _bench(capsys, "step", "--config", "tiny", "--rays", "64", "--steps", "2",
               "--matmul-size", "256", "--json", str(out))
  assert code == 0, stderr
  r = json.loads(out.read_text())
  assert r["frames"] == 4 and r["bones"] == 3
  assert np.isfinite(r["loss"]) and r["step_flops"] > 0 and r["ratio"] > 0
  assert "feat_reproj" in r["losses"]  # the stage's own loss set, not a hand-picked one
  assert r["samples_per_s"] == pytest.approx(64 * r["samples"] / r["step_s_best"])
  assert "samples per second" in stdout and "peak memory" in stdout
  # The step's buffers fit in the process's peak; both are counted.
  assert 0 < r["xla_peak_bytes"] < r["peak_rss_bytes"]


@pytest.mark.slow  # two subprocesses with 2 forced CPU devices (~2 min)
def test_benchmarks_split_over_two_devices(tmp_path):
  """`bench step --devices 1,2` times the step on 1 and on 2 devices in one run and prints the
  speed-up; `bench csd --devices 2` splits the tiny MVDream CSD step (views' pixels and the
  UNet's CFG batch); both report per-device samples per second."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

  def bench(*args):
    proc = subprocess.run([sys.executable, "-m", "animdreamer_jax.cli", "bench", *args],
                          capture_output=True, text=True, env=env, timeout=600,
                          cwd=pathlib.Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout

  step_json = tmp_path / "step.json"
  out = bench("step", "--config", "tiny", "--rays", "64", "--steps", "1", "--matmul-size", "128",
              "--devices", "1,2", "--json", str(step_json))
  assert "speed-up vs 1 device(s)" in out
  rows = json.loads(step_json.read_text())
  assert [r["num_devices"] for r in rows] == [1, 2]
  for r in rows:
    assert np.isfinite(r["loss"])
    assert r["samples_per_s_per_device"] == pytest.approx(r["samples_per_s"] / r["num_devices"])
  csd_json = tmp_path / "csd.json"
  bench("csd", "--model", "tiny", "--prior", "mvdream-tiny", "--resolution", "8", "--samples", "4",
        "--patches", "2", "--steps", "1", "--encode-resolution", "32", "--dtype", "float32",
        "--matmul-size", "128", "--count-flops", "no", "--devices", "2", "--json", str(csd_json))
  r = json.loads(csd_json.read_text())
  assert r["num_devices"] == 2 and np.isfinite(r["loss"])
  assert r["samples_per_s_per_device"] == pytest.approx(r["samples_per_s"] / 2)
