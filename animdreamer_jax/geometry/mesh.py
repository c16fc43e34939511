"""Host-side mesh geometry: area-uniform surface sampling.

`sample_surface` is the one area-uniform surface sampler (the evaluation's
surface samples).

Depends on numpy / scipy / scikit-image / jax only, nothing else of the package.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def triangle_areas(vertices: jnp.ndarray, faces: jnp.ndarray) -> jnp.ndarray:
  """Area of every triangle.

  Args:
    vertices: (V, 3) positions.
    faces: (F, 3) integer vertex indices.

  Returns:
    (F,) areas.
  """
  a, b, c = (vertices[faces[:, i]] for i in range(3))
  return 0.5 * jnp.linalg.norm(jnp.cross(b - a, c - a), axis=-1)


def sample_surface(key: jax.Array, vertices: jnp.ndarray, faces: jnp.ndarray,
                   num_samples: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Points drawn uniformly (by area) on a triangle mesh.

  A face is chosen with probability area / total area by inverting the area
  CDF; zero-area faces own an empty CDF interval and are never chosen. Inside
  the face, barycentrics (1 - sqrt(r1), sqrt(r1) (1 - r2), sqrt(r1) r2) are
  uniform in area. Jit-able (shapes are static, so the no-face case is decided
  at trace time).

  Args:
    key: PRNG key.
    vertices: (V, 3) positions.
    faces: (F, 3) integer vertex indices. With F = 0 the points are vertices
      drawn uniformly (zeros if V = 0 too) and every face index is -1.
    num_samples: N, static.

  Returns:
    points: (N, 3) surface points.
    face_index: (N,) int32 index of the face each point lies on.
  """
  if faces.shape[0] == 0:
    # A point cloud (or nothing): callers still need N points of the right shape.
    no_face = jnp.full((num_samples,), -1, jnp.int32)
    if vertices.shape[0] == 0:
      return jnp.zeros((num_samples, 3), vertices.dtype), no_face
    index = jax.random.randint(key, (num_samples,), 0, vertices.shape[0])
    return jnp.asarray(vertices)[index], no_face
  areas = triangle_areas(vertices, faces)
  cdf = jnp.cumsum(areas)
  key_face, key_bary = jax.random.split(key)
  u = jax.random.uniform(key_face, (num_samples,), dtype=cdf.dtype) * cdf[-1]
  # side="right": u lands in the first face whose CDF exceeds it, which skips
  # zero-width (zero-area) intervals.
  face_index = jnp.searchsorted(cdf, u, side="right")
  face_index = jnp.clip(face_index, 0, faces.shape[0] - 1).astype(jnp.int32)
  r1, r2 = jax.random.uniform(key_bary, (2, num_samples, 1), dtype=vertices.dtype)
  sqrt_r1 = jnp.sqrt(r1)
  tri = vertices[faces[face_index]]  # (N, 3, 3)
  points = ((1.0 - sqrt_r1) * tri[:, 0] + sqrt_r1 * (1.0 - r2) * tri[:, 1]
            + sqrt_r1 * r2 * tri[:, 2])
  return points, face_index
