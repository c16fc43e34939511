r"""A synthetic clip made to look like a phone video, and how well `preprocess` recovers its inputs.

  python3 experiments/phone_clip.py make --video SYNTH_DIR --out CLIP_DIR
  python3 experiments/phone_clip.py score --clip CLIP_DIR --folder PREPROCESSED_DIR [--json OUT]

`make` composites the rendered animal of a synthetic video folder (`animdreamer synth`, white
background) over a procedural textured background (no photographs can be downloaded here: layered
coloured noise with blades and pebbles) in a 4:3 landscape frame; the animal drifts across the frame and
the background pans the other way (a slowly moving camera); the frames go into CLIP_DIR/clip.mp4
(H.264, lossy). The exact inputs stay aside in CLIP_DIR/truth.npz (the masks and gap-1 forward flows of
the composited frames) and CLIP_DIR/box.txt holds the animal's box in the first frame - all
`preprocess` gets besides the MP4.

`score` maps the exact masks and flows into the preprocessed folder's crop (video.json's
source.crop) and prints the mask IoU (mean over frames) and the flow end-point error in the folder's
pixels on the exact flow's valid pixels (mean and median), with the share of them `preprocess` kept
valid.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import imageio.v2 as imageio  # noqa: E402
import numpy as np  # noqa: E402

from animdreamer_jax import files  # noqa: E402
from animdreamer_jax.data import video as video_lib  # noqa: E402
from animdreamer_jax.errors import UserError  # noqa: E402
from animdreamer_jax.stages.preprocess import flow as flow_lib  # noqa: E402
from animdreamer_jax.stages.preprocess import frames as frames_lib  # noqa: E402

ASPECT = 4 / 3  # frame width / height
DRIFT = 0.15  # the animal's drift across the clip, a share of the frame width
PAN = 0.25  # the background's pan, the other way, same units


def textured_background(height: int, width: int, seed: int = 0) -> np.ndarray:
  """(H, W, 3) uint8: grass-and-earth-like layered noise (coarse colour, fine grain, blades)."""
  rng = np.random.default_rng(seed)
  image = np.zeros((height, width, 3), np.float32)
  for cells, weight in ((4, 0.45), (16, 0.3), (64, 0.15), (256, 0.1)):
    small = rng.random((max(2, height * cells // width), cells, 3)).astype(np.float32)
    image += weight * cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
  tint = np.array([0.35, 0.55, 0.25], np.float32)  # green-brown
  image = np.clip(0.25 + 0.9 * image * tint / tint.mean() * 0.5, 0, 1)
  for _ in range(width // 2):  # blades of grass: short dark and light strokes
    x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
    length, angle = rng.uniform(4, 14), rng.uniform(-0.5, 0.5) - np.pi / 2
    end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
    shade = float(rng.uniform(0.1, 0.8))
    cv2.line(image, (x, y), end, (shade * 0.6, shade, shade * 0.4), 1, cv2.LINE_AA)
  return (image * 255).astype(np.uint8)


def make(video_dir: str, out_dir: str, seed: int = 0) -> dict:
  video = video_lib.load_video(video_dir, load_gt=False)
  t, size = video.num_frames, video.height
  height, width = size, int(round(size * ASPECT / 2)) * 2
  background = textured_background(height, width + int(PAN * width) + 2, seed)
  drift = np.linspace(0, DRIFT * width, t)
  offsets = np.stack([np.round((width - size) / 2 - DRIFT * width / 2 + drift),
                      np.round(3 * np.sin(np.linspace(0, np.pi, t)))], -1).astype(int)
  pans = np.round(np.linspace(PAN * width, 0, t)).astype(int)
  frames, masks = [], np.zeros((t, height, width), np.uint8)
  flows = np.zeros((t, height, width, 3), np.float32)
  for i in range(t):
    frame = background[:, pans[i]:pans[i] + width].copy()
    x, y = offsets[i]
    rows = slice(max(y, 0), min(y + size, height))
    cols = slice(max(x, 0), min(x + size, width))
    src_rows = slice(rows.start - y, rows.stop - y)
    src_cols = slice(cols.start - x, cols.stop - x)
    alpha = video.mask[i][src_rows, src_cols].astype(np.float32)[..., None]
    # Soften the silhouette's edge as a camera would (the mask stays the rendered one).
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0.6)[..., None]  # OpenCV drops the single channel
    patch = video.rgb[i][src_rows, src_cols].astype(np.float32)
    frame[rows, cols] = (alpha * patch + (1 - alpha) * frame[rows, cols]).astype(np.uint8)
    masks[i, rows, cols] = video.mask[i][src_rows, src_cols]
    if i + 1 < t and 1 in video.flow_fw:
      exact = video.flow_fw[1][i][src_rows, src_cols].astype(np.float32)
      flows[i, rows, cols, :2] = exact[..., :2] + (offsets[i + 1] - offsets[i])
      flows[i, rows, cols, 2] = exact[..., 2]
    frames.append(frame)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  fps = float(video.meta.get("fps", 24.0))
  with files.atomic_path(out / "clip.mp4") as tmp:
    imageio.mimwrite(tmp, frames, fps=fps, codec="libx264", quality=6, macro_block_size=1,
                     format="FFMPEG")
  box = frames_lib.mask_box(masks[0])
  (out / "box.txt").write_text(",".join(str(int(v)) for v in box) + "\n")
  files.save_npz(out / "truth.npz", masks=masks, flow_fw_1=flows.astype(np.float16),
                 offsets=offsets, source=np.array(str(pathlib.Path(video_dir).resolve())))
  return {"clip": str(out / "clip.mp4"), "box": box.tolist(), "frames": t,
          "size": [height, width]}


def _crop_flow(flow: np.ndarray, crop, size: int) -> np.ndarray:
  """A raw (H, W, 3) flow at the crop's pixel centres, in the crop's pixels (nearest sample)."""
  x0, y0, side = (float(v) for v in crop)
  scale = size / side
  centres = (np.arange(size) + 0.5) / scale - 0.5
  xs, ys = np.meshgrid(x0 + centres, y0 + centres)
  sampled = flow_lib.sample(flow, np.stack([xs, ys], -1), cv2.INTER_NEAREST)
  return np.concatenate([sampled[..., :2] * scale, sampled[..., 2:]], -1)


def score(clip_dir: str, folder: str) -> dict:
  truth = np.load(pathlib.Path(clip_dir) / "truth.npz")
  video = video_lib.load_video(folder)
  crop = video.meta["source"]["crop"]
  kept = np.asarray(video.meta["source"]["frames"])
  size = video.height
  exact_masks = truth["masks"][kept]
  if len(kept) != video.num_frames:
    raise UserError(f"{folder}: {video.num_frames} frames but source.frames lists {len(kept)}")
  cropped = frames_lib.crop_frames(exact_masks.astype(np.float32)[..., None], crop, size)
  cropped = cropped.reshape(-1, size, size) > 0.5
  got = video.mask.astype(bool)
  iou = [(a & b).sum() / max((a | b).sum(), 1) for a, b in zip(got, cropped)]
  errors, kept_valid, exact_valid = [], 0, 0
  if 1 in video.flow_fw and np.all(np.diff(kept) == 1):
    for i in range(video.num_frames - 1):
      exact = _crop_flow(truth["flow_fw_1"][kept[i]].astype(np.float32), crop, size)
      valid = (exact[..., 2] > 0.5) & cropped[i]
      ours = video.flow_fw[1][i].astype(np.float32)
      errors.append(np.linalg.norm(ours[..., :2] - exact[..., :2], axis=-1)[valid])
      exact_valid += int(valid.sum())
      kept_valid += int((valid & (ours[..., 2] > 0.5)).sum())
  errors = np.concatenate(errors) if errors else np.zeros(0)
  return {"frames": int(video.num_frames), "mask_iou_mean": float(np.mean(iou)),
          "mask_iou_min": float(np.min(iou)),
          "flow_epe_mean": float(errors.mean()) if errors.size else None,
          "flow_epe_median": float(np.median(errors)) if errors.size else None,
          "flow_valid_kept": kept_valid / max(exact_valid, 1),
          "seconds": video.meta["source"].get("seconds", {})}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("make")
  p.add_argument("--video", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--seed", type=int, default=0)
  p = sub.add_parser("score")
  p.add_argument("--clip", required=True)
  p.add_argument("--folder", required=True)
  p.add_argument("--json", default=None)
  args = parser.parse_args(argv)
  try:
    if args.command == "make":
      result = make(args.video, args.out, args.seed)
    else:
      result = score(args.clip, args.folder)
      if args.json:
        files.save_json(args.json, result, indent=2)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(result, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
