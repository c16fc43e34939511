"""The CPU rasteriser against a slow per-pixel ray-casting reference."""

from __future__ import annotations

import numpy as np
import pytest

from animdreamer_jax.assets import rasterize as rz


def reference_raster(vertices_cam, faces, intrinsics, height, width):
  """One ray per pixel centre, Moller-Trumbore against every triangle."""
  fx, fy, cx, cy = intrinsics
  face_id = np.full((height, width), -1)
  bary = np.zeros((height, width, 3))
  depth = np.zeros((height, width))
  for v in range(height):
    for u in range(width):
      d = np.array([(u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy, 1.0])
      best_t, best = np.inf, None
      for f, (i, j, k) in enumerate(faces):
        a, b, c = vertices_cam[i], vertices_cam[j], vertices_cam[k]
        e1, e2 = b - a, c - a
        h = np.cross(d, e2)
        det = e1 @ h
        if abs(det) < 1e-15:
          continue
        s = -a
        b1 = (s @ h) / det
        q = np.cross(s, e1)
        b2 = (d @ q) / det
        t = (e2 @ q) / det
        if b1 < 0 or b2 < 0 or b1 + b2 > 1 or t <= 0:
          continue
        if t < best_t:  # strict: on a tie the earlier (smaller) face id stays
          best_t, best = t, (f, np.array([1 - b1 - b2, b1, b2]))
      if best is not None:
        face_id[v, u] = best[0]
        bary[v, u] = best[1]
        depth[v, u] = best_t  # d_z = 1, so the ray parameter is the depth
  return face_id, bary, depth


def random_triangles(rng, n):
  """n triangles in front of the camera, some crossing the image border."""
  centres = np.stack([rng.uniform(-1.2, 1.2, n), rng.uniform(-1.2, 1.2, n),
                      rng.uniform(2.0, 4.0, n)], axis=-1)
  verts = centres[:, None, :] + rng.normal(0, 0.6, (n, 3, 3))
  verts[..., 2] = np.maximum(verts[..., 2], 0.5)
  return verts.reshape(-1, 3), np.arange(3 * n).reshape(n, 3)


def box_mesh(half):
  """Closed box, 12 counter-clockwise triangles (outward normals)."""
  hx, hy, hz = half
  v = np.array([[x, y, z] for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)])
  f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
  return v, f


def rotation(rng):
  q, r = np.linalg.qr(rng.normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q * np.linalg.det(q)


def check_against_reference(vertices, faces, intrinsics, h, w):
  ref_id, ref_bary, ref_depth = reference_raster(vertices, faces, intrinsics, h, w)
  out = rz.rasterize(vertices, faces, intrinsics, h, w)
  assert out.face_id.shape == (h, w) and out.face_id.dtype == np.int32
  assert out.barycentric.shape == (h, w, 3) and out.barycentric.dtype == np.float32
  assert out.depth.shape == (h, w) and out.depth.dtype == np.float32
  np.testing.assert_array_equal(out.face_id, ref_id)
  np.testing.assert_allclose(out.barycentric, ref_bary, atol=2e-6)
  np.testing.assert_allclose(out.depth, ref_depth, rtol=1e-6)
  return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_triangles_match_ray_casting(seed):
  rng = np.random.default_rng(seed)
  verts, faces = random_triangles(rng, 10)
  intrinsics = np.array([22.0, 20.0, 13.0, 9.5])
  out = check_against_reference(verts, faces, intrinsics, 19, 26)
  assert 0 < out.mask.sum() < out.mask.size  # the test scene is not trivial


def test_rotated_box_matches_ray_casting():
  rng = np.random.default_rng(3)
  v, f = box_mesh((0.5, 0.3, 0.4))
  v = v @ rotation(rng).T + np.array([0.1, -0.05, 2.0])
  check_against_reference(v, f, np.array([30.0, 30.0, 16.0, 16.0]), 32, 32)


def test_interpolated_positions_lie_on_pixel_rays():
  """Perspective-correct barycentrics put the point exactly on the pixel's ray."""
  rng = np.random.default_rng(4)
  verts, faces = random_triangles(rng, 30)
  intrinsics = np.array([60.0, 55.0, 32.0, 30.0])
  out = rz.rasterize(verts, faces, intrinsics, 60, 64)
  pos = rz.interpolate(out, faces, verts)
  m = out.mask
  np.testing.assert_allclose(pos[..., 2][m], out.depth[m], rtol=1e-6)
  xy = rz.project_points(pos[m], intrinsics)
  vv, uu = np.nonzero(m)
  np.testing.assert_allclose(xy, np.stack([uu + 0.5, vv + 0.5], -1), atol=1e-4)
  assert np.all(pos[~m] == 0)


def test_ties_go_to_smaller_face_id_and_face_order_does_not_matter():
  rng = np.random.default_rng(5)
  verts, faces = random_triangles(rng, 25)
  # A duplicate of face 7 under a larger id: the smaller id must win the tie.
  faces = np.concatenate([faces, faces[7:8]])
  intrinsics = np.array([40.0, 40.0, 20.0, 20.0])
  out = rz.rasterize(verts, faces, intrinsics, 40, 40)
  assert not np.any(out.face_id == len(faces) - 1)
  assert np.any(out.face_id == 7)
  perm = rng.permutation(len(faces) - 1)
  out_p = rz.rasterize(verts, faces[:-1][perm], intrinsics, 40, 40)
  mapped = np.where(out_p.face_id >= 0, perm[np.maximum(out_p.face_id, 0)], -1)
  np.testing.assert_array_equal(mapped, out.face_id)
  np.testing.assert_array_equal(out_p.depth, out.depth)


def test_chunking_gives_identical_result(monkeypatch):
  rng = np.random.default_rng(6)
  verts, faces = random_triangles(rng, 40)
  intrinsics = np.array([50.0, 50.0, 25.0, 25.0])
  full = rz.rasterize(verts, faces, intrinsics, 50, 50)
  monkeypatch.setattr(rz, "_MAX_CANDIDATES_PER_CHUNK", 97)
  chunked = rz.rasterize(verts, faces, intrinsics, 50, 50)
  np.testing.assert_array_equal(chunked.face_id, full.face_id)
  np.testing.assert_array_equal(chunked.barycentric, full.barycentric)
  np.testing.assert_array_equal(chunked.depth, full.depth)


def test_behind_camera_offscreen_and_degenerate_faces_are_dropped():
  verts = np.array([[0, 0, -1.0], [1, 0, 2], [0, 1, 2],        # one vertex behind
                    [50, 50, 2], [51, 50, 2], [50, 51, 2],      # far off screen
                    [0, 0, 2], [0.5, 0.5, 2], [1, 1, 2]])       # zero area
  faces = np.arange(9).reshape(3, 3)
  out = rz.rasterize(verts, faces, np.array([10.0, 10.0, 5.0, 5.0]), 10, 10)
  assert np.all(out.face_id == -1)
  assert np.all(out.depth == 0) and np.all(out.barycentric == 0)


def test_interpolate_constant_and_linear_values():
  rng = np.random.default_rng(7)
  v, f = box_mesh((0.4, 0.4, 0.4))
  v = v @ rotation(rng).T + np.array([0, 0, 2.5])
  out = rz.rasterize(v, f, np.array([40.0, 40.0, 20.0, 20.0]), 40, 40)
  const = rz.interpolate(out, f, np.ones((len(v), 2)))
  np.testing.assert_allclose(const[out.mask], 1.0, atol=1e-6)
  # A linear function of position is reproduced exactly at the surface point.
  coeff = np.array([0.3, -1.2, 0.7])
  lin = rz.interpolate(out, f, (v @ coeff)[:, None])[..., 0]
  pos = rz.interpolate(out, f, v)
  np.testing.assert_allclose(lin[out.mask], (pos @ coeff)[out.mask], atol=1e-6)
