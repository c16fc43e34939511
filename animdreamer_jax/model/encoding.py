"""Fourier positional encoding (with a coarse-to-fine window) and time encodings.

Pure functions except `TimeEmbedding`, which has parameters.

lab4d semantics (`nnutils/embedding.py`):
- `fourier_features(x, N)` = [x, sin(2^0 x), cos(2^0 x), ..., sin(2^{N-1} x),
  cos(2^{N-1} x)] with frequencies 2^k and NO pi factor; the bands are laid out
  as (frequency, function, input channel) after the raw input. N = -1 gives an
  empty encoding, N = 0 the identity.
- Coarse-to-fine annealing multiplies band k by the Nerfies cosine window
  w_k = 0.5 (1 - cos(pi clip(alpha N - k, 0, 1))). `alpha` is a FRACTION in
  [0, 1] (lab4d), not a frequency count (Nerfies); alpha = None or >= 1 leaves
  every band on. It is an argument, never module state.
- Normalised time of frame f in video v: (f - start_v - len_v / 2) / max_len * 2,
  times `time_scale` (roughly [-1, 1]); `TimeEmbedding` = Linear(Fourier(t)) ++
  per-video code -> Linear(2W -> W).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.model import mlp as mlp_lib


def fourier_dim(in_dim: int, num_freqs: int) -> int:
  """Output width of `fourier_features` for `in_dim` inputs and N frequencies."""
  if num_freqs < 0:
    return 0
  return in_dim * (2 * num_freqs + 1)


def fourier_window(num_freqs: int, alpha: Optional[jnp.ndarray]) -> jnp.ndarray:
  """Nerfies cosine window over frequency bands, lab4d's alpha convention.

  Args:
    num_freqs: N >= 0.
    alpha: scalar in [0, 1] (fraction of bands switched on), or None.

  Returns:
    (N,) weights in [0, 1]; all ones when alpha is None.
  """
  if alpha is None:
    return jnp.ones((num_freqs,), jnp.float32)
  progress = jnp.asarray(alpha) * num_freqs - jnp.arange(num_freqs)
  progress = jnp.clip(progress, 0.0, 1.0)
  return 0.5 * (1.0 - jnp.cos(math.pi * progress))


def fourier_bands(x: jnp.ndarray, num_freqs: int) -> jnp.ndarray:
  """Raw sin/cos bands of x, without the identity part or window.

  Args:
    x: (..., D) inputs.
    num_freqs: N >= 0.

  Returns:
    (..., N, 2, D): [..., k, 0] = sin(2^k x), [..., k, 1] = cos(2^k x).
  """
  freqs = jnp.asarray(2.0 ** np.arange(num_freqs), x.dtype)
  scaled = freqs[:, None] * x[..., None, :]  # (..., N, D)
  return jnp.stack([jnp.sin(scaled), jnp.cos(scaled)], axis=-2)


def features_from_bands(x: jnp.ndarray, bands: jnp.ndarray, num_freqs: int,
                        alpha: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Assembles [x, windowed bands[:N]] from precomputed bands.

  Lets several encodings of the same point (SDF: 10 bands, colour: 12,
  feature: 6) share one set of sin/cos evaluations.

  Args:
    x: (..., D) inputs.
    bands: (..., M, 2, D) from `fourier_bands(x, M)` with M >= num_freqs.
    num_freqs: N, -1 (empty) or 0 (identity).
    alpha: coarse-to-fine fraction or None.

  Returns:
    (..., fourier_dim(D, N)).
  """
  if num_freqs < 0:
    return jnp.zeros(x.shape[:-1] + (0,), x.dtype)
  if num_freqs == 0:
    return x
  used = bands[..., :num_freqs, :, :]
  if alpha is not None:
    used = used * fourier_window(num_freqs, alpha).astype(x.dtype)[:, None, None]
  flat = used.reshape(x.shape[:-1] + (2 * num_freqs * x.shape[-1],))
  return jnp.concatenate([x, flat], axis=-1)


def fourier_row_scales(in_dim: int, num_freqs: int,
                       alpha: Optional[jnp.ndarray]) -> Optional[jnp.ndarray]:
  """Per-channel window of `fourier_features(x, N)` output, (D (2N + 1),), or None.

  fourier_features(x, N, alpha) == fourier_features(x, N) * fourier_row_scales(D, N, alpha),
  so a Dense layer can fold the window into its kernel rows.
  """
  if alpha is None or num_freqs <= 0:
    return None
  window = fourier_window(num_freqs, alpha)
  bands = jnp.repeat(window, 2 * in_dim)
  return jnp.concatenate([jnp.ones((in_dim,), bands.dtype), bands])


def fourier_features(x: jnp.ndarray, num_freqs: int,
                     alpha: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """lab4d `PosEmbedding`: (x, sin(2^k x), cos(2^k x), ...) with annealing.

  Args:
    x: (..., D) inputs.
    num_freqs: N; -1 gives an empty (..., 0) output, 0 returns x.
    alpha: coarse-to-fine fraction in [0, 1] or None (all bands).

  Returns:
    (..., D (2N + 1)).
  """
  if num_freqs <= 0:
    return features_from_bands(x, None, num_freqs)
  return features_from_bands(x, fourier_bands(x, num_freqs), num_freqs, alpha)


def fourier_features_feature_major(x: jnp.ndarray, num_freqs: int) -> jnp.ndarray:
  """`fourier_features(x, N)` (no window) with the channel axis first, built in that layout.

  For feature-major MLPs (`mlp.feature_major_dense`): the sines and cosines are
  written straight into the (C, ...) layout, so no large array is transposed.

  Args:
    x: (..., D) inputs.
    num_freqs: N; -1 gives a (0, ...) output, 0 returns x's channels first.

  Returns:
    (D (2N + 1), ...).
  """
  x_first = jnp.moveaxis(x, -1, 0)
  if num_freqs < 0:
    return jnp.zeros((0,) + x_first.shape[1:], x.dtype)
  if num_freqs == 0:
    return x_first
  freqs = jnp.asarray(2.0 ** np.arange(num_freqs), x.dtype).reshape((num_freqs, 1) + (1,) * x.ndim)
  scaled = freqs * x_first[None, None]  # (N, 1, D, ...): lab4d's (frequency, function, channel)
  bands = jnp.concatenate([jnp.sin(scaled), jnp.cos(scaled)], axis=1)
  return jnp.concatenate([x_first, bands.reshape((-1,) + x_first.shape[1:])], axis=0)


# ----------------------------------------------------------------------------
# Time.


def video_offsets(video_lengths: Sequence[int]) -> np.ndarray:
  """(V + 1,) first global frame index of every video, then the total."""
  return np.concatenate([[0], np.cumsum(np.asarray(video_lengths, np.int64))])


def video_index(frame_idx: jnp.ndarray, video_lengths: Sequence[int]) -> jnp.ndarray:
  """Video that each global frame index belongs to. (...,) int -> (...,) int32."""
  offsets = jnp.asarray(video_offsets(video_lengths)[1:-1], jnp.int32)
  frame_idx = jnp.asarray(frame_idx, jnp.int32)
  # Counting offsets <= f is a fixed-shape searchsorted for a handful of videos.
  return jnp.sum(frame_idx[..., None] >= offsets, axis=-1).astype(jnp.int32)


def normalized_time(frame_idx: jnp.ndarray, video_lengths: Sequence[int],
                    time_scale: float = 1.0) -> jnp.ndarray:
  """lab4d's time stamp: (f - start_v - len_v / 2) / max_len * 2 * time_scale.

  Args:
    frame_idx: (...,) global raw frame indices (videos concatenated).
    video_lengths: raw frame count of every video (static).
    time_scale: lower values make the consumer less sensitive to time.

  Returns:
    (...,) float32, roughly in [-time_scale, time_scale].
  """
  offsets = video_offsets(video_lengths)
  starts = jnp.asarray(offsets[:-1], jnp.float32)
  lengths = jnp.asarray(np.asarray(video_lengths), jnp.float32)
  vid = video_index(frame_idx, video_lengths)
  local = jnp.asarray(frame_idx, jnp.float32) - starts[vid]
  t = (local - lengths[vid] / 2.0) / float(max(video_lengths)) * 2.0
  return t * time_scale


def num_time_freqs(video_lengths: Sequence[int], base: int = 6) -> int:
  """lab4d's `TimeMLP` frequency count: round(log2(max_len / 64) + base), >= 1.

  64-frame videos get `base`, 128 frames base + 1, 32 frames base - 1.
  """
  return max(1, int(np.rint(np.log2(max(video_lengths) / 64.0) + base)))


class TimeEmbedding(nn.Module):
  """Per-frame time code: Linear(Fourier(t)) ++ per-video code -> Linear.

  Attributes:
    video_lengths: raw frame count of every video (static).
    num_freqs: Fourier frequencies of the normalised time.
    features: output width W (lab4d: the consumer MLP's width; 128 for the
      skinning delta).
    time_scale: multiplies the normalised time.
  """
  video_lengths: tuple[int, ...]
  num_freqs: int
  features: int
  time_scale: float = 1.0

  @nn.compact
  def __call__(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """(...,) int global frame indices -> (..., W) embeddings."""
    t = normalized_time(frame_idx, self.video_lengths, self.time_scale)
    coeff = mlp_lib.TorchDense(self.features, name="time_mapping")(
        fourier_features(t[..., None], self.num_freqs))
    codes = self.param("video_code", nn.initializers.normal(1.0),
                       (len(self.video_lengths), self.features))
    code = codes[video_index(frame_idx, self.video_lengths)]
    return mlp_lib.TorchDense(self.features, name="mix")(
        jnp.concatenate([coeff, code], axis=-1))

  def mean(self) -> jnp.ndarray:
    """Mean embedding over every raw frame of every video, (W,).

    lab4d averages over the frames kept by its static-frame filter; we average
    over all raw frames (deliberate: the video format keeps every frame).
    """
    all_frames = jnp.arange(int(sum(self.video_lengths)), dtype=jnp.int32)
    return jnp.mean(self(all_frames), axis=0)
