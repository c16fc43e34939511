"""The files a finished run leaves behind.

The rest mesh comes from geometry.mesh (marching cubes of the canonical SDF,
largest component).

Outputs (`write_outputs`): rest.obj / rest.npz (largest component of the
canonical surface), meshes.npz (rest vertices forward-warped to every frame,
mesh-sequence NPZ), motion.npz (root poses, bones, skinning weights),
bones_rest.obj (one octahedron per Gaussian bone), model.json (the resolved
ModelConfig), reconstruction.mp4 and
contact_sheet.png (input vs reconstruction), metrics.json (the eval module's
scores against the video's ground truth, when it has one).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import tempfile
import time
from typing import Callable

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.assets import rasterize as rasterize_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import mesh as mesh_lib
from animdreamer_jax.model import skinning
from animdreamer_jax.render import warp_render


class NoSurface(UserError):
  """The trained canonical SDF has no zero crossing in its box: nothing to mesh."""


# ----------------------------------------------------------------------------
# End-of-training outputs.


def _atomic_write_bytes(path: pathlib.Path, writer) -> None:
  """Calls writer(file object) on a temp file next to path, then renames it."""
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      writer(f)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; results are for people to read
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_npz(path: pathlib.Path, **arrays) -> None:
  _atomic_write_bytes(path, lambda f: np.savez_compressed(f, **arrays))


def save_json(path: pathlib.Path, data: dict) -> None:
  text = json.dumps(data, indent=1).encode()
  _atomic_write_bytes(path, lambda f: f.write(text))


def save_png(path: pathlib.Path, image: np.ndarray) -> None:
  ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
  if not ok:
    raise RuntimeError(f"{path}: PNG encoding failed")
  _atomic_write_bytes(path, lambda f: f.write(buf.tobytes()))


def make_pose_fn(model, config) -> Callable:
  """jitted (params, rest_vertices (V, 3), frame ()) -> (posed object-frame (V, 3), obj2cam (4, 4))."""
  warp = warp_render.SkinningWarp(blend=config.render.blend)

  @jax.jit
  def pose(params, vertices, frame):
    rest = warp_render.rest_state(model, params)
    frames = warp_render.frame_states(model, params, frame[None])
    frame_state = jax.tree_util.tree_map(lambda x: None if x is None else x[0], frames)
    ctx = warp.prepare(model, params, rest, frame_state, None)
    posed, _ = jax.vmap(lambda x: warp.forward(ctx, x))(vertices)
    return posed[:, 0], frame_state.obj2cam

  return pose


def posed_sequence(model, params, config, rest_vertices: np.ndarray, num_frames: int,
                   frames=None) -> tuple[np.ndarray, np.ndarray]:
  """Forward-warps the rest vertices to every frame (or only to `frames`).

  Returns:
    (object-frame vertices (T, V, 3), object-to-camera (T, 4, 4)).
  """
  pose = make_pose_fn(model, config)
  verts = jnp.asarray(rest_vertices, jnp.float32)
  posed, root = [], []
  for t in (range(num_frames) if frames is None else frames):
    p, r = pose(params, verts, jnp.int32(t))
    posed.append(np.asarray(p))
    root.append(np.asarray(r))
  return np.stack(posed).astype(np.float32), np.stack(root).astype(np.float32)


def to_camera(points: np.ndarray, obj2cam: np.ndarray) -> np.ndarray:
  """(T, V, 3) object-frame points -> camera frames with (T, 4, 4) transforms."""
  return np.einsum("tij,tvj->tvi", obj2cam[:, :3, :3], points) + obj2cam[:, None, :3, 3]


def mesh_in_frame(posed_obj: np.ndarray, obj2cam: np.ndarray, w2c: np.ndarray,
                  frame: str) -> np.ndarray:
  """Per-frame meshes in the requested frame.

  "object": the model's object frame (= the world frame of the video's
    cameras up to the root pose's drift; right for animals that move in place).
  "camera": each frame's camera frame (lab4d's export).
  "world": camera frame mapped back with the video's (possibly noisy) cameras.
  """
  if frame == "object":
    return posed_obj
  cam = to_camera(posed_obj, obj2cam)
  if frame == "camera":
    return cam
  if frame == "world":
    c2w = np.linalg.inv(w2c)
    return to_camera(cam, c2w)
  raise UserError(f"config.extract.mesh_frame: unknown frame {frame!r}; use object, camera or world")


def shade_mesh(vertices_cam: np.ndarray, faces: np.ndarray, intrinsics: np.ndarray, height: int,
               width: int, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Grey Lambertian render of a camera-space mesh (CPU rasteriser). -> (H, W, 3) float, mask."""
  raster = rasterize_lib.rasterize(vertices_cam, faces, intrinsics, height, width)
  tri = vertices_cam[faces]
  normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)
  light = np.array([-0.3, -0.5, -0.8])
  light /= np.linalg.norm(light)
  shade = 0.3 + 0.7 * np.abs(normal @ light)
  mask = raster.mask
  image = np.broadcast_to(background, (height, width, 3)).astype(np.float32).copy()
  image[mask] = shade[raster.face_id[mask], None] * np.array([0.75, 0.8, 0.9])
  return image, mask


def bone_glyphs(bones_quat: np.ndarray, bones_trans: np.ndarray, log_scale: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """One octahedron per bone spanning +-1 std of its Gaussian along its axes. -> (V, 3), (F, 3)."""
  from animdreamer_jax.geometry import quaternion as quat_lib  # pylint: disable=g-import-not-at-top
  unit = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float32)
  tris = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                   [0, 3, 5]], np.int32)
  rot = np.asarray(quat_lib.quat_to_matrix(jnp.asarray(bones_quat)))
  scale = np.exp(log_scale)
  verts = np.einsum("bij,bvj->bvi", rot, unit[None] * scale[:, None, :]) + bones_trans[:, None]
  faces = tris[None] + 6 * np.arange(bones_quat.shape[0])[:, None, None]
  return verts.reshape(-1, 3).astype(np.float32), faces.reshape(-1, 3)


def write_outputs(trainer, state, workdir: pathlib.Path, progress: bool = True) -> dict:
  """Rest mesh, per-frame meshes, motion, bone glyphs, pictures and metrics.

  Returns:
    {"meshes", "rest_mesh", "metrics" (dict or None), "metrics_path", "num_vertices", ...}.
  """
  from animdreamer_jax import assets  # pylint: disable=g-import-not-at-top
  config, video, model = trainer.config, trainer.video, trainer.model
  cfg = config.extract
  params = state.params
  log = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)
  aux = {k: np.asarray(v) for k, v in state.aux.items()}
  t0 = time.time()
  box = mesh_lib.extend_aabb(aux["aabb"], config.train.mc_extend)
  rest_v, rest_f = mesh_lib.extract_mesh(trainer.sdf_fn(params), box, int(cfg.mc_resolution),
                                         level=float(cfg.mc_level), largest=True)
  if rest_f.shape[0] == 0:
    raise NoSurface(f"{workdir}: training produced no surface (the canonical SDF has no zero "
                    "crossing in the bounding box); try more rounds or check the video's masks")
  log(f"rest mesh: {rest_v.shape[0]} vertices, {rest_f.shape[0]} faces ({time.time() - t0:.1f} s)")
  posed_obj, obj2cam = posed_sequence(model, params, config, rest_v, video.num_frames)
  vertices = mesh_in_frame(posed_obj, obj2cam, video.w2c, cfg.mesh_frame)

  # Colour and skinning at the rest vertices (rest-time appearance code).
  canon = jax.jit(lambda p, x: model.apply(p, x, method="canonical"))(params, jnp.asarray(rest_v))
  colors = np.clip(np.asarray(canon["rgb"]) * 255 + 0.5, 0, 255).astype(np.uint8)
  rest_bones = model.apply(params, method="rest_bones")
  log_scale = np.asarray(model.apply(params, method="log_scale"))
  skin = np.asarray(skinning.skinning_weights_points(jnp.asarray(rest_v), rest_bones,
                                                     jnp.asarray(log_scale)))
  frames = jnp.arange(video.num_frames, dtype=jnp.int32)
  bones_t = model.apply(params, frames, method="bones")

  fps = float(video.meta.get("fps", 30.0))
  seq = assets.MeshSequence(vertices=vertices, faces=rest_f, fps=fps, vertex_colors=colors,
                            rest_vertices=rest_v)
  assets.save_sequence_npz(workdir / "meshes.npz", seq)
  save_npz(workdir / "rest.npz", vertices=rest_v, faces=rest_f, vertex_colors=colors)
  assets.write_obj(workdir / "rest.obj", rest_v, rest_f, colors)
  save_npz(workdir / "motion.npz", object_to_camera=obj2cam, mesh_frame=np.array(cfg.mesh_frame),
           bone_quat=np.asarray(bones_t.quat), bone_trans=np.asarray(bones_t.trans),
           rest_bone_quat=np.asarray(rest_bones.quat), rest_bone_trans=np.asarray(rest_bones.trans),
           bone_log_scale=log_scale, rest_skin_weights=skin.astype(np.float32),
           near_far=aux["near_far"], aabb=aux["aabb"], w2c=np.asarray(video.w2c, np.float32),
           intrinsics=np.asarray(video.intrinsics, np.float32))
  # The exact model configuration (frame count, image size, feature width follow the video).
  save_json(workdir / "model.json", dataclasses.asdict(model.config))
  glyph_v, glyph_f = bone_glyphs(np.asarray(rest_bones.quat), np.asarray(rest_bones.trans), log_scale)
  assets.write_obj(workdir / "bones_rest.obj", glyph_v, glyph_f)

  pictures = write_pictures(trainer, state, workdir, rest_f, to_camera(posed_obj, obj2cam), obj2cam)
  metrics = None
  metrics_path = None
  if video.gt is not None:
    t1 = time.time()
    metrics = evaluate(video, vertices, rest_f, posed_obj, obj2cam, cfg)
    metrics_path = workdir / "metrics.json"
    save_json(metrics_path, metrics)
    log(f"metrics ({time.time() - t1:.1f} s): chamfer {metrics['mean']['all']['chamfer']:.4f}, "
        f"F@2% {metrics['mean']['all']['fscore@2%']:.1f}")
  return {"meshes": str(workdir / "meshes.npz"), "rest_mesh": str(workdir / "rest.obj"),
          "num_vertices": int(rest_v.shape[0]), "num_faces": int(rest_f.shape[0]),
          "metrics": metrics, "metrics_path": None if metrics_path is None else str(metrics_path),
          **pictures}


def evaluate(video, vertices: np.ndarray, faces: np.ndarray, posed_obj: np.ndarray,
             obj2cam: np.ndarray, cfg) -> dict:
  """metrics.json: the eval module's scores of `vertices` (mesh_frame) vs the GT world meshes.

  Unless mesh_frame is "camera" (or extract.camera_frame_metrics is off),
  the camera-frame scores (prediction through the learned root poses vs GT
  through the noise-free cameras, lab4d's protocol) are added under
  "camera_frame".
  """
  from animdreamer_jax.eval import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
  gt = video.gt
  gt_world = gt.meshes.vertices
  samples = int(cfg.eval_samples)
  if cfg.mesh_frame == "camera":
    gt_verts = to_camera(gt_world, gt.w2c)
  else:
    gt_verts = gt_world
  result = metrics_lib.evaluate_sequence(vertices, faces, gt_verts, gt.meshes.faces,
                                         face_visible=gt.face_visible, num_samples=samples)
  result["mesh_frame"] = cfg.mesh_frame
  if cfg.mesh_frame != "camera" and cfg.camera_frame_metrics:
    cam = metrics_lib.evaluate_sequence(to_camera(posed_obj, obj2cam), faces, to_camera(gt_world, gt.w2c),
                                        gt.meshes.faces, face_visible=gt.face_visible,
                                        num_samples=samples)
    result["camera_frame"] = {"mean": cam["mean"], "alignment": cam["alignment"]}
  return result


def write_pictures(trainer, state, workdir: pathlib.Path, faces: np.ndarray, posed_cam: np.ndarray,
                   obj2cam: np.ndarray) -> dict:
  """reconstruction.mp4 (input | mesh render per frame) and contact_sheet.png.

  The contact sheet shows, for a few frames: input RGB, volume-rendered RGB,
  rendered mask vs the input mask (green = both, red = missed, blue = extra),
  and the shaded posed mesh.
  """
  del obj2cam
  video, cfg = trainer.video, trainer.config.extract
  h, w = video.height, video.width
  background = np.asarray(video.meta.get("background", (1.0, 1.0, 1.0)), np.float32)
  frames_rgb = []
  for t in range(0, video.num_frames, max(1, int(cfg.render_stride))):
    shaded, _ = shade_mesh(posed_cam[t], faces, video.intrinsics[t], h, w, background)
    frames_rgb.append(np.concatenate([video.rgb[t], _to_uint8(shaded)], axis=1))
  fps = float(cfg.video_fps) if cfg.video_fps > 0 else float(video.meta.get("fps", 24.0))
  out = {}
  try:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
    path = workdir / "reconstruction.mp4"
    tmp = workdir / "reconstruction.tmp.mp4"
    scale = max(1, 256 // h)
    frames_big = [cv2.resize(f, (f.shape[1] * scale, f.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
                  for f in frames_rgb]
    imageio.mimwrite(tmp, frames_big, fps=fps, macro_block_size=1)
    os.replace(tmp, path)
    out["video"] = str(path)
  except Exception as e:  # pylint: disable=broad-except
    # A missing ffmpeg must not lose the run's results; the PNG still comes.
    out["video_error"] = f"{type(e).__name__}: {e}"

  num = min(int(cfg.contact_frames), video.num_frames)
  picks = np.linspace(0, video.num_frames - 1, num).round().astype(int)
  rows = []
  for t in picks:
    render = trainer.render_fn(state.params, state.aux, int(t))
    gt_mask = video.mask[t] > 0
    pred_mask = render["mask"] > 0.5
    overlay = np.zeros((h, w, 3), np.float32)
    overlay[gt_mask & pred_mask] = (0.2, 0.8, 0.2)
    overlay[gt_mask & ~pred_mask] = (0.9, 0.1, 0.1)
    overlay[~gt_mask & pred_mask] = (0.1, 0.3, 0.9)
    shaded, _ = shade_mesh(posed_cam[t], faces, video.intrinsics[t], h, w, background)
    rows.append(np.concatenate([video.rgb[t], _to_uint8(render["rgb"]), _to_uint8(overlay),
                                _to_uint8(shaded)], axis=1))
  sheet = np.concatenate(rows, axis=0)
  path = workdir / "contact_sheet.png"
  save_png(path, sheet)
  out["contact_sheet"] = str(path)
  return out


def _to_uint8(image: np.ndarray) -> np.ndarray:
  return np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8)
