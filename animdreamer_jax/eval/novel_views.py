"""Novel views: a trained model against ground-truth renders from 4 views around the animal.

At a few frames t, 4 cameras orbit the ground-truth mesh of frame t at one
elevation, azimuths 0, 90, 180 and 270 degrees from the video's camera (180:
the side a camera arc never saw), framing its bounding sphere. The model is
seen from the same places through a registration `object_to_world` (model
object frame -> ground-truth world): the evaluation's similarity from
metrics.json ("alignment", fitted to the ground truth) or the identity (the
frame the video's cameras were given in), so runs with and without CSD are
judged alike. The ground truth is shaded as the video was
(`csd.priors.GroundTruthRenderer`): the model's colours are the video's pixels.

Scores: PSNR of the renders over white against the ground truth's, and
silhouette IoU (model opacity > 0.5 against ground-truth coverage > 0.5),
averaged over views and frames, and of the never-seen view (180 degrees)
alone ("_opposite").
"""

from __future__ import annotations

import json
import pathlib
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax import files
from animdreamer_jax.assets import rasterize
from animdreamer_jax.csd import cameras as cameras_lib
from animdreamer_jax.csd import gradient
from animdreamer_jax.csd import priors
from animdreamer_jax.csd import term as csd_term
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.render import settings as render_settings_lib
from animdreamer_jax.stages import run_folder

NUM_VIEWS = cameras_lib.NUM_VIEWS
OPPOSITE = 2  # the view at 180 degrees from the video's camera
SCORES = ("psnr", "iou", "psnr_opposite", "iou_opposite")
RESULT_FILE = "novel_views.json"

# cameras -> (images (V, R, R, 3) over white, opacity (V, R, R)), on the host.
ViewRenderer = Callable[[cameras_lib.CsdCameras], tuple[np.ndarray, np.ndarray]]


def photometric_scores(images: np.ndarray, opacity: np.ndarray, truth: np.ndarray,
                       truth_mask: np.ndarray) -> dict[str, float]:
  """PSNR (dB, images in [0, 1]) and silhouette IoU (opacity > 0.5 vs the true mask).

  Args:
    images, truth: (N, H, W, 3) renders and ground truth over the same background.
    opacity: (N, H, W) the renders' opacity; truth_mask: (N, H, W) bool.
  """
  mse = float(np.mean((np.asarray(images, np.float64) - np.asarray(truth, np.float64)) ** 2))
  pred = np.asarray(opacity) > 0.5
  union = np.logical_or(pred, truth_mask).sum()
  iou = float(np.logical_and(pred, truth_mask).sum() / union) if union else 1.0
  return {"psnr": float(-10.0 * np.log10(max(mse, 1e-12))), "iou": iou}


def orbit_cameras(vertices: np.ndarray, video_w2c: np.ndarray, resolution: int,
                  elevation: float, fov: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The 4 orbit views of one frame's ground-truth mesh, in the world frame.

  Args:
    vertices: (V, 3) the frame's ground-truth mesh (world frame).
    video_w2c: (4, 4) the video's camera of that frame (azimuth 0 is on its side).
    resolution, elevation, fov: image side (pixels) and angles (degrees).

  Returns:
    (w2c (4, 4, 4), intrinsics (4, 4), near_far (4, 2)) enclosing the mesh's bounding sphere.
  """
  verts = np.asarray(vertices, np.float64)
  centre = 0.5 * (verts.min(0) + verts.max(0))
  radius = float(np.linalg.norm(verts - centre, axis=1).max())
  video_w2c = np.asarray(video_w2c, np.float64)
  eye = -video_w2c[:3, :3].T @ video_w2c[:3, 3] - centre
  azimuth0 = np.degrees(np.arctan2(eye[0], eye[2]))
  distance = 1.15 * radius / np.sin(np.radians(fov / 2))  # the sphere fills 87% of the view
  w2c = np.asarray(cameras_lib.orbit_w2c(
      jnp.float32(elevation), jnp.asarray(azimuth0 + np.arange(NUM_VIEWS) * 90.0, jnp.float32),
      jnp.float32(distance), jnp.asarray(centre, jnp.float32)), np.float64)
  intrinsics = np.tile(np.asarray(cameras_lib.pinhole_intrinsics(resolution, fov), np.float64),
                       (NUM_VIEWS, 1))
  near_far = np.tile([[max(distance - 1.3 * radius, 1e-2), distance + 1.3 * radius]],
                     (NUM_VIEWS, 1))
  return w2c, intrinsics, near_far


def ground_truth_views(renderer: priors.GroundTruthRenderer, frame: int, w2c: np.ndarray,
                       intrinsics: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
  """(images (N, R, R, 3) over white, mask (N, R, R) bool) of the ground truth of `frame`.

  The mask is the mesh's pixel coverage > 0.5, at the renderer's supersampling.
  """
  images = renderer.render_views(frame, w2c, intrinsics, resolution)
  s = renderer.supersample
  masks = []
  for view_w2c, view_intrinsics in zip(np.asarray(w2c, np.float64),
                                       np.asarray(intrinsics, np.float64)):
    raster = rasterize.rasterize(transforms_np.to_camera(renderer.vertices[int(frame)], view_w2c),
                                 renderer.faces, s * view_intrinsics, s * resolution,
                                 s * resolution)
    coverage = raster.mask.reshape(resolution, s, resolution, s).mean(axis=(1, 3))
    masks.append(coverage > 0.5)
  return images, np.stack(masks)


def model_view_renderer(model, params, render: render_settings_lib.RenderSettings,
                        resolution: int) -> ViewRenderer:
  """The ViewRenderer of a trained model: the CSD view renderer with the evaluation sampling.

  All coarse-to-fine bands are on (a finished run). Rendered over white and
  over black in one program: their difference is 1 - opacity.
  """
  options = render.image_options()
  white = csd_term.make_view_renderer(model, options, background=1.0)
  black = csd_term.make_view_renderer(model, options, background=0.0)
  uv = gradient.image_pixels(resolution, NUM_VIEWS)
  both = jax.jit(lambda p, cams, uv: (white(p, cams, uv), black(p, cams, uv)))
  shape = (NUM_VIEWS, resolution, resolution, 3)

  def render_views(cameras: cameras_lib.CsdCameras) -> tuple[np.ndarray, np.ndarray]:
    on_white, on_black = (np.asarray(x).reshape(shape) for x in both(params, cameras, uv))
    return on_white, 1.0 - (on_white - on_black).mean(-1)

  return render_views


def novel_views(render_views: ViewRenderer, video, object_to_world: np.ndarray,
                frames: Optional[Sequence[int]] = None, resolution: int = 64,
                elevation: float = 15.0, fov: float = 40.0, supersample: int = 2
                ) -> tuple[dict, np.ndarray]:
  """The model (seen through `render_views`) against the ground truth (module docstring).

  Args:
    render_views: e.g. `model_view_renderer(...)`; gets cameras in the model's object frame.
    video: a `data.video.Video` with ground truth.
    object_to_world: (4, 4) similarity, model object frame -> ground-truth world.
    frames: the frames scored (default: up to 4 spread over the video).
    resolution, elevation, fov: the views (pixels, degrees).
    supersample: the ground truth's anti-aliasing (rendered s x larger, box-averaged).

  Returns:
    ({"psnr", "iou", "psnr_opposite", "iou_opposite", "frames", "resolution"}, picture:
    per frame a row of the model's 4 views above a row of the ground truth's).
  """
  if frames is None:  # 4 spread over the video (fewer if it is shorter)
    frames = np.unique(np.linspace(0, video.num_frames - 1, 4).round().astype(int))
  frames = np.asarray(frames)
  align = np.asarray(object_to_world, np.float64)
  scale = float(np.cbrt(np.linalg.det(align[:3, :3])))
  if not scale > 0:
    raise UserError(f"novel views: the registration {align.tolist()} is not a similarity")
  renderer = priors.ground_truth_renderer(video, supersample=supersample)
  scores, rows = [], []
  for t in frames:
    world, intrinsics, near_far = orbit_cameras(video.gt.meshes.vertices[t], video.gt.w2c[t],
                                                resolution, elevation, fov)
    model_w2c = world @ align
    model_w2c[:, :3, :] /= scale  # a similarity divided by its scale: the same image
    cameras = cameras_lib.CsdCameras(
        w2c=jnp.asarray(model_w2c, jnp.float32), intrinsics=jnp.asarray(intrinsics, jnp.float32),
        near_far=jnp.asarray(near_far / scale, jnp.float32),
        mvdream=jnp.zeros((NUM_VIEWS, 16)), frame=jnp.int32(t), elevation=jnp.float32(elevation),
        azimuth=jnp.zeros(NUM_VIEWS), fov=jnp.float32(fov),
        distance=jnp.float32(0.0))  # mvdream / azimuth / distance: not read by the renderer
    images, opacity = render_views(cameras)
    truth, mask = ground_truth_views(renderer, int(t), world, intrinsics, resolution)
    view = slice(OPPOSITE, OPPOSITE + 1)
    scores.append((photometric_scores(images, opacity, truth, mask),
                   photometric_scores(images[view], opacity[view], truth[view], mask[view])))
    rows += [np.concatenate(list(images), 1), np.concatenate(list(truth), 1)]
  out = {"psnr": float(np.mean([a["psnr"] for a, _ in scores])),
         "iou": float(np.mean([a["iou"] for a, _ in scores])),
         "psnr_opposite": float(np.mean([b["psnr"] for _, b in scores])),
         "iou_opposite": float(np.mean([b["iou"] for _, b in scores])),
         "frames": [int(t) for t in frames], "resolution": resolution}
  return out, np.clip(np.concatenate(rows, 0), 0, 1)


def _save_picture(path: pathlib.Path, image: np.ndarray) -> None:
  zoom = max(1, 512 // image.shape[1])  # nearest-neighbour blow-up for people
  image = np.repeat(np.repeat(image, zoom, 0), zoom, 1)
  files.save_png(path, (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


def score_run(run_dir: str | pathlib.Path, video, resolution: int = 64) -> dict:
  """novel_views.json (+ novel_views.png, novel_views_world.png) of a finished, scored run.

  Two registrations of the model: the evaluation's (metrics.json "alignment",
  the run's object-frame meshes fitted to the ground truth) and none
  ("world_*": the frame the video's cameras were given in).

  Raises:
    UserError: no ground truth, an unfinished or unscored run, meshes not in the object frame.
  """
  run_dir = run_folder.check_finished(run_dir)
  if getattr(video, "gt", None) is None:
    raise UserError("novel views: the video has no ground truth (gt/) to compare with")
  settings = run_folder.load_settings(run_dir)
  if settings.extract.mesh_frame != "object":
    raise UserError(f"{run_dir}: novel views need the meshes in the model's object frame "
                    f"(extract.mesh_frame=object, not {settings.extract.mesh_frame!r})")
  metrics_path = run_dir / "metrics.json"
  try:
    alignment = np.asarray(json.loads(metrics_path.read_text())["alignment"]["matrix"], np.float64)
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise UserError(f"{metrics_path}: no registration to read ({type(e).__name__}: {e}); "
                    "score the run first (animdreamer eval)") from e
  model, params = run_folder.restore_model(run_dir, settings)
  render_views = model_view_renderer(model, params, settings.render, resolution)
  scores, picture = novel_views(render_views, video, alignment, resolution=resolution)
  world, world_picture = novel_views(render_views, video, np.eye(4), resolution=resolution)
  scores.update({f"world_{k}": world[k] for k in SCORES})
  files.save_json(run_dir / RESULT_FILE, scores)
  _save_picture(run_dir / "novel_views.png", picture)
  _save_picture(run_dir / "novel_views_world.png", world_picture)
  return scores
