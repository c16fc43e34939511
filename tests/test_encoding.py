"""Fourier/time encodings against slow loop references written here."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.model import encoding


def ref_fourier(x, num_freqs, alpha=None):
  """lab4d PosEmbedding, one point and one channel at a time."""
  x = np.asarray(x, np.float64)
  if num_freqs == -1:
    return np.zeros(x.shape[:-1] + (0,))
  out = np.zeros(x.shape[:-1] + (x.shape[-1] * (2 * num_freqs + 1),))
  for idx in np.ndindex(x.shape[:-1]):
    row = list(x[idx])
    for k in range(num_freqs):
      if alpha is None:
        w = 1.0
      else:
        p = min(max(alpha * num_freqs - k, 0.0), 1.0)
        w = 0.5 * (1.0 + math.cos(math.pi * p + math.pi))
      row += [w * math.sin(2.0**k * c) for c in x[idx]]
      row += [w * math.cos(2.0**k * c) for c in x[idx]]
    out[idx] = row
  return out


def ref_time(frame, lengths, time_scale):
  start = 0
  for n in lengths:
    if frame < start + n:
      return ((frame - start) - n / 2) / max(lengths) * 2 * time_scale
    start += n
  raise ValueError(frame)


@pytest.mark.parametrize("num_freqs", [-1, 0, 4])
@pytest.mark.parametrize("alpha", [None, 0.0, 0.37, 1.0])
def test_fourier_features_matches_loop_reference(num_freqs, alpha):
  x = np.random.default_rng(0).uniform(-1.5, 1.5, (2, 5, 3)).astype(np.float32)
  got = encoding.fourier_features(jnp.asarray(x), num_freqs, alpha)
  chex.assert_shape(got, (2, 5, encoding.fourier_dim(3, num_freqs)))
  np.testing.assert_allclose(got, ref_fourier(x, num_freqs, alpha), atol=2e-6, rtol=1e-5)


def test_window_endpoints_and_monotone():
  np.testing.assert_allclose(encoding.fourier_window(5, 1.0), np.ones(5))
  np.testing.assert_allclose(encoding.fourier_window(5, 0.0), np.zeros(5), atol=1e-7)
  w = np.asarray(encoding.fourier_window(10, 0.55))
  # 5.5 bands on: first five fully, the sixth half, the rest off.
  np.testing.assert_allclose(w[:5], 1.0, atol=1e-6)
  np.testing.assert_allclose(w[5], 0.5, atol=1e-6)
  np.testing.assert_allclose(w[6:], 0.0, atol=1e-6)


def test_shared_bands_equal_separate_encodings():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(7, 3)), jnp.float32)
  bands = encoding.fourier_bands(x, 6)
  for n in (0, 2, 6):
    np.testing.assert_allclose(encoding.features_from_bands(x, bands, n, 0.7),
                               encoding.fourier_features(x, n, 0.7), atol=1e-6)


def test_fourier_jits_with_traced_alpha():
  x = jnp.ones((4, 3))
  f = jax.jit(lambda a: encoding.fourier_features(x, 3, a))
  np.testing.assert_allclose(f(0.5), ref_fourier(np.ones((4, 3)), 3, 0.5), atol=1e-6)


def test_normalized_time_and_video_index_match_loops():
  lengths = (5, 8, 3)
  frames = np.arange(sum(lengths))
  got_t = encoding.normalized_time(jnp.asarray(frames), lengths, time_scale=0.5)
  want_t = [ref_time(f, lengths, 0.5) for f in frames]
  np.testing.assert_allclose(got_t, want_t, atol=1e-6)
  got_v = encoding.video_index(jnp.asarray(frames), lengths)
  np.testing.assert_array_equal(got_v, [0] * 5 + [1] * 8 + [2] * 3)


def test_num_time_freqs_scales_with_length():
  assert encoding.num_time_freqs((64,)) == 6
  assert encoding.num_time_freqs((128, 10)) == 7
  assert encoding.num_time_freqs((32,)) == 5
  assert encoding.num_time_freqs((1,)) == 1


def test_time_embedding_shapes_and_mean():
  module = encoding.TimeEmbedding(video_lengths=(4, 4), num_freqs=2, features=8)
  frames = jnp.arange(8)
  variables = module.init(jax.random.PRNGKey(0), frames)
  emb = module.apply(variables, frames)
  chex.assert_shape(emb, (8, 8))
  chex.assert_type(emb, jnp.float32)
  mean = module.apply(variables, method="mean")
  np.testing.assert_allclose(mean, np.mean(np.asarray(emb), 0), atol=1e-6)
  # Frames 1 and 5 have the same time stamp in different videos: the
  # per-video code must tell them apart.
  assert np.isclose(encoding.normalized_time(1, (4, 4)), encoding.normalized_time(5, (4, 4)))
  assert not np.allclose(emb[1], emb[5])
