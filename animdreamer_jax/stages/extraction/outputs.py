"""The files a finished extraction leaves in its run folder (see docs/formats.md, "Run folder").

`write_outputs` meshes the canonical SDF (largest component), forward-warps
the rest mesh to every frame and writes:
rest.obj / rest.npz, meshes.npz (mesh-sequence NPZ in `extract.mesh_frame`),
motion.npz (root poses, bones, skinning weights, the video's cameras),
bones_rest.obj (one octahedron per Gaussian bone), skeleton.json and
skeleton.png (the joint tree, `stages.skeleton_of_run`), model.json (the resolved
ModelConfig), reconstruction.mp4 (input | mesh per frame) and
contact_sheet.png (input, volume render, silhouette agreement, mesh).
Scores against ground truth are the evaluation's job (`eval.run_scores`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import assets
from animdreamer_jax import files
from animdreamer_jax.assets import shading
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.model import skinning
from animdreamer_jax.render import posing
from animdreamer_jax.stages import skeleton_of_run
from animdreamer_jax.train import loop

MESH_COLOR = np.array([0.75, 0.8, 0.9])  # the posed mesh in the pictures: blue-grey


class NoSurface(UserError):
  """The trained canonical SDF has no zero crossing in its box: nothing to mesh."""


def mesh_in_frame(posed_obj: np.ndarray, obj2cam: np.ndarray, w2c: np.ndarray,
                  frame: str) -> np.ndarray:
  """Per-frame meshes (T, V, 3) in "object", "camera" or "world" frame (see OutputSettings)."""
  if frame == "object":
    return posed_obj
  cam = transforms_np.to_camera(posed_obj, obj2cam)
  if frame == "camera":
    return cam
  return transforms_np.to_camera(cam, np.linalg.inv(w2c))


def shade_mesh(vertices_cam: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, height: int,
               width: int, background: np.ndarray) -> np.ndarray:
  """Blue-grey Lambertian render of a camera-space mesh over `background` -> (H, W, 3) float."""
  colors = np.broadcast_to(MESH_COLOR, (len(vertices_cam), 3))
  return shading.over_background(
      shading.shade(vertices_cam, faces, colors, intrinsics, height, width), background)


def bone_glyphs(bones_quat: np.ndarray, bones_trans: np.ndarray, log_scale: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """One octahedron per bone spanning +-1 std of its Gaussian along its axes. -> (V, 3), (F, 3)."""
  unit = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
  tris = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                   [0, 3, 5]], np.int32)
  rot = np.asarray(quat_lib.quat_to_matrix(jnp.asarray(bones_quat)))
  scale = np.exp(log_scale)
  verts = np.einsum("bij,bvj->bvi", rot, unit[None] * scale[:, None, :]) + bones_trans[:, None]
  faces = tris[None] + 6 * np.arange(bones_quat.shape[0])[:, None, None]
  return verts.reshape(-1, 3).astype(np.float32), faces.reshape(-1, 3)


def rest_mesh(trainer, params, aux: dict, settings) -> tuple[np.ndarray, np.ndarray]:
  """Largest component of the canonical surface (NoSurface when there is none)."""
  vertices, faces, _, _ = mesh_lib.find_surface(trainer.sdf_fn(params), aux["aabb"],
                                                settings.train.mc_extend,
                                                settings.extract.mc_resolution)
  if faces.shape[0] == 0:
    raise NoSurface(no_surface_message(trainer.workdir, loop.read_round_log(trainer.workdir)))
  return vertices, faces


def no_surface_message(workdir: pathlib.Path, rounds: list[dict]) -> str:
  """What failed (from the round log) and what to change, in one line."""
  head = f"{workdir}: training produced no surface (the canonical SDF has no zero crossing)"
  if not rounds:
    return head + "; try more rounds or check the video's masks"
  with_surface = [r for r in rounds if r.get("proxy_vertices", 0) > 0]
  last = rounds[-1]
  if not with_surface:
    what = "no round ended with a surface"
  else:
    what = (f"round {with_surface[-1]['round']} was the last with one (its state is kept in "
            f"{workdir / loop.SURFACE_CHECKPOINTS})")
  if last.get("sdf_min", 0.0) > 0:
    signal = (f"the SDF's minimum stayed above zero (+{last['sdf_min']:.3g} at the end): a "
              "half-transparent fog explains the masks without a surface")
  else:
    signal = "the surface left the searched box"
  return (f"{head}: {what}; {signal}. Hold the root pose while the shape forms "
          "(--config.optim.root_pose_warmup_fraction=0.2), give it more rounds, or check the "
          "video's masks and cameras")


def write_motion(path: pathlib.Path, model, params, video, rest_v: np.ndarray, obj2cam: np.ndarray,
                 aux: dict, mesh_frame: str) -> None:
  """motion.npz: root poses, bones per frame and at rest, skinning at the rest vertices."""
  rest_bones = model.apply(params, method="rest_bones")
  log_scale = np.asarray(model.apply(params, method="log_scale"))
  skin = np.asarray(skinning.skinning_weights_points(jnp.asarray(rest_v), rest_bones,
                                                     jnp.asarray(log_scale)))
  bones_t = model.apply(params, jnp.arange(video.num_frames, dtype=jnp.int32), method="bones")
  files.save_npz(path, object_to_camera=obj2cam, mesh_frame=np.array(mesh_frame),
                 bone_quat=np.asarray(bones_t.quat), bone_trans=np.asarray(bones_t.trans),
                 rest_bone_quat=np.asarray(rest_bones.quat),
                 rest_bone_trans=np.asarray(rest_bones.trans), bone_log_scale=log_scale,
                 rest_skin_weights=skin.astype(np.float32), near_far=aux["near_far"],
                 aabb=aux["aabb"], w2c=np.asarray(video.w2c, np.float32),
                 intrinsics=np.asarray(video.intrinsics, np.float32))


def write_outputs(trainer, state, settings, video, workdir: pathlib.Path,
                  progress: bool = True) -> dict:
  """Writes the run folder's results (module docstring).

  Returns:
    {"meshes", "rest_mesh", "num_vertices", "num_faces", "video" or "video_error",
     "contact_sheet"}.
  """
  log = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
  model, params = trainer.plan.model, state.params
  aux = {k: np.asarray(v) for k, v in state.aux.items()}
  t0 = time.time()
  rest_v, rest_f = rest_mesh(trainer, params, aux, settings)
  log(f"rest mesh: {rest_v.shape[0]} vertices, {rest_f.shape[0]} faces ({time.time() - t0:.1f} s)")
  posed_obj, obj2cam = posing.posed_sequence(model, params, rest_v, range(video.num_frames),
                                             warp=settings.render.make_warp(video.gt))
  vertices = mesh_in_frame(posed_obj, obj2cam, video.w2c, settings.extract.mesh_frame)
  # Colour at the rest vertices (rest-time appearance code).
  canon = jax.jit(lambda p, x: model.apply(p, x, method="canonical"))(params, jnp.asarray(rest_v))
  colors = shading.to_uint8(np.asarray(canon["rgb"]))
  seq = assets.MeshSequence(vertices=vertices, faces=rest_f, fps=float(video.meta.get("fps", 30.0)),
                            vertex_colors=colors, rest_vertices=rest_v)
  assets.save_sequence_npz(workdir / "meshes.npz", seq)
  files.save_npz(workdir / "rest.npz", vertices=rest_v, faces=rest_f, vertex_colors=colors)
  assets.write_obj(workdir / "rest.obj", rest_v, rest_f, colors)
  write_motion(workdir / "motion.npz", model, params, video, rest_v, obj2cam, aux,
               settings.extract.mesh_frame)
  # The exact model configuration (frame count, image size, feature width follow the video).
  files.save_json(workdir / "model.json", dataclasses.asdict(model.config))
  rest_bones = model.apply(params, method="rest_bones")
  glyph_v, glyph_f = bone_glyphs(np.asarray(rest_bones.quat), np.asarray(rest_bones.trans),
                                 np.asarray(model.apply(params, method="log_scale")))
  assets.write_obj(workdir / "bones_rest.obj", glyph_v, glyph_f)
  skeleton_of_run.build_and_write(model, params, rest_v, rest_f, settings.skeleton, workdir, log)
  pictures = write_pictures(trainer, state, settings, video, workdir, rest_f,
                            transforms_np.to_camera(posed_obj, obj2cam))
  return {"meshes": str(workdir / "meshes.npz"), "rest_mesh": str(workdir / "rest.obj"),
          "num_vertices": int(rest_v.shape[0]), "num_faces": int(rest_f.shape[0]), **pictures}


def write_pictures(trainer, state, settings, video, workdir: pathlib.Path, faces: np.ndarray,
                   posed_cam: np.ndarray) -> dict:
  """reconstruction.mp4 (input | mesh render per frame) and contact_sheet.png.

  The contact sheet shows, for a few frames: input RGB, volume-rendered RGB,
  rendered mask vs the input mask (green = both, red = missed, blue = extra),
  and the shaded posed mesh.
  """
  cfg = settings.extract
  h, w = video.height, video.width
  background = np.asarray(video.meta.get("background", (1.0, 1.0, 1.0)), np.float32)

  def mesh_picture(t):
    return shading.to_uint8(shade_mesh(posed_cam[t], faces, video.intrinsics[t], h, w, background))

  out = {}
  frames_rgb = [np.concatenate([video.rgb[t], mesh_picture(t)], axis=1)
                for t in range(0, video.num_frames, max(1, cfg.render_stride))]
  fps = cfg.video_fps if cfg.video_fps > 0 else float(video.meta.get("fps", 24.0))
  scale = max(1, 256 // h)
  frames_big = [np.repeat(np.repeat(f, scale, axis=0), scale, axis=1) for f in frames_rgb]
  try:
    with files.atomic_path(workdir / "reconstruction.mp4") as tmp:
      imageio.mimwrite(tmp, frames_big, fps=fps, macro_block_size=1)
    out["video"] = str(workdir / "reconstruction.mp4")
  except Exception as e:  # pylint: disable=broad-except
    # A missing ffmpeg must not lose the run's results; the PNG still comes.
    out["video_error"] = f"{type(e).__name__}: {e}"

  picks = np.linspace(0, video.num_frames - 1, min(cfg.contact_frames, video.num_frames))
  rows = []
  for t in picks.round().astype(int):
    render = trainer.plan.render_image(state.params, np.asarray(state.aux["near_far"])[t], int(t))
    gt_mask, pred_mask = video.mask[t] > 0, render["mask"] > 0.5
    overlay = np.zeros((h, w, 3), np.float32)
    overlay[gt_mask & pred_mask] = (0.2, 0.8, 0.2)
    overlay[gt_mask & ~pred_mask] = (0.9, 0.1, 0.1)
    overlay[~gt_mask & pred_mask] = (0.1, 0.3, 0.9)
    rows.append(np.concatenate([video.rgb[t], shading.to_uint8(render["rgb"]), shading.to_uint8(overlay),
                                mesh_picture(t)], axis=1))
  files.save_png(workdir / "contact_sheet.png", np.concatenate(rows, axis=0))
  out["contact_sheet"] = str(workdir / "contact_sheet.png")
  return out
