"""A trained model -> its skeleton (skeleton.json + skeleton.png in the run folder).

Run by `animdreamer extract` when it finishes, and by `animdreamer skeleton
--run RUN` on any finished run (e.g. with other `config.skeleton.*` settings).
It samples what `skeleton.construct.build` needs from the model: forward skin
weights (Mahalanobis + delta) and canonical features at the rest mesh's
vertices, interior points on a grid where the SDF is negative, the SDF at the
rest bone centres, and the bones of every frame.
"""

from __future__ import annotations

import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import files
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.render import posing
from animdreamer_jax.skeleton import construct
from animdreamer_jax.skeleton import picture
from animdreamer_jax.skeleton import skeleton_file
from animdreamer_jax.stages import run_folder

PICTURE_NAME = "skeleton.png"
_CHUNK = 8192  # points per jitted SDF / feature call


def _chunked(fn, points: np.ndarray) -> np.ndarray:
  n = points.shape[0]
  pad = (-n) % _CHUNK
  padded = np.concatenate([np.asarray(points, np.float32), np.zeros((pad, 3), np.float32)])
  out = [np.asarray(fn(jnp.asarray(padded[i:i + _CHUNK]))) for i in range(0, len(padded), _CHUNK)]
  return np.concatenate(out)[:n]


def bone_samples(model, params, rest_vertices: np.ndarray,
                 settings: construct.SkeletonSettings) -> construct.BoneSamples:
  """What `construct.build` reads, sampled from a trained model (module docstring)."""
  sdf = jax.jit(lambda x: model.apply(params, x, method="sdf"))
  sdf_np = lambda x: _chunked(sdf, np.asarray(x, np.float32))
  lo, hi = rest_vertices.min(0), rest_vertices.max(0)
  grid = mesh_lib.grid_points(np.stack([lo, hi]), settings.interior_resolution).reshape(-1, 3)
  interior = grid[sdf_np(grid) < 0].astype(np.float32)
  features = None
  if model.config.feature_dim > 0:
    feature = jax.jit(lambda x: model.apply(params, x, method="feature"))
    features = _chunked(feature, rest_vertices).astype(np.float32)
  rest = model.apply(params, method="rest_bones")
  num_frames = model.config.num_frames
  bones = model.apply(params, jnp.arange(num_frames, dtype=jnp.int32), method="bones")
  centres = np.asarray(rest.trans, np.float64)
  return construct.BoneSamples(
      surface=np.asarray(rest_vertices, np.float64),
      surface_weights=posing.forward_skin_weights(model, params, rest_vertices).astype(np.float64),
      interior=interior.astype(np.float64),
      interior_weights=(posing.forward_skin_weights(model, params, interior).astype(np.float64)
                        if interior.shape[0] else np.zeros((0, centres.shape[0]))),
      features=features, centres=centres, centre_sdf=sdf_np(centres).astype(np.float64),
      rest_bone_to_object=transforms_np.rigid_matrix(rest.quat, rest.trans),
      bone_to_object=transforms_np.rigid_matrix(bones.quat, bones.trans),
      is_inside=lambda x: sdf_np(x) < 0)


def build_and_write(model, params, rest_vertices: np.ndarray, rest_faces: np.ndarray,
                    settings: construct.SkeletonSettings, run_dir: pathlib.Path,
                    log=print) -> skeleton_file.Skeleton:
  """Builds the skeleton and writes skeleton.json and skeleton.png into `run_dir`."""
  t0 = time.time()
  skel = construct.build(bone_samples(model, params, rest_vertices, settings), settings)
  skeleton_file.save(run_dir / skeleton_file.FILE_NAME, skel)
  files.save_png(run_dir / PICTURE_NAME,
                 picture.skeleton_picture(rest_vertices, rest_faces, skel))
  log(f"skeleton: {summary(skel)} ({time.time() - t0:.1f} s)")
  return skel


def summary(skel: skeleton_file.Skeleton) -> str:
  """One line: joints, depth, pruned bones, named chains."""
  roles = sorted({str(n).rsplit("_", 1)[0] for n in skel.names
                  if not str(n).startswith(("joint_", "spine"))})
  return (f"{skel.num_joints} joints of {skel.num_model_bones} bones, tree depth {skel.depth()}, "
          f"{len(skel.pruned)} pruned; chains: {', '.join(roles) if roles else 'none named'}")


def build_for_run(run_dir: str | pathlib.Path,
                  settings: construct.SkeletonSettings | None = None,
                  log=print) -> skeleton_file.Skeleton:
  """(Re)builds a finished run's skeleton (its config's `skeleton` settings unless given)."""
  run_dir = run_folder.check_finished(run_dir)
  run_settings = run_folder.load_settings(run_dir)
  settings = settings or run_settings.skeleton
  rest = run_folder.load_npz(run_dir / "rest.npz")
  model, params = run_folder.restore_model(run_dir, run_settings)
  return build_and_write(model, params, np.asarray(rest["vertices"], np.float32),
                         np.asarray(rest["faces"], np.int32), settings, run_dir, log)
