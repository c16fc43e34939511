"""Dense layers and MLPs with PyTorch's default initialisation (lab4d's nets).

PyTorch `nn.Linear` draws weights from kaiming_uniform(a=sqrt(5)), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same range. Flax's
defaults (lecun_normal, zero bias) give different starting outputs; lab4d's
"small initial bone offsets" and its sphere-fit initialisation assume the
PyTorch scheme, so every layer here uses it.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# kaiming_uniform(a=sqrt(5)): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1/sqrt(fan_in),
# which is variance_scaling(1/3, fan_in, uniform).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_uniform_init(fan_in: int) -> Callable:
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) initialiser with an explicit fan-in.

  PyTorch's `nn.Linear` bias, and its weight where the kernel is split into
  blocks whose own shape does not carry the layer's fan-in (`SplitDense`).
  """
  bound = 1.0 / float(max(fan_in, 1)) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class TorchDense(nn.Module):
  """`nn.Dense` with PyTorch `nn.Linear` initialisation.

  Attributes:
    features: output width.
    use_bias: add a bias.
  """
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(..., fan_in) -> (..., features)."""
    fan_in = x.shape[-1]
    return nn.Dense(self.features, use_bias=self.use_bias,
                    kernel_init=torch_kernel_init,
                    bias_init=torch_uniform_init(fan_in), name="dense")(x)


class SplitDense(nn.Module):
  """Dense layer on the concatenation of several inputs, applied piecewise.

  Equal to TorchDense(concat(inputs)) (same fan-in for the initialisation), but
  each input has its own kernel block, so a per-frame input (time embedding,
  appearance code) of shape (F, 1, C) is multiplied once per frame and then
  broadcast-added to the per-sample part (F, P, C') instead of being tiled to
  every sample first.

  Attributes:
    features: output width.
  """
  features: int

  @nn.compact
  def __call__(self, *inputs: jnp.ndarray,
               row_scales: Optional[Sequence[Optional[jnp.ndarray]]] = None) -> jnp.ndarray:
    """Applies the layer.

    Args:
      *inputs: broadcast-compatible (..., C_i) arrays.
      row_scales: optional per-input (C_i,) factors on the input channels
        (or None entries). They multiply the kernel rows, not the inputs:
        x @ (diag(s) K) == (x * s) @ K at the cost of a C_i x features product,
        e.g. a coarse-to-fine window applied once instead of per sample.

    Returns:
      (..., features).
    """
    fan_in = sum(int(x.shape[-1]) for x in inputs)
    out = None
    for i, x in enumerate(inputs):
      kernel = self.param(f"kernel_{i}", torch_uniform_init(fan_in),
                          (x.shape[-1], self.features))
      if row_scales is not None and row_scales[i] is not None:
        kernel = kernel * row_scales[i].astype(kernel.dtype)[:, None]
      term = x @ kernel
      out = term if out is None else out + term
    bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
    return out + bias


class MLP(nn.Module):
  """lab4d `BaseMLP`: `depth` ReLU layers of `width`, skips, one output layer.

  Layer i in `skips` sees concat([input, hidden]). The output layer maps to
  `out_features` and is followed by ReLU only if `final_activation`.

  Attributes:
    depth: number of hidden layers D.
    width: hidden width W.
    out_features: output width.
    skips: hidden-layer indices that re-read the input.
    final_activation: ReLU after the output layer (lab4d `final_act`).
  """
  depth: int
  width: int
  out_features: int
  skips: Sequence[int] = (4,)
  final_activation: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray, condition: Optional[jnp.ndarray] = None,
               input_scale: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Applies the MLP.

    Args:
      x: (..., C) per-sample input.
      condition: optional broadcastable (..., C') input concatenated to x at
        the first layer (and at skips), applied piecewise (see SplitDense).
      input_scale: optional (C,) factors on x's channels wherever x is read
        (folded into the kernels; see SplitDense).

    Returns:
      (..., out_features).
    """
    inputs = (x,) if condition is None else (x, condition)
    scales = (input_scale,) + (None,) * (len(inputs) - 1)
    h = None
    for i in range(self.depth):
      if i == 0:
        h = SplitDense(self.width, name=f"hidden_{i}")(*inputs, row_scales=scales)
      elif i in self.skips:
        h = SplitDense(self.width, name=f"hidden_{i}")(*inputs, h, row_scales=scales + (None,))
      else:
        h = TorchDense(self.width, name=f"hidden_{i}")(h)
      h = nn.relu(h)
    if self.depth == 0:
      out = SplitDense(self.out_features, name="output")(*inputs, row_scales=scales)
    else:
      out = TorchDense(self.out_features, name="output")(h)
    return nn.relu(out) if self.final_activation else out
