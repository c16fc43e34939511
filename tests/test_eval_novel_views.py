"""Novel views: scores against hand-computed values, the registration plumbing against a
"model" whose renders are the ground truth itself, and the model renderer against render_rays."""

from __future__ import annotations

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import priors
from animdreamer_jax.eval import novel_views
from animdreamer_jax.geometry import rays
from animdreamer_jax.model import articulated_model
from animdreamer_jax.model import init as init_lib
from animdreamer_jax.render import settings as render_settings
from animdreamer_jax.render import warp_render

RES = 32


def test_photometric_scores_against_hand_computed_values():
  truth = np.ones((1, 2, 2, 3))
  images = truth.copy()
  images[0, 0, 0] = 0.0  # one pixel black: MSE = 3 / 12
  mask = np.array([[[True, False], [False, False]]])
  opacity = np.array([[[0.9, 0.7], [0.1, 0.2]]])  # predicted: 2 pixels, 1 shared
  scores = novel_views.photometric_scores(images, opacity, truth, mask)
  assert scores["psnr"] == pytest.approx(-10 * math.log10(0.25))
  assert scores["iou"] == pytest.approx(0.5)
  empty = novel_views.photometric_scores(truth, np.zeros((1, 2, 2)), truth, ~np.ones((1, 2, 2), bool))
  assert empty["iou"] == 1.0 and empty["psnr"] == pytest.approx(120.0)  # nothing to miss; MSE 0


def _box(size, centre):
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int32)
  return 0.5 * np.asarray(size) * corners + np.asarray(centre), faces


def _video():
  """Two frames of a coloured box moving sideways, seen by one camera from the front-left."""
  rest, faces = _box((0.6, 0.4, 0.3), (0.0, 0.0, 0.0))
  vertices = np.stack([rest, rest + [0.15, 0.05, 0.0]]).astype(np.float32)
  colors = np.random.default_rng(0).integers(40, 255, (8, 3)).astype(np.uint8)
  w2c = np.asarray(rays.look_at(np.array([[-1.0, 0.5, 2.5]] * 2), np.zeros(3)), np.float32)
  seq = assets.MeshSequence(vertices=vertices, faces=faces, fps=24.0, vertex_colors=colors)
  gt = types.SimpleNamespace(meshes=seq, w2c=w2c, rest_vertices=rest.astype(np.float32))
  return types.SimpleNamespace(num_frames=2, gt=gt)


def _similarity(scale, angle_deg, translation):
  c, s = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
  rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
  matrix = np.eye(4)
  matrix[:3, :3], matrix[:3, 3] = scale * rotation, translation
  return matrix


def _truth_as_a_model(video, object_to_world):
  """A ViewRenderer drawing the ground truth moved into a model's object frame (x_obj =
  S^-1 x_world), lit by the video's cameras of that frame; it also checks that the
  cameras' near/far enclose what they see."""
  inverse = np.linalg.inv(object_to_world)
  to_object = lambda v: v @ inverse[:3, :3].T + inverse[:3, 3]  # noqa: E731
  scale = np.cbrt(np.linalg.det(object_to_world[:3, :3]))
  video_w2c = video.gt.w2c @ object_to_world
  video_w2c[:, :3, :] /= scale
  seq = video.gt.meshes
  renderer = priors.GroundTruthRenderer(
      to_object(np.asarray(seq.vertices, np.float64)), seq.faces,
      np.asarray(seq.vertex_colors) / 255.0, video_w2c,
      rest_vertices=to_object(np.asarray(video.gt.rest_vertices, np.float64)), supersample=2)

  def render_views(cameras):
    frame, w2c = int(cameras.frame), np.asarray(cameras.w2c, np.float64)
    depth = np.stack([(renderer.vertices[frame] @ m[:3, :3].T + m[:3, 3])[:, 2] for m in w2c])
    near_far = np.asarray(cameras.near_far)
    assert np.all(depth > near_far[:, :1]) and np.all(depth < near_far[:, 1:])
    images, mask = novel_views.ground_truth_views(renderer, frame, w2c,
                                                  np.asarray(cameras.intrinsics), RES)
    return images, mask.astype(np.float32)

  return render_views


def test_a_model_that_renders_the_truth_scores_perfectly_through_its_registration():
  video = _video()
  object_to_world = _similarity(1.7, 35.0, [0.2, -0.1, 0.3])
  model = _truth_as_a_model(video, object_to_world)
  scores, picture = novel_views.novel_views(model, video, object_to_world, resolution=RES)
  assert scores["frames"] == [0, 1] and picture.shape == (2 * 2 * RES, 4 * RES, 3)
  assert scores["iou"] == 1.0 and scores["iou_opposite"] == 1.0
  assert scores["psnr"] > 50 and scores["psnr_opposite"] > 50
  # The same model placed by the wrong registration (none) misses the animal.
  wrong, _ = novel_views.novel_views(model, video, np.eye(4), resolution=RES)
  assert wrong["iou"] < 0.7 and wrong["psnr"] < 25


def test_model_renderer_is_the_eval_render_over_white_with_its_opacity():
  model = articulated_model.ArticulatedModel(articulated_model.tiny_config(video_lengths=(2,)))
  params = init_lib.init_variables(model, 0)
  settings = render_settings.RenderSettings(eval_samples=6, eval_importance_samples=2)
  res = 6
  # The random SDF is dense everywhere near the origin: a near/far only 0.1 apart leaves
  # every pixel partly transparent, by a different amount.
  cameras = cameras_lib.sample_cameras(
      jax.random.PRNGKey(3), resolution=res, object_center=jnp.zeros(3), object_size=2.0,
      object_radius=0.05, frame=1)
  images, opacity = novel_views.model_view_renderer(model, params, settings, res)(cameras)
  assert images.shape == (4, res, res, 3) and opacity.shape == (4, res, res)
  uv = jnp.asarray(np.stack(np.meshgrid(np.arange(res), np.arange(res)), -1).reshape(-1, 2),
                   jnp.float32)
  view = 2
  out = jax.jit(lambda p: warp_render.render_rays(
      model, p, uv, jnp.int32(1), None, near_far=cameras.near_far[view],
      options=settings.image_options(),
      cameras=warp_render.CameraOverride(obj2cam=cameras.w2c[view],
                                         intrinsics=cameras.intrinsics[view])))(params)
  reference_opacity = np.asarray(out["opacity"]).reshape(res, res)
  assert reference_opacity.max() - reference_opacity.min() > 0.03  # not a flat image
  np.testing.assert_allclose(opacity[view], reference_opacity, atol=1e-5)
  white = np.asarray(out["rgb"]) * np.asarray(out["opacity"])[:, None] + (
      1 - np.asarray(out["opacity"])[:, None])
  np.testing.assert_allclose(images[view].reshape(-1, 3), white, atol=1e-5)
