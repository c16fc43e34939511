"""CSD priors: the oracle (ground-truth renders through a host callback), its CSD gradient
as an explicit photometric loss, the MVDream adapter (tiny random weights, slow), errors."""

from __future__ import annotations

import dataclasses
import math

import jax
from jax import test_util as jtu
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import csd_step
from animdreamer_jax.csd import prior_interface
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import schedule as schedule_lib

ABAR = schedule_lib.make_alphas_cumprod()
RES = 12


def _box_mesh(half=(0.3, 0.15, 0.2)):
  """A coloured box (8 vertices, 12 triangles) and 2 frames (the second shifted)."""
  hx, hy, hz = half
  v = np.array([[x, y, z] for x in (-hx, hx) for y in (-hy, hy) for z in (-hz, hz)], np.float64)
  faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
  colors = np.clip(0.5 + v / (2 * np.abs(v).max()), 0, 1)
  frames = np.stack([v, v + np.array([0.05, 0.0, 0.0])])
  return frames, faces, colors


def _renderer(video_w2c=None, **options):
  """The box's GroundTruthRenderer (video camera 3 units away by default)."""
  frames, faces, colors = _box_mesh()
  if video_w2c is None:
    video_w2c = np.stack([np.eye(4)] * 2)
    video_w2c[:, 2, 3] = 3.0
  return prior_interface.GroundTruthRenderer(frames, faces, colors, video_w2c, **options)


def _cameras(frame=1, root_pose=None, key=0):
  if root_pose is None:
    root_pose = jnp.asarray(_renderer().world_to_video_camera[frame], jnp.float32)
  return cameras_lib.sample_cameras(jax.random.PRNGKey(key), resolution=RES,
                                    object_center=jnp.zeros(3), object_size=0.6,
                                    object_radius=0.5, frame=frame, root_pose=root_pose)


def test_oracle_eps_is_the_point_mass_denoiser():
  rng = np.random.default_rng(0)
  clean = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
  noise = rng.normal(size=clean.shape).astype(np.float32)
  t = np.array([10, 200, 500, 900])
  a = ABAR[t][:, None, None, None].astype(np.float64)
  noisy = np.sqrt(a) * clean + np.sqrt(1 - a) * noise
  got = prior_interface.oracle_eps(jnp.asarray(noisy, jnp.float32), jnp.asarray(t),
                                   jnp.asarray(clean), ABAR)
  np.testing.assert_allclose(np.asarray(got), noise, atol=2e-4)


def test_world_cameras_and_callback_render():
  renderer = _renderer()
  # Root pose = the video camera: object frame = world frame.
  cams = _cameras(frame=1)
  np.testing.assert_allclose(np.asarray(renderer.world_cameras(cams)), np.asarray(cams.w2c),
                             atol=1e-5)
  # A model whose object frame is the world moved by M: root = W_t M^-1, so the CSD
  # views (in object space) see the world through w2c_obj @ M.
  m = np.eye(4)
  m[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
  m[:3, 3] = [0.1, -0.2, 0.05]
  root = renderer.world_to_video_camera[1] @ np.linalg.inv(m)
  cams_m = _cameras(frame=1, root_pose=jnp.asarray(root, jnp.float32))
  np.testing.assert_allclose(np.asarray(renderer.world_cameras(cams_m)),
                             np.asarray(cams_m.w2c) @ m, atol=1e-5)
  # Inside jit, through the host callback, equals a direct host render (up to float32
  # rounding of the cameras flipping a rare silhouette-edge pixel).
  images = jax.jit(lambda c: renderer.render_in_jax(c, RES))(cams)
  direct = renderer.render_views(1, np.asarray(cams.w2c), np.asarray(cams.intrinsics), RES)
  assert np.mean(np.abs(np.asarray(images) - direct) > 1e-4) < 0.01
  assert images.shape == (4, RES, RES, 3)
  # White background at the corners, the box in the middle of every view.
  np.testing.assert_array_equal(direct[:, 0, 0], 1.0)
  assert np.all(np.any(direct[:, RES // 2 - 1:RES // 2 + 1, RES // 2 - 1:RES // 2 + 1] < 0.99,
                       axis=(1, 2, 3)))


def _toy_render(params, cameras, uv):
  """A differentiable stand-in renderer: colour = sigmoid(params) per view and pixel."""
  del cameras
  colours = jax.nn.sigmoid(params["logits"])  # (V, R*R, 3)
  idx = (uv[..., 1] * RES + uv[..., 0]).astype(jnp.int32)
  return jnp.take_along_axis(colours, idx[..., None], axis=1)


@pytest.mark.parametrize("mode", ["recon", "sds"])
def test_oracle_csd_gradient_is_a_photometric_loss_gradient(mode):
  """With the oracle, x0_hat = x_gt exactly, so CSD's gradient is that of
  recon: 0.5 |z - z_gt|^2 / V;  sds: 0.5 sqrt(a (1 - a)) |z - z_gt|^2 / V, z = 2 I - 1."""
  renderer = _renderer()
  prior = prior_interface.oracle_prior(renderer, RES)
  cams = _cameras(frame=1)
  rng = np.random.default_rng(1)
  params = {"logits": jnp.asarray(rng.normal(size=(4, RES * RES, 3)), jnp.float32)}
  settings = csd_step.CsdSettings(resolution=RES, mode=mode, rescale=0.5, guidance_scale=50.0,
                                  encoder_sample=False)
  mask = {"logits": True}
  grads, images, metrics = jax.jit(lambda p: csd_step.csd_gradient(
      _toy_render, p, mask, prior, None, cams, None, jax.random.PRNGKey(3), 0.3, 0.3,
      settings))(params)
  t = int(metrics["csd_t"])
  assert t == 300
  a = float(ABAR[t])
  gt = renderer.render_views(1, np.asarray(cams.w2c), np.asarray(cams.intrinsics), RES)
  scale = 1.0 if mode == "recon" else math.sqrt(a * (1 - a))

  def loss(p):
    z = 2 * _toy_render(p, cams, csd_step.image_pixels(RES, 4)).reshape(4, RES, RES, 3) - 1
    return 0.5 * scale * jnp.sum((z - (2 * gt - 1)) ** 2) / 4

  want = jax.grad(loss)(params)["logits"]
  np.testing.assert_allclose(np.asarray(grads["logits"]), np.asarray(want), rtol=2e-3,
                             atol=2e-3 * float(jnp.abs(want).max()))
  jtu.check_grads(loss, (params,), order=1, modes=("rev",), eps=1e-2, atol=5e-3,
                            rtol=5e-3)
  np.testing.assert_allclose(np.asarray(images),
                             np.asarray(jax.nn.sigmoid(params["logits"])).reshape(4, RES, RES, 3),
                             rtol=1e-6)


def test_oracle_on_a_pixel_subset_is_the_full_view_oracle_at_those_pixels():
  """The oracle is pixel-separable: eps of a (V, 1, P, 3) strip equals the full views'
  eps gathered at `cameras.pixels`; a pooled oracle is not."""
  renderer = _renderer()
  prior = prior_interface.oracle_prior(renderer, RES)
  assert prior.pixel_separable
  assert not prior_interface.oracle_prior(renderer, RES, downsample=2).pixel_separable
  assert not prior_interface.function_prior(lambda *a: a[1]).pixel_separable
  cams = _cameras(frame=1)
  rng = np.random.default_rng(6)
  noisy = jnp.asarray(rng.normal(size=(4, RES, RES, 3)), jnp.float32)
  t = jnp.full((4,), 400, jnp.int32)
  full = np.asarray(jax.jit(lambda c: prior.eps_fn(None, noisy, t, None, c))(cams))
  pixels = np.stack([rng.integers(0, RES, (4, 7)), rng.integers(0, RES, (4, 7))], -1)
  strip = prior_interface.gather_pixels(noisy, jnp.asarray(pixels))
  assert strip.shape == (4, 1, 7, 3)
  for v in range(4):  # the gather against plain indexing
    np.testing.assert_array_equal(np.asarray(strip)[v, 0], np.asarray(noisy)[v, pixels[v, :, 1],
                                                                          pixels[v, :, 0]])
  sub = np.asarray(jax.jit(lambda c, x: prior.eps_fn(None, x, t, None, c))(
      cams._replace(pixels=jnp.asarray(pixels, jnp.int32)), strip))
  want = np.stack([full[v, pixels[v, :, 1], pixels[v, :, 0]] for v in range(4)])[:, None]
  np.testing.assert_allclose(sub, want, atol=1e-5)


def test_oracle_from_video_needs_ground_truth():
  class NoGt:
    gt = None
  with pytest.raises(UserError, match="ground truth"):
    prior_interface.oracle_prior_from_video(NoGt(), 16)
  with pytest.raises(UserError, match="vertices"):
    prior_interface.GroundTruthRenderer(np.zeros((4, 3)), np.zeros((1, 3)), None, np.eye(4))


def test_load_mvdream_errors(tmp_path):
  with pytest.raises(UserError, match="csd.weights"):
    prior_interface.load_mvdream("", "a fox", "")
  with pytest.raises(UserError, match="csd.prompt"):
    prior_interface.load_mvdream(str(tmp_path), "", "")
  with pytest.raises(UserError, match="config.json"):
    prior_interface.load_mvdream(str(tmp_path / "nothing"), "a fox", "")


def test_resize_matches_torch_align_corners_false():
  """Bilinear upsampling with half-pixel centres (torch align_corners=False), 2 -> 4 pixels."""
  x = jnp.asarray(np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1))
  x = jnp.broadcast_to(x, (1, 2, 2, 1))
  got = np.asarray(prior_interface.resize_images(x, 4))[0, 0, :, 0]
  # Output centre i maps to (i + 0.5) / 2 - 0.5 in input pixels, clamped.
  want = np.clip((np.arange(4) + 0.5) / 2 - 0.5, 0, 1)
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
def test_mvdream_adapter_with_tiny_random_weights():
  from animdreamer_jax.prior import unet as unet_lib  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.prior import vae as vae_lib  # pylint: disable=g-import-not-at-top
  unet_config = unet_lib.UNetConfig.tiny()
  vae_config = vae_lib.VaeConfig.tiny()
  image_size = 32  # latents 8 x 8 with the tiny VAE (f = 4)
  prior = prior_interface.mvdream_prior(unet_config, vae_config, image_size=image_size)
  params = {"unet": unet_lib.init_unet_params(unet_config, jax.random.PRNGKey(0), latent_size=8,
                                              num_views=4),
            "vae": vae_lib.init_vae_params(vae_config, jax.random.PRNGKey(1),
                                           image_size=image_size)}
  cams = cameras_lib.sample_cameras(jax.random.PRNGKey(2), resolution=16,
                                    object_center=jnp.zeros(3), object_size=1.0,
                                    object_radius=0.8, frame=0, root_pose=jnp.eye(4))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32)
  latents = prior.encode_fn(params, images, None)
  want = vae_lib.encode_to_latents(params["vae"], 2 * prior_interface.resize_images(images, 32) - 1,
                                   vae_config, None)
  np.testing.assert_allclose(np.asarray(latents), np.asarray(want), rtol=1e-5, atol=1e-6)
  assert latents.shape == (4, 8, 8, 4)
  text = (jnp.asarray(rng.normal(size=(5, 32)), jnp.float32),
          jnp.asarray(rng.normal(size=(5, 32)), jnp.float32))
  t = jnp.full((4,), 400, jnp.int32)
  noisy = jnp.asarray(rng.normal(size=latents.shape), jnp.float32)
  model = unet_lib.MultiViewUNet(unet_config)
  direct = lambda ctx: model.apply({"params": params["unet"]}, noisy, t,
                                   jnp.broadcast_to(ctx, (4,) + ctx.shape), cams.mvdream,
                                   num_views=4)
  eps_c, eps_u = direct(text[0]), direct(text[1])
  guided, cond = csd_step.guided_eps(prior, params, noisy, t, text, cams, 7.0)
  np.testing.assert_allclose(np.asarray(cond), np.asarray(eps_c), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(eps_u + 7.0 * (eps_c - eps_u)),
                             rtol=1e-4, atol=1e-4)
  # Fused attention (the GPU setting) is the same maths with other rounding.
  fused = prior_interface.mvdream_prior(unet_config, vae_config, image_size=image_size,
                                        fused_attention=True)
  _, cond_fused = csd_step.guided_eps(fused, params, noisy, t, text, cams, 7.0)
  np.testing.assert_allclose(np.asarray(cond_fused), np.asarray(eps_c), rtol=1e-4, atol=1e-5)
  settings = dataclasses.replace(csd_step.CsdSettings(), resolution=16)
  grad, metrics = csd_step.image_gradient(prior, params, images, cams, text, jax.random.PRNGKey(4),
                                          0.02, 0.98, settings)
  assert grad.shape == images.shape and bool(jnp.all(jnp.isfinite(grad)))
  assert float(jnp.abs(grad).max()) > 0
  assert 20 <= int(metrics["csd_t"]) <= 980


def test_supersampled_oracle_render_averages_shifted_pixel_centres():
  """Slow reference: the mean of s^2 point-sampled renders whose pixel centres
  are moved to the sub-pixel centres u + (a + 0.5) / s (principal point shifted)."""
  s = 3
  sharp, smooth = _renderer(), _renderer(supersample=s)
  cams = _cameras(frame=1)
  view_w2c, k = np.asarray(cams.w2c[1], np.float64), np.asarray(cams.intrinsics[1], np.float64)
  want = np.zeros((RES, RES, 3))
  for a in range(s):
    for b in range(s):
      shifted = k - np.array([0.0, 0.0, (a + 0.5) / s - 0.5, (b + 0.5) / s - 0.5])
      want += sharp.render(1, view_w2c, shifted, RES) / s**2
  got = smooth.render(1, view_w2c, k, RES)
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Anti-aliasing made grey levels the point-sampled image does not have.
  edge = np.abs(got - sharp.render(1, view_w2c, k, RES)).max()
  assert edge > 0.05
  with pytest.raises(UserError):
    _renderer(supersample=0)


def test_camera_alignment_renders_the_ground_truth_where_the_model_is():
  """A model that is the ground truth scaled/moved in video-camera space (the monocular
  scale-depth freedom, S^-1) must get oracle targets that look like its own renders.
  Black boxes (shade 0 whatever the light), so this compares geometry alone; the light
  under a registration has its own test."""
  frames, faces, colors = _box_mesh()
  colors = np.zeros_like(colors)
  w2c = np.stack([np.eye(4)] * 2)
  w2c[:, 2, 3] = 3.0
  angle = np.deg2rad(20.0)
  sim = np.eye(4)
  sim[:3, :3] = 1.4 * np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0],
                                [-np.sin(angle), 0, np.cos(angle)]])
  sim[:3, 3] = [0.1, -0.05, -1.1]  # model -> GT: the model sits nearer, smaller
  gt = prior_interface.GroundTruthRenderer(frames, faces, colors, w2c)
  gt.set_alignment(sim)
  # The model in its own object frame = its video-camera space (root pose = identity).
  cam_gt = np.einsum("ij,tvj->tvi", w2c[0][:3, :3], frames) + w2c[0][:3, 3]
  model_v = np.einsum("ij,tvj->tvi", np.linalg.inv(sim)[:3, :3], cam_gt) + np.linalg.inv(sim)[:3, 3]
  model = prior_interface.GroundTruthRenderer(model_v, faces, colors, np.stack([np.eye(4)] * 2))
  cams = cameras_lib.sample_cameras(jax.random.PRNGKey(2), resolution=RES,
                                    object_center=jnp.asarray(model_v[1].mean(0), jnp.float32),
                                    object_size=0.6 / 1.4, object_radius=0.4, frame=1,
                                    root_pose=jnp.eye(4))
  want = model.render_views(1, np.asarray(cams.w2c), np.asarray(cams.intrinsics), RES)
  got = np.asarray(jax.jit(lambda c: gt.render_in_jax(c, RES))(cams))
  assert np.mean(np.abs(got - want) > 1e-3) < 0.02  # a few silhouette-edge ties at most
  assert np.all(np.any(want < 0.99, axis=(1, 2, 3)))  # the box is in every view
  # Without the alignment the targets are elsewhere.
  gt.set_alignment(None)
  wrong = np.asarray(jax.jit(lambda c: gt.render_in_jax(c, RES))(cams))
  assert np.mean(np.abs(wrong - want) > 1e-3) > 0.1
  with pytest.raises(UserError):
    gt.set_alignment(np.full((4, 4), np.nan))


def _quad_renderer(lighting):
  """A flat grey quad in the world plane z = 0, facing a video camera 3 units away."""
  v = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
  faces = np.array([[0, 1, 2], [0, 2, 3]])
  video_w2c = np.stack([np.eye(4)] * 2)
  video_w2c[:, 2, 3] = 3.0
  return prior_interface.GroundTruthRenderer(np.stack([v, v]), faces, np.full((4, 3), 0.5),
                                             video_w2c, lighting=lighting)


def _turned_camera(degrees):
  """World-to-camera of a camera turned about the world y axis around the origin, 3 away."""
  a = np.deg2rad(degrees)
  w2c = np.eye(4)
  w2c[:3, :3] = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
  w2c[2, 3] = 3.0
  return w2c


def test_video_lighting_keeps_the_shading_the_video_saw():
  """Hand-computed Lambert shade of the quad (normal -z towards the video camera):
  with the light fixed in the video camera every view sees the same grey; with the
  light on the viewing camera a turned view sees another."""
  from animdreamer_jax.data import synthetic as syn  # pylint: disable=g-import-not-at-top
  k = np.array([RES * 1.2, RES * 1.2, RES / 2, RES / 2])
  n_world = np.array([0.0, 0.0, -1.0])
  video_shade = 0.5 * (syn.AMBIENT + syn.DIFFUSE * max(n_world @ syn.LIGHT_DIRECTION_CAM, 0.0))
  centre = (slice(RES // 2 - 2, RES // 2 + 2),) * 2
  video_lit, view_lit = _quad_renderer("video"), _quad_renderer("view")
  for degrees in (0.0, 35.0):
    got = video_lit.render(1, _turned_camera(degrees), k, RES)[centre]
    np.testing.assert_allclose(got, video_shade, atol=1e-6)
  n_turned = _turned_camera(35.0)[:3, :3] @ n_world
  view_shade = 0.5 * (syn.AMBIENT + syn.DIFFUSE * max(n_turned @ syn.LIGHT_DIRECTION_CAM, 0.0))
  assert abs(view_shade - video_shade) > 0.02
  np.testing.assert_allclose(view_lit.render(1, _turned_camera(35.0), k, RES)[centre],
                             view_shade, atol=1e-6)
  np.testing.assert_allclose(view_lit.render(1, _turned_camera(0.0), k, RES)[centre],
                             video_shade, atol=1e-6)
  with pytest.raises(UserError):
    _quad_renderer("sun")


def test_video_lighting_ignores_the_registration():
  """The model's colours are the video's pixels (the video's shading baked in), so a
  ground-truth point must show the shade the video gave it whatever similarity
  registers the model. A registration turning and scaling the model by 30 degrees
  and 1 / 1.3 about the camera; the view looks at the model's copy of the quad, so
  it sees the ground truth head-on from the video camera: the hand-computed video
  shade (the light turned with the registration would give another)."""
  from animdreamer_jax.data import synthetic as syn  # pylint: disable=g-import-not-at-top
  renderer = _quad_renderer("video")
  n_world = np.array([0.0, 0.0, -1.0])
  shade = lambda light: 0.5 * (syn.AMBIENT + syn.DIFFUSE * max(n_world @ light, 0.0))
  a = np.deg2rad(30.0)
  turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
  sim = np.eye(4)
  sim[:3, :3] = 1.3 * turn
  renderer.set_alignment(sim)
  view = np.eye(4)
  view[:3, :3] = turn  # from the camera centre towards S^-1 (0, 0, 3)
  w2c = renderer.ground_truth_cameras(1, view[None])[0]
  np.testing.assert_allclose(w2c, renderer.world_to_video_camera[1], atol=1e-12)
  k = np.array([RES * 1.2, RES * 1.2, RES / 2, RES / 2])
  centre = (slice(RES // 2 - 2, RES // 2 + 2),) * 2
  np.testing.assert_allclose(renderer.render(1, w2c, k, RES)[centre],
                             shade(syn.LIGHT_DIRECTION_CAM), atol=1e-6)
  assert abs(shade(turn @ syn.LIGHT_DIRECTION_CAM) - shade(syn.LIGHT_DIRECTION_CAM)) > 0.02


def test_blurred_oracle_targets_are_a_gaussian_convolution():
  """Slow reference: direct 2-D convolution with a normalised Gaussian, edge pixels
  replicated."""
  sigma = 1.3
  sharp, soft = _renderer(), _renderer(blur_px=sigma)
  cams = _cameras(frame=1)
  view_w2c, k = np.asarray(cams.w2c[2], np.float64), np.asarray(cams.intrinsics[2], np.float64)
  image = sharp.render(1, view_w2c, k, RES).astype(np.float64)
  r = int(np.ceil(4 * sigma))
  taps = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
  kernel = np.outer(taps, taps) / taps.sum() ** 2
  padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="edge")
  want = np.zeros_like(image)
  for dy in range(2 * r + 1):
    for dx in range(2 * r + 1):
      want += kernel[dy, dx] * padded[dy:dy + RES, dx:dx + RES]
  np.testing.assert_allclose(soft.render(1, view_w2c, k, RES), want, atol=2e-3)
  with pytest.raises(UserError):
    _renderer(blur_px=-1.0)


def test_object_space_alignment_places_the_views_in_the_world():
  """Object space: a CSD camera C of the model's object frame sees the ground-truth
  world through C A^-1 (A: object -> world), whatever the root pose; identity A =
  the object frame is the world. Only one (4, 4) registration is accepted."""
  frames, faces, colors = _box_mesh()
  w2c = np.stack([np.eye(4)] * 2)
  w2c[:, 2, 3] = 3.0
  gt = prior_interface.GroundTruthRenderer(frames, faces, colors, w2c, alignment_space="object")
  root = np.eye(4)
  root[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
  root[:3, 3] = [0.3, 0.0, 2.0]  # any root pose: it must not matter
  cams = _cameras(frame=1, root_pose=jnp.asarray(root, jnp.float32))
  np.testing.assert_allclose(gt.world_cameras(cams), np.asarray(cams.w2c), atol=1e-5)
  a = np.eye(4)
  a[:3, :3] = 2.0 * np.eye(3)
  a[:3, 3] = [0.1, 0.2, 0.0]
  gt.set_alignment(a)
  want = np.asarray(cams.w2c, np.float64) @ np.linalg.inv(a)
  want[:, :3, :] *= 2.0  # divided by its scale 1/2
  np.testing.assert_allclose(gt.world_cameras(cams), want, atol=1e-5)
  images = np.asarray(jax.jit(lambda c: gt.render_in_jax(c, RES))(cams))
  direct = gt.render_views(1, want, np.asarray(cams.intrinsics), RES)
  assert np.mean(np.abs(images - direct) > 1e-4) < 0.01
  with pytest.raises(UserError, match="object-space"):
    gt.set_alignment(np.stack([np.eye(4)] * 2))
  with pytest.raises(UserError, match="alignment space"):
    prior_interface.GroundTruthRenderer(frames, faces, colors, w2c, alignment_space="world")


def test_per_frame_camera_alignment_is_read_at_the_frame():
  gt = _renderer()
  w2c = gt.world_to_video_camera
  per_frame = np.stack([np.eye(4)] * 2)
  per_frame[1, :3, 3] = [0.2, 0.0, 0.0]
  gt.set_alignment(per_frame)
  view = np.stack([np.eye(4)])
  view[0, 2, 3] = 2.0
  np.testing.assert_allclose(gt.ground_truth_cameras(0, view)[0], view[0] @ w2c[0], atol=1e-12)
  np.testing.assert_allclose(gt.ground_truth_cameras(1, view)[0],
                             view[0] @ np.linalg.inv(per_frame[1]) @ w2c[1], atol=1e-12)
  with pytest.raises(UserError):
    gt.set_alignment(np.stack([np.eye(4)] * 3))


def test_pooled_oracle_compares_block_means():
  """Slow reference: the x0-form CSD gradient of a pooled oracle is, per pixel, the
  block mean of (render - target) spread over the block (the pooling's transpose)."""
  rng = np.random.default_rng(1)
  f, res = 3, 6
  images = jnp.asarray(rng.uniform(size=(4, res, res, 3)), jnp.float32)
  target = rng.uniform(size=(4, res, res, 3))
  encode = prior_interface.pooled_pixel_encoder(f)

  def eps_fn(pp, noisy, t, text, cams):
    clean = encode(None, jnp.asarray(target, jnp.float32), None)
    return prior_interface.oracle_eps(noisy, t, clean, ABAR)

  prior = prior_interface.function_prior(eps_fn, encode_fn=encode, conditional=False)
  settings = csd_step.CsdSettings(resolution=res, mode="recon", reduction="mean", rescale=0.0,
                                  encoder_sample=False)
  grad, _ = csd_step.image_gradient(prior, None, images, _cameras(), None,
                                    jax.random.PRNGKey(0), 0.5, 0.5, settings)
  diff = 2.0 * (np.asarray(images, np.float64) - target)  # [-1, 1] encoding
  want = np.zeros_like(diff)
  for i in range(0, res, f):
    for j in range(0, res, f):
      block = diff[:, i:i + f, j:j + f].mean(axis=(1, 2), keepdims=True)
      want[:, i:i + f, j:j + f] = 2.0 * block / f**2 / (4 * (res // f) ** 2 * 3)
  np.testing.assert_allclose(np.asarray(grad), want, rtol=1e-3, atol=1e-7)
  with pytest.raises(UserError):
    prior_interface.pooled_pixel_encoder(0)
  with pytest.raises(UserError):
    prior_interface.pooled_pixel_encoder(4)(None, images, None)
