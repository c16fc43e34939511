"""Flax fields and the ArticulatedModel: shapes, initialisation, references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import encoding
from animdreamer_jax.model import fields
from animdreamer_jax.model import init
from animdreamer_jax.model import mlp as mlp_lib


def japply(model, variables, *args, method):
  """model.apply(..., method=method) under jit (one compile beats op-by-op dispatch)."""
  return jax.jit(lambda v, *a: model.apply(v, *a, method=method))(variables, *args)


@pytest.fixture(scope="module")
def tiny():
  model = am.ArticulatedModel(am.tiny_config(video_lengths=(3, 4)))
  return model, init.init_variables(model, 0)


def ref_mlp(params, x, depth, skips, final_relu):
  """lab4d BaseMLP written with explicit loops over layers (NumPy)."""
  relu = lambda v: np.maximum(v, 0.0)
  h = None
  for i in range(depth):
    p = params[f"hidden_{i}"]
    if i == 0 or i in skips:
      pieces = [x] if i == 0 else [x, h]
      kernel = np.concatenate([np.asarray(p[f"kernel_{j}"]) for j in range(len(pieces))], 0)
      h = np.concatenate(pieces, -1) @ kernel + np.asarray(p["bias"])
    else:
      h = h @ np.asarray(p["dense"]["kernel"]) + np.asarray(p["dense"]["bias"])
    h = relu(h)
  out = h @ np.asarray(params["output"]["dense"]["kernel"]) + np.asarray(
      params["output"]["dense"]["bias"])
  return relu(out) if final_relu else out


def test_mlp_matches_loop_reference_with_skip():
  module = mlp_lib.MLP(depth=4, width=16, out_features=5, skips=(2,), final_activation=True)
  x = np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32)
  variables = init.host_init(module, (jnp.asarray(x),), seed=1)
  got = module.apply(variables, jnp.asarray(x))
  want = ref_mlp(variables["params"], x, 4, (2,), True)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("how", ["flax", "host"])
def test_torch_style_init_bounds_and_spread(how):
  module = mlp_lib.TorchDense(300)
  args = (jnp.zeros((1, 400)),)
  variables = (module.init(jax.random.PRNGKey(0), *args) if how == "flax"
               else init.host_init(module, args, seed=0))
  kernel = np.asarray(variables["params"]["dense"]["kernel"])
  bias = np.asarray(variables["params"]["dense"]["bias"])
  bound = 1.0 / np.sqrt(400)
  assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
  # Uniform on [-b, b]: std b / sqrt(3).
  np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)
  np.testing.assert_allclose(bias.std(), bound / np.sqrt(3), rtol=0.2)


def test_host_init_matches_flax_init_structure_and_constants():
  model = am.ArticulatedModel(am.tiny_config(video_lengths=(2, 3)))
  args = (jnp.zeros((1, 3)), jnp.zeros((), jnp.int32))
  host_vars = init.init_variables(model, 0)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), *args), host_vars)
  # Flax initialisers of the constant parameters (cheap: no random draws).
  flax_vars = model.init(jax.random.PRNGKey(0), jnp.array(0), method="intrinsics")
  for path, value in am.constant_params(model.config).items():
    node_h = host_vars["params"]
    for key in path:
      node_h = node_h[key]
    np.testing.assert_allclose(node_h, value, rtol=1e-6)
    if path[0] != "root_pose":
      node_f = flax_vars["params"]
      for key in path:
        node_f = node_f[key]
      np.testing.assert_allclose(node_f, value, rtol=1e-6)


def test_split_dense_equals_dense_on_concatenation():
  module = mlp_lib.SplitDense(8)
  a = np.random.default_rng(2).normal(size=(3, 5, 4)).astype(np.float32)
  b = np.random.default_rng(3).normal(size=(3, 1, 2)).astype(np.float32)
  variables = module.init(jax.random.PRNGKey(0), jnp.asarray(a), jnp.asarray(b))
  p = variables["params"]
  got = module.apply(variables, jnp.asarray(a), jnp.asarray(b))
  cat = np.concatenate([a, np.broadcast_to(b, (3, 5, 2))], -1)
  want = cat @ np.concatenate([p["kernel_0"], p["kernel_1"]], 0) + np.asarray(p["bias"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(p["kernel_1"])).max() <= 1.0 / np.sqrt(6)


def test_canonical_outputs_shapes_dtypes_and_ranges(tiny):
  model, variables = tiny
  c = model.config
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 3)) * 0.2
  out = japply(model, variables, x, jnp.array(2), 0.5, method="canonical")
  chex.assert_shape([out["sdf"], out["vis"]], (2, 9))
  chex.assert_shape(out["rgb"], (2, 9, 3))
  chex.assert_shape(out["feature"], (2, 9, c.feature_dim))
  chex.assert_trees_all_equal_dtypes(out, {k: jnp.zeros((), jnp.float32) for k in out})
  np.testing.assert_allclose(np.linalg.norm(out["feature"], axis=-1), 1.0, atol=1e-5)
  assert np.all((out["rgb"] > 0) & (out["rgb"] < 1))
  # Per-point frame indices give the same result as a scalar frame.
  per_point = japply(model, variables, x, jnp.full((2, 9), 2), 0.5, method="canonical")
  np.testing.assert_allclose(per_point["rgb"], out["rgb"], atol=1e-6)
  # sdf-only path equals the full field.
  np.testing.assert_allclose(japply(model, variables, x, 0.5, method="sdf"), out["sdf"],
                             atol=1e-6)
  # alpha = 0 removes every Fourier band: the SDF then only sees raw xyz.
  a0 = japply(model, variables, x, 0.0, method="sdf")
  assert not np.allclose(a0, out["sdf"])


def test_feature_unit_norm_at_lab4d_size():
  module = fields.CanonicalField(am.ModelConfig(sdf_depth=2, sdf_width=32, feature_dim=16,
                                                feature_depth=5, feature_width=128))
  x = jax.random.uniform(jax.random.PRNGKey(3), (50, 3), minval=-1, maxval=1)
  variables = init.host_init(module, (x,), seed=4)
  feat = module.apply(variables, x)["feature"]
  chex.assert_shape(feat, (50, 16))
  np.testing.assert_allclose(np.linalg.norm(feat, axis=-1), 1.0, atol=1e-5)


def test_per_frame_quantities(tiny):
  model, variables = tiny
  c = model.config
  frames = jnp.arange(c.num_frames)
  bones = japply(model, variables, frames, method="bones")
  chex.assert_shape(bones.quat, (c.num_frames, c.num_bones, 4))
  chex.assert_shape(bones.trans, (c.num_frames, c.num_bones, 3))
  np.testing.assert_allclose(np.linalg.norm(bones.quat, axis=-1), 1.0, atol=1e-5)
  pose = japply(model, variables, frames, method="root_pose")
  chex.assert_shape(pose, (c.num_frames, 4, 4))
  rot = np.asarray(pose[:, :3, :3])
  np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape),
                             atol=1e-5)
  np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
  np.testing.assert_array_equal(pose[:, 3], np.broadcast_to([0, 0, 0, 1], (c.num_frames, 4)))
  k = model.apply(variables, frames, method="intrinsics")
  h, w = c.image_size
  np.testing.assert_allclose(k, np.broadcast_to([max(h, w), max(h, w), w / 2, h / 2], k.shape),
                             rtol=1e-6)
  app = japply(model, variables, frames, method="appearance")
  chex.assert_shape(app, (c.num_frames, c.appearance_dim))
  chex.assert_shape(japply(model, variables, method="appearance"), (c.appearance_dim,))


def test_initial_bones_are_small_offsets_near_identity():
  # lab4d: PyTorch init makes the bag of bones start clustered at the origin
  # (~0.01) with near-identity rotations.
  model = am.ArticulatedModel(am.cpu_config())
  variables = init.init_variables(model, 3)
  rest = japply(model, variables, method="rest_bones")
  assert np.abs(rest.trans).max() < 0.05
  angles = np.linalg.norm(quat_lib.quat_to_axis_angle(rest.quat), axis=-1)
  assert angles.max() < 0.3
  assert np.std(np.asarray(rest.trans)) > 1e-4  # not all at the same spot
  log_gauss = variables["params"]["log_gauss"]
  np.testing.assert_allclose(np.exp(log_gauss), 0.03, rtol=1e-6)
  np.testing.assert_allclose(model.apply(variables, method="beta"), 0.1, rtol=1e-6)


def test_rest_bones_use_the_mean_time_embedding():
  # With one single-frame video the mean embedding is that frame's embedding.
  model = am.ArticulatedModel(am.tiny_config(video_lengths=(1,)))
  variables = init.init_variables(model, 1)
  rest = model.apply(variables, method="rest_bones")
  at0 = model.apply(variables, jnp.array(0), method="bones")
  np.testing.assert_allclose(rest.trans, at0.trans, atol=1e-6)
  np.testing.assert_allclose(rest.quat, at0.quat, atol=1e-6)
  # ... and with two videos it is the average over all raw frames.
  model2 = am.ArticulatedModel(am.tiny_config(video_lengths=(2, 3)))
  v2 = init.init_variables(model2, 1)
  emb = encoding.TimeEmbedding((2, 3), 1, 16)
  p = {"params": v2["params"]["bones"]["time_mlp"]["time_embedding"]}
  np.testing.assert_allclose(emb.apply(p, method="mean"),
                             np.mean(emb.apply(p, jnp.arange(5)), 0), atol=1e-6)


def test_skinning_delta_nonnegative_and_scaled(tiny):
  model, variables = tiny
  c = model.config
  local = jax.random.normal(jax.random.PRNGKey(5), (7, c.num_bones, 3)) * 3
  code = model.apply(variables, jnp.array(1), method="delta_time_code")
  delta = model.apply(variables, local, code, method="skinning_delta")
  chex.assert_shape(delta, (7, c.num_bones))
  assert np.all(np.asarray(delta) >= 0)


def test_sphere_fit_zero_level_set():
  config = am.tiny_config(sdf_depth=4, sdf_width=64, sdf_skips=(2,), sdf_freqs=4,
                          sphere_radius=0.25)
  model = am.ArticulatedModel(config)
  variables = init.init_variables(model, 0)
  fitted, info = init.fit_sphere(model, variables, steps=300)
  dirs = np.random.default_rng(0).normal(size=(200, 3))
  dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
  sdf = lambda r: np.asarray(model.apply(fitted, jnp.asarray(dirs * r, jnp.float32),
                                         method="sdf"))
  on, inside, outside = sdf(0.25), sdf(0.125), sdf(0.375)
  assert np.all(inside < 0) and np.all(outside > 0)
  # Zero crossing within 10% of the radius on every ray (the fit is scale-aligned,
  # so judge the level set, not the magnitude).
  scale = np.median(outside - inside) / 0.25
  assert np.abs(on).max() / scale < 0.025, (info, np.abs(on).max(), scale)


def test_sphere_fit_stays_finite_where_the_sdf_is_flat():
  """Points where the ReLU trunk is dead have an SDF gradient of exactly 0; the eikonal term's
  norm must not turn that into a NaN gradient (it once made every SDF weight NaN)."""
  config = am.tiny_config(sdf_depth=2, sdf_width=16, sdf_skips=(), sdf_freqs=2, sphere_radius=0.25)
  model = am.ArticulatedModel(config)
  variables = init.init_variables(model, 0)
  trunk = variables["params"]["canonical"]["sdf_trunk"]
  # Every first-layer unit dead on [-0.5, 0.5]^3: the SDF is flat there.
  dead = jax.tree_util.tree_map(lambda x: x, trunk)
  dead["hidden_0"]["bias"] = jnp.full_like(trunk["hidden_0"]["bias"], -100.0)
  variables = {**variables, "params": {**variables["params"], "canonical": {
      **variables["params"]["canonical"], "sdf_trunk": dead}}}
  fitted, info = init.fit_sphere(model, variables, steps=3)
  assert np.isfinite(info["loss"])
  for leaf in jax.tree_util.tree_leaves(fitted):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_fit_root_pose_matches_priors(tiny):
  model, variables = tiny
  n = model.config.num_frames
  angles = np.linspace(-0.4, 0.6, n)
  priors = np.zeros((n, 4, 4), np.float32)
  for i, a in enumerate(angles):
    c, s = np.cos(a), np.sin(a)
    priors[i, :3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    priors[i, :3, 3] = [0.1 * a, -0.05, 2.5 + 0.2 * a]
    priors[i, 3, 3] = 1
  fitted, info = init.fit_root_pose(model, variables, priors, learning_rate=3e-3,
                                    max_steps=3000)
  assert info["loss"] < 1e-4
  pred = np.asarray(model.apply(fitted, jnp.arange(n), method="root_pose"))
  np.testing.assert_allclose(pred, priors, atol=0.05)
  with pytest.raises(UserError, match="obj2cam"):
    init.fit_root_pose(model, variables, priors[:2])


def test_param_labels_and_groups(tiny):
  _, variables = tiny
  labels = am.param_labels(variables)
  flat = {jax.tree_util.keystr(p): l for p, l in jax.tree_util.tree_leaves_with_path(labels)}
  explicit = sorted(k for k, l in flat.items() if l == "explicit")
  assert explicit == sorted([
      "['params']['bone_logibeta']", "['params']['intrinsics']['base_logfocal']",
      "['params']['intrinsics']['base_ppoint']", "['params']['log_gauss']",
      "['params']['logibeta']", "['params']['logsigma']",
      "['params']['root_pose']['base_quat']"])
  mask = am.group_mask(variables["params"], am.CSD_DEFAULT_GROUPS)
  flat_mask = {jax.tree_util.keystr(p): m for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert any(v for k, v in flat_mask.items() if "sdf_trunk" in k)
  assert not any(v for k, v in flat_mask.items() if "feature_mlp" in k or "bones" in k)


def test_config_from_dict_rejects_unknown_keys():
  config = am.ModelConfig.from_dict({"num_bones": 7, "video_lengths": [5, 6]})
  assert config.num_bones == 7 and config.video_lengths == (5, 6)
  with pytest.raises(UserError, match="model.num_bonez"):
    am.ModelConfig.from_dict({"num_bonez": 7})
  with pytest.raises(UserError, match="video_lengths"):
    am.ModelConfig.from_dict({"video_lengths": []})
