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


def chunked_dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                                  chunk: int) -> jax.Array:
  """`dot_product_attention` over blocks of `chunk` queries, each block rematerialised in the backward pass.

  Same values; the gradient never holds the whole (Lq, Lk) probability matrix, only one block of it
  (the 4096-token joint attention of 4 views at 32x32 latents needs 640 MiB per matrix otherwise).
  Falls back to the plain form when `chunk` does not split Lq into several blocks.

  Args:
    query: (B, Lq, H, D).
    key: (B, Lk, H, D).
    value: (B, Lk, H, D).
    chunk: queries per block.

  Returns:
    (B, Lq, H, D).
  """
  batch, length, heads, dim = query.shape
  if chunk <= 0 or length <= chunk or length % chunk:
    return dot_product_attention(query, key, value)
  blocks = query.reshape(batch, length // chunk, chunk, heads, dim).swapaxes(0, 1)
  attend = jax.checkpoint(lambda q: dot_product_attention(q, key, value))
  return jax.lax.map(attend, blocks).swapaxes(0, 1).reshape(batch, length, heads, value.shape[-1])


class CrossAttention(nn.Module):
  """Multi-head attention of `x` over `context` (self-attention when context is None).

  Attributes:
    num_heads: number of heads H.
    head_dim: channels per head D (64 in SD2.1).
    dtype: activation/computation dtype (params stay float32).
    fused: use `jax.nn.dot_product_attention` (XLA or cuDNN flash kernels) instead of the explicit einsum
      softmax; same maths, different rounding.
    query_chunk: if > 0, attend in blocks of this many queries, rematerialised in the backward pass
      (`chunked_dot_product_attention`): bounded memory for gradients through the UNet.
  """
  num_heads: int
  head_dim: int
  dtype: jnp.dtype = jnp.float32
  fused: bool = False
  query_chunk: int = 0

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
      out = chunked_dot_product_attention(q, k, v, self.query_chunk)
    out = out.reshape(out.shape[0], out.shape[1], inner)
    return nn.Dense(x.shape[-1], dtype=self.dtype, name="to_out.0")(out)
