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
import numpy as np

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def narrow_dense(inputs: tuple, kernels: tuple, bias: Optional[jnp.ndarray], dtype) -> jnp.ndarray:
  """sum_i inputs[i] @ kernels[i] + bias, the products in `dtype` (bfloat16) accumulated in float32.

  The samples-first layout, for any caller; the canonical field uses `feature_major_dense`,
  whose kernel gradient is a bf16 product too.

  Operands are rounded to `dtype`; so, for the input and bias gradients, is the incoming
  gradient: where the CPU has bf16 dot instructions (AVX512-BF16, AMX) or on a GPU, two to
  three times the matmul rate. The input gradient is a dot_general on the stored operands
  (XLA:CPU turns `g @ k.T` into a transpose and a float32 product, a third of the rate); the
  kernel gradient, a product over the rows that XLA:CPU only runs in float32, is taken in
  float32. Differentiable again (the eikonal term differentiates a gradient).

  Args:
    inputs: arrays (..., C_i), broadcast-compatible in their leading axes.
    kernels: (C_i, D) each.
    bias: (D,) or None.
    dtype: the products' operand dtype.

  Returns:
    (..., D) float32.
  """
  return _narrow_dense_forward(inputs, kernels, bias, dtype)[0]


def _narrow_dense_forward(inputs, kernels, bias, dtype):
  narrow_k = tuple(k.astype(dtype) for k in kernels)
  out = None
  for x, k in zip(inputs, narrow_k):
    term = jax.lax.dot_general(x.astype(dtype), k, (((x.ndim - 1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)
    out = term if out is None else out + term
  if bias is not None:
    out = out + bias
  # The inputs are kept as given: the kernel gradient is a float32 product (below).
  return out, (tuple(inputs), narrow_k, bias is not None)


def _sum_to_shape(a: jnp.ndarray, shape: tuple) -> jnp.ndarray:
  """a summed over the axes that broadcasting added to `shape`."""
  lead = a.ndim - len(shape)
  a = jnp.sum(a, axis=tuple(range(lead))) if lead else a
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and a.shape[i] != 1)
  return jnp.sum(a, axis=axes, keepdims=True) if axes else a


def _narrow_dense_backward(dtype, saved, grad):
  inputs, narrow_k, has_bias = saved
  g = grad.astype(dtype)  # one rounding, shared by the input gradients and the bias
  rows = tuple(range(grad.ndim - 1))
  d_in, d_k = [], []
  for x, k in zip(inputs, narrow_k):
    dx = jax.lax.dot_general(g, k, (((g.ndim - 1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    d_in.append(_sum_to_shape(dx, x.shape).astype(x.dtype))
    # A product over the rows: XLA:CPU has no fast bf16 form of it and would convert both
    # operands back to float32 first, so it is taken in float32 from the start.
    full = jnp.broadcast_to(x, grad.shape[:-1] + x.shape[-1:])
    d_k.append(jax.lax.dot_general(full, grad, ((rows, rows), ((), ())),
                                   preferred_element_type=jnp.float32))
  d_bias = jnp.sum(g, axis=rows, dtype=jnp.float32) if has_bias else None
  return tuple(d_in), tuple(d_k), d_bias


narrow_dense.defvjp(_narrow_dense_forward, _narrow_dense_backward)


def _transposed(kernel: jnp.ndarray) -> jnp.ndarray:
  """kernel.T written as a gather, so that the transposed copy really exists.

  XLA folds a transpose into the dot that reads it; the folded form (a product over the
  kernel's first axis) is one XLA:CPU converts to float32 and runs at a fifth of the bf16
  rate. A gather of the (small) kernel is not folded.
  """
  rows, cols = kernel.shape
  order = np.arange(rows * cols).reshape(rows, cols).T.reshape(-1)
  return kernel.reshape(-1)[order].reshape(cols, rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def feature_major_dense(inputs: tuple, kernels: tuple, bias: Optional[jnp.ndarray],
                        dtype) -> jnp.ndarray:
  """sum_i kernels[i].T @ inputs[i] + bias on feature-major (C, *rows) arrays, products in `dtype`.

  The same layer as `narrow_dense` with the feature axis first. Every product then has the
  form XLA:CPU's bf16 kernels run at full rate: the output kernel.T @ x, the input gradient
  kernel @ g, and the kernel gradient x . g contracted over the rows, which in the
  samples-first layout is a column product that XLA:CPU only runs in float32 (measured: an
  8 x 256 MLP's forward and backward at 8192 samples, 76 ms samples-first, 27 ms here).
  Operands and the incoming gradient are rounded to `dtype` once, sums are float32.
  Differentiable again (the eikonal term differentiates a gradient).

  Args:
    inputs: (C_i, *rows_i) arrays of one rank, broadcast-compatible in their rows.
    kernels: (C_i, D) each (`nn.Dense` layout).
    bias: (D,) or None.
    dtype: the products' operand dtype.

  Returns:
    (D, *rows) float32.
  """
  return _feature_major_forward(inputs, kernels, bias, dtype)[0]


def _feature_major_forward(inputs, kernels, bias, dtype):
  if len({x.ndim for x in inputs}) > 1:
    # Broadcasting aligns trailing axes: a missing row axis would pair channels with rows.
    raise ValueError(f"feature_major_dense: inputs of one rank needed, got shapes "
                     f"{[tuple(x.shape) for x in inputs]}")
  narrow_k = tuple(k.astype(dtype) for k in kernels)
  out = None
  for x, k in zip(inputs, narrow_k):
    term = jax.lax.dot_general(_transposed(k), x.astype(dtype),
                               (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    out = term if out is None else out + term
  if bias is not None:
    out = out + bias.reshape(bias.shape + (1,) * (out.ndim - 1))
  return out, (tuple(inputs), narrow_k, bias is not None)


def _feature_major_backward(dtype, saved, grad):
  inputs, narrow_k, has_bias = saved
  g = grad.astype(dtype)  # one rounding, shared by every product and the bias
  rows = tuple(range(1, g.ndim))
  d_in, d_k = [], []
  for x, k in zip(inputs, narrow_k):
    dx = jax.lax.dot_general(k, g, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    d_in.append(_sum_to_shape(dx, x.shape).astype(x.dtype))
    # A broadcast input (one code per frame) meets the gradient summed over its copies.
    g_x = (g if x.shape[1:] == g.shape[1:]
           else _sum_to_shape(grad, grad.shape[:1] + x.shape[1:]).astype(dtype))
    d_k.append(jax.lax.dot_general(x.astype(dtype), g_x, ((rows, rows), ((), ())),
                                   preferred_element_type=jnp.float32))
  d_bias = jnp.sum(g, axis=rows, dtype=jnp.float32) if has_bias else None
  return tuple(d_in), tuple(d_k), d_bias


feature_major_dense.defvjp(_feature_major_forward, _feature_major_backward)


def check_matmul_dtype(dtype: str) -> None:
  if dtype not in MATMUL_DTYPES:
    raise ValueError(f"matmul dtype {dtype!r}: use one of {MATMUL_DTYPES}")


class DenseParams(nn.Module):
  """The kernel and bias `nn.Dense` would create (same names, shapes and initialisers)."""
  features: int
  fan_in: int
  use_bias: bool = True

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", torch_kernel_init, (self.fan_in, self.features))
    bias = (self.param("bias", torch_uniform_init(self.fan_in), (self.features,))
            if self.use_bias else None)
    return kernel, bias


class TorchDense(nn.Module):
  """`nn.Dense` with PyTorch `nn.Linear` initialisation.

  Attributes:
    features: output width.
    use_bias: add a bias.
    matmul_dtype: "float32", or "bfloat16" products (`narrow_dense`; same parameters).
  """
  features: int
  use_bias: bool = True
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jnp.ndarray, feature_major: bool = False) -> jnp.ndarray:
    """(..., fan_in) -> (..., features); feature_major: (fan_in, ...) -> (features, ...)."""
    fan_in = x.shape[0] if feature_major else x.shape[-1]
    check_matmul_dtype(self.matmul_dtype)
    if feature_major:
      kernel, bias = DenseParams(self.features, fan_in, self.use_bias, name="dense")()
      return feature_major_dense((x,), (kernel,), bias, jnp.dtype(self.matmul_dtype))
    if self.matmul_dtype != "float32":
      kernel, bias = DenseParams(self.features, fan_in, self.use_bias, name="dense")()
      return narrow_dense((x,), (kernel,), bias, jnp.dtype(self.matmul_dtype))
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
    matmul_dtype: "float32", or "bfloat16" products (`narrow_dense`).
  """
  features: int
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, *inputs: jnp.ndarray,
               row_scales: Optional[Sequence[Optional[jnp.ndarray]]] = None,
               feature_major: bool = False) -> jnp.ndarray:
    """Applies the layer.

    Args:
      *inputs: broadcast-compatible (..., C_i) arrays.
      row_scales: optional per-input (C_i,) factors on the input channels
        (or None entries). They multiply the kernel rows, not the inputs:
        x @ (diag(s) K) == (x * s) @ K at the cost of a C_i x features product,
        e.g. a coarse-to-fine window applied once instead of per sample.
      feature_major: the inputs are (C_i, ...) of one rank and the output is
        (features, ...) (`feature_major_dense`; same parameters).

    Returns:
      (..., features), or (features, ...) when feature_major.
    """
    channels = [int(x.shape[0] if feature_major else x.shape[-1]) for x in inputs]
    fan_in = sum(channels)
    check_matmul_dtype(self.matmul_dtype)
    kernels = []
    for i, c in enumerate(channels):
      kernel = self.param(f"kernel_{i}", torch_uniform_init(fan_in), (c, self.features))
      if row_scales is not None and row_scales[i] is not None:
        kernel = kernel * row_scales[i].astype(kernel.dtype)[:, None]
      kernels.append(kernel)
    bias = self.param("bias", torch_uniform_init(fan_in), (self.features,))
    if feature_major:
      return feature_major_dense(tuple(inputs), tuple(kernels), bias, jnp.dtype(self.matmul_dtype))
    if self.matmul_dtype != "float32":
      return narrow_dense(tuple(inputs), tuple(kernels), bias, jnp.dtype(self.matmul_dtype))
    out = None
    for x, kernel in zip(inputs, kernels):
      term = x @ kernel
      out = term if out is None else out + term
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
    matmul_dtype: every layer's products, "float32" or "bfloat16" (`narrow_dense`).
  """
  depth: int
  width: int
  out_features: int
  skips: Sequence[int] = (4,)
  final_activation: bool = False
  matmul_dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jnp.ndarray, condition: Optional[jnp.ndarray] = None,
               input_scale: Optional[jnp.ndarray] = None,
               feature_major: bool = False) -> jnp.ndarray:
    """Applies the MLP.

    Args:
      x: (..., C) per-sample input.
      condition: optional broadcastable (..., C') input concatenated to x at
        the first layer (and at skips), applied piecewise (see SplitDense).
      input_scale: optional (C,) factors on x's channels wherever x is read
        (folded into the kernels; see SplitDense).
      feature_major: x and condition are (C, ...) of one rank and the output
        is (out_features, ...); hidden activations are kept in the product
        dtype (`feature_major_dense`).

    Returns:
      (..., out_features), or (out_features, ...) when feature_major.
    """
    inputs = (x,) if condition is None else (x, condition)
    scales = (input_scale,) + (None,) * (len(inputs) - 1)
    fm = {"feature_major": feature_major}
    h = None
    for i in range(self.depth):
      if i == 0:
        h = SplitDense(self.width, self.matmul_dtype, name=f"hidden_{i}")(*inputs, row_scales=scales, **fm)
      elif i in self.skips:
        h = SplitDense(self.width, self.matmul_dtype, name=f"hidden_{i}")(
            *inputs, h, row_scales=scales + (None,), **fm)
      else:
        h = TorchDense(self.width, matmul_dtype=self.matmul_dtype, name=f"hidden_{i}")(h, **fm)
      h = nn.relu(h)
      if feature_major:
        # Stored once, narrow: the next layer rounds its operand to this dtype anyway.
        h = h.astype(self.matmul_dtype)
    if self.depth == 0:
      out = SplitDense(self.out_features, self.matmul_dtype, name="output")(*inputs, row_scales=scales, **fm)
    else:
      out = TorchDense(self.out_features, matmul_dtype=self.matmul_dtype, name="output")(h, **fm)
    return nn.relu(out) if self.final_activation else out
