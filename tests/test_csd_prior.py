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
from animdreamer_jax.csd import gradient
from animdreamer_jax.csd import priors
from animdreamer_jax.csd import settings as csd_settings
from animdreamer_jax.csd import term as csd_term
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
  return priors.GroundTruthRenderer(frames, faces, colors, video_w2c, **options)


def _cameras(frame=1, key=0):
  return cameras_lib.sample_cameras(jax.random.PRNGKey(key), resolution=RES,
                                    object_center=jnp.zeros(3), object_size=0.6,
                                    object_radius=0.5, frame=frame)


def test_oracle_eps_is_the_point_mass_denoiser():
  rng = np.random.default_rng(0)
  clean = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
  noise = rng.normal(size=clean.shape).astype(np.float32)
  t = np.array([10, 200, 500, 900])
  a = ABAR[t][:, None, None, None].astype(np.float64)
  noisy = np.sqrt(a) * clean + np.sqrt(1 - a) * noise
  got = priors.oracle_eps(jnp.asarray(noisy, jnp.float32), jnp.asarray(t),
                                   jnp.asarray(clean), ABAR)
  np.testing.assert_allclose(np.asarray(got), noise, atol=2e-4)


def test_callback_render_sees_the_world_from_the_views():
  """The views' w2c (frame-t object space = the cameras' world frame) see the ground
  truth's world mesh of frame t directly."""
  renderer = _renderer()
  cams = _cameras(frame=1)
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


def _toy_render(params, cameras, uv, alpha=None):
  """A differentiable stand-in renderer: colour = sigmoid(params) per view and pixel."""
  del cameras, alpha
  colours = jax.nn.sigmoid(params["logits"])  # (V, R*R, 3)
  idx = (uv[..., 1] * RES + uv[..., 0]).astype(jnp.int32)
  return jnp.take_along_axis(colours, idx[..., None], axis=1)


@pytest.mark.parametrize("mode", ["recon", "sds"])
def test_oracle_csd_gradient_is_a_photometric_loss_gradient(mode):
  """With the oracle, x0_hat = x_gt exactly, so CSD's gradient is that of
  recon: 0.5 |z - z_gt|^2 / V;  sds: 0.5 sqrt(a (1 - a)) |z - z_gt|^2 / V, z = 2 I - 1."""
  renderer = _renderer()
  prior = priors.oracle_prior(renderer, RES)
  cams = _cameras(frame=1)
  rng = np.random.default_rng(1)
  params = {"logits": jnp.asarray(rng.normal(size=(4, RES * RES, 3)), jnp.float32)}
  settings = csd_settings.CsdSettings(resolution=RES, mode=mode, rescale=0.5, guidance_scale=50.0)
  mask = {"logits": True}
  grads, images, metrics = jax.jit(lambda p: csd_term.csd_gradient(
      _toy_render, p, mask, prior, None, cams, None, jax.random.PRNGKey(3), 0.3, 0.3,
      settings))(params)
  t = int(metrics["csd_t"])
  assert t == 300
  a = float(ABAR[t])
  gt = renderer.render_views(1, np.asarray(cams.w2c), np.asarray(cams.intrinsics), RES)
  scale = 1.0 if mode == "recon" else math.sqrt(a * (1 - a))

  def loss(p):
    z = 2 * _toy_render(p, cams, gradient.image_pixels(RES, 4)).reshape(4, RES, RES, 3) - 1
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
  eps gathered at `cameras.pixels`; a user function is not assumed to be."""
  renderer = _renderer()
  prior = priors.oracle_prior(renderer, RES)
  assert prior.pixel_separable
  assert not priors.function_prior(lambda *a: a[1]).pixel_separable
  cams = _cameras(frame=1)
  rng = np.random.default_rng(6)
  noisy = jnp.asarray(rng.normal(size=(4, RES, RES, 3)), jnp.float32)
  t = jnp.full((4,), 400, jnp.int32)
  full = np.asarray(jax.jit(lambda c: prior.eps_fn(None, noisy, t, None, c))(cams))
  pixels = np.stack([rng.integers(0, RES, (4, 7)), rng.integers(0, RES, (4, 7))], -1)
  strip = priors.gather_pixels(noisy, jnp.asarray(pixels))
  assert strip.shape == (4, 1, 7, 3)
  for v in range(4):  # the gather against plain indexing
    np.testing.assert_array_equal(np.asarray(strip)[v, 0], np.asarray(noisy)[v, pixels[v, :, 1],
                                                                          pixels[v, :, 0]])
  sub = np.asarray(jax.jit(lambda c, x: prior.eps_fn(None, x, t, None, c))(
      cams._replace(pixels=jnp.asarray(pixels, jnp.int32)), strip))
  want = np.stack([full[v, pixels[v, :, 1], pixels[v, :, 0]] for v in range(4)])[:, None]
  np.testing.assert_allclose(sub, want, atol=1e-5)


def test_build_prior_from_settings_and_its_errors(tmp_path):
  """The oracle from a video with ground truth (its renderer draws that video's meshes);
  errors name the setting or file to fix."""
  import types  # pylint: disable=g-import-not-at-top
  frames, faces, colors = _box_mesh()
  w2c = np.stack([np.eye(4)] * 2)
  w2c[:, 2, 3] = 3.0
  meshes = types.SimpleNamespace(vertices=frames, faces=faces, vertex_colors=(colors * 255).astype(np.uint8))
  video = types.SimpleNamespace(gt=types.SimpleNamespace(meshes=meshes, w2c=w2c, rest_vertices=frames[0]))
  settings = csd_settings.CsdSettings(prior="oracle", resolution=RES,
                                      oracle=csd_settings.OracleSettings(supersample=2))
  prior, params, text = priors.build_prior(settings, video)
  assert prior.name == "oracle" and params is None and text is None
  cams = _cameras(frame=1)
  want = _renderer(supersample=2).render_views(1, np.asarray(cams.w2c), np.asarray(cams.intrinsics), RES)
  np.testing.assert_allclose(prior.encode_fn(None, jnp.asarray(want), None), 2 * want - 1, atol=1e-6)
  got = np.asarray(jax.jit(lambda c: _renderer(supersample=2).render_in_jax(c, RES))(cams))
  assert np.mean(np.abs(got - want) > 1e-4) < 0.01
  with pytest.raises(UserError, match="ground truth"):
    priors.build_prior(settings, types.SimpleNamespace(gt=None))
  with pytest.raises(UserError, match="vertices"):
    priors.GroundTruthRenderer(np.zeros((4, 3)), np.zeros((1, 3)), None, np.eye(4))
  with pytest.raises(UserError, match="csd.mvdream.weights"):
    priors.build_prior(csd_settings.CsdSettings(prior="mvdream"), video)
  with pytest.raises(UserError, match="csd.mvdream.prompt"):
    priors.load_mvdream(str(tmp_path), "", "")
  with pytest.raises(UserError, match="config.json"):
    priors.load_mvdream(str(tmp_path / "nothing"), "a fox", "")


def test_resize_matches_torch_align_corners_false():
  """Bilinear upsampling with half-pixel centres (torch align_corners=False), 2 -> 4 pixels."""
  x = jnp.asarray(np.array([0.0, 1.0], np.float32).reshape(1, 1, 2, 1))
  x = jnp.broadcast_to(x, (1, 2, 2, 1))
  got = np.asarray(priors.resize_images(x, 4))[0, 0, :, 0]
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
  prior = priors.mvdream_prior(unet_config, vae_config, image_size=image_size)
  params = {"unet": unet_lib.init_unet_params(unet_config, jax.random.PRNGKey(0), latent_size=8,
                                              num_views=4),
            "vae": vae_lib.init_vae_params(vae_config, jax.random.PRNGKey(1),
                                           image_size=image_size)}
  cams = cameras_lib.sample_cameras(jax.random.PRNGKey(2), resolution=16,
                                    object_center=jnp.zeros(3), object_size=1.0,
                                    object_radius=0.8, frame=0)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(size=(4, 16, 16, 3)), jnp.float32)
  latents = prior.encode_fn(params, images, None)
  want = vae_lib.encode_to_latents(params["vae"], 2 * priors.resize_images(images, 32) - 1,
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
  guided, cond = gradient.guided_eps(prior, params, noisy, t, text, cams, 7.0)
  np.testing.assert_allclose(np.asarray(cond), np.asarray(eps_c), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(guided), np.asarray(eps_u + 7.0 * (eps_c - eps_u)),
                             rtol=1e-4, atol=1e-4)
  # Fused attention (the GPU setting) is the same maths with other rounding.
  fused = priors.mvdream_prior(unet_config, vae_config, image_size=image_size,
                               fused_attention=True)
  _, cond_fused = gradient.guided_eps(fused, params, noisy, t, text, cams, 7.0)
  np.testing.assert_allclose(np.asarray(cond_fused), np.asarray(eps_c), rtol=1e-4, atol=1e-5)
  settings = dataclasses.replace(csd_settings.CsdSettings(), resolution=16)
  grad, metrics = gradient.image_gradient(prior, params, images, cams, text, jax.random.PRNGKey(4),
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


def _quad_renderer():
  """A flat grey quad in the world plane z = 0, facing a video camera 3 units away."""
  v = np.array([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
  faces = np.array([[0, 1, 2], [0, 2, 3]])
  video_w2c = np.stack([np.eye(4)] * 2)
  video_w2c[:, 2, 3] = 3.0
  return priors.GroundTruthRenderer(np.stack([v, v]), faces, np.full((4, 3), 0.5), video_w2c)


def _turned_camera(degrees):
  """World-to-camera of a camera turned about the world y axis around the origin, 3 away."""
  a = np.deg2rad(degrees)
  w2c = np.eye(4)
  w2c[:3, :3] = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
  w2c[2, 3] = 3.0
  return w2c


def test_video_lighting_keeps_the_shading_the_video_saw():
  """Hand-computed Lambert shade of the quad (normal -z towards the video camera): the
  light stays where the video's camera had it, so every view sees the grey the video
  saw (a light on the viewing camera would give a turned view another grey)."""
  from animdreamer_jax.data import synthetic as syn  # pylint: disable=g-import-not-at-top
  k = np.array([RES * 1.2, RES * 1.2, RES / 2, RES / 2])
  n_world = np.array([0.0, 0.0, -1.0])
  video_shade = 0.5 * (syn.AMBIENT + syn.DIFFUSE * max(n_world @ syn.LIGHT_DIRECTION_CAM, 0.0))
  centre = (slice(RES // 2 - 2, RES // 2 + 2),) * 2
  renderer = _quad_renderer()
  for degrees in (0.0, 35.0):
    got = renderer.render(1, _turned_camera(degrees), k, RES)[centre]
    np.testing.assert_allclose(got, video_shade, atol=1e-6)
  n_turned = _turned_camera(35.0)[:3, :3] @ n_world
  view_shade = 0.5 * (syn.AMBIENT + syn.DIFFUSE * max(n_turned @ syn.LIGHT_DIRECTION_CAM, 0.0))
  assert abs(view_shade - video_shade) > 0.02  # the test tells the two lights apart
