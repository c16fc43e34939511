"""The one update rule and its parts: AdamW with the x10 explicit rate, clipping, the NaN and
spike refusal, parameter groups (frozen leaves and their moments), group scales; schedules;
checkpoints. References are optax's own transforms or hand-written formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animdreamer_jax import schedules
from animdreamer_jax.errors import UserError
from animdreamer_jax.train import checkpoint
from animdreamer_jax.train import optimizer
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import update


def _scalars(lr=1e-3, spike=0.0, **extra):
  return {"lr": jnp.float32(lr), "grad_spike_threshold": jnp.float32(spike),
          **{k: jnp.float32(v) for k, v in extra.items()}}


def _apply(tx, params, opt, grads, scalars, trainable=None, loss=1.0):
  fn = jax.jit(lambda p, o, g, s: update.apply_gradients(tx, p, o, jnp.float32(loss), g, s,
                                                          trainable))
  return fn(params, opt, grads, scalars)


def test_schedules_against_formulas():
  for step in [0, 100, 2000, 4000, 9000]:
    p = min(step / 4000, 1.0)
    assert math.isclose(float(schedules.log_anneal(step, 0, 4000, 1.0, 100.0)), 100 ** p, rel_tol=1e-5)
    assert math.isclose(float(schedules.linear_anneal(step, 0, 4000, 0.6, 1.0)), 0.6 + 0.4 * p,
                        rel_tol=1e-6)
  # One-cycle: lr/25 at 0, peak at warm-up end, lr/25 at the end, linear between.
  lr = lambda s: float(schedules.one_cycle_lr(s, 1000, 5e-4, 100))  # noqa: E731
  assert math.isclose(lr(0), 5e-4 / 25, rel_tol=1e-5)
  assert math.isclose(lr(50), (5e-4 / 25 + 5e-4) / 2, rel_tol=1e-5)
  assert math.isclose(lr(100), 5e-4, rel_tol=1e-5)
  assert math.isclose(lr(550), (5e-4 + 5e-4 / 25) / 2, rel_tol=1e-5)
  assert math.isclose(lr(1000), 5e-4 / 25, rel_tol=1e-5)
  assert math.isclose(float(jax.jit(lambda s: schedules.one_cycle_lr(s, 1000, 5e-4, 100))(
      jnp.int32(550))), lr(550), rel_tol=1e-5)
  settings = optimizer.OptimSettings(lr=5e-4, warmup_fraction=0.1)
  assert math.isclose(settings.learning_rate(550, 1000), lr(550), rel_tol=1e-6)


def test_explicit_rate_is_ten_times_and_decay_is_decoupled():
  params = {"mlp": {"kernel": jnp.ones(3)}, "logibeta": jnp.ones(3)}
  tx = optimizer.make_optimizer(params, optimizer.OptimSettings(weight_decay=0.0, clip_norm=0.0))
  grads = {"mlp": {"kernel": jnp.ones(3)}, "logibeta": jnp.ones(3)}
  new, _, metrics = _apply(tx, params, tx.init(params), grads, _scalars(1e-3))
  assert int(metrics["applied"]) == 1
  # Adam's first step is -lr * sign(g) (bias-corrected), x10 for explicit params.
  # (float32 parameters near 1 resolve differences to ~1e-7)
  np.testing.assert_allclose(new["mlp"]["kernel"] - 1, -1e-3, atol=2e-7)
  np.testing.assert_allclose(new["logibeta"] - 1, -1e-2, atol=2e-7)
  tx = optimizer.make_optimizer(params, optimizer.OptimSettings(weight_decay=0.1, clip_norm=0.0))
  zero = jax.tree_util.tree_map(jnp.zeros_like, grads)
  # A zero gradient leaves a trainable leaf alone only under a `trainable` mask; without one
  # the decay applies (lr x multiplier x wd), as torch.optim.AdamW does.
  new, _, _ = _apply(tx, params, tx.init(params), zero, _scalars(1e-3))
  np.testing.assert_allclose(new["mlp"]["kernel"] - 1, -1e-4, atol=2e-7)
  np.testing.assert_allclose(new["logibeta"] - 1, -1e-3, atol=2e-7)


def test_clip_matches_optax():
  params = {"w": jnp.zeros(4), "v": jnp.zeros(2)}
  tx = optimizer.make_optimizer(params, optimizer.OptimSettings(clip_norm=1.0, weight_decay=0.0))
  grads = {"w": jnp.full(4, 10.0), "v": jnp.array([3.0, -4.0])}
  ref_tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1.0, weight_decay=0.0))
  ref, _ = ref_tx.update(grads, ref_tx.init(params), params)
  new, _, metrics = _apply(tx, params, tx.init(params), grads, _scalars(0.5))
  np.testing.assert_allclose(new["w"], 0.5 * np.asarray(ref["w"]), rtol=1e-5)
  np.testing.assert_allclose(new["v"], 0.5 * np.asarray(ref["v"]), rtol=1e-5)
  assert float(metrics["grad_norm"]) == pytest.approx(float(optax.global_norm(grads)))


@pytest.mark.parametrize("loss,grad,spike,finite", [
    (np.nan, 1.0, 0.0, 0), (1.0, np.inf, 0.0, 0), (1.0, 2.0, 1.0, 1)])
def test_nonfinite_or_spiking_steps_change_nothing(loss, grad, spike, finite):
  params = {"w": jnp.ones(3)}
  tx = optimizer.make_optimizer(params)
  opt = tx.init(params)
  grads = {"w": jnp.array([grad, 0.0, 0.0], jnp.float32)}
  new, new_opt, metrics = _apply(tx, params, opt, grads, _scalars(spike=spike), loss=loss)
  assert int(metrics["applied"]) == 0 and int(metrics["finite"]) == finite
  np.testing.assert_array_equal(new["w"], params["w"])
  for a, b in zip(jax.tree_util.tree_leaves(new_opt), jax.tree_util.tree_leaves(opt)):
    np.testing.assert_array_equal(a, b)
  assert state_lib.all_finite(new_opt)


def test_trainable_mask_keeps_frozen_leaves_and_their_moments():
  """Reference: the full optax step on every leaf, then the frozen leaves and their Adam
  moments put back by name (PyTorch: a parameter without a gradient is skipped)."""
  params = {"params": {"canonical": {"w": jnp.ones((3, 2))}, "bones": {"w": jnp.ones((2,))},
                       "log_gauss": jnp.zeros((2, 3)), "vis": {"w": jnp.ones(2)}}}
  tx = optimizer.make_optimizer(params, optimizer.OptimSettings(clip_norm=0.0))
  opt = tx.init(params)
  grads1 = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 0.5), params)
  upd, opt = tx.update(grads1, opt, params)  # every moment non-zero
  params = optax.apply_updates(params, upd)
  trainable = {"params": {"canonical": {"w": True}, "bones": {"w": False}, "log_gauss": True,
                          "vis": {"w": True}}}
  grads2 = jax.tree_util.tree_map(lambda p: jnp.full_like(p, -0.25), params)
  grads2["params"]["vis"]["w"] = jnp.zeros(2)  # trainable but without gradient: skipped too
  new, new_opt, metrics = _apply(tx, params, opt, grads2, _scalars(0.1), trainable)
  assert int(metrics["applied"]) == 1
  ref_upd, ref_opt = tx.update(grads2, opt, params)
  ref = optax.apply_updates(params, jax.tree_util.tree_map(lambda u: 0.1 * u, ref_upd))
  np.testing.assert_allclose(new["params"]["canonical"]["w"], ref["params"]["canonical"]["w"],
                             rtol=1e-6)
  np.testing.assert_allclose(new["params"]["log_gauss"], ref["params"]["log_gauss"], rtol=1e-6)
  for frozen in (("bones", "w"), ("vis", "w")):
    np.testing.assert_array_equal(new["params"][frozen[0]][frozen[1]],
                                  params["params"][frozen[0]][frozen[1]])
  for (path, old), got, want in zip(jax.tree_util.tree_flatten_with_path(opt)[0],
                                    jax.tree_util.tree_leaves(new_opt),
                                    jax.tree_util.tree_leaves(ref_opt)):
    names = jax.tree_util.keystr(path)
    if "bones" in names or "vis" in names:
      np.testing.assert_array_equal(np.asarray(got), np.asarray(old), err_msg=names)
    else:  # trained leaves and the step count follow optax
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, err_msg=names)


def test_update_scale_holds_one_group():
  params = {"params": {"root_pose": {"w": jnp.ones(3)}, "bones": {"w": jnp.ones(2)}}}
  tx = optimizer.make_optimizer(params, optimizer.OptimSettings(clip_norm=0.0))
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  key = update.UPDATE_SCALE_PREFIX + "root_pose"
  held, _, _ = _apply(tx, params, tx.init(params), grads, _scalars(1e-2, **{key: 0.0}))
  free, _, _ = _apply(tx, params, tx.init(params), grads, _scalars(1e-2, **{key: 1.0}))
  np.testing.assert_array_equal(held["params"]["root_pose"]["w"], np.ones(3))
  np.testing.assert_allclose(held["params"]["bones"]["w"], free["params"]["bones"]["w"])
  assert float(jnp.abs(free["params"]["root_pose"]["w"] - 1).max()) > 1e-3


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
  other = state_lib.create({"w": jnp.zeros(5), "logibeta": jnp.float32(0)}, tx,
                           {"near_far": np.ones((4, 2))}, 0)
  with pytest.raises(UserError, match="does not match"):
    ck.restore(other)
