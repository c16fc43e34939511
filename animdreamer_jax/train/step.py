"""The jitted train step, built from loss terms: the same for every stage and every kind of step.

A stage describes each kind of step it takes (reconstruction, CSD, ...) as a
`StepKind`: the loss terms it sums and which parameters it trains.
`make_train_step` turns a kind into ONE `jax.jit` function

  step(state, data, scalars) -> (new_state, metrics)

with `state` donated. Everything scheduled on the host (learning rate, loss
weights "w_<loss>", coarse-to-fine alpha, ...) arrives in `scalars`, a dict of
float32 scalars, so changing them never re-traces the step. Inside, the loss
is sum over terms and their losses of scalars["w_" + name] x loss, with each
term given its own PRNG key fold_in(fold_in(state.key, state.step), i); its
gradient goes through the one update rule (`train.update.apply_gradients`).
Parameters outside `trainable` are stop_gradient-ed before the terms run, so
their backward is never built.

On several devices (`parallel.Layout` with a mesh) the step is jitted with
every argument and result replicated on the mesh; the terms split their
batches (`StepContext.split`) and XLA reduces the gradient across devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import optax

from animdreamer_jax import parallel
from animdreamer_jax.losses.term import LossTerm, StepContext
from animdreamer_jax.train import state as state_lib
from animdreamer_jax.train import update


@dataclasses.dataclass(frozen=True, eq=False)
class StepKind:
  """One kind of train step of a stage.

  Attributes:
    name: e.g. "reconstruction", "csd" (its metrics are logged under this name).
    terms: the loss terms it sums.
    trainable: None (every parameter) or a tree of Python bools like the
      parameters: the leaves this kind trains (see train.update).
    constrain: None, or (params, scalars) -> params: projects the updated
      parameters onto the stage's constraints after every update (projected
      gradient descent; e.g. a scheduled bound on a parameter, its bound one
      of the scalars).
  """
  name: str
  terms: tuple[LossTerm, ...]
  trainable: Optional[Any] = None
  constrain: Optional[Callable[[Any, dict], Any]] = None


def _freeze(params: Any, trainable: Optional[Any]) -> Any:
  if trainable is None:
    return params
  return jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params,
                                trainable)


def total_loss(kind: StepKind, params: Any, ctx: StepContext) -> tuple[jnp.ndarray, dict]:
  """sum_terms sum_losses scalars["w_<loss>"] x loss, and every term's losses and metrics."""
  total = jnp.zeros((), jnp.float32)
  metrics = {}
  for index, term in enumerate(kind.terms):
    term_ctx = ctx._replace(key=jax.random.fold_in(ctx.key, index))
    losses, term_metrics = term.fn(params, term_ctx)
    for name, value in losses.items():
      total = total + ctx.scalars[f"w_{name}"] * value
    metrics.update(losses)
    metrics.update(term_metrics)
  return total, metrics


def check_layout(kinds: Iterable[StepKind], layout: parallel.Layout) -> None:
  """UserError naming the setting if a batch axis some term splits does not divide over the
  layout's devices (before anything runs)."""
  for kind in kinds:
    for term in kind.terms:
      for what, size in term.splits:
        layout.check_divisible(size, what)


def make_train_step(kind: StepKind, tx: optax.GradientTransformation,
                    layout: parallel.Layout = parallel.Layout()):
  """The jitted step(state, data, scalars) -> (state, metrics) of a step kind; state is donated.

  layout: the devices it runs on; with a mesh, its arguments must be replicated there
  (`layout.place`) and its results are.

  metrics: "loss" (the weighted total), every term's unweighted losses and
  metrics, and the update rule's "grad_norm", "finite", "applied".
  """

  def step(state: state_lib.TrainState, data: Any, scalars: dict):
    ctx = StepContext(data=data, aux=state.aux, scalars=scalars,
                      key=jax.random.fold_in(state.key, state.step), step=state.step,
                      layout=layout)

    def loss_fn(params):
      return total_loss(kind, _freeze(params, kind.trainable), ctx)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, update_metrics = update.apply_gradients(
        tx, state.params, state.opt_state, loss, grads, scalars, kind.trainable)
    if kind.constrain is not None:
      params = kind.constrain(params, scalars)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {"loss": loss, **metrics, **update_metrics}

  if layout.mesh is None:
    return jax.jit(step, donate_argnums=(0,))
  replicated = layout.replicated
  return jax.jit(step, donate_argnums=(0,), in_shardings=(replicated,) * 3,
                 out_shardings=(replicated, replicated))
