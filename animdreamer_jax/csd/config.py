"""The `csd` section of the extraction configs (ml_collections).

Add it to a config with `config.csd = csd_config()` (before the config is
locked); every field can then be overridden from the command line, e.g.
`--config.csd.prior=oracle --config.csd.weight=0.05 --config.csd.resolution=32`.

Defaults follow AnimatableDreamer's public code (zz7379/Sync4D, on top of
MVDream-threestudio) unless noted:

| field | default | meaning |
| --- | --- | --- |
| prior | "none" | "none" (CSD off), "oracle" (ground-truth renders, synthetic videos), "mvdream" |
| weight | 1.0 | multiplies the CSD gradient (lab4d `gen3d_wt`; the paper's value is unknown) |
| every_k | 2 | iteration i is a CSD step when i % every_k == 0 (lab4d `gen3d_freq`) |
| start_fraction | 0.0 | no CSD step before this fraction of training (a reconstruction warm-up) |
| resolution | 64 | render size of the 4 views (lab4d default 64; the paper 200) |
| num_samples | 0 | samples per ray in CSD renders (0: config.render.num_samples) |
| encode_resolution | 256 | renders are resized to this before the VAE (MVDream); oracle: unused |
| guidance_scale | 50.0 | classifier-free guidance scale |
| rescale | 0.5 | CFG std rescale of the x0 prediction (0 = off; only with mode "recon") |
| mode | "recon" | "recon": MVDream's x0-reconstruction loss; "sds": w(T) (eps_hat - eps) |
| weighting | "sds" | w(T) of mode "sds": "sds" = 1 - abar_T, "uniform" = 1 |
| reduction | "sum" | "sum": threestudio's 0.5 sum(.)^2 / views; "mean": / the latent size |
| t_start | 0.98 | max and min step fractions both start here (`gen3d_sds_t_max`) |
| t_min_end, t_max_end | 0.02, 0.5 | where they are annealed to, linearly |
| anneal_steps | 8000 | over this many training steps |
| anneal_fraction | 0.0 | > 0: anneal over this fraction of training (lab4d `new_ts`: 0.8) |
| elevation_range | (-10, 40) | degrees, shared by the 4 views |
| fov_range | (40, 70) | degrees, shared |
| distance_range | (0.42, 0.7) | view half-width at the object centre over the object size |
| object_size | 0.0 | > 0: fixed object size for the framing (e.g. 1.0 = the normalised sequences' |
| | | rest bbox diagonal); 0: the canonical box's largest side (lab4d, follows the model) |
| look_at | "aabb" | aim at the canonical box centre, or "origin" of the object frame |
| param_groups | "canonical" | "canonical" (SDF, colour, visibility), "fg" (+ warp, skinning, |
| | | bones, appearance), or comma-separated parameter-path prefixes |
| pixels_per_view | 0 | > 0: render only this many random pixels of each view (pixel-separable |
| | | priors: the oracle with oracle_downsample=1); an unbiased estimate of the |
| | | full views' gradient, so CPU runs can afford the video's resolution |
| patches | 0 | > 1: patch-wise back-propagation in this many pixel chunks per view |
| remat | False | jax.checkpoint the renderer per view |
| alpha | -1.0 | coarse-to-fine fraction on CSD steps: < 0 follows the reconstruction's (CSD |
| | | then never edits bands the video steps cannot see); 1.0: all bands (lab4d `top_alpha`) |
| fixed_frame | -1 | >= 0: always use this video frame (lab4d `gen3d_frameid`) |
| encoder_sample | True | VAE posterior sample (MVDream) rather than its mean |
| background | 1.0 | grey level of the background (white, lab4d `w_bg`) |
| importance_samples | 0 | extra importance samples per ray in CSD renders (a coarse pass without gradient) |
| beta_scale | 1.0 | CSD renders use the density's beta times this (< 1: sharper views, tied to the |
| | | zero level the mesh is cut at) |
| oracle_supersample | 2 | oracle prior: anti-aliased targets (render s x larger, box-average) |
| oracle_lighting | "video" | oracle prior: "video" keeps the light where the video camera had it |
| | | (the shading the model learnt from the video); "view": light moves with each view |
| oracle_downsample | 1 | oracle prior: compare renders and targets average-pooled by this factor |
| | | (a coarser 'latent', like the SD VAE's 8x; resolution must be a multiple) |
| oracle_blur_px | 0.0 | oracle prior: Gaussian blur (std, pixels) of the targets |
| oracle_align | True | oracle prior: register the model to the ground truth (one similarity, |
| | | refitted every round; `csd/oracle_alignment.py`); False: identity |
| oracle_align_frames | 0 | > 0: refine that similarity per frame at this many anchor frames (each |
| | | frame's own root-pose error, e.g. a yaw the video cannot see); camera space only |
| oracle_align_space | "object" | "object": the registration maps the model's object frame onto the |
| | | ground-truth world (the metrics' frame; identity when oracle_align is off), so |
| | | root-pose errors never enter the targets; "camera": fitted in video-camera |
| | | space (measured worse: README "Known limitations") |
| weights | "" | folder of converted MVDream parameters (`animdreamer convert-mvdream`) |
| prompt | "" | text prompt (mvdream prior) |
| negative_prompt | MVDream-threestudio's | unconditional text of CFG |
| dtype | "float32" | activation dtype of the MVDream UNet ("bfloat16" on GPU) |
| fused_attention | False | MVDream UNet attention by `jax.nn.dot_product_attention` (True on GPU) |
"""

from __future__ import annotations

import ml_collections

PRIORS = ("none", "oracle", "mvdream")
MODES = ("recon", "sds")
WEIGHTINGS = ("sds", "uniform")
REDUCTIONS = ("sum", "mean")

# MVDream-threestudio's default negative prompt (its uncond text in CFG).
DEFAULT_NEGATIVE_PROMPT = (
    "ugly, bad anatomy, blurry, pixelated obscure, unnatural colors, poor lighting, dull, "
    "and unclear, cropped, lowres, low quality, artifacts, duplicate, morbid, mutilated, "
    "poorly drawn face, deformed, dehydrated, bad proportions")


def csd_config() -> ml_collections.ConfigDict:
  """The `csd` section with the defaults in the module docstring (unlocked)."""
  return ml_collections.ConfigDict(dict(
      prior="none",
      weight=1.0,
      every_k=2,
      start_fraction=0.0,
      resolution=64,
      num_samples=0,
      encode_resolution=256,
      guidance_scale=50.0,
      rescale=0.5,
      mode="recon",
      weighting="sds",
      reduction="sum",
      t_start=0.98,
      t_min_end=0.02,
      t_max_end=0.5,
      anneal_steps=8000,
      anneal_fraction=0.0,
      elevation_range=(-10.0, 40.0),
      fov_range=(40.0, 70.0),
      distance_range=(0.42, 0.7),
      object_size=0.0,
      look_at="aabb",
      param_groups="canonical",
      pixels_per_view=0,
      patches=0,
      remat=False,
      alpha=-1.0,
      fixed_frame=-1,
      encoder_sample=True,
      background=1.0,
      importance_samples=0,
      beta_scale=1.0,
      oracle_supersample=2,
      oracle_lighting="video",
      oracle_blur_px=0.0,
      oracle_downsample=1,
      oracle_align=True,
      oracle_align_frames=0,
      oracle_align_space="object",
      weights="",
      prompt="",
      negative_prompt=DEFAULT_NEGATIVE_PROMPT,
      dtype="float32",
      fused_attention=False,
  ))
