"""Pure loss functions with lab4d's reductions (lab4d_internals.md A.6).

Every dense term is masked first and then reduced as lab4d's `v[v > 0].mean()`,
written at a fixed shape as sum / (number of positive entries); see
`mean_over_positive`. Flow and feature re-projection distances are in pixels
and divided by the training resolution. Each function returns the *unweighted*
scalar loss; the step multiplies by the scheduled weights it is given.

Shapes: N = frames (or rays) in the batch, K = pixels per frame, S = samples
per ray, C = feature channels, M = canonical match candidates.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from animdreamer_jax.geometry import vector

_EPS = 1e-6


def mean_over_positive(values: jnp.ndarray) -> jnp.ndarray:
  """lab4d's `v[v > 0].mean()` at a fixed shape (0 when nothing is positive).

  Args:
    values: (...) non-negative loss entries, already masked (masked entries 0).

  Returns:
    () sum(values) / max(#(values > 0), 1).
  """
  count = jnp.sum(values > 0)
  return jnp.sum(values) / jnp.maximum(count, 1).astype(values.dtype)


def mask_balance_weight(mask: jnp.ndarray, valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Weights that give foreground and background pixels half the loss each.

  lab4d's `get_mask_balance_wt`: with P positives and Q negatives among the
  V valid pixels, positives weigh 0.5 V / P and negatives 0.5 V / Q; if either
  set is empty every pixel weighs 1.

  Args:
    mask: (...) 1 = foreground, 0 = background.
    valid: (...) 1 where the pixel counts (in frame, object detected); None = all.

  Returns:
    (...) float weights.
  """
  mask = mask.astype(jnp.float32)
  valid = jnp.ones_like(mask) if valid is None else valid.astype(jnp.float32)
  num_valid = jnp.sum(valid)
  num_pos = jnp.sum(mask * valid)
  num_neg = jnp.sum((1.0 - mask) * valid)
  both = (jnp.sum(mask) > 0) & (jnp.sum(1.0 - mask) > 0)
  pos_w = num_valid / jnp.maximum(num_pos, _EPS)
  neg_w = num_valid / jnp.maximum(num_neg, _EPS)
  balanced = 0.5 * pos_w * mask + 0.5 * neg_w * (1.0 - mask)
  return jnp.where(both, balanced, jnp.ones_like(mask))


def silhouette_loss(opacity: jnp.ndarray, mask: jnp.ndarray,
                    valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Balanced squared error between rendered opacity and the segmentation.

  Args:
    opacity: (N, K) rendered accumulated weights.
    mask: (N, K) ground-truth foreground (0/1).
    valid: (N, K) pixels that count; None = all.

  Returns:
    () loss.
  """
  mask = mask.astype(jnp.float32)
  valid_f = jnp.ones_like(mask) if valid is None else valid.astype(jnp.float32)
  err = jnp.square(opacity - mask) * mask_balance_weight(mask, valid_f) * valid_f
  return mean_over_positive(err)


def rgb_loss(rgb: jnp.ndarray, target: jnp.ndarray, fg_mask: jnp.ndarray) -> jnp.ndarray:
  """Per-channel squared colour error on foreground pixels.

  Args:
    rgb: (N, K, 3) rendered colour.
    target: (N, K, 3) pixel colour in [0, 1].
    fg_mask: (N, K) foreground (0/1).
  """
  err = jnp.square(rgb - target) * fg_mask[..., None].astype(rgb.dtype)
  return mean_over_positive(err)


def depth_loss(depth: jnp.ndarray, target: jnp.ndarray, fg_mask: jnp.ndarray) -> jnp.ndarray:
  """Absolute depth error on foreground pixels.

  Args:
    depth: (N, K) rendered depth; target: (N, K); fg_mask: (N, K).
  """
  return mean_over_positive(jnp.abs(depth - target) * fg_mask.astype(depth.dtype))


def flow_loss(flow: jnp.ndarray, target: jnp.ndarray, valid: jnp.ndarray, fg_mask: jnp.ndarray,
              train_res: float) -> jnp.ndarray:
  """L2 flow error in pixels / train_res, where the flow is valid and foreground.

  Args:
    flow: (N, K, 2) rendered 2-D flow to the partner frame, pixels.
    target: (N, K, 2) the video's flow to the same partner frame, pixels.
    valid: (N, K) flow confidence; used only as a binary gate (> 0), as lab4d.
    fg_mask: (N, K) foreground.
    train_res: pixels that one unit of loss corresponds to (lab4d: 256).
  """
  gate = (valid > 0).astype(flow.dtype) * fg_mask.astype(flow.dtype)
  return mean_over_positive(vector.safe_norm(flow - target) * gate / train_res)


def feature_loss(feature: jnp.ndarray, target: jnp.ndarray, fg_mask: jnp.ndarray) -> jnp.ndarray:
  """L2 distance between rendered and pixel features on the foreground.

  Args:
    feature: (N, K, C); target: (N, K, C); fg_mask: (N, K).
  """
  return mean_over_positive(vector.safe_norm(feature - target) * fg_mask.astype(feature.dtype))


def soft_argmax_match(query: jnp.ndarray, candidate_feature: jnp.ndarray,
                      candidate_xyz: jnp.ndarray, log_temperature: jnp.ndarray,
                      candidate_valid: jnp.ndarray | None = None) -> jnp.ndarray:
  """Canonical point matched to each pixel feature by a soft argmax.

  lab4d `FeatureNeRF.global_match`: softmax over candidates of
  (query . candidate) x exp(log_temperature); the match is the
  probability-weighted mean of the candidate points.

  Args:
    query: (..., C) pixel features.
    candidate_feature: (M, C) canonical features of the candidates.
    candidate_xyz: (M, 3) canonical candidate points.
    log_temperature: () lab4d's learnable `logsigma` (initial 0).
    candidate_valid: (M,) bool; invalid candidates get zero probability.

  Returns:
    (..., 3) matched canonical points.
  """
  score = jnp.einsum("...c,mc->...m", query, candidate_feature) * jnp.exp(log_temperature)
  if candidate_valid is not None:
    score = jnp.where(candidate_valid, score, -jnp.inf)
  prob = jax.nn.softmax(score, axis=-1)
  return jnp.einsum("...m,md->...d", prob, candidate_xyz)


def reprojection_loss(projected_uv: jnp.ndarray, pixel_uv: jnp.ndarray, fg_mask: jnp.ndarray,
                      train_res: float) -> jnp.ndarray:
  """Pixel distance between re-projected matches and their source pixels / train_res.

  Args:
    projected_uv: (N, K, 2) matched canonical points forward-warped and projected.
    pixel_uv: (N, K, 2) the pixels the features came from.
    fg_mask: (N, K).
  """
  dist = vector.safe_norm(projected_uv - pixel_uv) * fg_mask.astype(projected_uv.dtype)
  return mean_over_positive(dist / train_res)


def normalized_weights(weights: jnp.ndarray) -> jnp.ndarray:
  """Detached rendering weights normalised to sum to 1 along each ray.

  Args:
    weights: (..., S).
  """
  w = jax.lax.stop_gradient(weights)
  return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), _EPS)


def cycle_loss(cycle_distance: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """Cycle distance rendered with detached, normalised weights (lab4d reg_deform_cyc).

  Args:
    cycle_distance: (..., S) |forward(backward(x)) - x| per sample (L2, not squared).
    weights: (..., S) rendering weights.
  """
  per_ray = jnp.sum(normalized_weights(weights) * cycle_distance, axis=-1)
  return mean_over_positive(per_ray)


def eikonal_loss(eikonal: jnp.ndarray, ray_mask: jnp.ndarray | None = None) -> jnp.ndarray:
  """Eikonal term averaged over samples per ray, then over rays.

  Args:
    eikonal: (R, S) per-sample (|grad s| - 1)^2 (`render.warp_render.eikonal_term`),
      or (R,) already per ray.
    ray_mask: (R,) rays that take part (lab4d uses a random 1/16 subset).
  """
  per_ray = jnp.mean(eikonal, axis=-1) if eikonal.ndim > 1 else eikonal
  if ray_mask is not None:
    per_ray = per_ray * ray_mask.astype(per_ray.dtype)
  return mean_over_positive(per_ray)


def skin_entropy_loss(skin_entropy: jnp.ndarray) -> jnp.ndarray:
  """Mean of the per-sample skinning cross-entropy to the argmax bone."""
  return jnp.mean(skin_entropy)


def delta_skin_loss(delta_skin: jnp.ndarray) -> jnp.ndarray:
  """Mean squared delta-skinning per sample (delta_skin already squared)."""
  return jnp.mean(delta_skin)


def skin_entropy(logits: jnp.ndarray) -> jnp.ndarray:
  """Cross-entropy between softmax(logits) and a one-hot of their argmax.

  Args:
    logits: (..., B) skinning logits.

  Returns:
    (...) -log softmax(logits)[argmax].
  """
  log_prob = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.max(log_prob, axis=-1)


def balanced_bce(prob: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """Binary cross-entropy with positives (target > 0.5) and negatives balanced.

  Args:
    prob: (P,) predicted probability in [0, 1].
    target: (P,) soft target in [0, 1] (gradient stopped here).
  """
  target = jax.lax.stop_gradient(target)
  p = jnp.clip(prob, _EPS, 1.0 - _EPS)
  bce = -(target * jnp.log(p) + (1.0 - target) * jnp.log(1.0 - p))
  weight = mask_balance_weight((target > 0.5).astype(jnp.float32))
  return jnp.mean(bce * weight)


def gauss_skin_consistency_loss(bone_density: jnp.ndarray, occupancy: jnp.ndarray) -> jnp.ndarray:
  """lab4d reg_gauss_skin: bone-Gaussian density vs the detached field occupancy.

  Args:
    bone_density: (P,) max over bones of the isotropic bone Gaussians, in (0, 1].
    occupancy: (P,) VolSDF density x beta of the SDF field, in (0, 1); detached.
  """
  return balanced_bce(bone_density, occupancy)


def gauss_mask_loss(gauss_mask: jnp.ndarray, opacity: jnp.ndarray) -> jnp.ndarray:
  """lab4d reg_gauss_mask: rendered bone-density mask vs the detached rendered mask.

  Args:
    gauss_mask: (N, K); opacity: (N, K).
  """
  return mean_over_positive(jnp.square(gauss_mask - jax.lax.stop_gradient(opacity)))


def camera_prior_loss(object_to_camera: jnp.ndarray, prior: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error between predicted and prior 4x4 object-to-camera matrices.

  Args:
    object_to_camera: (T, 4, 4) root poses from the model.
    prior: (T, 4, 4) the video's cameras (the object frame is the world frame).
  """
  return jnp.mean(jnp.square(object_to_camera - prior))
