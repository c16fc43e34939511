"""Creating and initialising an ArticulatedModel (lab4d's `mlp_init` routines).

- `init_variables`: PyTorch-style random initialisation of every parameter
  (see `model/mlp.py`); bones start within ~0.01 of the origin.
- `fit_sdf` / `fit_sphere`: the SDF is initialised as a sphere by a SHORT FIT,
  as lab4d's `NeRF.geometry_init` does (not an analytic geometric init, which
  does not combine with the Fourier input encoding): Adam 1e-3, 500 steps of
  256 random points in the box [-2r, 2r]^3 (lab4d: the AABB extended by
  0.25), loss = scale-aligned SDF MSE + 0.01 visibility "all visible" +
  1e-4 positive part of the eikonal term. `fit_sdf` takes any target SDF
  (e.g. the Gaussian-bone SDF for skeleton models).
- `fit_root_pose`: base quaternion from each video's first prior camera, then
  Adam 1e-3 on the 4x4-matrix MSE until it drops below 1e-4 (lab4d
  `CameraMLP.mlp_init`; we also stop after `max_steps`).
- `set_intrinsics`: per-video (fx, fy, cx, cy).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.geometry import vector
from animdreamer_jax.model import articulated_model as am
from animdreamer_jax.model import encoding


def init_variables(model: am.ArticulatedModel, seed: int | jax.Array = 0) -> dict:
  """Randomly initialised variables {"params": ...} of `model`, drawn on the host.

  Same distributions as `model.init` (PyTorch nn.Linear: U(+-1/sqrt(fan_in))
  kernels and biases, N(0, 1) per-video codes, `am.constant_params` for the
  rest) but drawn with NumPy from the parameter shapes: compiling the
  threefry-heavy `jax.jit(model.init)` costs ~10 s of CPU, this ~1 s. The
  numbers differ from `model.init(key, ...)`; both are valid initialisations.

  Args:
    model: an ArticulatedModel.
    seed: int seed (or a PRNG key, whose data seeds NumPy).

  Returns:
    The variables dict (use with `model.apply`).
  """
  return host_init(model, (jnp.zeros((1, 3), jnp.float32), jnp.zeros((), jnp.int32)),
                   seed, am.constant_params(model.config))


def host_init(module, args: tuple, seed: int | jax.Array = 0,
              constants: Optional[dict[tuple[str, ...], np.ndarray]] = None) -> dict:
  """Host-side (NumPy) initialisation of any module built from `model.mlp` layers.

  Args:
    module: a Flax module whose parameters are TorchDense / SplitDense
      kernels and biases, "video_code" embeddings, or listed in `constants`.
    args: example arguments of `module.init` (only their shapes matter).
    seed: int seed, or a PRNG key.
    constants: values of the remaining parameters by path under "params".

  Returns:
    {"params": ...}.
  """
  if not isinstance(seed, int):
    seed = int(np.asarray(jax.random.key_data(seed)).astype(np.uint64).sum())
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
  rng = np.random.default_rng(seed)
  return {"params": _host_params(shapes["params"], rng, constants or {}, ())}


def _host_params(shapes: dict, rng: np.random.Generator,
                 consts: dict[tuple[str, ...], np.ndarray], path: tuple[str, ...]) -> dict:
  """Draws one nested parameter dict (see `init_variables`); names in sorted order."""
  split_kernels = [k for k in shapes if k.startswith("kernel_")]
  split_fan_in = sum(int(shapes[k].shape[0]) for k in split_kernels)
  out = {}
  for name in sorted(shapes):
    leaf, where = shapes[name], path + (name,)
    if isinstance(leaf, dict):
      out[name] = _host_params(leaf, rng, consts, where)
      continue
    if where in consts:
      value = consts[where]
    elif name == "kernel":
      value = _uniform(rng, leaf.shape, leaf.shape[0])
    elif name == "bias" and "kernel" in shapes:
      value = _uniform(rng, leaf.shape, shapes["kernel"].shape[0])
    elif split_kernels and (name == "bias" or name in split_kernels):
      value = _uniform(rng, leaf.shape, split_fan_in)
    elif name == "video_code":
      value = rng.standard_normal(leaf.shape)
    else:
      raise ValueError(f"params/{'/'.join(where)}: no host initialiser")
    if np.shape(value) != tuple(leaf.shape):
      raise ValueError(f"params/{'/'.join(where)}: shape {np.shape(value)} != {leaf.shape}")
    out[name] = jnp.asarray(value, leaf.dtype)
  return out


def _uniform(rng: np.random.Generator, shape, fan_in: int) -> np.ndarray:
  bound = 1.0 / np.sqrt(max(int(fan_in), 1))
  return rng.uniform(-bound, bound, shape)


def _replace(variables: dict, path: tuple[str, ...], value) -> dict:
  """Functional update of one leaf of a nested dict."""
  def rec(node, keys):
    node = dict(node)
    if len(keys) == 1:
      node[keys[0]] = value
    else:
      node[keys[0]] = rec(node[keys[0]], keys[1:])
    return node
  return rec(variables, ("params",) + path)


def set_intrinsics(model: am.ArticulatedModel, variables: dict,
                   intrinsics: np.ndarray) -> dict:
  """Sets per-video intrinsics.

  Args:
    model: the model.
    variables: its variables.
    intrinsics: (V, 4) (fx, fy, cx, cy) per video, or (4,) for all videos.

  Returns:
    Updated variables.
  """
  num_videos = len(model.config.video_lengths)
  k = np.asarray(intrinsics, np.float32)
  if k.shape == (4,):
    k = np.tile(k, (num_videos, 1))
  if k.shape != (num_videos, 4) or np.any(k[:, :2] <= 0):
    raise UserError(f"intrinsics: expected ({num_videos}, 4) with positive focal, got {k.shape}")
  variables = _replace(variables, ("intrinsics", "base_logfocal"), jnp.log(k[:, :2]))
  return _replace(variables, ("intrinsics", "base_ppoint"), jnp.asarray(k[:, 2:]))


def sphere_sdf(radius: float) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """Exact SDF of a centred sphere, (N, 3) -> (N,) (negative inside)."""
  return lambda x: jnp.linalg.norm(x, axis=-1) - radius


def fit_sdf(model: am.ArticulatedModel, variables: dict,
            target_sdf: Callable[[jnp.ndarray], jnp.ndarray], *, bound: float,
            steps: int = 500, num_points: int = 256, learning_rate: float = 1e-3,
            alpha: Optional[float] = None, seed: int = 0) -> tuple[dict, dict]:
  """Fits the canonical SDF (and visibility) to a target SDF (lab4d geometry_init).

  Only `params["canonical"]` changes.

  Args:
    model: the model.
    variables: its variables.
    target_sdf: pure (N, 3) -> (N,) target.
    bound: points are drawn uniformly in [-bound, bound]^3.
    steps, num_points, learning_rate: Adam schedule (lab4d: 500, 256, 1e-3).
    alpha: coarse-to-fine fraction used during the fit (lab4d: none).
    seed: PRNG seed for the points.

  Returns:
    (updated variables, {"loss": final loss, "sdf_mse": final unscaled MSE}).
  """
  canonical = variables["params"]["canonical"]
  optimizer = optax.adam(learning_rate)

  def loss_fn(canonical_params, points):
    v = _replace(variables, ("canonical",), canonical_params)
    sdf = model.apply(v, points, alpha, method="sdf")
    target = target_sdf(points)
    # lab4d aligns the scale of the prediction to the target (detached); a
    # negative best scale is replaced by 1 so the sign cannot flip.
    scale = jnp.sum(sdf * target) / (jnp.sum(sdf * sdf) + 1e-8)
    scale = jax.lax.stop_gradient(jnp.where(scale < 0, 1.0, scale))
    loss = jnp.mean((sdf * scale - target) ** 2)
    if model.config.use_visibility:
      vis = model.apply(v, points, method="visibility")
      loss += 0.01 * jnp.mean(-jax.nn.log_sigmoid(vis))
    grad = jax.vmap(jax.grad(lambda p: model.apply(v, p[None], alpha, method="sdf")[0]))(
        jax.lax.stop_gradient(points))
    # safe_norm: where the ReLU trunk is flat the gradient is exactly 0, and the plain norm's
    # derivative there is NaN (seen: a fit that turned every SDF weight NaN).
    eikonal = (vector.safe_norm(grad) - 1.0) ** 2
    positive = eikonal > 0
    loss += 1e-4 * jnp.sum(jnp.where(positive, eikonal, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
    return loss, jnp.mean((sdf - target) ** 2)

  @jax.jit
  def run(canonical_params, key):
    def step(carry, key):
      params, opt_state = carry
      points = jax.random.uniform(key, (num_points, 3), minval=-bound, maxval=bound)
      (loss, mse), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, points)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (loss, mse)
    (params, _), (losses, mses) = jax.lax.scan(
        step, (canonical_params, optimizer.init(canonical_params)),
        jax.random.split(key, steps))
    return params, losses[-1], mses[-1]

  fitted, loss, mse = run(canonical, jax.random.PRNGKey(seed))
  return _replace(variables, ("canonical",), fitted), {"loss": float(loss), "sdf_mse": float(mse)}


def fit_sphere(model: am.ArticulatedModel, variables: dict,
               radius: Optional[float] = None, **kwargs) -> tuple[dict, dict]:
  """`fit_sdf` to a sphere of `radius` (default: config.sphere_radius), points in [-2r, 2r]^3."""
  radius = model.config.sphere_radius if radius is None else radius
  kwargs.setdefault("bound", 2.0 * radius)
  return fit_sdf(model, variables, sphere_sdf(radius), **kwargs)


def fit_root_pose(model: am.ArticulatedModel, variables: dict, obj2cam: np.ndarray, *,
                  learning_rate: float = 1e-3, tolerance: float = 1e-4,
                  max_steps: int = 5000, chunk: int = 100) -> tuple[dict, dict]:
  """Fits the root-pose MLP to prior object-to-camera matrices (lab4d mlp_init).

  Sets each video's `base_quat` from its first frame's rotation, then runs
  Adam on mean((M_pred - M_prior)^2) over all frames until below `tolerance`.

  Args:
    model: the model.
    variables: its variables.
    obj2cam: (T, 4, 4) prior transforms for every raw frame (T = num_frames).
    learning_rate, tolerance, max_steps: the optimisation (lab4d: 1e-3, 1e-4, none).
    chunk: steps per jitted call between convergence checks.

  Returns:
    (updated variables, {"loss": final MSE, "steps": steps taken}).
  """
  prior = jnp.asarray(obj2cam, jnp.float32)
  num_frames = model.config.num_frames
  if prior.shape != (num_frames, 4, 4):
    raise UserError(f"obj2cam: expected ({num_frames}, 4, 4) prior poses, got {prior.shape}")
  starts = encoding.video_offsets(model.config.video_lengths)[:-1]
  base = quat_lib.matrix_to_quat(prior[starts, :3, :3])
  variables = _replace(variables, ("root_pose", "base_quat"), base)
  frames = jnp.arange(num_frames, dtype=jnp.int32)
  root = variables["params"]["root_pose"]
  optimizer = optax.adam(learning_rate)

  def with_root(root_params):
    return _replace(variables, ("root_pose",), root_params)

  def loss_fn(root_params):
    pred = model.apply(with_root(root_params), frames, method="root_pose")
    return jnp.mean((pred - prior) ** 2)

  @jax.jit
  def run(root_params, opt_state):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(step, (root_params, opt_state), None,
                                               length=chunk)
    return params, opt_state, losses[-1]

  opt_state = optimizer.init(root)
  steps, loss = 0, float("inf")
  while steps < max_steps:
    root, opt_state, loss = run(root, opt_state)
    steps += chunk
    loss = float(loss)
    if loss < tolerance:
      break
  return with_root(root), {"loss": loss, "steps": steps}


def model_and_variables(config: am.ModelConfig, seed: int = 0,
                        intrinsics: Optional[np.ndarray] = None) -> tuple[am.ArticulatedModel, Any]:
  """Convenience: the module plus randomly initialised variables (and intrinsics)."""
  model = am.ArticulatedModel(config)
  variables = init_variables(model, seed)
  if intrinsics is not None:
    variables = set_intrinsics(model, variables, intrinsics)
  return model, variables


def moving_joints(skin_weights: np.ndarray) -> int:
  """How many joints of a rig move any vertex (skin weights (V, J))."""
  return int(np.count_nonzero(np.asarray(skin_weights).sum(0) > 0))


def skin_centroids(rest_vertices: np.ndarray, skin_weights: np.ndarray, count: int) -> np.ndarray:
  """(count, 3) skin-weighted centroids of the `count` joints with the most skin mass.

  Where a known rig's joints act on the surface: the natural centres of Gaussian
  bones standing in for them (the oracle ladder's rung (ii)).

  Raises:
    UserError: fewer than `count` joints move any vertex.
  """
  weights = np.asarray(skin_weights, np.float64)
  mass = weights.sum(0)
  if moving_joints(weights) < count:
    raise UserError(f"model.num_bones={count}, but the ground-truth rig moves the surface "
                    f"with only {moving_joints(weights)} joints")
  joints = np.argsort(-mass, kind="stable")[:count]
  centroids = weights[:, joints].T @ np.asarray(rest_vertices, np.float64) / mass[joints, None]
  return centroids.astype(np.float32)


def place_bones(model: am.ArticulatedModel, variables: dict, centres: np.ndarray) -> dict:
  """Moves the bones to `centres` (B, 3) at every frame (adds them to the translation head's bias).

  The head's random output stays on top, so the bones keep their small
  per-frame offsets and the motion is learned from there.
  """
  centres = np.asarray(centres, np.float32)
  num_bones = model.config.num_bones
  if centres.shape != (num_bones, 3):
    raise UserError(f"bone centres: expected ({num_bones}, 3), got {centres.shape}")
  path = ("bones", "trans_head", "output", "dense", "bias")
  bias = variables["params"]
  for name in path:
    bias = bias[name]
  shift = centres.reshape(-1) / model.config.bone_trans_scale
  return _replace(variables, path, jnp.asarray(bias) + jnp.asarray(shift))
