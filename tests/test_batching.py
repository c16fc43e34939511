"""Frame-pair / pixel batch sampling against direct NumPy look-ups."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.data import batching
from animdreamer_jax.errors import UserError

T, H, W, C = 10, 6, 7, 4
GAPS = (1, 2, 4, 8)


def make_arrays(seed=0, empty_frame=None):
  rng = np.random.default_rng(seed)
  rgb = rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8)
  mask = (rng.uniform(size=(T, H, W)) > 0.6).astype(np.uint8)
  if empty_frame is not None:
    mask[empty_frame] = 0
  depth = rng.uniform(1, 2, (T, H, W)).astype(np.float32)
  feature = rng.normal(size=(T, H, W, C)).astype(np.float16)
  flow_fw = {g: rng.normal(size=(T, H, W, 3)).astype(np.float16) for g in GAPS}
  flow_bw = {g: rng.normal(size=(T, H, W, 3)).astype(np.float16) for g in GAPS}
  return rgb, mask, depth, feature, flow_fw, flow_bw


def test_pixel_order_foreground_first():
  mask = np.array([[[0, 1, 0], [1, 0, 1]]], np.uint8)
  order, count = batching.pixel_order(mask)
  assert count.tolist() == [3]
  assert order[0].tolist() == [1, 3, 5, 0, 2, 4]


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_values_match_direct_lookup(seed):
  arrays = make_arrays(seed, empty_frame=3)
  rgb, mask, depth, feature, flow_fw, flow_bw = arrays
  video = batching.make_device_video(*arrays)
  num_pairs, k = 16, 12
  batch = jax.jit(batching.sample_batch, static_argnums=(2, 3, 4))(
      video, jax.random.PRNGKey(seed), num_pairs, k, 0.5)
  b = jax.tree_util.tree_map(np.asarray, batch)
  assert b.rgb.shape == (2 * num_pairs, k, 3) and b.feature.shape == (2 * num_pairs, k, C)
  for n in range(2 * num_pairs):
    t, partner = int(b.frame_index[n]), int(b.partner_frame[n])
    assert int(b.frame_index[b.partner_index[n]]) == partner
    gap = abs(partner - t)
    assert gap in GAPS and max(t, partner) < T
    first = n < num_pairs
    assert (partner > t) == first
    for j in range(k):
      u, v = b.uv[n, j]
      assert u == int(u) and v == int(v)
      u, v = int(u), int(v)
      np.testing.assert_allclose(b.rgb[n, j], rgb[t, v, u] / 255.0, rtol=1e-6)
      assert b.mask[n, j] == mask[t, v, u]
      np.testing.assert_allclose(b.depth[n, j], depth[t, v, u])
      np.testing.assert_allclose(b.feature[n, j], feature[t, v, u].astype(np.float32))
      flow = (flow_fw if first else flow_bw)[gap][t, v, u].astype(np.float32)
      np.testing.assert_allclose(b.flow[n, j], flow[:2])
      assert b.flow_valid[n, j] == flow[2]
    # First half of each frame's pixels is foreground when the frame has any.
    if mask[t].any():
      assert np.all(b.mask[n, : k // 2] == 1)
    else:
      assert np.all(b.mask[n] == 0)
    if (1 - mask[t]).any():
      assert np.all(b.mask[n, k // 2:] == 0)


def test_sampling_is_deterministic_and_covers_gaps():
  video = batching.make_device_video(*make_arrays())
  sample = jax.jit(batching.sample_batch, static_argnums=(2, 3, 4))
  a = sample(video, jax.random.PRNGKey(5), 64, 4, 0.5)
  b = sample(video, jax.random.PRNGKey(5), 64, 4, 0.5)
  np.testing.assert_array_equal(a.uv, b.uv)
  gaps = np.abs(np.asarray(a.partner_frame) - np.asarray(a.frame_index))
  assert set(gaps.tolist()) == set(GAPS)
  # Pixels are spread over the foreground: many distinct ones.
  assert len({tuple(p) for p in np.asarray(a.uv).reshape(-1, 2).tolist()}) > 20


def test_bad_inputs():
  rgb, mask, depth, feature, flow_fw, flow_bw = make_arrays()
  with pytest.raises(UserError, match="mask sequence is empty"):
    batching.make_device_video(rgb, mask * 0, depth, feature, flow_fw, flow_bw, source="vid")
  with pytest.raises(UserError, match="mask shape"):
    batching.make_device_video(rgb, mask[:, :-1], depth, feature, flow_fw, flow_bw)
  bad = dict(flow_fw)
  bad[2] = bad[2][:, :-1]
  with pytest.raises(UserError, match="flow_fw_2.npy"):
    batching.make_device_video(rgb, mask, depth, feature, bad, flow_bw)
  with pytest.raises(UserError, match="at least 2 frames"):
    batching.make_device_video(rgb[:1], mask[:1], depth[:1], feature[:1], flow_fw, flow_bw)

