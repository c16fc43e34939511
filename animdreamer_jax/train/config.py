"""ml_collections config files: load by path, override from the command line, save.

A config file is a Python file with `get_config() -> ml_collections.ConfigDict`
(big_vision style; its docstring gives the command, runtime and expected
result). Fields are overridden with `--config.a.b=value` (or
`--config.a.b value`); the value is parsed as a Python literal and must match
the type of the field it replaces, so a typo never silently becomes a new
field or a string.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import sys
import tempfile
from typing import Any, Sequence

import ml_collections

from animdreamer_jax.errors import UserError

OVERRIDE_PREFIX = "--config."


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
  """Imports `path` and returns its `get_config()`, locked (no new keys)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserError(f"{path}: config file not found")
  module_name = f"_animdreamer_config_{abs(hash(str(path.resolve())))}"
  spec = importlib.util.spec_from_file_location(module_name, path)
  if spec is None or spec.loader is None:
    raise UserError(f"{path}: not a Python config file")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except Exception as e:  # A broken config file is bad input, not a crash.
    raise UserError(f"{path}: cannot be loaded: {type(e).__name__}: {e}") from e
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: has no get_config() function")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"{path}: get_config() must return an ml_collections.ConfigDict")
  config.lock()
  return config


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
  """Separates `--config.key=value` / `--config.key value` pairs from other args.

  Returns:
    (the other arguments in order, [(dotted key, raw value string), ...]).
  """
  rest, overrides = [], []
  i = 0
  argv = list(argv)
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(OVERRIDE_PREFIX):
      body = arg[len(OVERRIDE_PREFIX):]
      if "=" in body:
        key, value = body.split("=", 1)
      else:
        if i + 1 >= len(argv):
          raise UserError(f"config.{body}: missing value")
        key, value = body, argv[i + 1]
        i += 1
      if not key:
        raise UserError(f"{arg}: empty config key")
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return rest, overrides


def _parse_value(text: str) -> Any:
  """Python literal if it parses as one, else the raw string."""
  lowered = text.strip().lower()
  if lowered in ("true", "false"):
    return lowered == "true"
  if lowered in ("none", "null"):
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _coerce(key: str, old: Any, new: Any) -> Any:
  """Returns `new` converted to the type of `old`, or raises UserError."""
  if old is None:
    return new
  if isinstance(old, bool):
    if isinstance(new, bool):
      return new
    if new in (0, 1):
      return bool(new)
    raise UserError(f"config.{key}: expected a bool (true/false), got {new!r}")
  if isinstance(old, int):
    if isinstance(new, int) and not isinstance(new, bool):
      return new
    if isinstance(new, float) and new.is_integer():
      return int(new)
    raise UserError(f"config.{key}: expected an int, got {new!r}")
  if isinstance(old, float):
    if isinstance(new, (int, float)) and not isinstance(new, bool):
      return float(new)
    raise UserError(f"config.{key}: expected a number, got {new!r}")
  if isinstance(old, str):
    return str(new) if not isinstance(new, (list, tuple, dict)) else _fail(key, "a string", new)
  if isinstance(old, (tuple, list)):
    if isinstance(new, (int, float)) and not isinstance(new, bool):
      new = (new,)
    if not isinstance(new, (tuple, list)):
      raise UserError(f"config.{key}: expected a sequence like (1, 2), got {new!r}")
    if old and new:
      new = [_coerce(f"{key}[{i}]", old[0], v) for i, v in enumerate(new)]
    return type(old)(new)
  if isinstance(old, ml_collections.ConfigDict):
    raise UserError(f"config.{key}: is a section; override its fields, e.g. config.{key}.<field>")
  return new


def _fail(key: str, what: str, got: Any) -> Any:
  raise UserError(f"config.{key}: expected {what}, got {got!r}")


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Sequence[tuple[str, str]]) -> ml_collections.ConfigDict:
  """Applies (dotted key, raw value) pairs in place; unknown key -> UserError."""
  for key, raw in overrides:
    parts = key.split(".")
    node = config
    for i, part in enumerate(parts[:-1]):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise UserError(f"config.{'.'.join(parts[:i + 1])}: unknown config key")
      node = node[part]
    leaf = parts[-1]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise UserError(f"config.{key}: unknown config key")
    value = _coerce(key, node[leaf], _parse_value(raw))
    with node.unlocked():
      node[leaf] = value
  return config


def load_config(path: str | os.PathLike,
                overrides: Sequence[tuple[str, str]] | Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Loads a config file and applies overrides.

  Args:
    path: the config file.
    overrides: (dotted key, raw value) pairs, or `--config.key=value` strings.
  """
  config = load_config_file(path)
  pairs = []
  for item in overrides:
    if isinstance(item, str):
      rest, parsed = split_overrides([item])
      if rest:
        raise UserError(f"{item}: not a --config.<key>=<value> override")
      pairs.extend(parsed)
    else:
      pairs.append(tuple(item))
  return apply_overrides(config, pairs)


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """Plain JSON-able nested dict (tuples become lists)."""
  return json.loads(config.to_json())


def save_config(config: ml_collections.ConfigDict, path: str | os.PathLike) -> None:
  """Writes the resolved config as JSON, atomically."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  text = json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n"
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def config_from_dict(data: dict) -> ml_collections.ConfigDict:
  """Inverse of `config_to_dict` (lists stay lists)."""
  config = ml_collections.ConfigDict(data)
  config.lock()
  return config


# ----------------------------------------------------------------------------
# Defaults shared by configs/extract_*.py (lab4d's values unless noted).

# Lengths of the model in lab4d's field units (object ~0.2-0.4 across) scaled
# to the normalised sequences here (rest bbox diagonal 1): x2.5.
_LENGTH_SCALE = 2.5


def extract_base_config(model_preset: str = "cpu") -> ml_collections.ConfigDict:
  """Every field the extraction stage reads, with lab4d's defaults.

  Args:
    model_preset: "lab4d" (8x256 trunk, 5x256 time MLPs), "cpu" (6x128, 3x128)
      or "tiny" (tests); see animdreamer_jax.model.articulated_model.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from animdreamer_jax.model import articulated_model  # pylint: disable=g-import-not-at-top
  presets = {"lab4d": articulated_model.lab4d_config, "cpu": articulated_model.cpu_config,
             "tiny": articulated_model.tiny_config}
  if model_preset not in presets:
    raise UserError(f"model_preset: unknown preset {model_preset!r}; use one of {sorted(presets)}")
  model = dataclasses.asdict(presets[model_preset]())
  model.pop("video_lengths")  # both come from the video
  model.pop("image_size")
  model = {k: (tuple(v) if isinstance(v, list) else v) for k, v in model.items()}
  model.update(
      sphere_radius=0.1 * _LENGTH_SCALE, init_gauss_scale=0.03 * _LENGTH_SCALE,
      bone_trans_scale=0.1 * _LENGTH_SCALE, bone_density_radius=0.01 * _LENGTH_SCALE,
      init_bone_beta=0.01 * _LENGTH_SCALE)

  c = ml_collections.ConfigDict()
  # Every model field is explicit (the preset only chose their values), so
  # each one can be overridden and the saved config.json is complete.
  c.model = ml_collections.ConfigDict(model)
  # Batches: lab4d 128 pairs x 2 frames x 16 pixels = 4096 rays per step.
  c.data = ml_collections.ConfigDict(dict(pairs_per_batch=128, pixels_per_frame=16,
                                          fg_fraction=0.5))
  c.render = ml_collections.ConfigDict(dict(
      num_samples=64, density="volsdf", blend="dqs",
      eikonal_ray_fraction=1.0 / 16, match_candidates=1024,
      eval_samples=32, eval_importance_samples=32, eval_chunk=4096))
  c.loss = ml_collections.ConfigDict()
  c.loss.weights = ml_collections.ConfigDict(dict(
      mask=0.1, rgb=0.1, depth=0.0, flow=0.5, feature=1e-2, feat_reproj=5e-2, vis=0.0,
      eikonal=1e-3, cycle=1e-2, delta_skin=5e-3, skin_entropy=5e-4, gauss_skin=1e-3,
      gauss_mask=1e-2, cam_prior=0.1))
  c.loss.train_res = 0.0  # 0: max(H, W) of the video (flows are in its pixels)
  c.loss.gauss_skin_points = 2048
  # Schedule lengths as fractions of training: lab4d's eikonal ramp, bone-mask
  # decay and coarse-to-fine window end at step 4000 of its 4000-step default
  # run, its camera prior at step 800 (so they keep their shape in short runs).
  # flow_warmup_fraction (not in lab4d; 0 = off): the flow weight ramps 0 -> 1
  # over this fraction (see schedules.lab4d_loss_weight_factors).
  c.loss.schedules = ml_collections.ConfigDict(dict(
      eikonal_fraction=1.0, cam_prior_fraction=0.2, gauss_mask_fraction=1.0,
      pos_alpha_start=0.6, pos_alpha_fraction=1.0, flow_warmup_fraction=0.0))
  c.optim = ml_collections.ConfigDict(dict(
      lr=5e-4, warmup_fraction=0.1, initial_div=25.0, final_div=25.0,
      explicit_lr_multiplier=10.0, weight_decay=1e-4, b1=0.9, b2=0.999, eps=1e-8,
      clip_norm=5.0, root_pose_warmup_fraction=0.0,
      explicit_params=("log_gauss", "logibeta", "logsigma", "base_quat", "base_logfocal",
                       "base_ppoint")))
  c.train = ml_collections.ConfigDict(dict(
      seed=0, num_rounds=20, iters_per_round=200,
      grad_spike_threshold=5.0, max_nonfinite_steps=3,
      checkpoint_every_rounds=1, keep_checkpoints=2,
      log_every=10, tensorboard=True, log_image_every_rounds=1, log_image_frame=0,
      mc_resolution=64, mc_level=0.0, mc_extend=0.5, geometry_ema=0.9,
      near_far_tolerance=1.5, proxy_points=1024, init_aabb_half=0.6,
      init_root_steps=500, init_sdf_steps=500, init_lr=1e-3, use_video_intrinsics=True,
      # XLA compilations are cached here across runs (a resumed or repeated run
      # skips most of the ~1 min of compiling); "" disables the cache.
      compilation_cache="~/.cache/animdreamer_jax/xla"))
  c.extract = ml_collections.ConfigDict(dict(
      mc_resolution=128, mc_level=0.0, mesh_frame="object", eval_samples=10000,
      camera_frame_metrics=True,
      contact_frames=6, video_fps=0.0, render_stride=1))
  # Canonical Score Distillation, off by default (prior "none"); see csd/config.py.
  from animdreamer_jax.csd import config as csd_config_lib  # pylint: disable=g-import-not-at-top
  c.csd = csd_config_lib.csd_config()
  return c


def describe_overrides(overrides: Sequence[tuple[str, str]]) -> str:
  return " ".join(f"{OVERRIDE_PREFIX}{k}={v}" for k, v in overrides)


if __name__ == "__main__":  # Print a resolved config: python -m ... FILE [--config.k=v]
  rest_args, pairs_args = split_overrides(sys.argv[1:])
  print(json.dumps(config_to_dict(load_config(rest_args[0], pairs_args)), indent=2))
