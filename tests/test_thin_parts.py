"""What keeps thin parts (legs, ears) in the reconstruction: the density's sharpness schedule
(a cap on beta, applied as a projection after each update) and the bone start at a rig's
joints (the oracle ladder's rung (ii)). References are hand-written formulas and loops."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.losses.term import LossTerm
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.render.settings import RenderSettings
from animdreamer_jax.stages.extraction import plan as plan_lib
from animdreamer_jax.stages.extraction import settings as extraction_settings
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib


def test_beta_cap_schedule_is_log_linear_then_flat():
  render = RenderSettings(final_beta=0.004, sharpen_fraction=0.5)
  total, init_beta = 100, 0.1
  for step in (0, 10, 25, 50, 80, 100):
    fraction = min(step / 50, 1.0)
    want = math.exp((1 - fraction) * math.log(init_beta) + fraction * math.log(0.004))
    assert render.max_beta(init_beta, step, total) == pytest.approx(want, rel=1e-5)
  assert np.isinf(RenderSettings().max_beta(init_beta, 10, total))  # off by default
  with pytest.raises(UserError, match="final_beta"):
    RenderSettings(final_beta=-1.0)


def test_cap_beta_only_lowers_beta():
  params = {"params": {"logibeta": jnp.float32(-math.log(0.05)), "other": jnp.ones(2)}}
  capped = am.cap_beta(params, jnp.float32(0.01))
  assert math.exp(-float(capped["params"]["logibeta"])) == pytest.approx(0.01, rel=1e-5)
  np.testing.assert_array_equal(capped["params"]["other"], params["params"]["other"])
  loose = am.cap_beta(params, jnp.float32(0.2))
  assert float(loose["params"]["logibeta"]) == float(params["params"]["logibeta"])


def test_train_step_projects_after_the_update():
  """A step with `constrain` = the plain optax step, then the cap; the loss pulls beta up."""
  tx = optax.sgd(1.0)
  term = LossTerm("up", lambda p, ctx: ({"up": p["params"]["logibeta"]}, {}))
  scalars = {"w_up": jnp.float32(1.0), "lr": jnp.float32(1.0),
             "grad_spike_threshold": jnp.float32(0.0), "max_beta": jnp.float32(0.01)}
  data = {}
  for constrain, want_beta in ((None, math.exp(-(-math.log(0.02) - 1.0))),
                               (plan_lib.sharpness_constraint, 0.01)):
    kind = step_lib.StepKind("recon", (term,), constrain=constrain)
    # A fresh state each time: the step donates it.
    state = state_lib.create({"params": {"logibeta": jnp.float32(-math.log(0.02))}}, tx, {},
                             seed=0)
    new, metrics = step_lib.make_train_step(kind, tx)(state, data, scalars)
    assert int(metrics["applied"]) == 1
    assert math.exp(-float(new.params["params"]["logibeta"])) == pytest.approx(want_beta,
                                                                                rel=1e-5)


def skin_centroids_loop(rest, weights, count):
  mass = weights.sum(0)
  joints = sorted(range(weights.shape[1]), key=lambda j: (-mass[j], j))[:count]
  out = []
  for j in joints:
    total = np.zeros(3)
    for v in range(rest.shape[0]):
      total += weights[v, j] * rest[v]
    out.append(total / mass[j])
  return np.array(out)


def test_skin_centroids_match_loop():
  rng = np.random.default_rng(0)
  rest = rng.normal(size=(30, 3))
  weights = rng.uniform(size=(30, 6)) * (rng.uniform(size=(30, 6)) > 0.5)
  weights[:, 5] = 0.0  # a joint that moves nothing
  weights /= np.maximum(weights.sum(1, keepdims=True), 1e-9)
  np.testing.assert_allclose(init_lib.skin_centroids(rest, weights, 4),
                             skin_centroids_loop(rest, weights, 4), rtol=1e-5, atol=1e-6)
  with pytest.raises(UserError, match="only 5 joints"):
    init_lib.skin_centroids(rest, weights, 6)


def test_place_bones_moves_every_frame_by_the_centres():
  config = am.tiny_config(num_bones=3)
  model = am.ArticulatedModel(config)
  variables = init_lib.init_variables(model, 0)
  centres = np.array([[0.1, 0.2, -0.1], [0.0, -0.3, 0.2], [-0.2, 0.0, 0.0]], np.float32)
  moved = init_lib.place_bones(model, variables, centres)
  frames = jnp.arange(config.num_frames, dtype=jnp.int32)
  before = model.apply(variables, frames, method="bones").trans
  after = model.apply(moved, frames, method="bones").trans
  np.testing.assert_allclose(after - before, np.broadcast_to(centres, after.shape), atol=1e-5)
  rest_shift = (model.apply(moved, method="rest_bones").trans
                - model.apply(variables, method="rest_bones").trans)
  np.testing.assert_allclose(rest_shift, centres, atol=1e-5)
  with pytest.raises(UserError, match="bone centres"):
    init_lib.place_bones(model, variables, centres[:2])


def test_bone_start_setting_is_checked():
  with pytest.raises(UserError, match="config.init.bones"):
    extraction_settings.InitSettings(bones="joints")
