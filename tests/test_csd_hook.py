"""CSD mixed into extraction: the alternation, scalars, and one real CSD train step (slow)."""

from __future__ import annotations

import math
import types

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from animdreamer_jax.csd import config as csd_config_lib
from animdreamer_jax.csd import csd_step
from animdreamer_jax.csd import hook
from animdreamer_jax.csd import prior_interface
from animdreamer_jax.errors import UserError


def _config(prior="oracle", every_k=2):
  config = ml_collections.ConfigDict({"csd": csd_config_lib.csd_config()})
  config.csd.prior = prior
  config.csd.every_k = every_k
  return config


def test_mixed_step_alternates_and_passes_csd_scalars():
  calls = []

  def recon(state, data, scalars):
    calls.append(("recon", int(state.step), sorted(scalars)))
    return types.SimpleNamespace(step=state.step + 1), {}

  def csd(state, data, scalars):
    calls.append(("csd", int(state.step), sorted(scalars)))
    return types.SimpleNamespace(step=state.step + 1), {}

  config = _config(every_k=3)
  mixed = hook.MixedStep(config, recon, csd, total_steps=100)
  state = types.SimpleNamespace(step=np.int32(0))
  for _ in range(7):
    state, _ = mixed(state, None, {"lr": 1.0})
  assert [c[0] for c in calls] == ["csd", "recon", "recon", "csd", "recon", "recon", "csd"]
  assert calls[0][2] == ["csd_t_max", "csd_t_min", "csd_weight", "lr"]
  assert calls[1][2] == ["lr"]


def test_enabled_and_prior_names():
  assert not hook.csd_enabled(ml_collections.ConfigDict({"train": {}}))
  for off in ("none", "None", None, ""):
    config = _config()
    config.csd.prior = off
    assert not hook.csd_enabled(config)
    assert not csd_step.is_csd_step(config.csd, 0)
  assert hook.csd_enabled(_config("oracle"))
  with pytest.raises(UserError, match="csd.prior"):
    hook.build_prior(_config("dreamfusion"), video=None)
  with pytest.raises(UserError, match="ground truth"):
    hook.build_prior(_config("oracle"), video=types.SimpleNamespace(gt=None))
  with pytest.raises(UserError, match="csd.weights"):
    hook.build_prior(_config("mvdream"), video=None)


@pytest.mark.slow
def test_csd_train_step_updates_only_the_csd_groups():
  from animdreamer_jax.model import articulated_model  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import config as train_config  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  config = train_config.extract_base_config("tiny")
  config.csd = csd_config_lib.csd_config()
  config.csd.update(prior="oracle", resolution=3, num_samples=8, reduction="mean", weight=1.0)
  model = articulated_model.ArticulatedModel(articulated_model.tiny_config(video_lengths=(4,)))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((4, 3)), jnp.int32(0))
  tx = step_lib.make_optimizer(config, params)
  aux = {"aabb": np.array([[-0.5] * 3, [0.5] * 3], np.float32),
         "near_far": np.tile([[0.1, 5.0]], (4, 1)).astype(np.float32)}
  state = state_lib.create(params, tx, aux, seed=0)
  prior = prior_interface.function_prior(lambda pp, x, t, c, cams: x + 0.5, conditional=False)
  fn = csd_step.make_csd_train_step(config, model, params, prior, num_frames=4)
  scalars = {"lr": np.float32(1e-2), **csd_step.csd_scalars(config.csd, 0, 10)}
  before = jax.device_get(state)
  new_state, metrics = fn(state, None, scalars)
  metrics = jax.device_get(metrics)
  assert int(new_state.step) == 1 and int(metrics["applied"]) == 1
  assert math.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
  old = flax.traverse_util.flatten_dict(before.params["params"], sep="/")
  new = flax.traverse_util.flatten_dict(jax.device_get(new_state.params)["params"], sep="/")
  mask = flax.traverse_util.flatten_dict(csd_step.param_group_mask(params, "canonical")["params"],
                                         sep="/")
  changed = {k for k in old if not np.array_equal(old[k], new[k])}
  assert changed <= {k for k, m in mask.items() if m}
  assert any(k.startswith("canonical/sdf_head/") for k in changed)
  assert any(k.startswith("canonical/rgb_out/") for k in changed)
  # Adam moments of untouched leaves are untouched too.
  for (path, o), n in zip(jax.tree_util.tree_flatten_with_path(before.opt_state)[0],
                          jax.tree_util.tree_leaves(jax.device_get(new_state.opt_state))):
    names = "/".join(str(getattr(e, "key", getattr(e, "name", getattr(e, "idx", e)))) for e in path)
    if "bones" in names or "root_pose" in names or "feature_mlp" in names:
      np.testing.assert_array_equal(np.asarray(n), np.asarray(o), err_msg=names)


def test_mixed_step_refits_the_oracle_alignment_once_per_round_before_csd():
  seen = []
  step = lambda state, data, scalars: (types.SimpleNamespace(step=state.step + 1), {})
  mixed = hook.MixedStep(_config(every_k=2), step, step, total_steps=100,
                         realign=lambda state: seen.append(int(state.step)), realign_every=5)
  state = types.SimpleNamespace(step=np.int32(0))
  for _ in range(14):
    state, _ = mixed(state, None, {"lr": 1.0})
  # CSD steps 0, 2, ..., 12; refits at the first CSD step and then >= 5 steps later.
  assert seen == [0, 6, 12]


def test_experiment_summary_rows_and_seed_means(tmp_path):
  """The experiment's table: one row per run, the mean over seeds per prior, n/a for a run
  without metrics; a finished run folder is read back instead of retrained."""
  import json  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import experiment  # pylint: disable=g-import-not-at-top

  def result(chamfer, unseen, seconds):
    part = lambda c: {"chamfer": c, "fscore@2%": 100 - 1000 * c}
    return {"metrics": {"mean": {"all": part(chamfer), "unseen": part(unseen), "seen": part(chamfer)}},
            "train_seconds": seconds, "steps": 10}

  results = {"none_s0": result(0.02, 0.03, 100.0), "none_s1": result(0.03, 0.05, 110.0),
             "oracle_s0": result(0.01, 0.02, 90.0), "oracle_s1": {"train_seconds": 5.0}}
  groups = {"none": ["none_s0", "none_s1"], "oracle": ["oracle_s0", "oracle_s1"]}
  table, text = experiment.summarise(results, groups)
  mean = table["none (mean of 2)"]
  assert mean["all/chamfer"] == pytest.approx(0.025) and mean["unseen/chamfer"] == pytest.approx(0.04)
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
  (run / "metrics.json").write_text(json.dumps(results["none_s0"]["metrics"]))
  experiment.save_train_info(run, results["none_s0"])
  back = experiment.finished_run(run)
  assert back["metrics"] == results["none_s0"]["metrics"] and back["train_seconds"] == 100.0


def test_photometric_scores_against_hand_computed_values():
  from animdreamer_jax.csd import experiment  # pylint: disable=g-import-not-at-top
  truth = np.ones((1, 2, 2, 3))
  images = truth.copy()
  images[0, 0, 0] = 0.0  # one pixel black: MSE = 3 / 12
  mask = np.array([[[True, False], [False, False]]])
  opacity = np.array([[[0.9, 0.7], [0.1, 0.2]]])  # predicted: 2 pixels, 1 shared
  scores = experiment.photometric_scores(images, opacity, truth, mask)
  assert scores["psnr"] == pytest.approx(-10 * math.log10(0.25))
  assert scores["iou"] == pytest.approx(0.5)
