"""Export pictures: cameras, bone ellipsoids, skinning colours, x-ray compositing, MP4 files."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.errors import UserError
from animdreamer_jax.export import videos
from animdreamer_jax.geometry import transforms_np


def test_orbit_camera_frames_the_ball():
  center, radius = np.array([0.3, -0.2, 0.1]), 0.7
  for az in (0.0, 90.0, 200.0):
    w2c, intr = videos.orbit_camera(center, radius, az, 25.0, 64, 80)
    # Points of the ball project inside the image.
    rng = np.random.default_rng(0)
    points = center + radius * rng.normal(size=(200, 3)) / 3
    points = points[np.linalg.norm(points - center, axis=1) <= radius]
    cam = transforms_np.to_camera(points, w2c)
    u = intr[0] * cam[:, 0] / cam[:, 2] + intr[2]
    v = intr[1] * cam[:, 1] / cam[:, 2] + intr[3]
    assert np.all((u >= 0) & (u <= 80) & (v >= 0) & (v <= 64))
  w2c, _ = videos.orbit_camera(center, radius, 0.0, 0.0, 64, 64)
  eye = -w2c[:3, :3].T @ w2c[:3, 3]
  assert eye[2] > center[2] and abs(eye[0] - center[0]) < 1e-9  # azimuth 0 looks from +Z


def test_unit_sphere_is_closed_and_outward():
  vertices, faces = videos.unit_sphere(6, 10)
  np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0, atol=1e-12)
  tri = vertices[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  assert np.all(np.sum(normal * tri.mean(1), 1) > 0)
  # Closed: every edge is shared by exactly two faces, in opposite directions.
  edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
  assert len({tuple(e) for e in edges}) == len(edges)
  assert {tuple(e) for e in edges} == {tuple(e[::-1]) for e in edges}


def test_ellipsoids_follow_the_gaussians():
  rng = np.random.default_rng(1)
  rot = Rotation.random(3, random_state=2)
  bones = np.tile(np.eye(4), (3, 1, 1))
  bones[:, :3, :3] = rot.as_matrix()
  bones[:, :3, 3] = rng.normal(size=(3, 3))
  log_scale = np.log(rng.uniform(0.05, 0.3, size=(3, 3)))
  verts, faces, owner = videos.ellipsoid_meshes(bones, log_scale, n_sigma=2.0)
  assert faces.max() == verts.shape[0] - 1 and owner.shape == (verts.shape[0],)
  for v, b in zip(verts, owner):  # Mahalanobis radius 2 for every vertex
    local = bones[b, :3, :3].T @ (v - bones[b, :3, 3]) / np.exp(log_scale[b])
    assert np.linalg.norm(local) == pytest.approx(2.0)


def test_skinning_colors_and_palette():
  palette = videos.bone_palette(7)
  assert palette.shape == (7, 3) and palette.min() >= 0 and palette.max() <= 1
  assert len({tuple(np.round(c, 3)) for c in palette}) == 7
  weights = np.array([[1.0, 0, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0, 0]])
  colors = videos.skinning_colors(weights, palette)
  np.testing.assert_allclose(colors[0], palette[0])
  np.testing.assert_allclose(colors[1], (palette[0] + palette[1]) / 2)


def test_xray_compositing():
  h, w = 2, 3
  skin = (np.full((h, w, 3), 0.2), np.full((h, w), 1.0), np.array([[1, 1, 0], [1, 0, 0]], bool))
  bone_depth = np.array([[0.5, 2.0, 2.0], [2.0, 2.0, np.inf]])
  bones = (np.full((h, w, 3), 0.8), bone_depth, np.array([[1, 1, 1], [0, 1, 0]], bool))
  out = videos.composite_xray(skin, bones, background=np.zeros(3))
  np.testing.assert_allclose(out[0, 0], 0.8)  # bone in front of the skin
  np.testing.assert_allclose(out[0, 1], 0.45 * 0.2 + 0.55 * 0.8)  # behind: seen through
  np.testing.assert_allclose(out[0, 2], 0.8)  # no skin there
  np.testing.assert_allclose(out[1, 0], 0.2)  # skin only
  np.testing.assert_allclose(out[1, 2], 0.0)  # background


def _sphere(n=12):
  vertices, faces = videos.unit_sphere(n, 2 * n)
  return 0.3 * vertices, faces


def test_turntable_and_animation_frames():
  vertices, faces = _sphere()
  weights = np.stack([vertices[:, 0] > 0, vertices[:, 0] <= 0], 1).astype(float)
  bones = np.tile(np.eye(4), (2, 1, 1))
  bones[:, 0, 3] = [0.15, -0.15]
  frames = videos.turntable_frames(vertices, faces, None, weights, bones,
                                   np.log(np.full((2, 3), 0.05)), num_frames=4, size=40)
  assert frames.shape == (4, 40, 80, 3) and frames.dtype == np.uint8
  left, right = frames[0, :, :40], frames[0, :, 40:]
  assert (left != 255).any(axis=-1).sum() > 200  # the sphere
  assert (right != 255).any(axis=-1).sum() > 200
  posed = np.stack([vertices + [0.2 * t, 0, 0] for t in range(3)])
  anim = videos.animation_frames(posed, faces, None, size=32)
  assert anim.shape == (3, 32, 32, 3)
  assert not np.array_equal(anim[0], anim[2])  # it moves across the picture


def test_reference_frames_side_by_side():
  vertices, faces = _sphere()
  rgb = np.zeros((2, 24, 30, 3), np.uint8)
  posed = np.stack([vertices + [0, 0, 2.0]] * 2)
  intr = np.tile([30.0, 30.0, 15.0, 12.0], (2, 1))
  frames = videos.reference_frames(rgb, posed, faces, None, intr)
  assert frames.shape == (2, 24, 60, 3)
  np.testing.assert_array_equal(frames[:, :, :30], rgb)
  assert (frames[0, 12, 45] != 255).any()  # the sphere at the principal point
  with pytest.raises(UserError, match="frames"):
    videos.reference_frames(rgb[:1], posed, faces, None, intr)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # ffmpeg is exec'd at once
def test_write_mp4_round_trip(tmp_path):
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, size=(5, 33, 41, 3)).astype(np.uint8)  # odd sizes are padded
  path = tmp_path / "clip.mp4"
  videos.write_mp4(path, frames, fps=10.0)
  reader = imageio.get_reader(path)
  decoded = [f for f in reader]
  assert len(decoded) == 5 and decoded[0].shape == (34, 42, 3)
  assert reader.get_meta_data()["fps"] == pytest.approx(10.0)
  assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
  with pytest.raises(UserError, match="frames"):
    videos.write_mp4(tmp_path / "none.mp4", np.zeros((0, 8, 8, 3), np.uint8), fps=10.0)
  assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_upscale():
  frames = np.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3).astype(np.uint8)
  big = videos.upscale(frames, min_height=9)
  assert big.shape == (2, 9, 12, 3)
  np.testing.assert_array_equal(big[:, ::3, ::3], frames)
