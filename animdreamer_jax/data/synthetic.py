"""Synthetic monocular videos of an animated mesh, with exact ground truth.

Every modality comes from one z-buffer pass per frame (assets.rasterize): the
visible triangle and the perspective-correct barycentric coordinates of the
surface point at each pixel centre. From that point

- RGB: vertex colour x (ambient + Lambert) with a light fixed in camera space;
- depth: its camera-space z;
- oracle feature: a fixed smooth function of its *rest-pose* position (stands in
  for DINOv2 features, whose weights cannot be downloaded here);
- flow to frame s: the same barycentric point on the same triangle of frame s's
  posed mesh, projected with frame s's camera; valid only where frame s sees it.

Sequences are normalised first: x -> (x - c) * s with c the centre of the
rest-pose bounding box and s = 1 / (its diagonal), so every animal is about
one unit long and metric thresholds compare across assets.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from animdreamer_jax.assets import rasterize as rz
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import rays
from animdreamer_jax.geometry import transforms_np

ORACLE_FEATURE_DIM = 16
CAMERA_PATHS = ("orbit", "arc", "fixed")
# Light direction (towards the light) in camera coordinates: above, left of
# and behind the camera, so surfaces facing the camera are lit.
LIGHT_DIRECTION_CAM = np.array([-0.4, -0.6, -1.0]) / np.linalg.norm([-0.4, -0.6, -1.0])
AMBIENT = 0.35
DIFFUSE = 0.65
DEFAULT_GREY = 0.7  # colour of meshes without vertex colours


@dataclasses.dataclass(frozen=True)
class SynthOptions:
  """How to film the sequence.

  Attributes:
    resolution: image height = width in pixels.
    camera_path: "orbit" (one full circle over the clip), "arc" (an arc of
      `arc_degrees`, so one side is never seen) or "fixed".
    arc_degrees: span of the "arc" path.
    azimuth_degrees: camera azimuth at the start of an orbit, the centre of an
      arc and of the fixed view; 0 looks at the head (+Z), 90 at the +X side.
    elevation_degrees: camera height above the look-at point, as an angle.
    fov_degrees: vertical = horizontal field of view.
    margin: camera distance factor over the tightest one that keeps the
      bounding sphere of every frame inside the image.
    rot_noise_deg: std of a random per-frame camera rotation (about the camera
      centre, uniformly random axis) in the cameras given to reconstruction.
    trans_noise: std per axis of a random per-frame camera-centre offset
      (normalised units) in the cameras given to reconstruction.
    seed: seed of the camera noise.
    background: RGB in [0, 1].
    flow_gaps: frame gaps d of the flows t -> t + d and t -> t - d.
    depth_tolerance: a surface point counts as visible in another frame when
      that frame shows its triangle at a neighbouring pixel, or a surface
      within this depth (normalised units) at its nearest pixel.
  """
  resolution: int = 128
  camera_path: str = "orbit"
  arc_degrees: float = 60.0
  azimuth_degrees: float = 60.0
  elevation_degrees: float = 15.0
  fov_degrees: float = 40.0
  margin: float = 1.05
  rot_noise_deg: float = 0.0
  trans_noise: float = 0.0
  seed: int = 0
  background: tuple[float, float, float] = (1.0, 1.0, 1.0)
  flow_gaps: tuple[int, ...] = video_lib.DEFAULT_FLOW_GAPS
  depth_tolerance: float = 0.015


# ----------------------------------------------------------------------------- normalisation


def normalisation_of(rest_vertices: np.ndarray) -> tuple[np.ndarray, float]:
  """Centre and scale that map the rest-pose bounding box to diagonal 1.

  Args:
    rest_vertices: (V, 3).

  Returns:
    center (3,) and scale s: x_normalised = (x - center) * s.
  """
  lo, hi = rest_vertices.min(axis=0), rest_vertices.max(axis=0)
  diagonal = float(np.linalg.norm(hi - lo))
  if not diagonal > 0 or not math.isfinite(diagonal):
    raise UserError(f"rest pose: degenerate bounding box (diagonal {diagonal})")
  return ((lo + hi) / 2).astype(np.float64), 1.0 / diagonal


def normalise_sequence(seq: Any) -> tuple[Any, np.ndarray, float]:
  """Applies `normalisation_of(rest pose)` to a MeshSequence.

  The rest pose is `seq.rest_vertices`, or frame 0 when the sequence has none.
  Vertices, rest vertices and joint positions are mapped; the rest is kept.

  Returns:
    (normalised MeshSequence, center (3,), scale).
  """
  rest = seq.rest_vertices if seq.rest_vertices is not None else seq.vertices[0]
  center, scale = normalisation_of(np.asarray(rest, dtype=np.float64))
  apply = lambda x: ((np.asarray(x, np.float64) - center) * scale).astype(np.float32)  # noqa: E731
  changes = dict(vertices=apply(seq.vertices), rest_vertices=apply(rest))
  if getattr(seq, "joint_positions", None) is not None:
    changes["joint_positions"] = apply(seq.joint_positions)
  return dataclasses.replace(seq, **changes), center, scale


# ----------------------------------------------------------------------------- oracle feature


def _oracle_basis() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Fixed directions (C, 3), frequencies (C,) in cycles/unit and phases (C,).

  Written as a formula (Fibonacci sphere, geometric frequencies, golden-ratio
  phases) rather than drawn from a random generator, so the function can never
  change with a library version.
  """
  c = ORACLE_FEATURE_DIM
  i = np.arange(c) + 0.5
  golden = (1 + 5 ** 0.5) / 2
  polar = np.arccos(1 - 2 * i / c)
  azimuth = 2 * np.pi * i / golden
  directions = np.stack([np.sin(polar) * np.cos(azimuth), np.cos(polar),
                         np.sin(polar) * np.sin(azimuth)], axis=-1)
  frequencies = 0.6 * (2.5 / 0.6) ** (np.arange(c) % 8 / 7)  # 0.6 .. 2.5 cycles per unit
  phases = 2 * np.pi * ((np.arange(c) * golden) % 1)
  return directions, frequencies, phases


def oracle_feature(rest_points: jnp.ndarray) -> jnp.ndarray:
  """The 16-channel "oracle feature" of surface points (stand-in for DINOv2).

  Random-Fourier-style features with a fixed basis: cos(2 pi f_c <d_c, x> + phi_c),
  L2-normalised. Smooth (wavelengths 0.4 to 1.7 object lengths) and different at
  different body parts, like a semantic descriptor, and exactly known.

  Args:
    rest_points: (..., 3) positions in the normalised rest pose.

  Returns:
    (..., 16) unit vectors.
  """
  directions, frequencies, phases = (jnp.asarray(a, jnp.float32) for a in _oracle_basis())
  arg = 2 * jnp.pi * frequencies * (rest_points @ directions.T) + phases
  feature = jnp.cos(arg)
  return feature / jnp.linalg.norm(feature, axis=-1, keepdims=True)


_oracle_feature_jit = jax.jit(oracle_feature)


# ----------------------------------------------------------------------------- cameras


def path_azimuths(camera_path: str, num_frames: int, azimuth_degrees: float,
                  arc_degrees: float) -> np.ndarray:
  """(T,) camera azimuths in degrees for a path.

  orbit: one full turn over the clip (frame T would be frame 0 again);
  arc: linear sweep over [azimuth - arc/2, azimuth + arc/2], ends included;
  fixed: constant.
  """
  t = np.arange(num_frames, dtype=np.float64)
  if camera_path == "orbit":
    return azimuth_degrees + 360.0 * t / num_frames
  if camera_path == "arc":
    frac = t / max(num_frames - 1, 1)
    return azimuth_degrees + arc_degrees * (frac - 0.5)
  if camera_path == "fixed":
    return np.full(num_frames, float(azimuth_degrees))
  raise UserError(f"camera path '{camera_path}': unknown (choose from {list(CAMERA_PATHS)})")


def camera_poses(azimuths_degrees: np.ndarray, elevation_degrees: float, distance: float,
                 target: np.ndarray) -> np.ndarray:
  """(T, 4, 4) w2c of cameras on a sphere around `target` looking at it.

  Azimuth 0 puts the camera on +Z (facing the animal's head), 90 on +X;
  positive elevation raises it along +Y.
  """
  el = math.radians(elevation_degrees)
  poses = []
  for az in np.radians(azimuths_degrees):
    offset = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    poses.append(rays.look_at(target + distance * offset, target))
  return np.stack(poses)


def framing(posed_vertices: np.ndarray, fov_degrees: float, margin: float
            ) -> tuple[np.ndarray, float]:
  """Look-at point and camera distance that keep every frame in view.

  The look-at point is the centre of the bounding box over all frames; the
  distance makes the sphere around it holding every vertex of every frame fit
  the field of view (times `margin`), whatever the view direction.

  Args:
    posed_vertices: (T, V, 3).

  Returns:
    target (3,), distance.
  """
  pts = posed_vertices.reshape(-1, 3).astype(np.float64)
  target = (pts.min(axis=0) + pts.max(axis=0)) / 2
  radius = float(np.linalg.norm(pts - target, axis=-1).max())
  return target, margin * radius / math.sin(math.radians(fov_degrees) / 2)


def pinhole_intrinsics(height: int, width: int, fov_degrees: float) -> np.ndarray:
  """(4,) fx, fy, cx, cy of a centred square-pixel camera with this vertical FOV."""
  f = (height / 2) / math.tan(math.radians(fov_degrees) / 2)
  return np.array([f, f, width / 2, height / 2])


def rotation_from_axis_angle(axis_angle: np.ndarray) -> np.ndarray:
  """Rodrigues' formula, (3,) -> (3, 3)."""
  angle = float(np.linalg.norm(axis_angle))
  if angle < 1e-12:
    return np.eye(3)
  k = axis_angle / angle
  kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
  return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def perturb_poses(w2c: np.ndarray, rot_noise_deg: float, trans_noise: float,
                  rng: np.random.Generator) -> np.ndarray:
  """Per-frame independent camera noise.

  Each camera turns about its own centre by an angle ~ N(0, rot_noise_deg) about
  a uniformly random axis, and its centre moves by N(0, trans_noise) per axis.

  Args:
    w2c: (T, 4, 4).

  Returns:
    (T, 4, 4) noisy w2c.
  """
  out = np.array(w2c, dtype=np.float64)
  for t in range(len(out)):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(rng.normal() * rot_noise_deg)
    offset = rng.normal(size=3) * trans_noise
    rot = out[t, :3, :3]
    centre = -rot.T @ out[t, :3, 3] + offset
    new_rot = rotation_from_axis_angle(axis * angle) @ rot
    out[t, :3, :3] = new_rot
    out[t, :3, 3] = -new_rot @ centre
  return out


# ----------------------------------------------------------------------------- geometry helpers


def weld_index(rest_vertices: np.ndarray) -> np.ndarray:
  """(V,) group id of vertices that share a rest position (split seams)."""
  _, inverse = np.unique(np.asarray(rest_vertices), axis=0, return_inverse=True)
  return inverse.reshape(-1)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, weld: np.ndarray) -> np.ndarray:
  """Area-weighted smooth normals, shared across welded seams.

  Args:
    vertices: (V, 3).
    faces: (F, 3).
    weld: (V,) from `weld_index`.

  Returns:
    (V, 3) unit normals (zero where the faces around a vertex cancel out).
  """
  tri = vertices[faces]
  face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2 x area
  groups = weld[faces]
  acc = np.zeros((int(weld.max()) + 1, 3))
  for k in range(3):
    for c in range(3):
      acc[:, c] += np.bincount(groups[:, k], weights=face_n[:, c], minlength=len(acc))
  n = acc[weld]
  length = np.linalg.norm(n, axis=-1, keepdims=True)
  return np.where(length > 1e-20, n / np.maximum(length, 1e-20), 0.0)


def shade(raster: rz.Raster, faces: np.ndarray, vertices_cam: np.ndarray,
          normals_cam: np.ndarray, colors: np.ndarray, background: np.ndarray,
          light_direction: Optional[np.ndarray] = None) -> np.ndarray:
  """Vertex colour x (ambient + Lambert), light fixed in camera space.

  Surfaces are two-sided: the interpolated normal is turned towards the
  camera; where it vanishes the face normal is used.

  Args:
    raster: the frame's Raster.
    faces: (F, 3).
    vertices_cam: (V, 3) camera-space vertices.
    normals_cam: (V, 3) camera-space vertex normals.
    colors: (V, 3) in [0, 1].
    background: (3,) in [0, 1].
    light_direction: (3,) unit vector towards the light in this camera's
      space; None: LIGHT_DIRECTION_CAM (the light moves with the camera).

  Returns:
    float (H, W, 3) in [0, 1].
  """
  light_direction = LIGHT_DIRECTION_CAM if light_direction is None else np.asarray(light_direction)
  fg = raster.mask
  fid = raster.face_id[fg]
  bary = raster.barycentric[fg].astype(np.float64)                # (N, 3)
  lerp = lambda values: np.einsum("nk,nkc->nc", bary, values[faces[fid]])  # noqa: E731
  point, normal = lerp(vertices_cam), lerp(normals_cam)
  tri = vertices_cam[faces[fid]]
  face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
  weak = np.linalg.norm(normal, axis=-1, keepdims=True) < 1e-6
  normal = np.where(weak, face_n, normal)
  normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-20)
  facing = np.sum(normal * -point, axis=-1, keepdims=True)
  normal = np.where(facing < 0, -normal, normal)
  light = AMBIENT + DIFFUSE * np.maximum(normal @ light_direction, 0.0)
  out = np.broadcast_to(np.asarray(background, np.float64), fg.shape + (3,)).copy()
  out[fg] = np.clip(lerp(colors) * light[:, None], 0, 1)
  return out


def surface_flow(raster_t: rz.Raster, vertices_t_cam: np.ndarray, raster_s: rz.Raster,
                 vertices_s_cam: np.ndarray, faces: np.ndarray, intrinsics_s: np.ndarray,
                 depth_tolerance: float) -> np.ndarray:
  """Exact flow of every foreground pixel of frame t to frame s, with validity.

  The surface point at a pixel of frame t is (face f, barycentrics b). In frame
  s it is b . (f's vertices in frame s), projected with frame s's camera. It is
  valid when it lies in front of the camera and inside the image, the same side
  of its triangle faces the camera as in frame t (not back-facing), and frame s
  sees it: one of the 2x2 pixel centres around its projection shows triangle f,
  or the nearest pixel shows a surface within `depth_tolerance` of its depth.

  Args:
    raster_t: Raster of frame t.
    vertices_t_cam: (V, 3) frame t's mesh in frame t's camera.
    raster_s: Raster of frame s.
    vertices_s_cam: (V, 3) frame s's mesh in frame s's camera.
    faces: (F, 3).
    intrinsics_s: (4,) of frame s.
    depth_tolerance: in world units.

  Returns:
    float32 (H, W, 3): dx, dy (pixels) and valid (0/1); zeros on background.
  """
  h, w = raster_t.face_id.shape
  out = np.zeros((h, w, 3), np.float32)
  fg = raster_t.mask
  vv, uu = np.nonzero(fg)
  f = raster_t.face_id[fg]
  b = raster_t.barycentric[fg].astype(np.float64)
  tri_s = vertices_s_cam[faces[f]]
  tri_t = vertices_t_cam[faces[f]]
  point_s = np.einsum("nk,nkc->nc", b, tri_s)
  point_t = np.einsum("nk,nkc->nc", b, tri_t)
  z = point_s[:, 2]
  in_front = z > 1e-6
  xy = rz.project_points(np.where(in_front[:, None], point_s, 1.0), intrinsics_s)
  flow = xy - np.stack([uu + 0.5, vv + 0.5], axis=-1)

  def side(tri, point):
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.sum(n * -point, axis=-1)

  same_side = side(tri_t, point_t) * side(tri_s, point_s) > 0
  inside = in_front & (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
  xy_safe = np.where(inside[:, None], xy, 0.0)
  # Nearest pixel: depth match.
  ix = np.clip(np.floor(xy_safe[:, 0]).astype(np.int64), 0, w - 1)
  iy = np.clip(np.floor(xy_safe[:, 1]).astype(np.int64), 0, h - 1)
  near_face = raster_s.face_id[iy, ix]
  seen = (near_face >= 0) & (np.abs(raster_s.depth[iy, ix] - z) <= depth_tolerance)
  # The 2x2 pixel centres around the point: same triangle.
  x0 = np.floor(xy_safe[:, 0] - 0.5).astype(np.int64)
  y0 = np.floor(xy_safe[:, 1] - 0.5).astype(np.int64)
  for dy in (0, 1):
    for dx in (0, 1):
      px, py = x0 + dx, y0 + dy
      ok = (px >= 0) & (px < w) & (py >= 0) & (py < h)
      seen |= ok & (raster_s.face_id[np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)] == f)
  valid = inside & same_side & seen
  out[vv, uu, 0] = np.where(valid, flow[:, 0], 0.0)
  out[vv, uu, 1] = np.where(valid, flow[:, 1], 0.0)
  out[vv, uu, 2] = valid
  return out


# ----------------------------------------------------------------------------- the video


def ground_truth_joints(seq: Any) -> video_lib.GroundTruthJoints | None:
  """Joint names, parents and each vertex's dominant joint; None unless the sequence has all three.

  The dominant joint (largest skin weight) is what evaluation groups vertices
  by (legs, tail, head, ... from the joint names).
  """
  if seq.skin_weights is None or seq.joint_parents is None or seq.joint_names is None:
    return None
  return video_lib.GroundTruthJoints(
      names=np.asarray(seq.joint_names, dtype=str),
      parents=np.asarray(seq.joint_parents, np.int32),
      vertex_joint=np.argmax(np.asarray(seq.skin_weights), axis=1).astype(np.int32))


class _Cameras(NamedTuple):
  """The synthetic camera path."""
  target: np.ndarray  # (3,) look-at point
  distance: float
  intrinsics: np.ndarray  # (4,) fx, fy, cx, cy (all frames)
  w2c: np.ndarray  # (T, 4, 4) noise-free (the ground truth; the video is filmed with these)
  w2c_used: np.ndarray  # (T, 4, 4) given to reconstruction (noisy when noise is asked for)


class _Frames(NamedTuple):
  """Per-frame renders of the sequence."""
  rgb: np.ndarray  # uint8 (T, H, W, 3)
  mask: np.ndarray  # uint8 (T, H, W)
  depth: np.ndarray  # float32 (T, H, W)
  feature: np.ndarray  # float16 (T, H, W, C)
  face_visible: np.ndarray  # bool (F,): seen in any frame
  rasters: list[rz.Raster]
  verts_cam: list[np.ndarray]  # (V, 3) each frame's mesh in its camera


def synthesize(seq: Any, options: SynthOptions, source: dict | None = None,
               progress: bool = True) -> video_lib.Video:
  """Films a MeshSequence into a Video (with ground truth).

  Args:
    seq: MeshSequence (animdreamer_jax.assets): vertices (T, V, 3), faces (F, 3),
      fps, vertex_colors (V, 3) uint8 | None, rest_vertices | None, ...
    options: SynthOptions.
    source: provenance for video.json (asset path, clip, ...).
    progress: show tqdm bars.

  Returns:
    Video whose gt holds the normalised sequence, rest mesh, noise-free
    cameras, per-face visibility and (for a sequence with named joints) the
    skeleton.
  """
  if options.camera_path not in CAMERA_PATHS:
    raise UserError(f"camera path '{options.camera_path}': unknown "
                    f"(choose from {list(CAMERA_PATHS)})")
  if options.resolution < 8:
    raise UserError(f"resolution {options.resolution}: must be at least 8 pixels")
  seq, center, scale = normalise_sequence(seq)
  verts = np.asarray(seq.vertices, np.float64)
  faces = np.asarray(seq.faces, np.int64)
  num_frames, num_vertices = verts.shape[:2]
  rest = np.asarray(seq.rest_vertices, np.float64)
  colors = (np.asarray(seq.vertex_colors, np.float64) / 255.0
            if seq.vertex_colors is not None else np.full((num_vertices, 3), DEFAULT_GREY))
  cameras = _camera_path(verts, options)
  frames = _render_frames(verts, faces, rest, colors, cameras, options, progress)
  flow_fw, flow_bw = _flows(frames, faces, cameras.intrinsics, options, progress)
  intrinsics_t = np.tile(cameras.intrinsics, (num_frames, 1)).astype(np.float32)
  gt = video_lib.GroundTruth(
      meshes=seq, rest_vertices=rest.astype(np.float32), rest_faces=faces.astype(np.int32),
      intrinsics=intrinsics_t, w2c=cameras.w2c.astype(np.float32),
      face_visible=frames.face_visible, joints=ground_truth_joints(seq))
  return video_lib.Video(rgb=frames.rgb, mask=frames.mask, depth=frames.depth,
                         feature=frames.feature, flow_fw=flow_fw, flow_bw=flow_bw,
                         intrinsics=intrinsics_t, w2c=cameras.w2c_used.astype(np.float32),
                         meta=_video_meta(seq, options, cameras, center, scale, source), gt=gt)


def _camera_path(verts: np.ndarray, options: SynthOptions) -> _Cameras:
  """Cameras framing every frame of the (T, V, 3) sequence along options.camera_path."""
  res = int(options.resolution)
  target, distance = framing(verts, options.fov_degrees, options.margin)
  intrinsics = pinhole_intrinsics(res, res, options.fov_degrees)
  azimuths = path_azimuths(options.camera_path, verts.shape[0], options.azimuth_degrees,
                           options.arc_degrees)
  w2c = camera_poses(azimuths, options.elevation_degrees, distance, target)
  if options.rot_noise_deg > 0 or options.trans_noise > 0:
    w2c_used = perturb_poses(w2c, options.rot_noise_deg, options.trans_noise,
                             np.random.default_rng(options.seed))
  else:
    w2c_used = w2c
  return _Cameras(target, distance, intrinsics, w2c, w2c_used)


def _render_frames(verts: np.ndarray, faces: np.ndarray, rest: np.ndarray, colors: np.ndarray,
                   cameras: _Cameras, options: SynthOptions, progress: bool) -> _Frames:
  """RGB, mask, depth, oracle feature and face visibility of every frame (noise-free cameras)."""
  num_frames, res = verts.shape[0], int(options.resolution)
  background = np.asarray(options.background, np.float64)
  w2c = cameras.w2c
  weld = weld_index(rest)
  rgb = np.zeros((num_frames, res, res, 3), np.uint8)
  mask = np.zeros((num_frames, res, res), np.uint8)
  depth = np.zeros((num_frames, res, res), np.float32)
  feature = np.zeros((num_frames, res, res, ORACLE_FEATURE_DIM), np.float16)
  face_visible = np.zeros(len(faces), bool)
  rasters, verts_cam = [], []
  for t in tqdm.trange(num_frames, desc="render", disable=not progress, leave=False):
    v_cam = transforms_np.to_camera(verts[t], w2c[t])
    raster = rz.rasterize(v_cam, faces, cameras.intrinsics, res, res)
    normals_cam = vertex_normals(verts[t], faces, weld) @ w2c[t, :3, :3].T
    color = shade(raster, faces, v_cam, normals_cam, colors, background)
    rgb[t] = np.round(color * 255).astype(np.uint8)
    mask[t] = raster.mask
    depth[t] = raster.depth
    fg = raster.mask
    # Whole image at once: one fixed shape, so the jitted function compiles once.
    rest_image = jnp.asarray(rz.interpolate(raster, faces, rest), jnp.float32)
    feature[t] = np.where(fg[..., None], np.asarray(_oracle_feature_jit(rest_image)), 0)
    face_visible[raster.face_id[fg]] = True
    rasters.append(raster)
    verts_cam.append(v_cam)
  return _Frames(rgb, mask, depth, feature, face_visible, rasters, verts_cam)


def _flows(frames: _Frames, faces: np.ndarray, intrinsics: np.ndarray, options: SynthOptions,
           progress: bool) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
  """Forward and backward flows {gap: float16 (T, H, W, 3)} for options.flow_gaps."""
  num_frames, res = frames.rgb.shape[:2]
  rasters, verts_cam = frames.rasters, frames.verts_cam
  flow_fw, flow_bw = {}, {}
  gaps = [int(g) for g in options.flow_gaps]
  for gap in tqdm.tqdm(gaps, desc="flow", disable=not progress, leave=False):
    fw = np.zeros((num_frames, res, res, 3), np.float16)
    bw = np.zeros((num_frames, res, res, 3), np.float16)
    for t in range(num_frames):
      for s, out in ((t + gap, fw), (t - gap, bw)):
        if 0 <= s < num_frames:
          # Frame t's points seen by frame s: frame s's mesh in frame s's camera.
          out[t] = surface_flow(rasters[t], verts_cam[t], rasters[s], verts_cam[s], faces,
                                intrinsics, options.depth_tolerance)
    flow_fw[gap], flow_bw[gap] = fw, bw
  return flow_fw, flow_bw


def _video_meta(seq: Any, options: SynthOptions, cameras: _Cameras, center: np.ndarray,
                scale: float, source: dict | None) -> dict:
  """video.json's producer keys: frame rate, background, camera path, normalisation, provenance."""
  return {
      "fps": float(seq.fps),
      "feature_kind": "oracle",
      "background": [float(c) for c in np.asarray(options.background, np.float64)],
      "camera_path": options.camera_path,
      "normalisation": {"center": [float(c) for c in center], "scale": float(scale),
                        "rule": "x_normalised = (x_asset - center) * scale; center = rest-pose "
                                "bounding-box centre, scale = 1 / rest-pose bounding-box diagonal"},
      "source": {
          **(source or {}),
          "generator": "animdreamer synth",
          "camera": {"fov_degrees": options.fov_degrees, "distance": cameras.distance,
                     "target": [float(c) for c in cameras.target],
                     "elevation_degrees": options.elevation_degrees,
                     "azimuth_degrees": options.azimuth_degrees,
                     "arc_degrees": options.arc_degrees if options.camera_path == "arc" else None,
                     "rot_noise_deg": options.rot_noise_deg, "trans_noise": options.trans_noise,
                     "noise_seed": options.seed},
          "shading": {"ambient": AMBIENT, "diffuse": DIFFUSE,
                      "light_direction_camera": LIGHT_DIRECTION_CAM.tolist()},
          "oracle_feature": "cos(2 pi f_c <d_c, x_rest> + phi_c), L2-normalised "
                            "(animdreamer_jax.data.synthetic.oracle_feature); a stand-in for "
                            "DINOv2 features",
          "flow_depth_tolerance": options.depth_tolerance,
      },
  }
