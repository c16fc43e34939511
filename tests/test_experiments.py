"""The experiment drivers in experiments/ (imported by path): the with/without-CSD summary, its
arms and overrides, --help of both, and tiny end-to-end runs of each (slow)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def _script(name: str):
  path = EXPERIMENTS / f"{name}.py"
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def with_and_without():
  return _script("csd_with_and_without")


@pytest.mark.parametrize("name", ["csd_with_and_without", "csd_memory", "oracle_ladder",
                                  "skeleton_settings", "one_side_probe", "generation_ablation",
                                  "phone_clip", "step_profile"])
def test_each_driver_has_help(name, capsys):
  with pytest.raises(SystemExit) as exit_info:
    _script(name).main(["--help"])
  assert exit_info.value.code == 0
  assert capsys.readouterr().out.startswith("usage: ")


def test_summary_rows_and_seed_means(with_and_without, tmp_path):
  """The experiment's table: one row per run, the mean over seeds per prior, n/a for a run
  without metrics; a finished run folder is read back instead of retrained."""
  experiment = with_and_without

  def result(chamfer, unseen, seconds, psnr):
    part = lambda c: {"chamfer": c, "fscore@2%": 100 - 1000 * c}  # noqa: E731
    return {"metrics": {"mean": {"all": part(chamfer), "unseen": part(unseen), "seen": part(chamfer)}},
            "train_seconds": seconds, "steps": 10,
            "novel_views": {"psnr": psnr, "iou": 0.5, "world_psnr": psnr - 1, "world_iou": 0.25}}

  results = {"none_s0": result(0.02, 0.03, 100.0, 20.0), "none_s1": result(0.03, 0.05, 110.0, 22.0),
             "oracle_s0": result(0.01, 0.02, 90.0, 25.0), "oracle_s1": {"train_seconds": 5.0}}
  groups = {"none": ["none_s0", "none_s1"], "oracle": ["oracle_s0", "oracle_s1"]}
  table, text = experiment.summarise(results, groups)
  mean = table["none (mean of 2)"]
  assert mean["all/chamfer"] == pytest.approx(0.025) and mean["unseen/chamfer"] == pytest.approx(0.04)
  assert mean["novel/psnr"] == pytest.approx(21.0) and mean["novel/world_iou"] == 0.25
  assert mean["train_seconds"] == pytest.approx(105.0)
  assert not any(k.startswith("oracle (mean") for k in table)  # one finished oracle run only
  assert "| oracle_s1 | n/a |" in text and "| none (mean of 2) | 0.025 |" in text
  _, text = experiment.summarise({"none": {"error": "run: training produced no surface"}})
  assert "| none | failed: run: training produced no surface |" in text
  assert experiment.run_name("oracle", 3, True) == "oracle_s3"
  assert experiment.run_name("oracle", 3, False) == "oracle"
  run = tmp_path / "none_s0"
  assert experiment.finished_run(run) is None
  run.mkdir()
  (run / "run.json").write_text(json.dumps({"steps": 10, "train_seconds": 100.0, "rollbacks": 0}))
  assert experiment.finished_run(run) is None  # trained, not scored yet
  (run / "metrics.json").write_text(json.dumps(results["none_s0"]["metrics"]))
  (run / "novel_views.json").write_text(json.dumps(results["none_s0"]["novel_views"]))
  back = experiment.finished_run(run)
  assert back["metrics"] == results["none_s0"]["metrics"] and back["train_seconds"] == 100.0
  assert back["novel_views"]["psnr"] == 20.0


def test_arms_share_the_config_and_overrides(with_and_without, repo_root):
  config = repo_root / "configs" / "extract_bench_cpu_csd_oracle.py"
  overrides = [("optim.root_pose_warmup_fraction", "0.1")]
  arms = with_and_without.arms(config, overrides, "none,oracle", "3,4")
  assert [(a.name, a.prior) for a in arms] == [("none_s3", "none"), ("none_s4", "none"),
                                               ("oracle_s3", "oracle"), ("oracle_s4", "oracle")]
  for arm in arms:
    assert arm.config.optim.root_pose_warmup_fraction == 0.1
    assert arm.config.csd.prior == arm.prior and arm.config.csd.weight == 0.1  # the file's
  assert [a.name for a in with_and_without.arms(config, [], "oracle", "")] == ["oracle"]
  with pytest.raises(UserError, match="config.csd.prior: 'dreamfusion' unknown"):
    with_and_without.arms(config, [], "none,dreamfusion", "")
  with pytest.raises(UserError, match="--seeds"):
    with_and_without.arms(config, [], "none", "0,x")
  with pytest.raises(UserError, match="config.optim.lr: expected a number"):
    with_and_without.arms(config, [("optim.lr", "fast")], "none", "")


def test_bad_arm_stops_before_training_with_one_error_line(with_and_without, repo_root, tmp_path,
                                                           capsys):
  code = with_and_without.main([
      "--video", str(tmp_path / "no_video"), "--out", str(tmp_path / "runs"),
      "--config", str(repo_root / "configs" / "extract_bench_cpu_csd_oracle.py"),
      "--config.train.num_roundz=2"])
  assert code == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      "error: config.train.num_roundz: unknown config key"]
  assert not (tmp_path / "runs").exists()


TINY_CONFIG_FILE = """
import sys
sys.path.insert(0, {tests!r})
import test_train_e2e
def get_config():
  config = test_train_e2e.tiny_config()
  config.csd.update(every_k=2, resolution=test_train_e2e.RES, pixels_per_view=24, num_samples=8,
                    reduction="mean", weight=0.1, object_size=1.0, param_groups="fg")
  return config
""".format(tests=str(pathlib.Path(__file__).parent))


@pytest.mark.slow
def test_with_and_without_on_a_tiny_video(with_and_without, tmp_path, repo_root):
  """Both arms of the experiment on the tiny config of test_train_e2e: scores, novel views,
  pictures; run again, both arms are read back."""
  import test_train_e2e  # pylint: disable=g-import-not-at-top
  seq = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf", clip="Walk",
                             num_frames=test_train_e2e.NUM_FRAMES)
  video = synthetic.synthesize(seq, synthetic.SynthOptions(resolution=test_train_e2e.RES),
                               progress=False)
  video_dir = tmp_path / "fox"
  video_lib.write_video(video_dir, video)
  config = tmp_path / "tiny.py"
  config.write_text(TINY_CONFIG_FILE)
  out = tmp_path / "runs"
  args = ["--video", str(video_dir), "--out", str(out), "--config", str(config), "--quiet",
          "--config.train.num_rounds=1"]
  assert with_and_without.main(args) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert sorted(summary) == ["none", "oracle"]
  for name, row in summary.items():
    assert row["steps"] == 3, name  # 1 round of 3: the override reached both arms
    assert np.isfinite(row["all/chamfer"]) and np.isfinite(row["novel/psnr"]), name
    assert 0.0 <= row["novel/world_iou"] <= 1.0, name
    assert (out / name / "novel_views.png").is_file()
  assert (out / "oracle" / "csd_views.png").is_file() and not (out / "none" / "csd_views.png").exists()
  assert (out / "compare.png").is_file() and (out / "summary.md").is_file()
  before = (out / "oracle" / "metrics.json").stat().st_mtime_ns
  assert with_and_without.main(args) == 0
  assert (out / "oracle" / "metrics.json").stat().st_mtime_ns == before  # read back, not retrained
  assert json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_csd_memory_of_a_tiny_step(tmp_path):
  out = tmp_path / "memory.json"
  res = subprocess.run([sys.executable, str(EXPERIMENTS / "csd_memory.py"), "--model", "tiny",
                        "--prior", "mvdream-tiny", "--resolution", "8", "--samples", "4",
                        "--patches", "2", "--encode-resolution", "32", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
  assert res.returncode == 0, res.stderr
  rows = json.loads(out.read_text())
  assert [r["strategy"] for r in rows] == ["full", "patches"]
  assert [r["patches"] for r in rows] == [0, 2]
  assert all(r["peak_bytes"] > r["argument_size_in_bytes"] > 0 for r in rows)


def test_ladder_variants_rows_and_bad_names(capsys, tmp_path):
  ladder = _script("oracle_ladder")
  assert ladder.variant_names("i_gt_warp,neus") == ["i_gt_warp", "neus"]
  assert ladder.variant_names("all") == list(ladder.VARIANTS)
  with pytest.raises(UserError, match="unknown"):
    ladder.variant_names("iv_magic")
  metrics = {"mean": {"all": {"chamfer": 0.0123, "fscore@2%": 81.25},
                      "limbs": {"recall@2%": 55.5, "fscore@2%": 60.0}}}
  row = ladder.summary_row("i_gt_warp+neus", metrics, 12.4)
  assert row == {"variant": "i_gt_warp+neus", "chamfer": 0.0123, "f2": 81.25,
                 "limb_recall2": 55.5, "limb_f2": 60.0, "seconds": 12.4}
  old = ladder.summary_row("old", {"mean": {"all": {"chamfer": 0.02, "fscore@2%": 70.0}}}, None)
  table = ladder.markdown([row, old], "V", "C")
  assert "| i_gt_warp+neus | 0.0123 | 81.2 | 55.5 | 60.0 | 12 |" in table
  assert "| old | 0.0200 | 70.0 | - | - | - |" in table
  # A missing video or an unknown variant: one error line, status 2, nothing trained.
  for argv in (["--video", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--config", "C"],
               ["--video", "V", "--out", str(tmp_path / "o"), "--config", "C", "--variants", "x"]):
    capsys.readouterr()
    assert ladder.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
  assert not (tmp_path / "o").exists()


def test_skeleton_settings_variants_are_settings_and_names_are_checked(capsys):
  import dataclasses  # pylint: disable=import-outside-toplevel
  driver = _script("skeleton_settings")
  for name, changes in driver.VARIANTS.items():
    settings = dataclasses.replace(driver.DEFAULT, **changes)  # each a valid SkeletonSettings
    assert all(getattr(settings, k) == v for k, v in changes.items()), name
  with pytest.raises(SystemExit):
    driver.main(["--runs", "a:b", "--out", "x.md", "--variants", "default,nope"])
  assert "unknown variant 'nope'" in capsys.readouterr().err


def test_probe_root_error_ignores_the_object_frame_and_matches_a_pair_loop():
  """The probe's relative root-pose error: zero for the exact poses in another object frame
  (R_t G), and the mean over frame pairs of the angle of (R_i R_j^T)^T (E_i E_j^T)."""
  from scipy.spatial.transform import Rotation
  probe = _script("one_side_probe")
  exact = Rotation.random(6, random_state=0).as_matrix()
  gauge = Rotation.random(random_state=1).as_matrix()
  assert probe.relative_error_deg(exact @ gauge, exact) < 1e-4
  noisy = Rotation.from_rotvec(0.1 * Rotation.random(6, random_state=2).as_rotvec()).as_matrix()
  noisy = noisy @ exact
  angles = []
  for i in range(6):
    for j in range(i + 1, 6):
      a, b = noisy[i] @ noisy[j].T, exact[i] @ exact[j].T
      angles.append(np.degrees(Rotation.from_matrix(a.T @ b).magnitude()))
  np.testing.assert_allclose(probe.relative_error_deg(noisy, exact), np.mean(angles), rtol=1e-5)


def test_generation_variants_are_valid_overrides_and_rows_read_the_metrics(capsys, repo_root,
                                                                           tmp_path):
  from animdreamer_jax import settings as settings_lib  # pylint: disable=import-outside-toplevel
  from animdreamer_jax.stages.generation import settings as gen  # pylint: disable=import-outside-toplevel
  driver = _script("generation_ablation")
  config_path = repo_root / "configs" / "generate_bench_cpu_oracle.py"
  seen = set()
  for name, overrides in driver.VARIANTS.items():
    config = settings_lib.load_config(config_path, overrides)
    settings = gen.from_config(gen.with_skeleton_file(config, "skeleton.json"))
    seen.add((settings.loss.weights.skeleton, settings.loss.weights.bone_inside,
              settings.generate.warp, settings.generate.start))
  assert len(seen) == len(driver.VARIANTS)  # every variant changes something
  metrics = {"mean": {"all": {"chamfer": 0.0172, "fscore@2%": 71.0},
                      "limbs": {"recall@2%": 35.4, "fscore@2%": 26.2}},
             "rig": {"mean": {"cd_j2j_pct_diag": 5.17}},
             "motion_kept": {"joint_drift": 0.06, "bone_length_variation": 0.05}}
  row = driver.row(metrics, 120.0)
  assert row == {"chamfer": 0.0172, "F@2%": 71.0, "limb recall@2%": 35.4, "limb F@2%": 26.2,
                 "CD-J2J %": 5.17, "joint drift": 0.06, "bone-length var.": 0.05, "wall min": 2.0}
  capsys.readouterr()
  assert driver.main(["--run", "R", "--target", "T", "--out", str(tmp_path / "o"), "--config", "C",
                      "--variants", "full,magic"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "magic" in err and err.count("\n") == 1
  assert not (tmp_path / "o").exists()


def test_step_profile_kinds_and_a_tiny_trace(capsys, tmp_path):
  profile = _script("step_profile")
  x = jax.numpy.ones((64, 32))
  hlo = jax.jit(lambda a, b: jax.numpy.tanh(a @ b) + 1.0).lower(x, x.T).compile().as_text()
  kinds = profile.op_kinds(hlo)
  assert "matmul" in kinds.values() and "elementwise" in kinds.values()
  out = tmp_path / "profile.json"
  assert profile.main(["--config", "tiny", "--rays", "64", "--samples", "8", "--steps", "1",
                       "--json", str(out)]) == 0
  stdout = capsys.readouterr().out
  assert "matmul" in stdout and "matmul limit" in stdout
  result = json.loads(out.read_text())
  assert result["by_kind"]["matmul"] > 0 and result["ops_s"] > 0
