"""Config loading/overrides, schedules, optimiser masks, checkpoint round trip."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.train import checkpoint, config, optimizer, schedules
from animdreamer_jax.train import state as state_lib

CONFIG_TEXT = '''
import ml_collections
def get_config():
  c = ml_collections.ConfigDict()
  c.lr = 0.5
  c.steps = 10
  c.name = "x"
  c.flag = False
  c.gaps = (1, 2)
  c.model = ml_collections.ConfigDict(dict(width=8, scale=1.5))
  return c
'''


@pytest.fixture()
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(CONFIG_TEXT)
  return path


def test_load_and_override(config_file):
  c = config.load_config(config_file, ["--config.lr=1e-3", "--config.model.width=16",
                                       "--config.flag=true", "--config.gaps=(4, 8, 16)",
                                       "--config.model.scale=2", "--config.name=abc"])
  assert c.lr == 1e-3 and c.model.width == 16 and c.flag is True
  assert tuple(c.gaps) == (4, 8, 16) and isinstance(c.model.scale, float) and c.name == "abc"


@pytest.mark.parametrize("override,needle", [
    ("--config.lrr=1", "config.lrr: unknown config key"),
    ("--config.model.depth=3", "config.model.depth: unknown config key"),
    ("--config.steps=abc", "config.steps: expected an int"),
    ("--config.steps=1.5", "config.steps: expected an int"),
    ("--config.flag=7", "config.flag: expected a bool"),
    ("--config.model=3", "config.model: is a section"),
])
def test_bad_overrides(config_file, override, needle):
  with pytest.raises(UserError, match=needle.replace(".", r"\.")):
    config.load_config(config_file, [override])


def test_missing_and_broken_files(tmp_path):
  with pytest.raises(UserError, match="config file not found"):
    config.load_config(tmp_path / "nope.py")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  with pytest.raises(UserError, match="cannot be loaded"):
    config.load_config(broken)


def test_split_overrides():
  rest, pairs = config.split_overrides(["--video", "v", "--config.a.b=1", "--config.c", "2", "--resume"])
  assert rest == ["--video", "v", "--resume"]
  assert pairs == [("a.b", "1"), ("c", "2")]


def test_save_config_roundtrip(config_file, tmp_path):
  c = config.load_config(config_file, ["--config.steps=3"])
  out = tmp_path / "run" / "config.json"
  config.save_config(c, out)
  data = json.loads(out.read_text())
  assert data["steps"] == 3 and data["model"]["width"] == 8
  assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]


def test_repo_configs_load(repo_root):
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  paths = sorted((repo_root / "configs").glob("extract_*.py"))
  assert len(paths) >= 3
  for path in paths:
    c = config.load_config(path)
    step_lib.validate_config(c)
    assert "Command" in path.read_text(), path  # the docstring gives the command


def test_schedules_against_formulas():
  for step in [0, 100, 2000, 4000, 9000]:
    p = min(step / 4000, 1.0)
    assert math.isclose(float(schedules.log_anneal(step, 0, 4000, 1.0, 100.0)), 100 ** p, rel_tol=1e-5)
    assert math.isclose(float(schedules.linear_anneal(step, 0, 4000, 0.6, 1.0)), 0.6 + 0.4 * p,
                        rel_tol=1e-6)
  # One-cycle: lr/25 at 0, peak at warm-up end, lr/25 at the end, linear between.
  lr = lambda s: float(schedules.one_cycle_lr(s, 1000, 5e-4, 100))
  assert math.isclose(lr(0), 5e-4 / 25, rel_tol=1e-5)
  assert math.isclose(lr(50), (5e-4 / 25 + 5e-4) / 2, rel_tol=1e-5)
  assert math.isclose(lr(100), 5e-4, rel_tol=1e-5)
  assert math.isclose(lr(550), (5e-4 + 5e-4 / 25) / 2, rel_tol=1e-5)
  assert math.isclose(lr(1000), 5e-4 / 25, rel_tol=1e-5)
  # jnp input (traced) gives the same numbers.
  assert math.isclose(float(jax.jit(lambda s: schedules.one_cycle_lr(s, 1000, 5e-4, 100))(jnp.int32(550))),
                      lr(550), rel_tol=1e-5)


def test_loss_weights():
  factors = schedules.lab4d_loss_weight_factors(eikonal_steps=100, cam_prior_steps=10)
  w = schedules.loss_weights({"rgb": 0.1, "eikonal": 1e-3, "cam_prior": 0.1, "depth": 0.0}, factors, 50)
  assert set(w) == {"rgb", "eikonal", "cam_prior"}  # weight-0 losses are left out
  assert math.isclose(float(w["eikonal"]), 1e-3 * 10.0, rel_tol=1e-5)
  assert float(w["cam_prior"]) == 0.0 and all(isinstance(v, np.float32) for v in w.values())


def test_optimizer_explicit_rate_is_ten_times():
  params = {"mlp": {"kernel": jnp.ones(3)}, "logibeta": jnp.ones(3)}
  tx = optimizer.make_optimizer(params, weight_decay=0.0, clip_norm=0.0)
  grads = {"mlp": {"kernel": jnp.ones(3)}, "logibeta": jnp.ones(3)}
  updates, _ = tx.update(grads, tx.init(params), params)
  updates = optimizer.apply_learning_rate(updates, jnp.float32(1e-3))
  # Adam's first step is -lr * sign(g) (bias-corrected), x10 for explicit params.
  np.testing.assert_allclose(updates["mlp"]["kernel"], -1e-3, rtol=1e-4)
  np.testing.assert_allclose(updates["logibeta"], -1e-2, rtol=1e-4)
  # Weight decay is decoupled and scaled by the same rate.
  tx = optimizer.make_optimizer(params, weight_decay=0.1, clip_norm=0.0)
  zero = jax.tree_util.tree_map(jnp.zeros_like, grads)
  updates, _ = tx.update(zero, tx.init(params), params)
  updates = optimizer.apply_learning_rate(updates, jnp.float32(1e-3))
  np.testing.assert_allclose(updates["mlp"]["kernel"], -1e-4, rtol=1e-4)
  np.testing.assert_allclose(updates["logibeta"], -1e-3, rtol=1e-4)


def test_optimizer_clips_global_norm():
  params = {"w": jnp.zeros(4)}
  tx = optimizer.make_optimizer(params, clip_norm=1.0)
  clip_only = tx  # first element of the chain clips; check through optax directly too
  g = {"w": jnp.full(4, 10.0)}
  clipped, _ = optax.clip_by_global_norm(1.0).update(g, None)
  np.testing.assert_allclose(optax.global_norm(clipped), 1.0, rtol=1e-6)
  assert clip_only is not None


def test_checkpoint_roundtrip_keep_n_and_nan(tmp_path):
  params = {"w": jnp.arange(3.0), "logibeta": jnp.float32(0.5)}
  tx = optimizer.make_optimizer(params)
  st = state_lib.create(params, tx, {"near_far": np.ones((4, 2), np.float32)}, seed=3)
  ck = checkpoint.Checkpointer(tmp_path / "ck", max_to_keep=2)
  for s in (1, 2, 3):
    assert ck.save(st.replace(step=jnp.int32(s), params={"w": jnp.arange(3.0) * s,
                                                         "logibeta": jnp.float32(s)}), {"round": s})
  assert ck.all_steps() == [2, 3]
  bad = st.replace(step=jnp.int32(4), params={"w": jnp.array([0.0, jnp.nan, 0.0]),
                                              "logibeta": jnp.float32(1)})
  assert not ck.save(bad)
  assert ck.latest_step() == 3
  restored, meta = ck.restore(st)
  assert int(restored.step) == 3 and meta["round"] == 3
  np.testing.assert_allclose(restored.params["w"], [0, 3, 6])
  np.testing.assert_array_equal(restored.key, st.key)
  # A different model (other shapes) is refused with a clear error.
  other = state_lib.create({"w": jnp.zeros(5), "logibeta": jnp.float32(0)}, tx, {"near_far": np.ones((4, 2))}, 0)
  with pytest.raises(UserError, match="does not match"):
    ck.restore(other)


def test_flow_warmup_ramps_the_flow_weight_from_zero():
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  c = config.extract_base_config("tiny")
  base = c.loss.weights.flow
  assert step_lib.scheduled_scalars(c, 0, 100)["w_flow"] == np.float32(base)  # default: lab4d, no ramp
  c.loss.schedules.flow_warmup_fraction = 0.25
  for step, want in [(0, 0.0), (10, 0.4 * base), (25, base), (90, base)]:
    got = float(step_lib.scheduled_scalars(c, step, 100)["w_flow"])
    assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9), (step, got, want)
  # The other weights do not move with it.
  assert float(step_lib.scheduled_scalars(c, 0, 100)["w_mask"]) == np.float32(c.loss.weights.mask)


def test_root_pose_warmup_holds_only_the_root_pose_updates():
  from animdreamer_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top
  c = config.extract_base_config("tiny")
  assert step_lib.scheduled_scalars(c, 0, 100)["root_pose_scale"] == 1.0  # default: lab4d
  c.optim.root_pose_warmup_fraction = 0.1
  assert [float(step_lib.scheduled_scalars(c, s, 100)["root_pose_scale"]) for s in (0, 9, 10, 50)] \
      == [0.0, 0.0, 1.0, 1.0]
  updates = {"params": {"root_pose": {"w": jnp.ones(3)}, "bones": {"w": jnp.ones(2)}}}
  held = step_lib.scale_group(updates, "root_pose", jnp.float32(0.0))
  np.testing.assert_array_equal(held["params"]["root_pose"]["w"], np.zeros(3))
  np.testing.assert_array_equal(held["params"]["bones"]["w"], np.ones(2))
