"""The oracle's model-to-ground-truth registration recovers a known camera-space similarity."""

from __future__ import annotations

import numpy as np
import pytest

from animdreamer_jax.csd import oracle_alignment
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.train import extract_outputs


def _l_shape():
  """An asymmetric closed mesh: two boxes (a body and a raised 'head')."""
  def box(lo, hi):
    v = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                  for z in (lo[2], hi[2])], np.float64)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f
  v1, f1 = box((-0.4, -0.1, -0.1), (0.3, 0.1, 0.12))
  v2, f2 = box((0.2, 0.1, -0.05), (0.4, 0.35, 0.08))
  return np.concatenate([v1, v2]), np.concatenate([f1, f2 + 8])


def _rot_y(deg):
  a = np.deg2rad(deg)
  return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_camera_space_meshes_applies_each_frame_transform():
  rng = np.random.default_rng(0)
  pts = rng.normal(size=(3, 5, 3))
  w2c = np.stack([np.eye(4)] * 3)
  for t in range(3):
    w2c[t, :3, :3] = _rot_y(20 * t)
    w2c[t, :3, 3] = [0.1 * t, 0, 2]
  got = extract_outputs.to_camera(pts, w2c)
  for t in range(3):
    want = np.stack([w2c[t, :3, :3] @ p + w2c[t, :3, 3] for p in pts[t]])
    np.testing.assert_allclose(got[t], want, atol=1e-12)


def test_fit_similarity_recovers_scale_rotation_and_translation():
  verts, faces = _l_shape()
  frames = np.stack([verts + [0, 0, 2.5], verts @ _rot_y(15).T + [0.05, 0, 2.6]])  # GT, camera space
  true = np.eye(4)
  true[:3, :3] = 1.2 * _rot_y(8)
  true[:3, 3] = [0.1, -0.05, 0.4]
  inv = np.linalg.inv(true)
  pred = frames @ inv[:3, :3].T + inv[:3, 3]  # the model: GT mapped by S^-1
  matrix, info = oracle_alignment.fit_similarity(pred, faces, frames, faces, num_samples=3000)
  np.testing.assert_allclose(matrix, true, atol=1e-2)
  assert abs(info["scale"] - 1.2) < 1e-2 and abs(info["rotation_deg"] - 8.0) < 1.0


def test_refine_per_frame_recovers_each_frames_own_error():
  """The model = GT through S^-1 and, per frame, an extra yaw about the animal's centre
  (a root-pose error the video cannot see): the refinement recovers each frame's map;
  frames between anchors take the nearest anchor's."""
  verts, faces = _l_shape()
  centre = np.array([0.0, 0.0, 2.5])
  gt = np.stack([verts + centre, verts @ _rot_y(15).T + centre + [0.05, 0, 0.1]])
  sequence = np.eye(4)
  sequence[:3, :3] = 1.1 * _rot_y(5)
  sequence[:3, 3] = [0.05, 0.0, 0.2]
  wants, preds = [], []
  for t, yaw in enumerate((12.0, -9.0)):
    extra = np.eye(4)  # GT frame t -> its yawed copy about its own centre
    c = gt[t].mean(0)
    extra[:3, :3] = _rot_y(yaw)
    extra[:3, 3] = c - _rot_y(yaw) @ c
    to_model = np.linalg.inv(sequence) @ extra  # model points = S^-1 (yawed GT)
    preds.append(gt[t] @ to_model[:3, :3].T + to_model[:3, 3])
    wants.append(np.linalg.inv(to_model))
  anchors = np.array([0, 3])
  matrices, info = oracle_alignment.refine_per_frame(np.stack(preds), faces, gt, faces, sequence,
                                                     anchors, num_frames=5, num_samples=3000)
  assert matrices.shape == (5, 4, 4)
  for frame, anchor in ((0, 0), (1, 0), (2, 1), (3, 1), (4, 1)):
    np.testing.assert_allclose(matrices[frame], wants[anchor], atol=2e-2)
  assert abs(info["rotation_deg"][0] - 12.0) < 1.0 and abs(info["rotation_deg"][1] - 9.0) < 1.0


def _similarity(scale, yaw, shift):
  m = np.eye(4)
  m[:3, :3] = scale * _rot_y(yaw)
  m[:3, 3] = shift
  return m


def test_object_space_registration_ignores_root_pose_errors(monkeypatch):
  """A model whose object frame is the ground-truth world through A^-1 (shape right) but
  whose root poses carry per-frame yaw errors: the object-frame fit recovers A, and the
  oracle then sees the ground truth through C A^-1 from every CSD view C, whatever the
  frame's root pose (the camera-space targets would turn with each error)."""
  import types  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.csd import prior_interface  # pylint: disable=g-import-not-at-top
  verts, faces = _l_shape()
  num_frames = 4
  world = np.stack([verts @ _rot_y(10 * t).T + [0.03 * t, 0, 0] for t in range(num_frames)])
  w2c = np.stack([_similarity(1.0, 15 * t, [0.0, 0.0, 2.5]) for t in range(num_frames)])
  true = _similarity(1.15, 6.0, [0.05, -0.02, 0.1])  # model object frame -> GT world
  inv = np.linalg.inv(true)
  posed = world @ inv[:3, :3].T + inv[:3, 3]
  errors = [_similarity(1.0, yaw, [0.0, 0.0, 0.0]) for yaw in (8.0, -12.0, 5.0, 15.0)]
  roots = np.stack([w2c[t] @ true @ errors[t] for t in range(num_frames)])
  monkeypatch.setattr(mesh_lib, "extract_mesh", lambda *a, **k: (verts, faces))
  monkeypatch.setattr(extract_outputs, "posed_sequence",
                      lambda model, params, config, rest, n, frames=None: (
                          posed[np.asarray(frames)], roots[np.asarray(frames)]))
  trainer = types.SimpleNamespace(
      config=types.SimpleNamespace(train=types.SimpleNamespace(mc_extend=0.5)),
      video=types.SimpleNamespace(num_frames=num_frames, gt=types.SimpleNamespace(
          meshes=types.SimpleNamespace(vertices=world, faces=faces), w2c=w2c)),
      model=None, sdf_fn=lambda params: None, root_poses_fn=lambda params: roots)
  state = types.SimpleNamespace(params=None, aux={"aabb": np.array([[-1.0] * 3, [1.0] * 3])})
  matrix, info = oracle_alignment.fit_camera_alignment(trainer, state, num_frames=4,
                                                       num_samples=3000, space="object")
  assert matrix.shape == (4, 4) and info["space"] == "object"
  np.testing.assert_allclose(matrix, true, atol=1e-2)
  renderer = prior_interface.GroundTruthRenderer(world, faces, None, w2c, alignment_space="object")
  renderer.set_alignment(matrix)
  view = _similarity(1.0, 70.0, [0.0, 0.1, 2.0])[None]  # a CSD camera in object space
  for t in range(num_frames):
    got = renderer.ground_truth_cameras(t, view @ np.linalg.inv(roots[t]), roots[t])[0]
    np.testing.assert_allclose(got, _rigid(view[0] @ np.linalg.inv(true)), atol=2e-2)
  # The camera-space fit cannot hold all frames: its targets turn with each root error.
  matrix, _ = oracle_alignment.fit_camera_alignment(trainer, state, num_frames=4,
                                                    num_samples=3000, space="camera")
  camera = prior_interface.GroundTruthRenderer(world, faces, None, w2c)
  camera.set_alignment(matrix)
  worst = max(np.abs(camera.ground_truth_cameras(t, view @ np.linalg.inv(roots[t]))[0]
                     - _rigid(view[0] @ np.linalg.inv(true))).max() for t in range(num_frames))
  assert worst > 0.1
  with pytest.raises(UserError, match="oracle_align_space"):
    oracle_alignment.fit_camera_alignment(trainer, state, space="world")
  with pytest.raises(UserError, match="oracle_align_frames"):
    oracle_alignment.fit_camera_alignment(trainer, state, space="object", per_frame_anchors=4)


def _rigid(m):
  """A similarity divided by its scale (the same image through the same intrinsics)."""
  out = m.copy()
  out[:3, :] = m[:3, :] / np.cbrt(np.linalg.det(m[:3, :3]))
  return out
