"""Dense layers and MLPs with PyTorch's default initialisation (lab4d's nets).

PyTorch `nn.Linear` draws weights from kaiming_uniform(a=sqrt(5)), i.e.
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and biases from the same range. Flax's
defaults (lecun_normal, zero bias) give different starting outputs; lab4d's
"small initial bone offsets" and its sphere-fit initialisation assume the
PyTorch scheme, so every layer here uses it.
"""

from __future__ import annotations

import functools
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


MATMUL_DTYPES = ("float32", "bfloat16")


@functools.lru_cache(maxsize=None)
def product_in(dtype: str) -> Callable:
  """`lax.dot_general` for layers: operands rounded to `dtype`, a float32 result.

  "float32" is the plain product. "bfloat16" (`narrow_matmul`) rounds the operands, and in
  the backward pass the incoming gradient, to bfloat16 and accumulates in float32: half the
  bytes stored for the backward pass and, where the CPU has bf16 dot instructions
  (AVX512-BF16, AMX) or on a GPU, about twice the matmul rate. One function object per
  dtype, so modules holding it compare equal.
  """
  if dtype not in MATMUL_DTYPES:
    raise ValueError(f"matmul dtype {dtype!r}: use one of {MATMUL_DTYPES}")
  if dtype == "float32":
    return jax.lax.dot_general
  narrow = jnp.dtype(dtype)

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                  **kwargs):
    del precision, preferred_element_type, kwargs
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or rhs.ndim != 2:
      raise ValueError("narrow products are x (..., C) @ kernel (C, D) only")
    return narrow_matmul(lhs, rhs, narrow)
  return dot_general


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def narrow_matmul(x: jnp.ndarray, kernel: jnp.ndarray, dtype) -> jnp.ndarray:
  """x @ kernel with both operands in `dtype`, accumulated and returned in float32.

  Its gradients are products in `dtype` too (the incoming gradient rounded to it), each
  accumulated in float32; differentiable again (the eikonal term differentiates a gradient).
  (..., C) x (C, D) -> (..., D).
  """
  return _narrow_forward(x, kernel, dtype)[0]


def _narrow_forward(x, kernel, dtype):
  xn, kn = x.astype(dtype), kernel.astype(dtype)
  return jnp.matmul(xn, kn, preferred_element_type=jnp.float32), (xn, kn)


def _narrow_backward(dtype, saved, grad):
  xn, kn = saved
  gn = grad.astype(dtype)
  # Written as dot_generals on the stored operands, not with kernel.T: XLA:CPU runs
  # g @ kernel.T through a transpose at a third of the rate (measured, bf16 with AMX).
  dx = jax.lax.dot_general(gn, kn, (((gn.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32)
  rows = list(range(xn.ndim - 1))
  dk = jax.lax.dot_general(xn, gn, ((rows, rows), ((), ())), preferred_element_type=jnp.float32)
  return dx, dk


narrow_matmul.defvjp(_narrow_forward, _narrow_backward)


def matmul(x: jnp.ndarray, kernel: jnp.ndarray, dtype: str = "float32") -> jnp.ndarray:
  """x @ kernel over x's last axis with `product_in(dtype)`. (..., C) x (C, D) -> (..., D)."""
  return product_in(dtype)(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))


class TorchDense(nn.Module):
  """`nn.Dense` with PyTorch `nn.Linear` initialisation.

  Attributes:
    features: output width.
    use_bias: add a bias.
    matmul_dtype: operand dtype of the product (`product_in`).
  """
  features: int
  use_bias: bool = True
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(..., fan_in) -> (..., features)."""
    fan_in = x.shape[-1]
    return nn.Dense(self.features, use_bias=self.use_bias,
                    kernel_init=torch_kernel_init,
                    bias_init=torch_uniform_init(fan_in),
                    dot_general=product_in(self.matmul_dtype), name="dense")(x)


class SplitDense(nn.Module):
  """Dense layer on the concatenation of several inputs, applied piecewise.

  Equal to TorchDense(concat(inputs)) (same fan-in for the initialisation), but
  each input has its own kernel block, so a per-frame input (time embedding,
  appearance code) of shape (F, 1, C) is multiplied once per frame and then
  broadcast-added to the per-sample part (F, P, C') instead of being tiled to
  every sample first.

  Attributes:
    features: output width.
    matmul_dtype: operand dtype of the products (`product_in`).
  """
  features: int
  matmul_dtype: str = "float32"

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
      term = matmul(x, kernel, self.matmul_dtype)
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
    matmul_dtype: operand dtype of every layer's product (`product_in`).
  """
  depth: int
  width: int
  out_features: int
  skips: Sequence[int] = (4,)
  final_activation: bool = False
  matmul_dtype: str = "float32"

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
        h = SplitDense(self.width, self.matmul_dtype, name=f"hidden_{i}")(*inputs, row_scales=scales)
      elif i in self.skips:
        h = SplitDense(self.width, self.matmul_dtype, name=f"hidden_{i}")(*inputs, h, row_scales=scales + (None,))
      else:
        h = TorchDense(self.width, matmul_dtype=self.matmul_dtype, name=f"hidden_{i}")(h)
      h = nn.relu(h)
    if self.depth == 0:
      out = SplitDense(self.out_features, self.matmul_dtype, name="output")(*inputs, row_scales=scales)
    else:
      out = TorchDense(self.out_features, matmul_dtype=self.matmul_dtype, name="output")(h)
    return nn.relu(out) if self.final_activation else out
