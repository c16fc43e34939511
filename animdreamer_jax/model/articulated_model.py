"""`ArticulatedModel`: every parameter of the animatable model in one Flax module.

Use its methods through `model.apply(params, ..., method=...)` (or the
`method="name"` string form). Numerics that have no parameters (skinning,
warps, rendering) live in pure modules and receive what these methods return.

Parameter tree (top-level groups, for optax masks and CSD):

| path | what | lab4d name |
| --- | --- | --- |
| `canonical/sdf_trunk`, `canonical/sdf_head` | SDF geometry | basefield, sdf |
| `canonical/color_mlp`, `canonical/rgb_hidden`, `canonical/rgb_out` | colour | colorfield, rgb |
| `canonical/feature_mlp` | 16-D feature field | feature_field |
| `canonical/visibility_mlp` | visibility logits | vis_mlp |
| `appearance` | per-frame appearance code MLP | appr_embedding |
| `bones` | bone articulation MLP (bag of bones) | warp.articulation |
| `delta_mlp`, `delta_time` | delta-skinning MLP and its time embedding | skinning_model.delta_field, .time_embedding |
| `root_pose` (incl. `root_pose/base_quat`) | object-to-camera MLP | camera_mlp |
| `intrinsics/base_logfocal`, `intrinsics/base_ppoint` | intrinsics | intrinsics |
| `log_gauss` (B, 3) | Gaussian bone log-scales | log_gauss |
| `logibeta` () | -log VolSDF beta of the SDF density | logibeta |
| `bone_logibeta` () | -log beta of the bone-density rendering | warp.logibeta |
| `logsigma` () | log feature-matching temperature | logsigma |

`EXPLICIT_PARAM_NAMES` are the leaves lab4d trains at 10x the learning rate
(`param_labels` gives an optax `multi_transform` labelling). CSD by default
updates `CSD_DEFAULT_GROUPS` only (lab4d/AnimatableDreamer: colour, RGB, SDF,
visibility; not the feature field, warp or camera).

Deliberate difference: lab4d scales the world by a learnable per-field
`logscale` (depth is divided by it, cameras multiplied by it). Sequences here
are normalised (rest bbox diagonal 1) and root poses are fitted directly in
those units, so there is no world-scale parameter.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import se3
from animdreamer_jax.model import articulation
from animdreamer_jax.model import encoding
from animdreamer_jax.model import fields
from animdreamer_jax.model.mlp import MATMUL_DTYPES
from animdreamer_jax.model.skinning import Bones

EXPLICIT_PARAM_NAMES = ("log_gauss", "logibeta", "bone_logibeta", "logsigma",
                        "base_quat", "base_logfocal", "base_ppoint")
CSD_DEFAULT_GROUPS = ("canonical/sdf_trunk", "canonical/sdf_head",
                      "canonical/color_mlp", "canonical/rgb_hidden",
                      "canonical/rgb_out", "canonical/visibility_mlp")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Sizes and initial values of the model (hashable: usable as a static arg).

  The one declaration of the field sizes: `fields.CanonicalField` and
  `fields.SkinningDelta` read theirs from this config.

  Defaults are lab4d's (see `lab4d_config`); lengths are in lab4d's field
  units (initial sphere radius 0.1, bone Gaussians 0.03). For normalised
  sequences (rest bbox diagonal 1) scale `sphere_radius`, `init_gauss_scale`
  and `bone_trans_scale` together.
  """
  video_lengths: tuple[int, ...] = (64,)
  image_size: tuple[int, int] = (256, 256)
  num_bones: int = 25
  # Canonical field.
  sdf_depth: int = 8
  sdf_width: int = 256
  sdf_skips: tuple[int, ...] = (4,)
  sdf_freqs: int = 10
  color_depth: int = 2
  color_freqs: int = 12
  feature_dim: int = 16
  feature_depth: int = 5
  feature_width: int = 128
  feature_freqs: int = 6
  use_visibility: bool = True
  vis_depth: int = 2
  vis_width: int = 64
  vis_freqs: int = 10
  # Operands of the canonical field's matmuls: "float32", or "bfloat16" (float32 parameters
  # and accumulation, channels-first MLPs; 1.6-2x the float32 step on CPUs with bf16 dot
  # instructions, docs/results.md "Memory and speed").
  matmul_dtype: str = "float32"
  # Appearance code.
  appearance_dim: int = 32
  appearance_depth: int = 2
  appearance_width: int = 64
  appearance_freqs: int = 6
  appearance_time_scale: float = 0.1
  # Time MLPs of the bones and root pose.
  time_depth: int = 5
  time_width: int = 256
  time_freqs: int = 6
  bone_trans_scale: float = 0.1
  # Skinning.
  use_delta_skin: bool = True
  delta_depth: int = 2
  delta_width: int = 64
  delta_time_dim: int = 128
  delta_time_freqs: int = 6
  delta_scale: float = 0.1
  init_gauss_scale: float = 0.03
  # Densities and matching.
  init_beta: float = 0.1
  init_bone_beta: float = 0.01
  bone_density_radius: float = 0.01
  init_feature_temperature: float = 1.0
  sphere_radius: float = 0.1

  @classmethod
  def from_dict(cls, values: Mapping[str, Any], where: str = "model") -> "ModelConfig":
    """Builds a config from a mapping; unknown keys raise UserError."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in dict(values).items():
      if key not in known:
        raise UserError(f"{where}.{key}: unknown model config key")
      default = known[key].default
      if isinstance(default, tuple):
        value = tuple(value)
      kwargs[key] = value
    config = cls(**kwargs)
    if not config.video_lengths or min(config.video_lengths) < 1:
      raise UserError(f"{where}.video_lengths: needs at least one video of >= 1 frame")
    if config.num_bones < 1:
      raise UserError(f"{where}.num_bones: must be >= 1")
    if config.matmul_dtype not in MATMUL_DTYPES:
      raise UserError(f"{where}.matmul_dtype: {config.matmul_dtype!r} unknown; use one of "
                      f"{list(MATMUL_DTYPES)}")
    return config

  @property
  def num_frames(self) -> int:
    return int(sum(self.video_lengths))


def lab4d_config(video_lengths=(64,), image_size=(256, 256), **overrides) -> ModelConfig:
  """lab4d's foreground field sizes (8x256 trunk, 5x256 time MLPs, 25 bones)."""
  return ModelConfig(video_lengths=tuple(video_lengths), image_size=tuple(image_size),
                     **overrides)


def cpu_config(video_lengths=(64,), image_size=(256, 256), **overrides) -> ModelConfig:
  """A smaller model for 2-core CPUs: same structure, narrower and shallower.

  Trunk 6x128 (skip at 3), colour 1 layer, feature 3x64, time MLPs 3x128,
  25 bones; ~6x fewer FLOPs per sample than `lab4d_config`.
  """
  values = dict(sdf_depth=6, sdf_width=128, sdf_skips=(3,), sdf_freqs=8,
                color_depth=1, color_freqs=10, feature_depth=3, feature_width=64,
                feature_freqs=6, vis_depth=2, vis_width=32, vis_freqs=8,
                time_depth=3, time_width=128, delta_width=32, delta_time_dim=64)
  values.update(overrides)
  return ModelConfig(video_lengths=tuple(video_lengths), image_size=tuple(image_size),
                     **values)


def tiny_config(video_lengths=(4,), image_size=(16, 16), **overrides) -> ModelConfig:
  """A toy model for tests (widths 8-16, 3 bones)."""
  values = dict(num_bones=3, sdf_depth=2, sdf_width=16, sdf_skips=(1,), sdf_freqs=2,
                color_depth=1, color_freqs=2, feature_dim=4, feature_depth=1,
                feature_width=8, feature_freqs=1, vis_depth=1, vis_width=8,
                vis_freqs=1, appearance_dim=4, appearance_depth=1,
                appearance_width=8, appearance_freqs=1, time_depth=1,
                time_width=16, time_freqs=1, delta_depth=1, delta_width=8,
                delta_time_dim=8, delta_time_freqs=1)
  values.update(overrides)
  return ModelConfig(video_lengths=tuple(video_lengths), image_size=tuple(image_size),
                     **values)


def constant_params(config: ModelConfig) -> dict[tuple[str, ...], np.ndarray]:
  """Initial values of the non-random parameters, by path under "params".

  The one source of these values: the module initialisers and the fast host
  initialisation (`model.init.init_variables`) both read them.
  """
  num_videos = len(config.video_lengths)
  h, w = config.image_size
  return {
      ("log_gauss",): np.full((config.num_bones, 3), np.log(config.init_gauss_scale), np.float32),
      ("logibeta",): np.asarray(-np.log(config.init_beta), np.float32),
      ("bone_logibeta",): np.asarray(-np.log(config.init_bone_beta), np.float32),
      ("logsigma",): np.asarray(np.log(config.init_feature_temperature), np.float32),
      ("root_pose", "base_quat"): np.tile(np.array([0, 0, 0, 1], np.float32), (num_videos, 1)),
      ("intrinsics", "base_logfocal"): np.full((num_videos, 2), np.log(max(h, w)), np.float32),
      ("intrinsics", "base_ppoint"): np.tile(np.array([w / 2, h / 2], np.float32),
                                             (num_videos, 1)),
  }


def _constant(value: np.ndarray):
  return lambda key: jnp.asarray(value)


class ArticulatedModel(nn.Module):
  """All parameters of the animatable model; see the module docstring for the tree.

  Attributes:
    config: a ModelConfig.
  """
  config: ModelConfig

  def setup(self):
    c = self.config
    vl = tuple(c.video_lengths)
    self.canonical_field = fields.CanonicalField(c, name="canonical")
    if c.appearance_dim > 0:
      self.appearance_code = articulation.AppearanceCode(
          vl, c.appearance_dim, c.appearance_depth, c.appearance_width,
          c.appearance_freqs, c.appearance_time_scale, name="appearance")
    self.bone_articulation = articulation.BoneArticulation(
        vl, c.num_bones, c.time_depth, c.time_width, c.time_freqs,
        c.bone_trans_scale, name="bones")
    self.root_pose_mlp = articulation.RootPose(
        vl, c.time_depth, c.time_width, c.time_freqs, name="root_pose")
    self.camera_intrinsics = articulation.Intrinsics(vl, tuple(c.image_size),
                                                     name="intrinsics")
    if c.use_delta_skin:
      self.delta_time = encoding.TimeEmbedding(
          vl, c.delta_time_freqs, c.delta_time_dim, name="delta_time")
      self.delta_mlp = fields.SkinningDelta(c, name="delta_mlp")
    consts = constant_params(c)
    self.log_gauss = self.param("log_gauss", _constant(consts[("log_gauss",)]))
    self.logibeta = self.param("logibeta", _constant(consts[("logibeta",)]))
    self.bone_logibeta = self.param("bone_logibeta", _constant(consts[("bone_logibeta",)]))
    self.logsigma = self.param("logsigma", _constant(consts[("logsigma",)]))

  # -- initialisation ---------------------------------------------------------

  def __call__(self, x: jnp.ndarray, frame_idx: jnp.ndarray,
               alpha: Optional[jnp.ndarray] = None) -> dict[str, Any]:
    """Touches every submodule (used by `init`). x (N, 3), frame_idx ()."""
    out = dict(self.canonical(x, frame_idx, alpha))
    out["bones"] = self.bones(frame_idx)
    out["rest_bones"] = self.rest_bones()
    out["root_pose"] = self.root_pose(frame_idx)
    out["intrinsics"] = self.intrinsics(frame_idx)
    if self.config.use_delta_skin:
      local = jnp.zeros(x.shape[:-1] + (self.config.num_bones, 3), x.dtype)
      out["delta"] = self.skinning_delta(local, self.delta_time_code(frame_idx))
      out["delta_rest"] = self.delta_rest_code()
    out["scalars"] = (self.beta(), self.bone_beta(), self.feature_temperature(),
                      self.log_scale())
    return out

  # -- per-frame quantities ---------------------------------------------------

  def bones(self, frame_idx: jnp.ndarray) -> Bones:
    """Bone-to-object transforms at frames. (...,) -> quat (..., B, 4), trans (..., B, 3)."""
    return self.bone_articulation(frame_idx)

  def rest_bones(self) -> Bones:
    """Rest bones (articulation at the mean time embedding): quat (B, 4), trans (B, 3)."""
    return self.bone_articulation.rest()

  def root_pose_qt(self, frame_idx: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Object-to-camera rotation quaternion (..., 4) and translation (..., 3)."""
    return self.root_pose_mlp(frame_idx)

  def root_pose(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """Object-to-camera 4x4 transforms (a `w2c` with world = object). (...,) -> (..., 4, 4)."""
    quat, trans = self.root_pose_mlp(frame_idx)
    return se3.quat_t_to_matrix(quat, trans)

  def intrinsics(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """(fx, fy, cx, cy) in pixels. (...,) -> (..., 4)."""
    return self.camera_intrinsics(frame_idx)

  def appearance(self, frame_idx: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Appearance code (..., A); the rest-time code (A,) when frame_idx is None."""
    if self.config.appearance_dim == 0:
      shape = () if frame_idx is None else jnp.shape(frame_idx)
      return jnp.zeros(shape + (0,), jnp.float32)
    if frame_idx is None:
      return self.appearance_code.mean()
    return self.appearance_code(frame_idx)

  def delta_time_code(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """Time code of the delta-skinning MLP (backward warp). (...,) -> (..., T)."""
    return self.delta_time(frame_idx)

  def delta_rest_code(self) -> jnp.ndarray:
    """Mean time code of the delta-skinning MLP (forward warp, lab4d), (T,)."""
    return self.delta_time.mean()

  def skinning_delta(self, local_coords: jnp.ndarray, time_code: jnp.ndarray) -> jnp.ndarray:
    """Delta skinning (..., B) >= 0 from scaled bone-local coords (..., B, 3)."""
    return self.delta_mlp(local_coords, time_code)

  def skinning_delta_affine(self, x: jnp.ndarray, linear: jnp.ndarray, offset: jnp.ndarray,
                            time_code: jnp.ndarray) -> jnp.ndarray:
    """`skinning_delta` of x @ linear + offset (one frame's bone map), cheaper.

    x (..., 3), linear (3, 3B), offset (3B,), time_code (T,) -> (..., B).
    See `fields.SkinningDelta.affine` and `render.warp_render.bone_affine_map`.
    """
    return self.delta_mlp.affine(x, linear, offset, time_code)

  # -- canonical fields -------------------------------------------------------

  def canonical(self, x: jnp.ndarray, frame_idx: Optional[jnp.ndarray] = None,
                alpha: Optional[jnp.ndarray] = None,
                appearance: Optional[jnp.ndarray] = None) -> dict[str, jnp.ndarray]:
    """Canonical fields at points.

    Args:
      x: (..., 3) canonical points.
      frame_idx: () or broadcastable (...,) frame indices for the appearance
        code; None uses the rest-time code.
      alpha: coarse-to-fine fraction (SDF and colour encodings) or None.
      appearance: precomputed (..., A) appearance codes (overrides frame_idx).

    Returns:
      dict "sdf" (...,), "rgb" (..., 3), "feature" (..., F) unit norm,
      "vis" (...,) logits (when enabled).
    """
    if appearance is None and self.config.appearance_dim > 0:
      appearance = self.appearance(frame_idx)
      if appearance.ndim == 1:  # one code for every point
        appearance = appearance.reshape((1,) * (x.ndim - 1) + appearance.shape)
    return self.canonical_field(x, appearance, alpha)

  def sdf(self, x: jnp.ndarray, alpha: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """SDF only (cheaper than `canonical`). (..., 3) -> (...,)."""
    return self.canonical_field.sdf(x, alpha)

  def feature(self, x: jnp.ndarray) -> jnp.ndarray:
    """Feature field only. (..., 3) -> (..., F)."""
    return self.canonical_field.feature(x)

  def visibility(self, x: jnp.ndarray) -> jnp.ndarray:
    """Visibility logits only. (..., 3) -> (...,)."""
    return self.canonical_field.visibility(x)

  # -- scalars ----------------------------------------------------------------

  def log_scale(self) -> jnp.ndarray:
    """Gaussian bone log-scales (B, 3)."""
    return self.log_gauss

  def beta(self) -> jnp.ndarray:
    """VolSDF/NeuS beta of the SDF density, exp(-logibeta). ()."""
    return jnp.exp(-self.logibeta)

  def bone_beta(self) -> jnp.ndarray:
    """Beta of the Gaussian-bone density rendering. ()."""
    return jnp.exp(-self.bone_logibeta)

  def feature_temperature(self) -> jnp.ndarray:
    """Feature-matching softmax temperature exp(logsigma). ()."""
    return jnp.exp(self.logsigma)


# ----------------------------------------------------------------------------
# Parameter groups.


def _path_names(path) -> tuple[str, ...]:
  names = []
  for entry in path:
    key = getattr(entry, "key", None)
    names.append(str(key if key is not None else entry))
  return tuple(names)


def _strip_params(names: tuple[str, ...]) -> tuple[str, ...]:
  return names[1:] if names and names[0] == "params" else names


def param_labels(params: Any) -> Any:
  """optax `multi_transform` labels: "explicit" (10x lr in lab4d) or "network".

  Works on the `model.init` output or its "params" entry.
  """
  def label(path, _):
    names = _strip_params(_path_names(path))
    return "explicit" if names and names[-1] in EXPLICIT_PARAM_NAMES else "network"
  return jax.tree_util.tree_map_with_path(label, params)


def group_mask(params: Any, groups) -> Any:
  """Boolean pytree: True for leaves under any of `groups` ("a/b" prefixes)."""
  prefixes = [tuple(g.split("/")) for g in groups]

  def keep(path, _):
    names = _strip_params(_path_names(path))
    return any(names[:len(p)] == p for p in prefixes)
  return jax.tree_util.tree_map_with_path(keep, params)


def cap_beta(params: Any, max_beta: jnp.ndarray) -> Any:
  """The variables with the SDF density's beta = exp(-logibeta) at most `max_beta`."""
  inner = dict(params["params"])
  inner["logibeta"] = jnp.maximum(inner["logibeta"], -jnp.log(max_beta))
  return {**params, "params": inner}


def count_params(params: Any) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(np.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
