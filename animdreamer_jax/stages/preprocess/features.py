"""Per-pixel DINOv2 features of the cropped frames, projected to the format's channels (lab4d's recipe).

Each frame is resized to `grid` x 14 px (lab4d: 224 -> a 16 x 16 patch grid), run through DINOv2
(`prior.dinov2`), its patch tokens bilinearly resized to the frame and projected by a PCA fitted on
foreground pixels of the whole clip (at most 1000 from each of at most 100 frames, seeded), then
L2-normalised and zeroed on the background (the format's unit-norm rule).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from animdreamer_jax.prior import dinov2

PCA_FRAMES = 100
PCA_PIXELS_PER_FRAME = 1000


def patch_tokens(params, config: dinov2.Dinov2Config, rgb: np.ndarray, grid: int = 16,
                 batch: int = 8, progress=None) -> np.ndarray:
  """(T, H, W, 3) uint8 -> (T, H, W, D) float32 patch features resized to the frames."""
  t, h, w = rgb.shape[:3]
  side = grid * config.patch_size

  @jax.jit
  def run(images):
    small = jax.image.resize(images.astype(jnp.float32) / 255.0, (images.shape[0], side, side, 3),
                             "linear", antialias=True)
    tokens = dinov2.Dinov2(config).apply({"params": params}, dinov2.normalise_images(small))
    patches = tokens[:, 1:].reshape(images.shape[0], grid, grid, -1)
    return jax.image.resize(patches, (images.shape[0], h, w, patches.shape[-1]), "linear")

  out = []
  for start in range(0, t, batch):
    chunk = rgb[start:start + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), 0)])
    out.append(np.asarray(run(jnp.asarray(padded)))[:len(chunk)])
    if progress is not None:
      progress(len(chunk))
  return np.concatenate(out)


def fit_pca(features: np.ndarray, masks: np.ndarray, channels: int, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
  """(mean (D,), basis (D, channels)) of foreground pixel features (module docstring)."""
  rng = np.random.default_rng(seed)
  frames = rng.permutation(len(features))[:PCA_FRAMES]
  samples = []
  for f in frames:
    fg = np.flatnonzero(masks[f].reshape(-1))
    if fg.size:
      pick = rng.choice(fg, min(PCA_PIXELS_PER_FRAME, fg.size), replace=False)
      samples.append(features[f].reshape(-1, features.shape[-1])[pick])
  data = np.concatenate(samples).astype(np.float64)
  mean = data.mean(axis=0)
  _, _, vt = np.linalg.svd(data - mean, full_matrices=False)
  return mean.astype(np.float32), vt[:channels].T.astype(np.float32)


def project(features: np.ndarray, masks: np.ndarray, mean: np.ndarray, basis: np.ndarray
            ) -> np.ndarray:
  """(T, H, W, D) -> (T, H, W, C) float16: PCA-projected, unit-norm on the foreground, 0 elsewhere."""
  reduced = (features - mean) @ basis
  norm = np.linalg.norm(reduced, axis=-1, keepdims=True)
  unit = reduced / np.maximum(norm, 1e-6)
  # A foreground pixel whose projection vanishes gets a fixed unit vector (the format wants norm 1).
  unit[(norm[..., 0] < 1e-6)] = np.eye(basis.shape[1], dtype=np.float32)[0]
  return (unit * (masks[..., None] > 0)).astype(np.float16)
