"""Attention for the MVDream UNet: plain scaled dot-product attention and LDM's CrossAttention.

Parameter names mirror LDM's `CrossAttention` (`to_q`, `to_k`, `to_v` without bias, `to_out.0` with bias) so
that checkpoint conversion is a rename plus a transpose.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """Softmax(q k^T / sqrt(d)) v with the logits and the softmax in float32.

  LDM computes the logits in float32 even under fp16 autocast (`ATTN_PRECISION`), so do we.

  Args:
    query: (B, Lq, H, D).
    key: (B, Lk, H, D).
    value: (B, Lk, H, D).

  Returns:
    (B, Lq, H, D) in value's dtype.
  """
  scale = query.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key, preferred_element_type=jnp.float32)
  weights = jax.nn.softmax(logits * scale, axis=-1)
  return jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value)


class CrossAttention(nn.Module):
  """Multi-head attention of `x` over `context` (self-attention when context is None).

  Attributes:
    num_heads: number of heads H.
    head_dim: channels per head D (64 in SD2.1).
    dtype: activation/computation dtype (params stay float32).
    fused: use `jax.nn.dot_product_attention` (XLA or cuDNN flash kernels) instead of the explicit einsum
      softmax; same maths, different rounding.
  """
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  fused: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:
    """x: (B, Lq, C); context: (B, Lk, Cc) or None -> (B, Lq, C)."""
    context = x if context is None else context
    inner = self.num_heads * self.head_dim
    dense = lambda name, bias: nn.Dense(inner, use_bias=bias, dtype=self.dtype, name=name)
    q = dense("to_q", False)(x)
    k = dense("to_k", False)(context)
    v = dense("to_v", False)(context)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], self.num_heads, self.head_dim)
    q, k, v = split(q), split(k), split(v)
    if self.fused:
      out = jax.nn.dot_product_attention(q, k, v)
    else:
      out = dot_product_attention(q, k, v)
    out = out.reshape(out.shape[0], out.shape[1], inner)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out.0")(out)
