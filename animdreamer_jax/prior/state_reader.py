"""Reading tensors out of a flat PyTorch-style state dict during conversion.

Shared by the VAE and text-encoder converters (`prior.vae`, `prior.text_encoder`):
each checks every tensor's shape against the config and reports which keys it
used, so that `prior.convert` can reject checkpoints with keys nobody read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from animdreamer_jax.errors import UserError


class StateReader:
  """Takes tensors out of a flat state dict by name, checking shapes and recording what was used.

  Attributes:
    state: flat name -> array (numpy or anything `np.asarray` takes).
    prefix: prepended to every name (where the module lives in `state`).
    consumed: the full keys taken or deliberately skipped so far.
  """

  def __init__(self, state: Mapping[str, Any], prefix: str):
    self.state = state
    self.prefix = prefix
    self.consumed: set[str] = set()

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 tensor `prefix + name`; UserError if it is missing or not `shape`."""
    key = self.prefix + name
    if key not in self.state:
      raise UserError(f"{key}: missing from the checkpoint")
    value = np.asarray(self.state[key], dtype=np.float32)
    if value.shape != tuple(shape):
      raise UserError(f"{key}: shape {value.shape}, expected {tuple(shape)}")
    self.consumed.add(key)
    return value

  def skip(self, name: str) -> None:
    """Marks a key as deliberately unused (if present)."""
    if self.prefix + name in self.state:
      self.consumed.add(self.prefix + name)
