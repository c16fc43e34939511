"""Canonical-space neural fields (Flax): SDF + colour, feature, visibility, skinning delta.

Architecture follows lab4d's foreground field (`nnutils/nerf.py`,
`feature.py`, `visibility.py`, `skinning.py`); sizes come from the model
config so a small CPU model and the lab4d sizes share one code path.

Deliberate differences from lab4d:
- With a single video, lab4d still concatenates one learned 32-D "instance
  code" to every field input; that is just an extra bias, so it is omitted.
  Multi-video conditioning of the canonical field is not implemented (all
  videos share one canonical shape, as in AnimatableDreamer).
- The SDF (10 bands), colour (12 bands), feature (6 bands) and visibility
  (10 bands) encodings share one set of sin/cos evaluations (each is a prefix
  of the 12-band encoding), and the coarse-to-fine window multiplies the first
  layers' kernel rows instead of every sample's features (same function).
- Per-frame inputs (appearance code, time code) enter through `SplitDense`,
  so they are multiplied once per frame instead of once per sample.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from animdreamer_jax.model import encoding
from animdreamer_jax.model import mlp as mlp_lib


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  """x / |x| over the last axis, finite at 0. (..., C) -> (..., C)."""
  return x * jnp.reciprocal(jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), eps)))


def _unfolded(x: jnp.ndarray) -> jnp.ndarray:
  """x, kept apart from the transpose next to it (and, differentiated, its gradient too).

  XLA merges a transpose into the dot that produces or reads it; between the two layouts
  that makes a dot form XLA:CPU's bf16 path does not run (it fails at run time).
  """
  return jax.lax.optimization_barrier(x)


class CanonicalField(nn.Module):
  """SDF + RGB + unit-norm feature (+ visibility) at canonical points.

  Submodule (parameter-group) names: `sdf_trunk`, `sdf_head`, `color_mlp`,
  `rgb_hidden`, `rgb_out` (geometry and colour), `feature_mlp`,
  `visibility_mlp`.

  Sizes are read from `config`, an `articulated_model.ModelConfig` (where
  they are declared, with lab4d's defaults):
    sdf_depth, sdf_width, sdf_skips, sdf_freqs: geometry trunk (lab4d 8x256,
      skip at 4, 10 bands, annealed by alpha). The trunk ends with a W -> W
      ReLU layer (lab4d's `final_act`), then `sdf_head` Linear(W -> 1).
    color_depth, color_freqs: colour branch MLP (lab4d D=2 on 12 annealed
      bands) whose W-wide output is ADDED to the trunk features.
    appearance_dim: width of the per-frame appearance code read by the RGB
      head (W + A -> W/2 -> 3, sigmoid); 0 disables it.
    feature_dim, feature_depth, feature_width, feature_freqs: feature field
      (lab4d 16-D, 5x128, 6 bands, not annealed), L2-normalised output.
    use_visibility, vis_depth, vis_width, vis_freqs: visibility logit field
      (lab4d 2x64, 10 bands).
    matmul_dtype: every layer's products, "float32" or "bfloat16"; bfloat16 runs the
      MLPs channels-first (`mlp.feature_major_dense`), same parameters.
  """
  # Typed loosely: articulated_model imports this module.
  config: Any

  def setup(self):
    c = self.config
    w, dtype = c.sdf_width, c.matmul_dtype
    self.sdf_trunk = mlp_lib.MLP(c.sdf_depth, w, w, tuple(c.sdf_skips),
                                 final_activation=True, matmul_dtype=dtype)
    self.sdf_head = mlp_lib.TorchDense(1, matmul_dtype=dtype)
    self.color_mlp = mlp_lib.MLP(c.color_depth, w, w, (),
                                 final_activation=True, matmul_dtype=dtype)
    self.rgb_hidden = mlp_lib.SplitDense(w // 2, dtype)
    self.rgb_out = mlp_lib.TorchDense(3, matmul_dtype=dtype)
    if c.feature_dim > 0:
      self.feature_mlp = mlp_lib.MLP(c.feature_depth, c.feature_width,
                                     c.feature_dim, (4,), matmul_dtype=dtype)
    if c.use_visibility:
      self.visibility_mlp = mlp_lib.MLP(c.vis_depth, c.vis_width, 1, (4,), matmul_dtype=dtype)

  def _feature_major(self) -> bool:
    # bf16 products run on feature-major arrays, the layout XLA:CPU's bf16 kernels
    # take at full rate in all three products (`mlp.feature_major_dense`); float32
    # keeps the samples-first layout.
    return self.config.matmul_dtype != "float32"

  def _embedding(self, x: jnp.ndarray, num_freqs: int) -> jnp.ndarray:
    """lab4d-layout Fourier features of x with `num_freqs` bands, no window (channels
    first when feature-major)."""
    if self._feature_major():
      return encoding.fourier_features_feature_major(x, num_freqs)
    return encoding.fourier_features(x, num_freqs)

  def _samples_last(self, out: jnp.ndarray) -> jnp.ndarray:
    """An output layer's (C, ...) back to (..., C) when feature-major."""
    return jnp.moveaxis(_unfolded(out), 0, -1) if self._feature_major() else out

  def _max_freqs(self) -> int:
    c = self.config
    return max(c.sdf_freqs, c.color_freqs,
               c.feature_freqs if c.feature_dim > 0 else 0,
               c.vis_freqs if c.use_visibility else 0, 0)

  def _prefix(self, emb: jnp.ndarray, num_freqs: int) -> jnp.ndarray:
    # lab4d's layout [x, band 0 (sin, cos), band 1, ...] makes the encoding
    # with fewer bands a prefix of the one with more.
    width = encoding.fourier_dim(3, num_freqs)
    return emb[:width] if self._feature_major() else emb[..., :width]

  def _geometry(self, emb, alpha):
    scale = encoding.fourier_row_scales(3, self.config.sdf_freqs, alpha)
    fm = self._feature_major()
    trunk = self.sdf_trunk(self._prefix(emb, self.config.sdf_freqs), input_scale=scale,
                           feature_major=fm)
    sdf = self.sdf_head(trunk, feature_major=fm)
    return (sdf[0] if fm else sdf[..., 0]), trunk

  def sdf(self, x: jnp.ndarray, alpha: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Signed distance (negative inside). (..., 3) -> (...,)."""
    return self._geometry(self._embedding(x, self.config.sdf_freqs), alpha)[0]

  def feature(self, x: jnp.ndarray) -> jnp.ndarray:
    """Unit-norm feature descriptor. (..., 3) -> (..., feature_dim)."""
    return self._feature(self._embedding(x, self.config.feature_freqs))

  def _feature(self, emb):
    out = self.feature_mlp(self._prefix(emb, self.config.feature_freqs),
                           feature_major=self._feature_major())
    return l2_normalize(self._samples_last(out))

  def visibility(self, x: jnp.ndarray) -> jnp.ndarray:
    """Visibility logit (> 0: observed). (..., 3) -> (...,)."""
    return self._visibility(self._embedding(x, self.config.vis_freqs))

  def _visibility(self, emb):
    out = self.visibility_mlp(self._prefix(emb, self.config.vis_freqs),
                              feature_major=self._feature_major())
    return self._samples_last(out)[..., 0]

  def __call__(self, x: jnp.ndarray, appearance: Optional[jnp.ndarray] = None,
               alpha: Optional[jnp.ndarray] = None) -> dict[str, jnp.ndarray]:
    """Evaluates every field at canonical points.

    Args:
      x: (..., 3) canonical points.
      appearance: (..., A) appearance codes broadcastable against x's leading
        dims (e.g. (F, 1, A) for (F, P, 3) points: one code per frame), or None
        for a zero code.
      alpha: coarse-to-fine fraction for the SDF and colour encodings, or None.

    Returns:
      dict with "sdf" (...,), "rgb" (..., 3) in [0, 1], "feature"
      (..., feature_dim) unit norm (absent if feature_dim == 0), "vis" (...,)
      logits (absent if use_visibility is False).
    """
    fm = self._feature_major()
    emb = self._embedding(x, self._max_freqs())
    sdf, trunk = self._geometry(emb, alpha)
    color_feat = trunk + self.color_mlp(
        self._prefix(emb, self.config.color_freqs),
        input_scale=encoding.fourier_row_scales(3, self.config.color_freqs, alpha),
        feature_major=fm)
    if self.config.appearance_dim > 0:
      if appearance is None:
        appearance = jnp.zeros((1,) * (x.ndim - 1) + (self.config.appearance_dim,), x.dtype)
      if fm:
        appearance = appearance.reshape((1,) * (x.ndim - appearance.ndim) + appearance.shape)
        appearance = _unfolded(jnp.moveaxis(appearance, -1, 0))
      hidden = self.rgb_hidden(color_feat, appearance, feature_major=fm)
    else:
      hidden = self.rgb_hidden(color_feat, feature_major=fm)
    hidden = nn.relu(hidden)
    if fm:
      hidden = hidden.astype(self.config.matmul_dtype)
    rgb = nn.sigmoid(self._samples_last(self.rgb_out(hidden, feature_major=fm)))
    out = {"sdf": sdf, "rgb": rgb}
    if self.config.feature_dim > 0:
      out["feature"] = self._feature(emb)
    if self.config.use_visibility:
      out["vis"] = self._visibility(emb)
    return out


class SkinningDelta(nn.Module):
  """lab4d's delta-skinning MLP: ReLU(MLP(bone-local coords, time code)) * scale.

  Input: the point's coordinates in all B bone frames divided by the bones'
  Gaussian scales (3B numbers, no Fourier features) plus a time code; output:
  B non-negative offsets subtracted from the skinning logits (they can only
  reduce a bone's influence). Layers: Linear(3B + T -> W) (as `kernel_0`,
  `kernel_1`, `bias`), depth - 1 more ReLU layers, Linear(W -> B).

  Sizes are read from `config`, an `articulated_model.ModelConfig`:
  num_bones (B), delta_depth and delta_width (lab4d 2 x 64), delta_scale
  (lab4d 0.1) and delta_time_dim (the time code's width).
  """
  # Typed loosely: articulated_model imports this module.
  config: Any

  def setup(self):
    c = self.config
    fan_in = 3 * c.num_bones + c.delta_time_dim
    init = mlp_lib.torch_uniform_init(fan_in)
    self.kernel_0 = self.param("kernel_0", init, (3 * c.num_bones, c.delta_width))
    self.kernel_1 = self.param("kernel_1", init, (c.delta_time_dim, c.delta_width))
    self.bias = self.param("bias", mlp_lib.torch_uniform_init(fan_in), (c.delta_width,))
    self.hidden = [mlp_lib.TorchDense(c.delta_width, name=f"hidden_{i}")
                   for i in range(1, c.delta_depth)]
    self.output = mlp_lib.TorchDense(c.num_bones)

  def _tail(self, h):
    h = nn.relu(h)
    for layer in self.hidden:
      h = nn.relu(layer(h))
    return nn.relu(self.output(h)) * self.config.delta_scale

  def __call__(self, local_coords: jnp.ndarray, time_code: jnp.ndarray) -> jnp.ndarray:
    """Delta skinning.

    Args:
      local_coords: (..., B, 3) the point in every bone frame, divided by the
        bones' Gaussian scales (lab4d's `get_gauss_bone_coords`).
      time_code: (..., T) time code, broadcastable against the leading dims
        (e.g. (T,) for one frame).

    Returns:
      (..., B) non-negative offsets.
    """
    flat = local_coords.reshape(local_coords.shape[:-2] + (3 * self.config.num_bones,))
    return self._tail(flat @ self.kernel_0 + time_code @ self.kernel_1 + self.bias)

  def affine(self, x: jnp.ndarray, linear: jnp.ndarray, offset: jnp.ndarray,
             time_code: jnp.ndarray) -> jnp.ndarray:
    """Same as `__call__` when the bone coordinates are an affine map of x.

    For one frame, local_flat = x @ linear + offset, so the first layer is
    x @ (linear K0) + (offset K0 + code K1 + b): a 3 x W product per sample
    instead of 3B x W, the rest computed once per frame.

    Args:
      x: (..., 3) object-space points.
      linear: (3, 3B) and offset: (3B,) the frame's scaled bone-local map.
      time_code: (T,) the frame's time code.

    Returns:
      (..., B) non-negative offsets.
    """
    first = x @ (linear @ self.kernel_0) + (offset @ self.kernel_0
                                            + time_code @ self.kernel_1 + self.bias)
    return self._tail(first)
