"""Tests of `animdreamer sample` (animdreamer_jax.commands.sample): tiny end-to-end runs on CPU."""

from __future__ import annotations

import dataclasses

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from animdreamer_jax import cli
from animdreamer_jax.commands import sample
from animdreamer_jax.errors import UserError
from animdreamer_jax.prior import convert


@pytest.fixture(scope="module")
def tiny_png(tmp_path_factory):
  out = tmp_path_factory.mktemp("sample") / "tiny.png"
  rc = cli.main(["sample", "--prompt", "a fox", "--tiny", "--steps", "2", "--seed", "5",
                 "--out", str(out)])
  assert rc == 0
  return out


def test_tiny_end_to_end(tiny_png):
  image = cv2.imread(str(tiny_png), cv2.IMREAD_UNCHANGED)
  assert image.shape == (32, 4 * 32, 3) and image.dtype == np.uint8
  assert image.std() > 1.0  # not a constant picture
  assert not list(tiny_png.parent.glob(".*tmp"))  # the atomic write left no temp file


def test_converted_folder_gives_the_same_views(tiny_png, tmp_path):
  """The same random networks saved as a converted folder and loaded back reproduce the --tiny run."""
  prior = sample.tiny_prior(5)
  result = {"unet": (prior.unet_config.to_dict(), prior.unet_params),
            "vae": (prior.vae_config.to_dict(), prior.vae_params),
            "text_encoder": (prior.text_config.to_dict(), prior.text_params)}
  weights = convert.save_prior(result, tmp_path / "weights")
  out = tmp_path / "loaded.png"
  rc = cli.main(["sample", "--prompt", "a fox", "--weights", str(weights), "--size", "32", "--steps", "2",
                 "--seed", "5", "--out", str(out)])
  assert rc == 0
  np.testing.assert_array_equal(cv2.imread(str(out)), cv2.imread(str(tiny_png)))


def test_guidance_batch_order():
  """[uncond; cond] order: scale 1 gives the cond prediction, scale 0 the uncond one, whichever half."""
  prior = sample.tiny_prior(1)
  rng = np.random.default_rng(0)
  views = 4
  x = jnp.asarray(rng.standard_normal((views, 8, 8, 4)), jnp.float32)
  uncond = jnp.asarray(rng.standard_normal((1, 77, 32)), jnp.float32).repeat(views, 0)
  cond = jnp.asarray(rng.standard_normal((1, 77, 32)), jnp.float32).repeat(views, 0)
  cameras = jnp.asarray(rng.standard_normal((views, 16)), jnp.float32)
  cameras = jnp.concatenate([cameras, cameras])
  params = jax.tree_util.tree_map(jnp.asarray, prior.unet_params)

  def run(context, scale):
    return sample.guided_eps(params, x, jnp.int32(500), context, cameras, scale,
                             unet_config=prior.unet_config, dtype=jnp.float32, num_views=views)

  cond_only = run(jnp.concatenate([uncond, cond]), 1.0)
  np.testing.assert_allclose(run(jnp.concatenate([cond, uncond]), 0.0), cond_only, rtol=1e-6, atol=1e-6)
  assert np.max(np.abs(run(jnp.concatenate([uncond, cond]), 0.0) - cond_only)) > 1e-4
  guided = run(jnp.concatenate([uncond, cond]), 3.0)
  uncond_only = run(jnp.concatenate([cond, uncond]), 1.0)
  np.testing.assert_allclose(guided, uncond_only + 3.0 * (cond_only - uncond_only), rtol=1e-4, atol=1e-4)


def test_missing_weights_is_a_clear_error(tmp_path, capsys):
  rc = cli.main(["sample", "--prompt", "a fox", "--out", str(tmp_path / "x.png")])
  assert rc == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --weights") and "sd-v2.1-base-4view.pt" in err and "MVDream/MVDream" in err
  assert "convert-mvdream" in err and len(err.strip().splitlines()) == 1
  rc = cli.main(["sample", "--prompt", "a fox", "--weights", str(tmp_path / "none"),
                 "--out", str(tmp_path / "x.png")])
  assert rc == 2
  assert "none: no converted MVDream weights" in capsys.readouterr().err
  assert not (tmp_path / "x.png").exists()


def test_text_vocabulary_must_cover_the_tokenizer():
  prior = sample.tiny_prior(0)
  prior.text_config = dataclasses.replace(prior.text_config, vocab_size=1000)
  with pytest.raises(UserError, match="vocabulary of 1000 tokens"):
    sample.sample_views(prior, "a fox", size=32, steps=1)


def test_make_grid():
  views = np.arange(4 * 2 * 3 * 3).reshape(4, 2, 3, 3)
  np.testing.assert_array_equal(sample.make_grid(views, "1x4"), np.concatenate(list(views), axis=1))
  np.testing.assert_array_equal(
      sample.make_grid(views, "2x2"),
      np.concatenate([np.concatenate(list(views[:2]), 1), np.concatenate(list(views[2:]), 1)], 0))
