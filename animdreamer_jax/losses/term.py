"""What a loss term is: the unit a stage composes its objective from.

A term is a pure function `fn(params, ctx) -> (losses, metrics)`:
- `losses`: {name: () unweighted loss}; the train step adds
  `ctx.scalars["w_" + name] * loss` for each, so every weight is a scheduled
  scalar argument of the jitted step (never a constant baked into it);
- `metrics`: {name: () value} to log (not differentiated).
`ctx` carries what a term may read besides the parameters: the stage's device
data, the host-refreshed arrays of the state (`aux`: near/far, box, proxy
points), the scheduled scalars, a PRNG key of its own, the step number and
the step's device layout: a term marks its batch with `ctx.split(...)` so that
on several devices each computes its share (`parallel`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from animdreamer_jax import parallel


class StepContext(NamedTuple):
  """Inputs of a loss term besides the parameters (see the module docstring).

  Attributes:
    data: the stage's device-resident inputs (a pytree; not donated).
    aux: dict of arrays the host refreshes between rounds (TrainState.aux).
    scalars: dict of () float32 scheduled values (weights "w_<loss>", lr, ...).
    key: this term's PRNG key for this step.
    step: () int32 step number.
    layout: the devices the step runs on (`parallel.Layout`; one device by default).
  """
  data: Any
  aux: dict
  scalars: dict
  key: jax.Array
  step: jnp.ndarray
  layout: parallel.Layout = parallel.Layout()

  def split(self, tree: Any, axis: int = 0) -> Any:
    """`tree`'s leaves split over the step's devices along `axis` (values unchanged)."""
    return self.layout.split(tree, axis)

  def gather(self, tree: Any) -> Any:
    """`tree` whole on every device again (values unchanged)."""
    return self.layout.gather(tree)


TermFn = Callable[[Any, StepContext], tuple[dict, dict]]


@dataclasses.dataclass(frozen=True)
class LossTerm:
  """A named loss term: `fn(params, ctx) -> ({loss name: value}, {metric: value})`.

  splits: (what sets it, size) of every batch axis `fn` splits over the devices
  (`ctx.split`), so a trainer can refuse a device count that does not divide
  one before the first step.
  """
  name: str
  fn: TermFn
  splits: tuple[tuple[str, int], ...] = ()
