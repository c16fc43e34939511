"""Reading a finished run folder: its settings, trained model and motion (one reader for every stage).

A finished run (docs/formats.md, "Run folder") holds config.json (the resolved
settings), model.json (the exact ModelConfig), checkpoints/ (the train state),
rest.npz, meshes.npz and motion.npz. Export, re-animation, evaluation and the
generation stage read runs only through this module.
"""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import settings as settings_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.model import articulated_model
from animdreamer_jax.stages.extraction import plan as extraction_plan
from animdreamer_jax.stages.extraction import settings as extraction_settings
from animdreamer_jax.train import checkpoint as checkpoint_lib

FINISHED_FILES = ("config.json", "model.json", "rest.npz", "motion.npz", "meshes.npz")
MOTION_KEYS = {"object_to_camera": 3, "bone_quat": 3, "bone_trans": 3, "rest_bone_quat": 2,
               "rest_bone_trans": 2, "bone_log_scale": 2}


def load_npz(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Every array of an NPZ file (UserError if it cannot be read)."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except (OSError, ValueError) as e:
    raise UserError(f"{path}: cannot read ({e})") from e


def check_finished(run_dir: str | pathlib.Path, need_checkpoint: bool = True,
                   files: tuple[str, ...] = FINISHED_FILES) -> pathlib.Path:
  """Raises UserError unless `run_dir` holds `files` (by default: a finished run) and, when
  asked, a checkpoint."""
  run_dir = pathlib.Path(run_dir)
  if not run_dir.is_dir():
    raise UserError(f"{run_dir}: run folder not found")
  missing = [name for name in files if not (run_dir / name).is_file()]
  if missing:
    raise UserError(f"{run_dir}: not a finished run (missing {', '.join(missing)}); "
                    "let `animdreamer extract` finish (or resume it) first")
  checkpoints = run_dir / "checkpoints"
  if need_checkpoint and not (checkpoints.is_dir() and any(
      p.is_dir() and p.name.isdigit() for p in checkpoints.iterdir())):
    raise UserError(f"{checkpoints}: missing checkpoint (the trained model is needed)")
  return run_dir


def load_settings(run_dir: pathlib.Path) -> extraction_settings.ExtractionSettings:
  """The run's settings from its config.json (settings an earlier version wrote and this one
  no longer has are skipped: old runs stay exportable)."""
  return extraction_settings.from_config(settings_lib.read_config_json(run_dir / "config.json"),
                                         ignore_unknown=True)


def load_model_config(run_dir: pathlib.Path) -> articulated_model.ModelConfig:
  path = run_dir / "model.json"
  try:
    values = json.loads(path.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read the run's model ({e})") from e
  return articulated_model.ModelConfig.from_dict(values, where=str(path))


def restore_model(run_dir: pathlib.Path, settings: extraction_settings.ExtractionSettings
                  ) -> tuple[articulated_model.ArticulatedModel, dict]:
  """The run's model (model.json) and trained parameters (its latest checkpoint).

  The restore template is the trainer's state structure (same optimiser and
  aux), so the checkpointer's shape check applies.

  Raises:
    UserError: missing or mismatching checkpoint.
  """
  model = articulated_model.ArticulatedModel(load_model_config(run_dir))
  # Only the tree structure, shapes and dtypes matter (the restore replaces the values).
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((4, 3), jnp.float32),
                          jnp.int32(0))
  params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  template = extraction_plan.state_from_params(settings, params, model.config.num_frames)
  directory = run_dir / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, max_to_keep=10**6)
  try:
    state, _ = checkpointer.restore(template)
  except UserError as e:
    raise UserError(f"{directory}: the checkpoint does not match the model that "
                    f"{run_dir / 'model.json'} describes ({e})") from e
  except Exception as e:  # orbax raises many types for damaged folders
    raise UserError(f"{directory}: cannot restore the checkpoint ({type(e).__name__}: {e})") from e
  finally:
    checkpointer.close()
  return model, state.params


def check_motion(motion: dict, path: pathlib.Path) -> tuple[int, int]:
  """Checks motion.npz's keys and shapes -> (frames T, bones B)."""
  for key, ndim in MOTION_KEYS.items():
    if key not in motion:
      raise UserError(f"{path}: missing key '{key}'")
    if motion[key].ndim != ndim:
      raise UserError(f"{path}: '{key}' has shape {motion[key].shape}")
  t, b = motion["bone_quat"].shape[:2]
  expected = {"object_to_camera": (t, 4, 4), "bone_quat": (t, b, 4), "bone_trans": (t, b, 3),
              "rest_bone_quat": (b, 4), "rest_bone_trans": (b, 3), "bone_log_scale": (b, 3)}
  for key, shape in expected.items():
    if motion[key].shape != shape:
      raise UserError(f"{path}: '{key}' has shape {motion[key].shape}, expected {shape}")
  if "w2c" in motion and motion["w2c"].shape != (t, 4, 4):
    raise UserError(f"{path}: 'w2c' has shape {motion['w2c'].shape}, expected {(t, 4, 4)}")
  return t, b


def load_motion(run_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], int, int]:
  """motion.npz of a run, checked -> (arrays, frames, bones)."""
  motion = load_npz(run_dir / "motion.npz")
  num_frames, num_bones = check_motion(motion, run_dir / "motion.npz")
  return motion, num_frames, num_bones
