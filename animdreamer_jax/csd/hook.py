"""Mixing CSD into the extraction trainer: every k-th iteration is a CSD step (lab4d `gen3d_freq`).

The extraction loop (train/loop.py) calls `trainer.step_fn(state, data, scalars)`
once per iteration. `mixed_step_fn` returns a callable with that signature that
runs the CSD train step on iterations i with i % every_k == 0 and the
reconstruction step otherwise. Both are jitted once (two programs, never
re-traced); the host only adds the CSD scalars (t range, weight) on CSD steps.

Wiring (one call after the Trainer has built its step):

    from animdreamer_jax.csd import hook as csd_hook
    csd_hook.install(trainer)   # no-op unless config.csd.prior != "none"
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax.numpy as jnp
import ml_collections

from animdreamer_jax.csd import csd_step
from animdreamer_jax.csd import prior_interface
from animdreamer_jax.errors import UserError


def csd_enabled(config: ml_collections.ConfigDict) -> bool:
  """True if the config has a csd section with a prior other than "none"."""
  return "csd" in config and csd_step.prior_name(config.csd) != "none"


def oracle_render_options(csd: ml_collections.ConfigDict) -> dict:
  """The GroundTruthRenderer options of a csd config section."""
  return dict(background=float(csd.background), supersample=int(csd.oracle_supersample),
              lighting=str(csd.oracle_lighting), blur_px=float(csd.oracle_blur_px),
              alignment_space=str(csd.oracle_align_space))


def build_prior(config: ml_collections.ConfigDict, video
                ) -> tuple[prior_interface.DiffusionPrior, Any, Optional[tuple]]:
  """(prior, prior_params, text states) for config.csd.prior.

  Raises:
    UserError: unknown prior, oracle without ground truth, mvdream without
      weights or prompt.
  """
  csd = config.csd
  name = csd_step.prior_name(csd)
  if name == "oracle":
    prior = prior_interface.oracle_prior_from_video(
        video, int(csd.resolution), downsample=int(csd.oracle_downsample),
        **oracle_render_options(csd))
    return prior, None, None
  if name == "mvdream":
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(str(csd.dtype))
    if dtype is None:
      raise UserError(f"config.csd.dtype: {csd.dtype!r} unknown; use float32 or bfloat16")
    prior, params, text = prior_interface.load_mvdream(
        str(csd.weights), str(csd.prompt), str(csd.negative_prompt),
        image_size=int(csd.encode_resolution), dtype=dtype,
        fused_attention=bool(csd.fused_attention))
    return prior, params, text
  raise UserError(f"config.csd.prior: {name!r} unknown; use one of none, oracle, mvdream")


class MixedStep:
  """step_fn(state, data, scalars): CSD on every k-th iteration, reconstruction otherwise."""

  def __init__(self, config: ml_collections.ConfigDict, recon_step: Callable,
               csd_train_step: Callable, total_steps: int,
               realign: Optional[Callable[[Any], None]] = None, realign_every: int = 0):
    self.config = config
    self.recon_step = recon_step
    self.csd_train_step = csd_train_step
    self.total_steps = int(total_steps)
    self.realign = realign
    self.realign_every = int(realign_every)
    self._aligned_at = None

  def __call__(self, state, data, scalars):
    step = int(state.step)  # read before the call donates the state
    if csd_step.is_csd_step(self.config.csd, step, self.total_steps):
      if self.realign is not None and (
          self._aligned_at is None or step - self._aligned_at >= self.realign_every):
        self.realign(state)  # host side, before the state is donated
        self._aligned_at = step
      extra = csd_step.csd_scalars(self.config.csd, step, self.total_steps)
      return self.csd_train_step(state, data, {**scalars, **extra})
    return self.recon_step(state, data, scalars)


def mixed_step_fn(config: ml_collections.ConfigDict, trainer, recon_step: Callable,
                  prior: Optional[prior_interface.DiffusionPrior] = None, prior_params: Any = None,
                  text: Optional[tuple] = None) -> Callable:
  """The alternating step for a `train.loop.Trainer` (prior built from the config if None)."""
  if prior is None:
    prior, prior_params, text = build_prior(config, trainer.video)
  template = trainer.initial_state(fit=False).params
  csd_fn = csd_step.make_csd_train_step(config, trainer.model, template, prior,
                                        trainer.video.num_frames, prior_params=prior_params,
                                        text=text)
  realign = None
  renderer = getattr(prior, "renderer", None)
  if (renderer is not None and int(config.csd.oracle_align_frames) > 0
      and str(config.csd.oracle_align_space) != "camera"):
    raise UserError("config.csd.oracle_align_frames: per-frame refinement needs "
                    "csd.oracle_align_space=camera (an object-frame registration has no "
                    "per-frame root-pose error to refine); use 0")
  if renderer is not None and bool(config.csd.oracle_align):
    from animdreamer_jax.csd import oracle_alignment  # pylint: disable=g-import-not-at-top

    def realign(state):
      matrix, info = oracle_alignment.fit_camera_alignment(
          trainer, state, per_frame_anchors=int(config.csd.oracle_align_frames),
          space=str(config.csd.oracle_align_space))
      if matrix is not None:
        renderer.set_alignment(matrix)
      # For pictures and logs: the registration in use and how it was found.
      trainer.csd_alignment = {**info, "matrix": renderer.alignment.tolist()}
  return MixedStep(config, recon_step, csd_fn, trainer.steps_total, realign=realign,
                   realign_every=int(config.train.iters_per_round))


def install(trainer, **prior_kwargs) -> bool:
  """Replaces `trainer.step_fn` by the mixed step when CSD is enabled; returns whether it did."""
  if not csd_enabled(trainer.config):
    return False
  trainer.step_fn = mixed_step_fn(trainer.config, trainer, trainer.step_fn, **prior_kwargs)
  return True
