"""`animdreamer bench csd`: the CSD train step benchmark (a tiny CPU run; paper scale on a GPU)."""
import json
import subprocess
import sys

import numpy as np
import pytest


def _bench(repo_root, *args):
  return subprocess.run([sys.executable, str(repo_root / "bin" / "animdreamer"), "bench", "csd",
                         *args], capture_output=True, text=True)


def test_bad_arguments_give_one_error_line(repo_root):
  res = _bench(repo_root, "--resolution", "0")
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == ["error: --resolution: must be >= 1"]


@pytest.mark.slow
def test_tiny_step_runs_and_reports_ratios_and_memory(repo_root, tmp_path):
  out = tmp_path / "bench.json"
  res = _bench(repo_root, "--model", "tiny", "--prior", "mvdream-tiny", "--resolution", "8",
               "--samples", "4", "--patches", "2", "--steps", "1", "--encode-resolution", "32",
               "--dtype", "float32", "--matmul-size", "256", "--json", str(out))
  assert res.returncode == 0, res.stderr
  assert "ratio achieved/matmul" in res.stdout
  r = json.loads(out.read_text())
  assert r["samples_per_step"] == 4 * 8 * 8 * 4
  assert np.isfinite(r["loss"])
  for name in ("step_flops", "step_s_best", "ratio_f32_matmul", "xla_peak_bytes"):
    assert r[name] > 0, name


def test_host_random_params_follow_the_shapes_and_fan_in():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import bench_csd  # pylint: disable=g-import-not-at-top
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
