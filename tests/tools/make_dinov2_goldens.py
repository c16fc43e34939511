"""Generates the DINOv2 goldens (tests/data/dinov2/dinov2_tiny.npz) with HF transformers' PyTorch model.

    python3 tests/tools/make_dinov2_goldens.py          # needs torch + transformers (the 'parity' extra)

Reference: `transformers.Dinov2Model` at a tiny size (2 blocks, width 128, 2 heads of 64 channels as in
every DINOv2 size, 4-px patches, position embeddings for an 8 x 8 grid), eager attention, float32 on CPU.
Two inputs: a 32 x 32 image (the position grid as trained) and a 24 x 44 one (a 6 x 11 grid: the position
embeddings go through PyTorch's bicubic resize).

Weights are not stored: every tensor is derived from its HF name by `make_unet_goldens.golden_tensor`
(a counter-based hash, exact in float32), so the tests rebuild it without torch. The .npz holds the HF
config, the key names and shapes, the inputs (normalised, NHWC) and the torch outputs
(`last_hidden_state`).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from make_unet_goldens import golden_tensor  # noqa: E402

OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / "data" / "dinov2"
GOLDEN_FILE = "dinov2_tiny.npz"
WEIGHT_SEED = 11
HF_CONFIG = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=4,
                 patch_size=4, image_size=32, num_channels=3, layer_norm_eps=1e-6,
                 layerscale_value=1.0, hidden_act="gelu", qkv_bias=True, use_swiglu_ffn=False,
                 drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
IMAGE_SIZES = ((32, 32), (24, 44))


def golden_state(names, shapes, seed: int = WEIGHT_SEED) -> dict[str, np.ndarray]:
  """The HF-named state dict of the goldens."""
  return {str(n): golden_tensor(str(n), tuple(int(s) for s in shape), seed)
          for n, shape in zip(names, shapes)}


def golden_inputs(seed: int = 0) -> list[np.ndarray]:
  """Normalised images (1, H, W, 3) float32, one per IMAGE_SIZES."""
  rng = np.random.default_rng(seed)
  return [rng.standard_normal((1, h, w, 3)).astype(np.float32) for h, w in IMAGE_SIZES]


def generate() -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  config = transformers.Dinov2Config(**HF_CONFIG)
  config._attn_implementation = "eager"  # pylint: disable=protected-access
  model = transformers.Dinov2Model(config).eval()
  reference = model.state_dict()
  names = sorted(reference)
  shapes = [tuple(reference[n].shape) for n in names]
  state = golden_state(names, shapes)
  model.load_state_dict({n: torch.from_numpy(v) for n, v in state.items()})
  out = {"hf_config_json": np.array(json.dumps(HF_CONFIG)), "names": np.array(names),
         "shape_json": np.array(json.dumps(shapes)),
         "versions": np.array(f"torch {torch.__version__}, transformers {transformers.__version__}")}
  with torch.no_grad():
    for i, images in enumerate(golden_inputs()):
      pixels = torch.from_numpy(images).permute(0, 3, 1, 2)
      out[f"images_{i}"] = images
      out[f"tokens_{i}"] = model(pixel_values=pixels).last_hidden_state.numpy()
  return out


def main() -> None:
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  data = generate()
  np.savez_compressed(OUT_DIR / GOLDEN_FILE, **data)
  print(f"wrote {OUT_DIR / GOLDEN_FILE} ({data['versions']})")


if __name__ == "__main__":
  main()
