"""The ground truth's own deformation as a `Warp`: rung (i) of the oracle ladder.

A synthetic video records its animal's rest mesh and its posed mesh at every
frame with the same vertex order (`gt/rest.npz`, `gt/meshes.npz`). Between
them the asset's skinning is known exactly at each vertex; `MeshCorrespondenceWarp`
extends it to any point as the displacement of its nearest vertices:

  backward (frame t):  x_c = x + sum_i w_i (rest_i - posed_t,i)
  forward  (frame t):  x_t = x + sum_i w_i (posed_t,i - rest_i)

over the vertices i (posed_t ones for the backward warp, rest ones for the forward
one), with Gaussian weights w_i ~ exp(-|x - v_i|^2 / 2 s^2) normalised to sum 1
(s = `kernel_width`, about the vertex spacing, so only the nearest few count). A
softmax over every vertex rather than a k-nearest search: on XLA:CPU a top-k per
sample costs a sort, the softmax one exp per vertex. On the surface this is the asset's
skinning; near it, a smooth interpolation of it. Training a canonical field
through it (with the root pose held at the noise-free cameras, so the object
frame is the ground truth's world frame) measures the ceiling of the shape
pipeline - fields, sampling, density, losses - with the deformation taken out.

It is an oracle: it needs `gt/` and is never a default.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


def blend_weights(x: jnp.ndarray, anchors: jnp.ndarray, kernel_width: float) -> jnp.ndarray:
  """(V,) Gaussian blend weights of the anchors (V, 3) at the point x (3,), summing to 1."""
  # |a|^2 - 2 a.x (+ |x|^2, the same for every anchor, cancels in the softmax): a matrix
  # product under vmap instead of a (samples, V, 3) difference tensor.
  d2 = jnp.sum(jnp.square(anchors), axis=-1) - 2.0 * (anchors @ x)
  # The softmax subtracts the nearest anchor's term: stable at any distance.
  return jax.nn.softmax(-d2 / (2.0 * kernel_width ** 2))


# eq=False: hashed by identity (the arrays are not hashable), as RenderOptions requires.
@dataclasses.dataclass(frozen=True, eq=False)
class MeshCorrespondenceWarp:
  """The ground-truth mesh sequence's deformation (see the module docstring).

  Attributes:
    rest_vertices: (V, 3) rest-pose vertices (the canonical space).
    posed_vertices: (T, V, 3) the same vertices at every frame, in the object
      (= world) frame.
    kernel_width: Gaussian width of the blend (about the vertex spacing).
  """
  rest_vertices: np.ndarray
  posed_vertices: np.ndarray
  kernel_width: float = 0.025

  @classmethod
  def from_sequence(cls, rest_vertices: np.ndarray, posed_vertices: np.ndarray,
                    **kwargs) -> "MeshCorrespondenceWarp":
    """The warp of a mesh sequence, its coincident rest vertices (split at seams) kept once."""
    rest = np.asarray(rest_vertices, np.float32)
    _, first = np.unique(rest.round(6), axis=0, return_index=True)
    first = np.sort(first)
    return cls(rest[first], np.asarray(posed_vertices, np.float32)[:, first], **kwargs)

  def prepare(self, model, params, rest, frame, partner):
    frames = [frame] if partner is None else [frame, partner]
    targets = jnp.asarray(self.posed_vertices, jnp.float32)[
        jnp.stack([f.frame_idx for f in frames])]  # (K, V, 3); [0] is the frame itself
    return {"rest": jnp.asarray(self.rest_vertices, jnp.float32), "posed": targets[0],
            "targets": targets}

  def backward(self, ctx, x_t):
    zero = jnp.zeros((), x_t.dtype)
    weights = blend_weights(x_t, ctx["posed"], self.kernel_width)
    x_c = x_t + weights @ (ctx["rest"] - ctx["posed"])
    return x_c, {"skin_entropy": zero, "delta_skin": zero}

  def forward(self, ctx, x_c):
    zero = jnp.zeros((), x_c.dtype)
    weights = blend_weights(x_c, ctx["rest"], self.kernel_width)
    warped = x_c + jnp.einsum("v,kvc->kc", weights, ctx["targets"] - ctx["rest"])
    return warped, {"skin_entropy": zero, "delta_skin": zero}
