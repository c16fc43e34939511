"""Posing canonical points: the model's forward warp of rest-pose vertices to any frame (host loop).

The same warp the renderer uses (`warp_render.SkinningWarp`): skinning weights
from the rest bones at the canonical point, bone transforms of the frame.
A run's per-frame meshes and the novel-view scores pose through
`posed_sequence`.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.model import skinning
from animdreamer_jax.render import warp_render


def make_pose_fn(model, blend: str = "dqs", warp: Optional[warp_render.Warp] = None) -> Callable:
  """jitted (params, rest_vertices (V, 3), frame ()) -> (posed object-frame (V, 3), obj2cam (4, 4)).

  warp: the renderer's warp (None: the model's skinning with `blend`).
  """
  warp = warp if warp is not None else warp_render.SkinningWarp(blend=blend)

  @jax.jit
  def pose(params, vertices, frame):
    rest = warp_render.rest_state(model, params)
    frames = warp_render.frame_states(model, params, frame[None])
    frame_state = jax.tree_util.tree_map(lambda x: None if x is None else x[0], frames)
    ctx = warp.prepare(model, params, rest, frame_state, None)
    posed, _ = jax.vmap(lambda x: warp.forward(ctx, x))(vertices)
    return posed[:, 0], frame_state.obj2cam

  return pose


def posed_sequence(model, params, rest_vertices: np.ndarray, frames: Iterable[int],
                   blend: str = "dqs", pose_fn: Optional[Callable] = None,
                   warp: Optional[warp_render.Warp] = None) -> tuple[np.ndarray, np.ndarray]:
  """Forward-warps the rest vertices to each of `frames`.

  Returns:
    (object-frame vertices (F, V, 3), object-to-camera root poses (F, 4, 4)), float32.
  """
  pose = pose_fn or make_pose_fn(model, blend, warp)
  verts = jnp.asarray(rest_vertices, jnp.float32)
  posed, root = [], []
  for t in frames:
    p, r = pose(params, verts, jnp.int32(t))
    posed.append(np.asarray(p))
    root.append(np.asarray(r))
  return np.stack(posed).astype(np.float32), np.stack(root).astype(np.float32)


WEIGHT_CHUNK = 4096  # points per jitted skinning-weight call


def forward_skin_weights(model, params, points: np.ndarray) -> np.ndarray:
  """(N, B) weights of the model's forward warp at canonical points (Mahalanobis + delta MLP).

  The skinning delta is evaluated at the rest time code, as the forward warp of
  rest vertices uses it.
  """
  rest = warp_render.rest_state(model, params)

  @jax.jit
  def weights_fn(x):
    logits = jax.vmap(lambda p: skinning.gaussian_skinning_logits(p, rest.bones,
                                                                  rest.log_scale))(x)
    if rest.delta_code is not None:
      local = jax.vmap(lambda p: skinning.bone_local_coords(p, rest.bones))(x)
      local = local * jnp.exp(-rest.log_scale)
      logits = logits - model.apply(params, local, rest.delta_code, method="skinning_delta")
    return jax.nn.softmax(logits, axis=-1)

  n = points.shape[0]
  pad = (-n) % WEIGHT_CHUNK
  padded = np.concatenate([np.asarray(points, np.float32), np.zeros((pad, 3), np.float32)])
  chunks = [np.asarray(weights_fn(jnp.asarray(padded[i:i + WEIGHT_CHUNK])))
            for i in range(0, padded.shape[0], WEIGHT_CHUNK)]
  return np.concatenate(chunks)[:n].astype(np.float32)
