"""The loop's recovery from a round whose surface leaves its box, on a toy plan.

The toy "animal" is a sphere of radius 0.2 whose centre is the root-pose group's
`shift`; its only loss pushes the centre along +x by 0.6 per round, so every
round carries the surface out of the previous surface's box. With recovery
scalars that hold the root-pose group, each round is redone once from its start
with the centre held, and the run ends with the sphere where it started; without
them the sphere ends 0.6 per round away and the round log says where it was found.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from animdreamer_jax.losses.term import LossTerm
from animdreamer_jax.train import loop
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import step as step_lib
from animdreamer_jax.train import update

ROUNDS, ITERS, FRAMES, RADIUS = 3, 4, 2, 0.2
HOLD = {update.UPDATE_SCALE_PREFIX + "root_pose": np.float32(0.0)}


class SphereOnRoot:
  """A model with the two methods the loop uses: "sdf" and "root_pose"."""

  def apply(self, params, x, method):
    inner = params["params"]
    if method == "sdf":
      return jnp.linalg.norm(x - inner["root_pose"]["shift"], axis=-1) - RADIUS
    if method == "root_pose":  # object 2 units in front of every frame's camera
      pose = jnp.eye(4).at[2, 3].set(2.0)
      return jnp.broadcast_to(pose, (x.shape[0], 4, 4))
    raise ValueError(method)


def push_along_x(params, ctx):
  return {"push": -params["params"]["root_pose"]["shift"][0]}, {}


def make_trainer(workdir, recovery):
  tx = optax.sgd(1.0)
  params = {"params": {"root_pose": {"shift": jnp.zeros(3)}, "other": {"w": jnp.zeros(())}}}
  aux = {"aabb": np.array([[-1.0] * 3, [1.0] * 3], np.float32),
         "proxy_points": np.zeros((8, 3), np.float32),
         "near_far": np.tile(np.array([[1.0, 3.0]], np.float32), (FRAMES, 1))}
  plan = loop.TrainingPlan(
      name="toy", model=SphereOnRoot(), num_frames=FRAMES, data={}, tx=tx,
      kinds={"push": step_lib.StepKind("push", (LossTerm("push", push_along_x),))},
      # 0.15 per step: four steps carry the sphere 0.6 along x, out of its box.
      schedule=lambda step, total: ("push", {"lr": np.float32(0.15),
                                             "grad_spike_threshold": np.float32(0.0),
                                             "w_push": np.float32(1.0),
                                             update.UPDATE_SCALE_PREFIX + "root_pose":
                                             np.float32(1.0)}),
      initial_state=lambda fit: state_lib.create(params, tx, aux, seed=0),
      recovery_scalars=HOLD if recovery else None)
  settings = loop.TrainSettings(num_rounds=ROUNDS, iters_per_round=ITERS, mc_resolution=32,
                                proxy_points=8, tensorboard=False, compilation_cache="",
                                log_image_every_rounds=0)
  return loop.Trainer(plan, settings, workdir)


@pytest.mark.parametrize("recovery", [True, False])
def test_rounds_whose_surface_leaves_the_box_are_redone_with_the_hold(tmp_path, recovery):
  trainer = make_trainer(tmp_path, recovery)
  state, info = loop.train(trainer, progress=False)
  assert info["steps"] == ROUNDS * ITERS and int(state.step) == ROUNDS * ITERS
  shift = np.asarray(state.params["params"]["root_pose"]["shift"])
  rows = (tmp_path / loop.ROUND_LOG).read_text().splitlines()
  if recovery:
    assert info["redone_rounds"] == ROUNDS
    np.testing.assert_allclose(shift, 0.0)
    assert len(rows) == 2 * ROUNDS  # each round logged when lost, then when redone
    kept = loop.read_round_log(tmp_path)
    assert [r["search_box"] for r in kept] == [0.0] * ROUNDS
    assert [r["recovering"] for r in kept] == [1.0] * ROUNDS
  else:
    assert info["redone_rounds"] == 0
    np.testing.assert_allclose(shift, [ROUNDS * 0.6, 0.0, 0.0], atol=1e-6)
    kept = loop.read_round_log(tmp_path)
    assert len(kept) == ROUNDS and all(r["search_box"] > 0 for r in kept)
    # The box followed the sphere: its centre is the sphere's at the end.
    aabb = np.asarray(state.aux["aabb"])
    np.testing.assert_allclose(aabb.mean(0), shift, atol=0.1)


class ShrinkingSphere(SphereOnRoot):
  """A sphere of radius 0.3 + `grow` (in the root-pose group) at the origin."""

  def apply(self, params, x, method):
    if method == "sdf":
      return jnp.linalg.norm(x, axis=-1) - (0.3 + params["params"]["root_pose"]["shift"][0])
    return super().apply(params, x, method)


def test_a_surface_that_shrinks_to_a_fragment_counts_as_lost(tmp_path):
  """The sphere shrinks from radius 0.3 to 0.1 in the first round (a third of its box):
  that round is redone with the hold; with train.min_surface_size 0 it is not."""
  def push_inwards(params, ctx):
    return {"push": params["params"]["root_pose"]["shift"][0]}, {}

  for min_size, redone in ((0.5, 1), (0.0, 0)):
    workdir = tmp_path / f"min_size_{min_size}"
    trainer = make_trainer(workdir, recovery=True)
    kind = step_lib.StepKind("push", (LossTerm("push", push_inwards),))
    plan = dataclasses.replace(
        trainer.plan, model=ShrinkingSphere(), kinds={"push": kind},
        # 0.05 per step: four steps take 0.2 off the radius; one round only.
        schedule=lambda step, total: ("push", {"lr": np.float32(0.05),
                                               "grad_spike_threshold": np.float32(0.0),
                                               "w_push": np.float32(1.0),
                                               update.UPDATE_SCALE_PREFIX + "root_pose":
                                               np.float32(1.0)}))
    settings = dataclasses.replace(trainer.settings, num_rounds=1, min_surface_size=min_size)
    state, info = loop.train(loop.Trainer(plan, settings, workdir), progress=False)
    assert info["redone_rounds"] == redone
    radius = 0.3 + float(state.params["params"]["root_pose"]["shift"][0])
    np.testing.assert_allclose(radius, 0.3 if redone else 0.1, atol=1e-6)
