"""`animdreamer preprocess`: an ordinary video (here: a synthetic clip composited over a textured
background and written to a lossy MP4, `experiments/phone_clip.py`) -> a video folder `extract` reads.

Each routine is checked against an independent reference (projection through the full-frame camera,
a known image shift, the composite's exact masks and flows), the command end to end (GrabCut from a
box, user masks, DINOv2 with tiny weights), and bad input (one line, status 2, nothing at --out).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import cv2
import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax import cli
from animdreamer_jax.data import synthetic
from animdreamer_jax.data import video as video_lib
from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import transforms_np
from animdreamer_jax.prior import dinov2
from animdreamer_jax.stages.preprocess import cameras
from animdreamer_jax.stages.preprocess import flow as flow_lib
from animdreamer_jax.stages.preprocess import frames as frames_lib
from animdreamer_jax.stages.preprocess import run as preprocess_run

NUM_FRAMES = 12
RES = 96


def _load_experiment(repo_root):
  spec = importlib.util.spec_from_file_location("phone_clip",
                                                repo_root / "experiments" / "phone_clip.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def phone_clip(repo_root):
  return _load_experiment(repo_root)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, repo_root, phone_clip):
  """A 96-px Khronos Fox walk (orbit) composited into a 128 x 96 lossy MP4, with its truth."""
  seq = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf", clip="Walk",
                             num_frames=NUM_FRAMES)
  options = synthetic.SynthOptions(resolution=RES, camera_path="arc", flow_gaps=(1, 2))
  video = synthetic.synthesize(seq, options,
                               progress=False)
  root = tmp_path_factory.mktemp("clip")
  video_lib.write_video(root / "synth", video, contact_sheet=False)
  phone_clip.make(str(root / "synth"), str(root / "clip"))
  return root / "clip"


def _cli(capsys, *args):
  code = cli.main(list(map(str, args)))
  out = capsys.readouterr()
  return code, out.out, out.err


# --- routines against references -------------------------------------------------------------


def test_crop_intrinsics_project_like_the_full_frame_then_the_crop():
  """A 3-D point projected with the crop's intrinsics lands where the full-frame projection lands
  after cutting the crop and resizing it."""
  full = np.array([500.0, 500.0, 320.0, 240.0])
  crop = np.array([100, 60, 250])
  size = 128
  inner = frames_lib.crop_intrinsics(full, crop, size)
  point = np.array([0.3, -0.2, 4.0])
  u, v = full[0] * point[0] / point[2] + full[2], full[1] * point[1] / point[2] + full[3]
  expected = ((u - crop[0]) * size / crop[2], (v - crop[1]) * size / crop[2])
  got = (inner[0] * point[0] / point[2] + inner[2], inner[1] * point[1] / point[2] + inner[3])
  np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_square_crop_holds_every_mask_box_and_crop_frames_pads_with_edges():
  masks = np.zeros((3, 40, 60), np.uint8)
  masks[0, 5:10, 50:58] = 1
  masks[2, 30:38, 2:6] = 1
  x0, y0, side = frames_lib.square_crop(masks, padding=1.0)
  assert x0 <= 2 and y0 <= 5 and x0 + side >= 58 and y0 + side >= 38
  image = np.arange(40 * 60, dtype=np.float32).reshape(1, 40, 60, 1)
  out = frames_lib.crop_frames(image, np.array([-10, -10, 20]), 20, cv2.INTER_NEAREST)
  assert out[0, 0, 0] == image[0, 0, 0, 0] and out[0, 15, 15] == image[0, 5, 5, 0]


def test_dis_flow_recovers_a_known_shift_and_the_round_trip_test_keeps_it():
  rng = np.random.default_rng(0)
  texture = cv2.GaussianBlur((rng.random((80, 80, 3)) * 255).astype(np.uint8), (5, 5), 1.0)
  shifted = np.roll(texture, (2, 3), axis=(0, 1))  # content moves +3 px in x, +2 in y
  forward = flow_lib.dis_flow(texture, shifted)
  backward = flow_lib.dis_flow(shifted, texture)
  inner = (slice(15, 65), slice(15, 65))
  np.testing.assert_allclose(np.median(forward[inner].reshape(-1, 2), axis=0), [3.0, 2.0],
                             atol=0.2)
  valid = flow_lib.consistent(forward, backward, np.ones((80, 80), np.uint8))
  assert valid[inner].mean() > 0.9
  # A backward flow that does not undo the forward one fails the test everywhere.
  assert not flow_lib.consistent(forward, -backward + 5.0, np.ones((80, 80), np.uint8))[inner].any()


def test_object_pose_puts_the_centre_on_the_box_centre_at_the_unit_size_depth():
  masks = np.zeros((2, 100, 100), np.uint8)
  masks[0, 20:60, 30:90] = 1
  masks[1, 30:70, 20:80] = 1
  intrinsics = np.array([120.0, 120.0, 50.0, 50.0], np.float32)
  w2c = cameras.object_poses(masks, intrinsics, np.array([0.0, 90.0]), np.array([0.0, 20.0]))
  for pose, box in zip(w2c, ([30, 20, 90, 60], [20, 30, 80, 70])):
    centre = pose[:3, 3]
    uv = intrinsics[:2] * centre[:2] / centre[2] + intrinsics[2:]
    np.testing.assert_allclose(uv, [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], atol=1e-4)
    # A unit-size object spans the box's diagonal at that depth.
    assert 120.0 / centre[2] == pytest.approx(math.hypot(60, 40), rel=1e-5)
  # Yaw 90: the camera sits on the animal's +X side, so the object's +X axis points at it.
  x_axis_cam = transforms_np.to_camera(np.array([[1.0, 0.0, 0.0]]), w2c[1]) - w2c[1][:3, 3]
  assert x_axis_cam[0, 2] < -0.9


def test_keyframes_interpolate_the_short_way_round_and_bad_files_are_one_error(tmp_path):
  path = tmp_path / "keys.json"
  path.write_text(json.dumps({"0": {"yaw": 350, "elevation": 0}, "4": {"yaw": 10, "elevation": 20}}))
  yaw, elevation = cameras.interpolate_angles(cameras.read_keyframes(path, 6), 6)
  np.testing.assert_allclose(np.mod(yaw, 360), [350, 355, 0, 5, 10, 10])
  np.testing.assert_allclose(elevation, [0, 5, 10, 15, 20, 20])
  path.write_text(json.dumps({"9": {"yaw": 0}}))
  with pytest.raises(UserError, match="frame 9 is outside the clip's 6 frames"):
    cameras.read_keyframes(path, 6)
  path.write_text("{not json")
  with pytest.raises(UserError, match="cannot read as JSON"):
    cameras.read_keyframes(path, 6)


# --- the command end to end ------------------------------------------------------------------


def test_preprocess_from_a_box_recovers_masks_and_flow_and_extract_can_read_it(
    clip, tmp_path, capsys, phone_clip):
  """GrabCut from the first frame's box and DIS flow on the lossy MP4: mask IoU and flow error
  against the composite's exact ones; the folder is version 2, without depth or features."""
  box = (clip / "box.txt").read_text().strip()
  out = tmp_path / "video"
  code, stdout, err = _cli(capsys, "preprocess", "--video", clip / "clip.mp4", "--out", out,
                           "--box", box, "--res", 64)
  assert code == 0, err
  assert "seconds per stage: decode" in stdout
  video = video_lib.load_video(out)
  assert video.meta["camera_path"] == "real" and video.depth is None and video.feature_dim == 0
  assert video.gt is None and (out / "contact_sheet.png").is_file()
  scores = phone_clip.score(str(clip), str(out))
  assert scores["mask_iou_mean"] > 0.8, scores
  assert scores["flow_epe_median"] < 1.0 and scores["flow_valid_kept"] > 0.3, scores


def test_user_masks_give_the_exact_masks_back(clip, tmp_path, capsys, phone_clip):
  truth = np.load(clip / "truth.npz")
  masks_dir = tmp_path / "masks"
  masks_dir.mkdir()
  for i, mask in enumerate(truth["masks"]):
    cv2.imwrite(str(masks_dir / f"{i:05d}.png"), mask * 255)
  out = tmp_path / "video"
  code, _, err = _cli(capsys, "preprocess", "--video", clip / "clip.mp4", "--out", out,
                      "--masks", masks_dir, "--res", 64, "--yaw", 60, "--elevation", 15)
  assert code == 0, err
  assert phone_clip.score(str(clip), str(out))["mask_iou_mean"] > 0.97
  # lab4d's Annotations layout (label maps, > 0 = the animal) reads the same.
  lab4d = tmp_path / "Annotations"
  lab4d.mkdir()
  for i, mask in enumerate(truth["masks"]):
    np.save(lab4d / f"{i:05d}.npy", np.where(mask > 0, 1, -1).astype(np.int8))
  out2 = tmp_path / "video2"
  code, _, err = _cli(capsys, "preprocess", "--video", clip / "clip.mp4", "--out", out2,
                      "--masks", lab4d, "--res", 64)
  assert code == 0, err
  np.testing.assert_array_equal(video_lib.load_video(out2).mask, video_lib.load_video(out).mask)


def test_dinov2_features_are_unit_norm_on_the_animal(clip, tmp_path, capsys, repo_root):
  """--features dinov2 with the goldens' tiny weights: 16 PCA channels, unit-norm on the
  foreground, 0 elsewhere (the format's checks pass)."""
  spec = importlib.util.spec_from_file_location(
      "make_dinov2_goldens", repo_root / "tests" / "tools" / "make_dinov2_goldens.py")
  tool = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tool)
  g = np.load(repo_root / "tests" / "data" / "dinov2" / tool.GOLDEN_FILE)
  config, params = dinov2.convert_dinov2_state(
      tool.golden_state(g["names"], json.loads(str(g["shape_json"]))))
  weights = dinov2.save_dinov2(config, params, tmp_path / "dinov2")
  out = tmp_path / "video"
  code, _, err = _cli(capsys, "preprocess", "--video", clip / "clip.mp4", "--out", out,
                      "--box", (clip / "box.txt").read_text().strip(), "--res", 64,
                      "--features", "dinov2", "--dinov2-weights", weights, "--frames", 4)
  assert code == 0, err
  video = video_lib.load_video(out)
  assert video.meta["feature_kind"] == "dinov2" and video.feature_dim == 16
  norms = np.linalg.norm(video.feature.astype(np.float32), axis=-1)
  np.testing.assert_allclose(norms[video.mask > 0], 1.0, atol=1e-2)
  assert np.all(norms[video.mask == 0] == 0)


@pytest.mark.parametrize("make_args, line", [
    (lambda d, c: ["--video", d / "nothing.mp4", "--box", "1,1,5,5"],
     r"nothing.mp4: not found"),
    (lambda d, c: ["--video", c / "truth.npz", "--box", "1,1,5,5"],
     r"truth.npz: cannot be read as a video"),
    (lambda d, c: ["--video", d / "empty.mp4", "--box", "1,1,5,5"],
     r"empty.mp4: (cannot be read as a video|the video has no frames)"),
    (lambda d, c: ["--video", c / "clip.mp4", "--box", "0,0,500,20"],
     r"--box '0,0,500,20': outside the 128 x 96 frame or empty"),
    (lambda d, c: ["--video", c / "clip.mp4", "--masks", d / "three_masks"],
     r"three_masks: 3 masks for a video of 12 frames \(one mask per frame\)"),
    (lambda d, c: ["--video", c / "clip.mp4", "--masks", d / "empty_masks"],
     r"empty_masks: the masks are empty in every frame"),
    (lambda d, c: ["--video", c / "clip.mp4", "--box", "1,1,5,5", "--features", "dinov2",
                   "--dinov2-weights", d / "bad_dinov2"],
     r"dinov2.safetensors: blocks.0/mlp/fc1/bias has shape \(128,\), expected \(96,\)"),
])
def test_bad_input_is_one_error_line_and_nothing_at_out(clip, tmp_path, capsys, make_args, line,
                                                        repo_root):
  (tmp_path / "empty.mp4").write_bytes(b"")
  (tmp_path / "three_masks").mkdir()
  (tmp_path / "empty_masks").mkdir()
  for i in range(3):
    cv2.imwrite(str(tmp_path / "three_masks" / f"{i}.png"), np.zeros((96, 128), np.uint8))
  for i in range(NUM_FRAMES):
    cv2.imwrite(str(tmp_path / "empty_masks" / f"{i}.png"), np.zeros((96, 128), np.uint8))
  config = dinov2.Dinov2Config(patch_size=4, embed_dim=64, depth=1, num_heads=1, mlp_hidden=128,
                               position_grid=4)
  import jax  # pylint: disable=import-outside-toplevel
  params = dinov2.init_dinov2_params(config, jax.random.PRNGKey(0))
  folder = dinov2.save_dinov2(config, params, tmp_path / "bad_dinov2")
  meta = json.loads((folder / "config.json").read_text())
  meta["dinov2"]["mlp_hidden"] = 96  # the weights no longer fit the stated sizes
  (folder / "config.json").write_text(json.dumps(meta))
  out = tmp_path / "out"
  code, _, err = _cli(capsys, "preprocess", "--out", out, *make_args(tmp_path, clip))
  assert code == 2
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert re.search(line, lines[0]), lines
  assert not out.exists()


def test_extract_runs_on_a_folder_without_depth_or_features(clip, tmp_path, capsys):
  """The tiny extraction on a preprocessed folder: the depth and feature losses are turned off
  with a notice, the run folder is complete, and there are no metrics (no ground truth)."""
  import test_train_e2e as e2e  # pylint: disable=import-outside-toplevel
  from animdreamer_jax.commands import extract as extract_cmd  # pylint: disable=import-outside-toplevel
  video_dir = tmp_path / "video"
  preprocess_run.preprocess(clip / "clip.mp4", video_dir, preprocess_run.PreprocessOptions(
      resolution=24, box=(clip / "box.txt").read_text().strip()), progress=False)
  config = e2e.tiny_config()
  config.loss.weights.depth = 0.1
  result = extract_cmd.run_extraction(config, video_dir, tmp_path / "run", progress=True)
  printed = capsys.readouterr().out
  assert "notice: the video has no depth.npy: loss depth turned off" in printed
  assert "notice: the video has no features (feature_kind none): loss feature, feat_reproj " \
         "turned off" in printed
  assert result["metrics"] is None and (tmp_path / "run" / "rest.obj").is_file()
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["loss"]["weights"]["depth"] == 0 and saved["loss"]["weights"]["feature"] == 0


def test_version_1_folders_still_load(tmp_path, repo_root):
  seq = assets.load_sequence(repo_root / "third_party" / "khronos_fox" / "Fox.gltf", clip="Walk",
                             num_frames=3)
  video = synthetic.synthesize(seq, synthetic.SynthOptions(resolution=16, flow_gaps=(1,)),
                               progress=False)
  folder = video_lib.write_video(tmp_path / "v", video, contact_sheet=False)
  meta = json.loads((folder / "video.json").read_text())
  assert meta["version"] == 2
  meta["version"] = 1
  (folder / "video.json").write_text(json.dumps(meta))
  old = video_lib.load_video(folder)
  np.testing.assert_array_equal(old.depth, video.depth)
  (folder / "depth.npy").unlink()
  with pytest.raises(UserError, match=r"depth.npy: missing"):
    video_lib.load_video(folder)  # version 1 requires it
  meta["version"] = 2
  (folder / "video.json").write_text(json.dumps(meta))
  assert video_lib.load_video(folder).depth is None


def test_a_folder_of_frames_a_mask_video_and_a_learned_segmenter_plug_in(clip, tmp_path):
  """Frames as a folder of PNGs (every 2nd kept: --fps 15 of 30), masks as a video, and any
  segmenter function in place of GrabCut: each gives the exact masks' crop back."""
  import imageio.v2 as imageio  # pylint: disable=import-outside-toplevel
  frames_dir = tmp_path / "frames"
  frames_dir.mkdir()
  for i, frame in enumerate(imageio.mimread(clip / "clip.mp4")):
    cv2.imwrite(str(frames_dir / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
  truth = np.load(clip / "truth.npz")["masks"]
  mask_video = tmp_path / "masks.mp4"
  imageio.mimwrite(mask_video, [np.repeat(m[..., None] * 255, 3, -1) for m in truth], fps=30,
                   codec="libx264", quality=10, macro_block_size=1, format="FFMPEG")
  out = tmp_path / "video"
  result = preprocess_run.preprocess(frames_dir, out, preprocess_run.PreprocessOptions(
      resolution=48, masks=str(mask_video), fps=15.0), progress=False)
  video = video_lib.load_video(out)
  assert video.meta["source"]["frames"] == list(range(0, NUM_FRAMES, 2))
  assert video.meta["fps"] == pytest.approx(15.0) and result["num_frames"] == NUM_FRAMES // 2
  exact = frames_lib.crop_frames(truth[::2].astype(np.float32)[..., None], result["crop"], 48)
  exact = exact.reshape(-1, 48, 48) > 0.5
  iou = (exact & (video.mask > 0)).sum() / (exact | (video.mask > 0)).sum()
  assert iou > 0.95
  calls = []

  def oracle_segmenter(frames, box, progress=None):
    calls.append(box)
    return truth[::2]

  out2 = tmp_path / "video2"
  preprocess_run.preprocess(frames_dir, out2, preprocess_run.PreprocessOptions(
      resolution=48, box="1,1,20,20", fps=15.0), progress=False, segmenter=oracle_segmenter)
  assert len(calls) == 1 and list(calls[0]) == [1, 1, 20, 20]
  np.testing.assert_array_equal(video_lib.load_video(out2).mask, exact.astype(np.uint8))
