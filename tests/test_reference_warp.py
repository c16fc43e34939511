"""The ground-truth mesh-correspondence warp (oracle ladder rung (i)) against NumPy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import test_util as jtu

from animdreamer_jax.errors import UserError
from animdreamer_jax.render import reference_warp
from animdreamer_jax.render import settings as render_settings
from animdreamer_jax.render import warp_render

KERNEL = 0.05


def displaced_loop(x, anchors, displacement, width):
  """Slow reference: Gaussian-weighted mean displacement, one anchor at a time."""
  weights = np.array([np.exp(-np.sum((x - a) ** 2) / (2 * width ** 2)) for a in anchors])
  weights /= weights.sum()
  return x + sum(w * d for w, d in zip(weights, displacement))


def make_sequence(seed=0, frames=3, vertices=12):
  rng = np.random.default_rng(seed)
  rest = rng.uniform(-0.3, 0.3, (vertices, 3)).astype(np.float32)
  posed = (rest[None] + rng.normal(0, 0.05, (frames, vertices, 3))).astype(np.float32)
  return rest, posed


def frame_state(t):
  # Only frame_idx is read by this warp.
  return warp_render.FrameState(bones=None, obj2cam=None, intrinsics=None, appearance=None,
                                delta_code=None, frame_idx=jnp.int32(t))


def test_backward_and_forward_match_loop():
  rest, posed = make_sequence()
  warp = reference_warp.MeshCorrespondenceWarp(rest, posed, kernel_width=KERNEL)
  ctx = warp.prepare(None, None, None, frame_state(1), frame_state(2))
  points = np.random.default_rng(1).uniform(-0.3, 0.3, (5, 3)).astype(np.float32)
  for x in points:
    x_c, aux = warp.backward(ctx, jnp.asarray(x))
    np.testing.assert_allclose(x_c, displaced_loop(x, posed[1], rest - posed[1], KERNEL),
                               atol=2e-5)
    assert float(aux["skin_entropy"]) == 0.0
    x_t, _ = warp.forward(ctx, jnp.asarray(x))
    for k, t in enumerate((1, 2)):
      np.testing.assert_allclose(x_t[k], displaced_loop(x, rest, posed[t] - rest, KERNEL),
                                 atol=2e-5)


def test_rigid_motion_is_exact_everywhere():
  rest, _ = make_sequence(2)
  shift = np.array([0.1, -0.2, 0.05], np.float32)
  warp = reference_warp.MeshCorrespondenceWarp(rest, (rest + shift)[None], kernel_width=KERNEL)
  ctx = warp.prepare(None, None, None, frame_state(0), None)
  x = jnp.asarray([0.4, 0.1, -0.2])
  np.testing.assert_allclose(warp.backward(ctx, x)[0], x - shift, atol=1e-6)
  np.testing.assert_allclose(warp.forward(ctx, x)[0][0], x + shift, atol=1e-6)


def test_backward_gradient():
  rest, posed = make_sequence(3)
  warp = reference_warp.MeshCorrespondenceWarp(rest, posed, kernel_width=0.2)
  ctx = warp.prepare(None, None, None, frame_state(0), None)
  jtu.check_grads(lambda x: warp.backward(ctx, x)[0], (jnp.asarray([0.05, -0.1, 0.02]),),
                  order=1, modes=("rev",), atol=2e-2, rtol=2e-2)


def test_seam_duplicates_are_kept_once():
  rest, posed = make_sequence(4, vertices=6)
  doubled_rest = np.concatenate([rest, rest[:2]])
  doubled_posed = np.concatenate([posed, posed[:, :2]], axis=1)
  warp = reference_warp.MeshCorrespondenceWarp.from_sequence(doubled_rest, doubled_posed)
  np.testing.assert_array_equal(warp.rest_vertices, rest)
  np.testing.assert_array_equal(warp.posed_vertices, posed)


def test_settings_need_ground_truth():
  with pytest.raises(UserError, match="ground truth"):
    render_settings.RenderSettings(warp="ground_truth").make_warp(None)
  with pytest.raises(UserError, match="config.render.warp"):
    render_settings.RenderSettings(warp="bones")
  assert isinstance(render_settings.RenderSettings().make_warp(), warp_render.SkinningWarp)
