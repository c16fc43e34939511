"""Per-frame quantities as functions of time (Flax): bones, root pose, intrinsics, appearance.

Follows lab4d `nnutils/time.py`, `pose.py`, `intrinsics.py`, `appearance.py`:
- `TimeMLP`: a `TimeEmbedding` (its own parameters) followed by `depth` ReLU
  layers and a W -> W ReLU output layer; its frequency count is scaled with
  the longest video (`encoding.num_time_freqs`).
- `BoneArticulation` (bag of bones): two heads W -> W/2 -> 3B on the TimeMLP
  features; translation x 0.1, rotation as axis-angle. With the PyTorch
  initialisation the bones start within ~0.01 of the origin with
  near-identity rotations (lab4d's "small initial offsets"; there is no
  explicit bone initialisation in lab4d's bag-of-bones model).
- `RootPose`: object-to-camera; heads W -> W/2 -> 3 (translation) and
  W -> W/2 -> 4 (normalised quaternion), composed as R = R_head R_base with a
  learnable per-video base quaternion (lab4d `quaternion_mul(quat, base_quat)`).
- `Intrinsics`: per-video (fx, fy, cx, cy) from `base_logfocal`, `base_ppoint`;
  square pixels are enforced by averaging fx and fy (as lab4d).
- `AppearanceCode`: TimeMLP(2 x 64, time_scale 0.1) -> Linear(A).

Deliberate differences:
- The root-pose quaternion head adds the identity (0, 0, 0, 1) before
  normalising, so an un-fitted model starts at R = R_base instead of at a
  random rotation (lab4d always fits the camera MLP to priors first; so can
  we: `model.init.fit_root_pose`).
- Intrinsics have no time MLP: lab4d's has zero time frequencies (nearly
  constant) and is fitted to constant values, so per-video constants remain.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.geometry import quaternion as quat_lib
from animdreamer_jax.model import encoding
from animdreamer_jax.model import mlp as mlp_lib
from animdreamer_jax.model.skinning import Bones


class TimeMLP(nn.Module):
  """Time embedding + MLP: frame index -> (..., width) features.

  Attributes:
    video_lengths: raw frame counts (static).
    depth: hidden layers (lab4d 5; the W -> W output layer comes on top).
    width: W (also the time-embedding width).
    num_freqs: base Fourier frequency count, scaled by video length.
    time_scale: sensitivity to time.
  """
  video_lengths: tuple[int, ...]
  depth: int = 5
  width: int = 256
  num_freqs: int = 6
  time_scale: float = 1.0

  def setup(self):
    freqs = encoding.num_time_freqs(self.video_lengths, self.num_freqs)
    self.time_embedding = encoding.TimeEmbedding(
        self.video_lengths, freqs, self.width, self.time_scale)
    self.mlp = mlp_lib.MLP(self.depth, self.width, self.width, (),
                           final_activation=True)

  def __call__(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """(...,) int frame indices -> (..., W)."""
    return self.mlp(self.time_embedding(frame_idx))

  def mean(self) -> jnp.ndarray:
    """Features at the mean time embedding (the rest / canonical time). (W,)."""
    return self.mlp(self.time_embedding.mean())


class Head(nn.Module):
  """lab4d output head: Linear(W -> W/2), ReLU, Linear(W/2 -> out)."""
  width: int
  out: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(..., W) -> (..., out)."""
    h = nn.relu(mlp_lib.TorchDense(self.width // 2, name="hidden")(x))
    return mlp_lib.TorchDense(self.out, name="output")(h)


class BoneArticulation(nn.Module):
  """Bag of bones: frame -> B bone-to-object transforms.

  Attributes:
    video_lengths: raw frame counts.
    num_bones: B (lab4d 25).
    depth, width, num_freqs: TimeMLP size (lab4d 5 x 256, 6 base freqs).
    trans_scale: fixed factor on the translation head (lab4d 0.1).
  """
  video_lengths: tuple[int, ...]
  num_bones: int = 25
  depth: int = 5
  width: int = 256
  num_freqs: int = 6
  trans_scale: float = 0.1

  def setup(self):
    self.time_mlp = TimeMLP(self.video_lengths, self.depth, self.width,
                            self.num_freqs)
    self.trans_head = Head(self.width, 3 * self.num_bones)
    self.so3_head = Head(self.width, 3 * self.num_bones)

  def _bones(self, feat: jnp.ndarray) -> Bones:
    lead = feat.shape[:-1]
    trans = self.trans_head(feat).reshape(lead + (self.num_bones, 3)) * self.trans_scale
    so3 = self.so3_head(feat).reshape(lead + (self.num_bones, 3))
    return Bones(quat=quat_lib.axis_angle_to_quat(so3), trans=trans)

  def __call__(self, frame_idx: jnp.ndarray) -> Bones:
    """(...,) frame indices -> Bones with quat (..., B, 4), trans (..., B, 3)."""
    return self._bones(self.time_mlp(frame_idx))

  def rest(self) -> Bones:
    """Rest bones: the network at the mean time embedding. quat (B, 4), trans (B, 3)."""
    return self._bones(self.time_mlp.mean())


class RootPose(nn.Module):
  """Frame -> object-to-camera rotation (quaternion) and translation.

  Parameters `base_quat` (V, 4) (x, y, z, w) per video, initialised to the
  identity; set it from prior cameras with `model.init.fit_root_pose`.

  Attributes:
    video_lengths: raw frame counts.
    depth, width, num_freqs: TimeMLP size (lab4d 5 x 256, 6 base freqs).
  """
  video_lengths: tuple[int, ...]
  depth: int = 5
  width: int = 256
  num_freqs: int = 6

  def setup(self):
    self.time_mlp = TimeMLP(self.video_lengths, self.depth, self.width,
                            self.num_freqs)
    self.trans_head = Head(self.width, 3)
    self.quat_head = Head(self.width, 4)
    num_videos = len(self.video_lengths)
    self.base_quat = self.param(
        "base_quat", lambda key: jnp.tile(jnp.array([0.0, 0.0, 0.0, 1.0]), (num_videos, 1)))

  def __call__(self, frame_idx: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(...,) frame indices -> quat (..., 4), trans (..., 3) (object -> camera)."""
    feat = self.time_mlp(frame_idx)
    identity = jnp.array([0.0, 0.0, 0.0, 1.0], feat.dtype)
    quat = quat_lib.quat_normalize(self.quat_head(feat) + identity)
    base = quat_lib.quat_normalize(
        self.base_quat[encoding.video_index(frame_idx, self.video_lengths)])
    return quat_lib.quat_multiply(quat, base), self.trans_head(feat)


class Intrinsics(nn.Module):
  """Per-video pinhole intrinsics (fx, fy, cx, cy) in pixels.

  Parameters `base_logfocal` (V, 2) and `base_ppoint` (V, 2), initialised to
  lab4d's preprocessing defaults: focal = max(H, W), principal point = centre.

  Attributes:
    video_lengths: raw frame counts.
    image_size: (H, W) of the (cropped) training images.
  """
  video_lengths: tuple[int, ...]
  image_size: tuple[int, int] = (256, 256)

  def setup(self):
    num_videos = len(self.video_lengths)
    h, w = self.image_size
    self.base_logfocal = self.param(
        "base_logfocal", lambda key: jnp.full((num_videos, 2), np.log(max(h, w)), jnp.float32))
    self.base_ppoint = self.param(
        "base_ppoint",
        lambda key: jnp.tile(jnp.array([w / 2.0, h / 2.0], jnp.float32), (num_videos, 1)))

  def __call__(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """(...,) frame indices -> (..., 4) (fx, fy, cx, cy)."""
    vid = encoding.video_index(frame_idx, self.video_lengths)
    focal = jnp.exp(self.base_logfocal[vid])
    focal = jnp.broadcast_to(jnp.mean(focal, axis=-1, keepdims=True), focal.shape)
    return jnp.concatenate([focal, self.base_ppoint[vid]], axis=-1)


class AppearanceCode(nn.Module):
  """Per-frame appearance code (lighting, shadows): TimeMLP -> Linear(A).

  Attributes:
    video_lengths: raw frame counts.
    features: A (lab4d 32).
    depth, width, num_freqs, time_scale: lab4d 2 x 64, 6 base freqs, 0.1.
  """
  video_lengths: tuple[int, ...]
  features: int = 32
  depth: int = 2
  width: int = 64
  num_freqs: int = 6
  time_scale: float = 0.1

  def setup(self):
    self.time_mlp = TimeMLP(self.video_lengths, self.depth, self.width,
                            self.num_freqs, self.time_scale)
    self.output = mlp_lib.TorchDense(self.features)

  def __call__(self, frame_idx: jnp.ndarray) -> jnp.ndarray:
    """(...,) frame indices -> (..., A)."""
    return self.output(self.time_mlp(frame_idx))

  def mean(self) -> jnp.ndarray:
    """Code at the mean time embedding, (A,) (used when no frame is given)."""
    return self.output(self.time_mlp.mean())
