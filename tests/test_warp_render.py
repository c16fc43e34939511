"""Warp-composed rendering: analytic scenes, loop references and gradient checks."""

from __future__ import annotations

import dataclasses
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import init
from animdreamer_jax.model import skinning
from animdreamer_jax.render import density
from animdreamer_jax.render import warp_render as wr

CENTER = np.array([0.03, -0.02, 0.01])
RADIUS = 0.3
K = np.array([20.0, 20.0, 8.0, 8.0])  # 16 x 16 image


def rot_y(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def rot_x(a):
  c, s = math.cos(a), math.sin(a)
  return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def pose(rotation, translation):
  m = np.eye(4)
  m[:3, :3], m[:3, 3] = rotation, translation
  return m


FRAME_POSE = pose(rot_y(0.3) @ rot_x(-0.1), [0.05, -0.02, 2.0])
PARTNER_POSE = pose(rot_y(0.45) @ rot_x(0.05), [0.0, 0.03, 2.1])


def sphere_fields(model, params, x, appearance, alpha):
  """Analytic canonical field: a sphere; colour and feature vary with position."""
  del model, params, appearance, alpha
  rel = x - jnp.asarray(CENTER, x.dtype)
  sdf = jnp.linalg.norm(rel, axis=-1) - RADIUS
  feature = rel / jnp.linalg.norm(rel, axis=-1, keepdims=True)
  return {"sdf": sdf, "rgb": 0.5 + 0.5 * jnp.tanh(rel), "feature": feature,
          "vis": jnp.zeros_like(sdf)}


def ray_dirs(uv):
  return np.stack([(uv[:, 0] + 0.5 - K[2]) / K[0], (uv[:, 1] + 0.5 - K[3]) / K[1],
                   np.ones(len(uv))], -1)


def hit_depth(obj2cam, uv):
  """Camera z of the first ray-sphere intersection, NaN on a miss."""
  c = obj2cam[:3, :3] @ CENTER + obj2cam[:3, 3]
  out = []
  for d in ray_dirs(uv):
    a, b, cc = d @ d, -2 * d @ c, c @ c - RADIUS**2
    disc = b * b - 4 * a * cc
    out.append((-b - math.sqrt(disc)) / (2 * a) if disc > 0 else np.nan)
  return np.array(out)


def project(obj2cam, p_obj):
  p = obj2cam[:3, :3] @ p_obj + obj2cam[:3, 3]
  return np.array([K[0] * p[0] / p[2] + K[2] - 0.5, K[1] * p[1] / p[2] + K[3] - 0.5])


def ref_weights_loop(sdf, depths, dirs, beta):
  """VolSDF + compositing, one ray and one sample at a time."""
  w = np.zeros_like(sdf)
  for r in range(sdf.shape[0]):
    trans = 1.0
    norm = np.linalg.norm(dirs[r])
    for i in range(sdf.shape[1]):
      j = min(i, sdf.shape[1] - 2)
      delta = (depths[r, j + 1] - depths[r, j]) * norm
      s = sdf[r, i]
      psi = 0.5 * math.exp(-s / beta) if s > 0 else 1 - 0.5 * math.exp(s / beta)
      a = 1 - math.exp(-psi / beta * delta)
      w[r, i] = trans * a
      trans *= 1 - a
  return w


@pytest.fixture(scope="module")
def tiny():
  model = am.ArticulatedModel(am.tiny_config(video_lengths=(4,)))
  return model, init.init_variables(model, 0)


def with_params(variables, updates):
  """Returns variables with params[path] = value for {path tuple: value}."""
  params = jax.tree_util.tree_map(lambda x: x, variables["params"])
  for path, value in updates.items():
    node = params
    for key in path[:-1]:
      node = node[key]
    node[path[-1]] = value
  return {"params": params}


def constant_bones(variables, beta):
  """Bones that do not move (output kernels zeroed): the warp is the identity."""
  p = variables["params"]["bones"]
  return with_params(variables, {
      ("bones", "trans_head", "output", "dense", "kernel"):
          jnp.zeros_like(p["trans_head"]["output"]["dense"]["kernel"]),
      ("bones", "so3_head", "output", "dense", "kernel"):
          jnp.zeros_like(p["so3_head"]["output"]["dense"]["kernel"]),
      ("logibeta",): jnp.asarray(-np.log(beta), jnp.float32),
  })


UV = np.array([[8, 8], [5, 9], [11, 6], [7, 3], [0, 0], [15, 2], [9, 12], [3, 14]], np.float32)


@functools.lru_cache(maxsize=None)
def _sphere_renderer(model, warp, samples, near_far, density_fn, compute_normals,
                     importance_samples, with_matching):
  """One jitted sphere renderer per static setting (tests with equal settings share it)."""
  options = wr.RenderOptions(
      num_samples=samples, importance_samples=importance_samples, density_fn=density_fn,
      warp=warp, canonical_fn=sphere_fields, compute_normals=compute_normals,
      match_candidates=10_000)

  def fn(variables, match_features):
    return wr.render_rays(
        model, variables, jnp.asarray(UV), jnp.array(1), jnp.array(2),
        near_far=jnp.asarray(near_far), options=options,
        cameras=wr.CameraOverride(jnp.asarray(FRAME_POSE, jnp.float32),
                                  jnp.asarray(K, jnp.float32)),
        partner_cameras=wr.CameraOverride(jnp.asarray(PARTNER_POSE, jnp.float32),
                                          jnp.asarray(K, jnp.float32)),
        match_features=match_features if with_matching else None)
  return jax.jit(fn)


def render_sphere(model, variables, *, warp, samples=256, near_far=(1.4, 2.6),
                  density_fn=density.volsdf_density, compute_normals=False,
                  importance_samples=0, match_features=None):
  fn = _sphere_renderer(model, warp, samples, near_far, density_fn, compute_normals,
                        importance_samples, match_features is not None)
  return fn(variables, None if match_features is None else jnp.asarray(match_features))


BETA = 0.002


def surface_features():
  """Analytic canonical feature at each ray's surface point ((1, 0, 0) on a miss)."""
  z = hit_depth(FRAME_POSE, UV)
  cam2obj = np.linalg.inv(FRAME_POSE)
  feats = np.tile([1.0, 0.0, 0.0], (len(UV), 1))
  for r in np.flatnonzero(~np.isnan(z)):
    p = cam2obj[:3, :3] @ (z[r] * ray_dirs(UV[r:r + 1])[0]) + cam2obj[:3, 3] - CENTER
    feats[r] = p / np.linalg.norm(p)
  return feats.astype(np.float32)


@pytest.fixture(scope="module")
def still(tiny):
  """Constant bones, a sharp density, a sharp feature-matching temperature."""
  model, variables = tiny
  v = with_params(constant_bones(variables, BETA), {("logsigma",): jnp.float32(np.log(1e4))})
  return model, v


@pytest.fixture(scope="module")
def identity_render(still):
  model, v = still
  return render_sphere(model, v, warp=wr.IdentityWarp())


@pytest.fixture(scope="module")
def skinning_render(still):
  model, v = still
  return render_sphere(model, v, warp=wr.SkinningWarp("dqs"), compute_normals=True,
                       match_features=surface_features())


def test_sphere_opacity_depth_and_weights(identity_render):
  out = identity_render
  chex.assert_shape([out["opacity"], out["depth"]], (len(UV),))
  chex.assert_shape(out["weights"], (len(UV), 256))
  z = hit_depth(FRAME_POSE, UV)
  hit = ~np.isnan(z)
  assert 2 <= hit.sum() < len(UV)
  np.testing.assert_allclose(out["opacity"][hit], 1.0, atol=1e-4)
  np.testing.assert_allclose(out["opacity"][~hit], 0.0, atol=1e-4)
  np.testing.assert_allclose(out["depth"][hit], z[hit], atol=0.01)
  # The whole chain against a loop reference at the renderer's own depths.
  depths = np.asarray(out["depths"], np.float64)
  dirs = ray_dirs(UV)
  cam2obj = np.linalg.inv(FRAME_POSE)
  pts = dirs[:, None, :] * depths[..., None]
  pts_obj = pts @ cam2obj[:3, :3].T + cam2obj[:3, 3]
  np.testing.assert_allclose(out["xyz_canonical"], pts_obj, atol=1e-5)
  sdf = np.linalg.norm(pts_obj - CENTER, axis=-1) - RADIUS
  np.testing.assert_allclose(out["weights"], ref_weights_loop(sdf, depths, dirs, BETA),
                             atol=2e-4)


def test_skinning_with_still_bones_is_the_identity(still, identity_render, skinning_render):
  model, v = still
  lbs = render_sphere(model, v, warp=wr.SkinningWarp("lbs"))
  for skin in (skinning_render, lbs):
    np.testing.assert_allclose(skin["xyz_canonical"], identity_render["xyz_canonical"],
                               atol=2e-5)
    np.testing.assert_allclose(skin["opacity"], identity_render["opacity"], atol=1e-4)
    np.testing.assert_allclose(skin["cyc_dist"], 0.0, atol=2e-5)


@pytest.mark.parametrize("which", ["identity", "skinning"])
def test_flow_of_root_only_motion_is_the_projection_difference(
    which, identity_render, skinning_render):
  out = identity_render if which == "identity" else skinning_render
  z = hit_depth(FRAME_POSE, UV)
  hit = ~np.isnan(z)
  cam2obj = np.linalg.inv(FRAME_POSE)
  for r in np.flatnonzero(hit):
    p_obj = cam2obj[:3, :3] @ (z[r] * ray_dirs(UV[r:r + 1])[0]) + cam2obj[:3, 3]
    want = project(PARTNER_POSE, p_obj) - UV[r]
    np.testing.assert_allclose(out["flow"][r], want, atol=0.05)
  # Tight: per-sample flows composited with the renderer's weights.
  depths, weights = np.asarray(out["depths"], np.float64), np.asarray(out["weights"], np.float64)
  for r in range(len(UV)):
    d = ray_dirs(UV[r:r + 1])[0]
    flows = np.array([project(PARTNER_POSE, cam2obj[:3, :3] @ (s * d) + cam2obj[:3, 3]) - UV[r]
                      for s in depths[r]])
    want = (weights[r, :, None] * flows).sum(0) / (weights[r].sum() + 1e-6)
    np.testing.assert_allclose(out["flow"][r], want, atol=2e-3)


def test_normals_of_the_sphere(skinning_render):
  out = skinning_render
  z = hit_depth(FRAME_POSE, UV)
  c_cam = FRAME_POSE[:3, :3] @ CENTER + FRAME_POSE[:3, 3]
  for r in np.flatnonzero(~np.isnan(z)):
    n = z[r] * ray_dirs(UV[r:r + 1])[0] - c_cam
    np.testing.assert_allclose(out["normal"][r], n / np.linalg.norm(n), atol=0.02)
  # The analytic SDF has |grad| = 1, so the eikonal term vanishes.
  np.testing.assert_allclose(out["eikonal"], 0.0, atol=1e-6)


def test_feature_matching_reprojects_to_its_pixel(skinning_render):
  hit = ~np.isnan(hit_depth(FRAME_POSE, UV))
  chex.assert_shape(skinning_render["xy_reproj"], (len(UV), 2))
  np.testing.assert_allclose(np.asarray(skinning_render["xy_reproj"])[hit], UV[hit], atol=0.3)


@pytest.mark.slow  # three renderer compiles; sample_pdf/importance_depths are tested fast
def test_importance_sampling_refines_depth(tiny):
  model, variables = tiny
  v = constant_bones(variables, 0.005)
  coarse = render_sphere(model, v, warp=wr.IdentityWarp(), samples=16)
  fine = render_sphere(model, v, warp=wr.IdentityWarp(), samples=16, importance_samples=48)
  chex.assert_shape(fine["depths"], (len(UV), 64))
  assert np.all(np.diff(np.asarray(fine["depths"]), axis=-1) >= 0)
  # Importance samples approximate the dense integral far better than the
  # coarse samples alone (VolSDF's own depth bias is the same for both).
  dense = render_sphere(model, v, warp=wr.IdentityWarp(), samples=1024)
  hit = ~np.isnan(hit_depth(FRAME_POSE, UV))
  err = lambda o: np.abs(np.asarray(o["depth"])[hit] - np.asarray(dense["depth"])[hit]).max()
  assert err(fine) < 0.3 * err(coarse) and err(fine) < 0.004, (err(fine), err(coarse))


def test_density_function_is_swappable(still, identity_render):
  model, v = still
  neus = render_sphere(model, v, warp=wr.IdentityWarp(), density_fn=density.neus_density)
  hit = ~np.isnan(hit_depth(FRAME_POSE, UV))
  assert not np.allclose(neus["weights"], identity_render["weights"], atol=1e-3)
  np.testing.assert_allclose(neus["opacity"][hit], 1.0, atol=1e-3)


def test_render_options_are_a_jit_static_argument(still):
  model, v = still
  make = lambda: wr.RenderOptions(num_samples=8, warp=wr.SkinningWarp("lbs"),
                                  canonical_fn=sphere_fields, eikonal_rays=0, gauss_mask=False)
  a, b = make(), make()
  assert a is not b and a == b and hash(a) == hash(b)
  assert a != dataclasses.replace(a, num_samples=6)

  @functools.partial(jax.jit, static_argnames="options")
  def render(variables, options):
    return wr.render_rays(model, variables, jnp.asarray(UV[:3]), jnp.array(1),
                          near_far=jnp.array([1.4, 2.6]), options=options)["opacity"]

  first = render(v, options=a)
  np.testing.assert_array_equal(render(v, options=b), first)
  assert render._cache_size() == 1  # pylint: disable=protected-access
  render(v, options=dataclasses.replace(a, num_samples=6))
  assert render._cache_size() == 2  # pylint: disable=protected-access


def test_batch_of_frames_equals_single_frames(tiny):
  model, variables = tiny
  uv = jnp.asarray(np.stack([UV[:5], UV[3:]]))
  frames, partners = jnp.array([0, 3]), jnp.array([3, 0])
  render = functools.partial(wr.render_rays, model, near_far=jnp.array([0.2, 3.0]),
                             options=wr.RenderOptions(num_samples=12, eikonal_rays=2))
  batch = jax.jit(render)(variables, uv, frames, partners)
  single = jax.jit(render)
  for f in range(2):
    one = single(variables, uv[f], frames[f], partners[f])
    for key in ("rgb", "opacity", "flow", "cyc_dist", "eikonal", "feature", "gauss_mask"):
      np.testing.assert_allclose(batch[key][f], one[key], atol=2e-5, err_msg=key)
  np.testing.assert_array_equal(batch["eikonal_mask"], [[1, 1, 0, 0, 0]] * 2)
  assert np.all(np.asarray(batch["eikonal"])[:, :2] > 0)


def test_cycle_distance_matches_per_sample_reference(tiny):
  model, variables = tiny
  out = jax.jit(functools.partial(wr.render_rays, model, near_far=jnp.array([1.5, 3.0]),
                                  options=wr.RenderOptions(num_samples=6)))(
      variables, jnp.asarray(UV[:4]), jnp.array(2), jnp.array(0))
  camera = jax.jit(lambda v: (model.apply(v, jnp.array(2), method="root_pose"),
                              model.apply(v, jnp.array(2), method="intrinsics")))
  obj2cam, k = (np.asarray(a, np.float64) for a in camera(variables))

  @jax.jit
  def reference_cycle(v, points):
    apply = functools.partial(model.apply, v)
    bones_t = apply(jnp.array(2), method="bones")
    rest = apply(method="rest_bones")
    log_scale = apply(method="log_scale")

    def delta_fn(bones, code):
      return lambda x: apply(skinning.bone_local_coords(x, bones) * jnp.exp(-log_scale), code,
                             method="skinning_delta")

    bwd = delta_fn(bones_t, apply(jnp.array(2), method="delta_time_code"))
    fwd = delta_fn(rest, apply(method="delta_rest_code"))
    cycle = lambda x: skinning.cycle_distance(x, bones_t, rest, log_scale, bwd, fwd)
    return jax.vmap(jax.vmap(cycle))(points)

  cam2obj = np.linalg.inv(obj2cam)
  depths, weights = np.asarray(out["depths"]), np.asarray(out["weights"])
  dirs = np.stack([(UV[:4, 0] + 0.5 - k[2]) / k[0], (UV[:4, 1] + 0.5 - k[3]) / k[1],
                   np.ones(4)], -1)
  pts = depths[..., None] * dirs[:, None, :] @ cam2obj[:3, :3].T + cam2obj[:3, 3]
  dists = np.asarray(reference_cycle(variables, jnp.asarray(pts, jnp.float32)))
  for r in range(4):
    want = (weights[r] * dists[r]).sum() / (weights[r].sum() + 1e-6)
    np.testing.assert_allclose(out["cyc_dist"][r], want, rtol=1e-3, atol=1e-6)
  assert np.all(np.asarray(out["cyc_dist"]) > 0)


def test_whole_render_gradients_wrt_canonical_and_bone_params():
  """check_grads of render -> canonical point -> warp -> bones (float64)."""
  with jax.enable_x64(True):
    model = am.ArticulatedModel(am.tiny_config(video_lengths=(4,)))
    variables = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                       init.init_variables(model, 7))
    params = variables["params"]
    uv = jnp.asarray([[[4.0, 7.0], [9.0, 8.0]], [[6.0, 6.0], [11.0, 3.0]]])
    frames, partners = jnp.array([1, 3]), jnp.array([3, 1])
    rng = np.random.default_rng(0)
    mix = {k: jnp.asarray(rng.normal(size=s)) for k, s in
           [("rgb", (2, 2, 3)), ("flow", (2, 2, 2)), ("feature", (2, 2, 4))]}

    def render(canonical, bones):
      p = dict(params, canonical=canonical, bones=bones)
      return wr.render_rays(model, {"params": p}, uv, frames, partners,
                            near_far=jnp.array([0.5, 3.0]), alpha=0.7,
                            options=wr.RenderOptions(num_samples=4, eikonal_rays=0,
                                                     gauss_mask=False))

    # Outputs without a deliberate stop_gradient (cyc_dist / skin_entropy use
    # detached weights, the eikonal term detached points: finite differences
    # would see what autodiff is told to ignore; the eikonal term is checked
    # below on its own).
    @jax.jit
    def loss(canonical, bones):
      out = render(canonical, bones)
      return (jnp.sum(out["rgb"] * mix["rgb"]) + jnp.sum(out["opacity"])
              + jnp.sum(out["depth"]) + 0.01 * jnp.sum(out["flow"] * mix["flow"])
              + jnp.sum(out["feature"] * mix["feature"]))

    primals = (params["canonical"], params["bones"])
    check_grads(loss, primals, order=1, modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)
    # The bones really are in the chain: a bone-only tangent moves the loss.
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params["canonical"])
    tangent = jax.tree_util.tree_map(lambda x: jnp.asarray(rng.normal(size=x.shape)),
                                     params["bones"])
    _, bone_effect = jax.jvp(loss, primals, (zeros, tangent))
    assert abs(float(bone_effect)) > 1e-6


def test_eikonal_gradients_wrt_canonical_params():
  with jax.enable_x64(True):
    model = am.ArticulatedModel(am.tiny_config(video_lengths=(4,)))
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64),
                                    init.init_variables(model, 3))["params"]
    points = jnp.asarray(np.random.default_rng(1).normal(0, 0.3, (12, 3)))

    def eikonal(canonical):
      sdf_fn = lambda x: model.apply({"params": dict(params, canonical=canonical)}, x, 0.6,
                                     method="sdf")
      sdf, grad = wr.sdf_and_gradient(sdf_fn, points)
      # The gradient is the exact per-point gradient of the SDF.
      want = jax.vmap(jax.grad(lambda p: sdf_fn(p[None])[0]))(points)
      return jnp.sum(wr.eikonal_term(grad)), jnp.max(jnp.abs(grad - want))

    value, err = jax.jit(eikonal)(params["canonical"])
    assert float(err) < 1e-12 and float(value) > 0
    check_grads(jax.jit(lambda c: eikonal(c)[0]), (params["canonical"],), order=1,
                modes=("fwd", "rev"), eps=1e-6, atol=1e-6, rtol=1e-6)


def test_bone_affine_map_and_delta_match_the_skinning_reference(tiny):
  model, variables = tiny
  apply = functools.partial(model.apply, variables)
  bones = apply(jnp.array(1), method="bones")
  log_scale = apply(method="log_scale") + jnp.asarray(
      np.random.default_rng(0).normal(0, 0.3, (model.config.num_bones, 3)), jnp.float32)
  x = jnp.asarray(np.random.default_rng(1).normal(0, 0.1, (6, 3)), jnp.float32)
  linear, offset = wr.bone_affine_map(bones, log_scale)
  u = (x @ linear + offset).reshape(6, -1, 3)
  want_u = jax.vmap(lambda p: skinning.bone_local_coords(p, bones))(x) * jnp.exp(-log_scale)
  np.testing.assert_allclose(u, want_u, atol=1e-6)
  np.testing.assert_allclose(
      -jnp.sum(u**2, -1),
      jax.vmap(lambda p: skinning.gaussian_skinning_logits(p, bones, log_scale))(x), rtol=1e-5)
  code = apply(jnp.array(1), method="delta_time_code")
  np.testing.assert_allclose(apply(x, linear, offset, code, method="skinning_delta_affine"),
                             apply(want_u, code, method="skinning_delta"), atol=1e-6)
