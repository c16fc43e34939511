"""Host-side mesh geometry of the canonical SDF: grid, marching cubes, components, bounds.

Used between training rounds (proxy points, bounding box, per-frame near/far)
and at the end of a run (the rest mesh). The SDF is evaluated on a grid in
fixed-size jitted chunks and scikit-image's marching cubes extracts the level
set. The SDF is negative inside, so skimage's default gradient direction gives
counter-clockwise triangles seen from outside.

`sample_surface` is the one area-uniform surface sampler (the evaluation's
surface samples; through `sample_surface_host`, the trainer's proxy points).

Depends on numpy / scipy / scikit-image / jax only, nothing else of the package.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import sparse
from scipy.sparse import csgraph
from skimage import measure

SdfFn = Callable[[jnp.ndarray], jnp.ndarray]


def grid_points(aabb: np.ndarray, resolution: int) -> np.ndarray:
  """(R^3, 3) float32 points of a regular grid over aabb = [[min xyz], [max xyz]], 'ij' order."""
  axes = [np.linspace(aabb[0, i], aabb[1, i], resolution, dtype=np.float32) for i in range(3)]
  grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
  return grid.reshape(-1, 3)


def sdf_on_grid(sdf_fn: SdfFn, aabb: np.ndarray, resolution: int,
                chunk: int = 32768) -> np.ndarray:
  """Evaluates a batched SDF function on a grid, in fixed-size chunks.

  Args:
    sdf_fn: jit-able (N, 3) -> (N,) SDF (negative inside).
    aabb: (2, 3) box.
    resolution: R samples per axis.
    chunk: points per call (the last chunk is padded, so one compile serves all).

  Returns:
    (R, R, R) float32 SDF values.
  """
  points = grid_points(np.asarray(aabb, np.float32), resolution)
  n = points.shape[0]
  pad = (-n) % chunk
  padded = np.concatenate([points, np.zeros((pad, 3), np.float32)])
  fn = jax.jit(sdf_fn)
  values = [np.asarray(fn(jnp.asarray(padded[i:i + chunk]))) for i in range(0, padded.shape[0], chunk)]
  return np.concatenate(values)[:n].reshape(resolution, resolution, resolution)


def marching_cubes(volume: np.ndarray, aabb: np.ndarray,
                   level: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
  """Iso-surface of a grid sampled over aabb (empty arrays if level is not crossed).

  Returns:
    vertices (V, 3) float32 in the aabb's coordinates, faces (F, 3) int32.
  """
  volume = np.asarray(volume, np.float32)
  if not (volume.min() < level < volume.max()):
    return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32)
  res = np.array(volume.shape, np.float32)
  spacing = (aabb[1] - aabb[0]) / np.maximum(res - 1, 1)
  verts, faces, _, _ = measure.marching_cubes(volume, level=level, spacing=tuple(spacing))
  return (verts + aabb[0]).astype(np.float32), faces.astype(np.int32)


def largest_component(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Keeps the connected component with the most faces; drops unused vertices."""
  if faces.shape[0] == 0:
    return vertices, faces
  v = vertices.shape[0]
  rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
  cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
  graph = sparse.coo_matrix((np.ones_like(rows), (rows, cols)), shape=(v, v))
  _, labels = csgraph.connected_components(graph, directed=False)
  face_label = labels[faces[:, 0]]
  keep = face_label == np.bincount(face_label).argmax()
  faces = faces[keep]
  used = np.unique(faces)
  remap = np.full(v, -1, np.int64)
  remap[used] = np.arange(used.size)
  return vertices[used], remap[faces].astype(np.int32)


def extract_mesh(sdf_fn: SdfFn, aabb: np.ndarray, resolution: int, level: float = 0.0,
                 largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Marching cubes of the SDF over aabb, optionally the largest component only."""
  volume = sdf_on_grid(sdf_fn, aabb, resolution)
  vertices, faces = marching_cubes(volume, np.asarray(aabb, np.float32), level)
  if largest:
    vertices, faces = largest_component(vertices, faces)
  return vertices, faces


# Search boxes of `find_surface`, as size multiples of the first (extended) box.
SEARCH_GROWTH = (1.0, 3.0, 9.0)


def find_surface(sdf_fn: SdfFn, aabb: np.ndarray, extend: float, resolution: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """The largest surface component near `aabb`, searched in growing boxes.

  A box from the previous surface goes stale when the surface moves (the root
  poses and the canonical shape trade places in the first rounds), so where the
  extended box holds no zero crossing the same grid spans boxes 3 and 9 times
  its size around the same centre.

  Args:
    sdf_fn: jit-able (N, 3) -> (N,) SDF.
    aabb: (2, 3) box of the previous surface.
    extend: growth of `aabb` for the first search (`extend_aabb`).
    resolution: grid samples per axis of every search.

  Returns:
    vertices (V, 3), faces (F, 3) (both empty when no box holds a crossing),
    the first box's SDF grid (R, R, R), and the index of the box that held the
    surface in SEARCH_GROWTH (-1: none).
  """
  first = extend_aabb(aabb, extend)
  centre, half = first.mean(0), (first[1] - first[0]) / 2
  first_volume = None
  for index, growth in enumerate(SEARCH_GROWTH):
    box = np.stack([centre - growth * half, centre + growth * half]).astype(np.float32)
    volume = sdf_on_grid(sdf_fn, box, resolution)
    if first_volume is None:
      first_volume = volume
    vertices, faces = largest_component(*marching_cubes(volume, box))
    if faces.shape[0]:
      return vertices, faces, first_volume, index
  return vertices, faces, first_volume, -1


def extend_aabb(aabb: np.ndarray, factor: float) -> np.ndarray:
  """Scales a (2, 3) box about its centre by (1 + factor) (lab4d extend_aabb)."""
  aabb = np.asarray(aabb, np.float32)
  center = aabb.mean(0)
  half = (aabb[1] - aabb[0]) / 2 * (1 + factor)
  return np.stack([center - half, center + half])


def near_far_from_points(points_obj: np.ndarray, object_to_camera: np.ndarray,
                         tolerance: float = 1.5, min_near: float = 1e-3) -> np.ndarray:
  """Per-frame near/far that bound the points' camera depths, widened by `tolerance`.

  lab4d get_near_far: centre +- tolerance x half the depth range.

  Args:
    points_obj: (P, 3) proxy points in object space.
    object_to_camera: (T, 4, 4) root poses.

  Returns:
    (T, 2) float32 near, far.
  """
  cam = np.einsum("tij,pj->tpi", object_to_camera[:, :3, :3], points_obj) + object_to_camera[:, None, :3, 3]
  z = cam[..., 2]
  zmin, zmax = z.min(1), z.max(1)
  mid, half = (zmin + zmax) / 2, (zmax - zmin) / 2
  near = np.maximum(mid - tolerance * half, min_near)
  far = np.maximum(mid + tolerance * half, near + 1e-3)
  return np.stack([near, far], -1).astype(np.float32)


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


_sample_surface_jit = jax.jit(sample_surface, static_argnums=3)


def _bucket(n: int) -> int:
  """Next power of two >= n, at least 1024."""
  return max(1024, 1 << max(n - 1, 0).bit_length())


def sample_surface_host(seed: int, vertices: np.ndarray, faces: np.ndarray,
                        num_samples: int) -> np.ndarray:
  """`sample_surface` with key PRNGKey(seed), for host meshes that change size between calls.

  Marching cubes gives a mesh of a new size every training round, and
  compiling the sampler for each size costs more than the meshing itself. The
  faces are padded to a power of two with (0, 0, 0) faces, which have zero
  area and so are never drawn (the vertices with zeros), so that a few
  compiles serve a whole run.

  Args:
    seed: integer seed.
    vertices: (V, 3) positions.
    faces: (F, 3) vertex indices; with F = 0, vertices (or zeros), as in
      `sample_surface`.
    num_samples: N.

  Returns:
    (N, 3) float32 NumPy points.
  """
  key = jax.random.PRNGKey(seed)
  vertices = np.asarray(vertices, np.float32)
  faces = np.asarray(faces, np.int32)
  if faces.shape[0] == 0:
    points, _ = sample_surface(key, vertices, faces, num_samples)
    return np.asarray(points, np.float32)
  padded_vertices = np.zeros((_bucket(vertices.shape[0]), 3), np.float32)
  padded_vertices[:vertices.shape[0]] = vertices
  padded_faces = np.zeros((_bucket(faces.shape[0]), 3), np.int32)
  padded_faces[:faces.shape[0]] = faces
  points, _ = _sample_surface_jit(key, padded_vertices, padded_faces, num_samples)
  return np.asarray(points)
