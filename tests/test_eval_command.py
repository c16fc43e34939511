"""`animdreamer eval`: NPZ and OBJ-folder predictions, JSON output, table, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from animdreamer_jax import assets
from animdreamer_jax import cli
from animdreamer_jax.data import video as video_io

NUM_FRAMES = 3


def blob_sequence(num_frames: int, n_lat: int = 10, n_lon: int = 20):
  """A deforming asymmetric blob, rest-pose (frame 0) bbox diagonal 1: (T, V, 3), (F, 3)."""
  theta = np.linspace(0, np.pi, n_lat + 1)[1:-1]
  phi = np.linspace(0, 2 * np.pi, n_lon, endpoint=False)
  th, ph = np.meshgrid(theta, phi, indexing="ij")
  dirs = np.stack([np.sin(th) * np.cos(ph), np.cos(th), np.sin(th) * np.sin(ph)], -1).reshape(-1, 3)
  dirs = np.concatenate([[[0, 1, 0]], dirs, [[0, -1, 0]]])
  ring = lambda i, j: 1 + i * n_lon + j % n_lon  # noqa: E731
  faces = []
  for j in range(n_lon):
    faces.append([0, ring(0, j + 1), ring(0, j)])
    faces.append([len(dirs) - 1, ring(n_lat - 2, j), ring(n_lat - 2, j + 1)])
    for i in range(n_lat - 2):
      faces.append([ring(i, j), ring(i, j + 1), ring(i + 1, j)])
      faces.append([ring(i, j + 1), ring(i + 1, j + 1), ring(i + 1, j)])
  frames = []
  for t in range(num_frames):
    r = (1.0 + 0.25 * np.sin(3 * dirs[:, 0] + 0.6 * t) * np.cos(2 * dirs[:, 1])
         + 0.3 * np.maximum(dirs[:, 2], 0))
    frames.append(dirs * r[:, None] * np.array([1.0, 0.6, 0.45]))
  frames = np.array(frames)
  frames /= np.linalg.norm(np.ptp(frames[0], axis=0))
  return frames.astype(np.float32), np.array(faces, np.int32)


def write_gt_video(path, vertices, faces, with_gt=True, joints=None):
  """A tiny all-background video folder whose gt/ holds the given meshes (and joints)."""
  t, size = vertices.shape[0], 4
  zeros = lambda *shape, dtype: np.zeros(shape, dtype)  # noqa: E731
  gt = None
  if with_gt:
    face_visible = vertices[0][faces].mean(1)[:, 0] > 0  # one side "seen"
    gt = video_io.GroundTruth(
        meshes=assets.MeshSequence(vertices=vertices, faces=faces, fps=10.0),
        rest_vertices=vertices[0], rest_faces=faces,
        intrinsics=np.tile(np.float32([8, 8, 2, 2]), (t, 1)),
        w2c=np.tile(np.eye(4, dtype=np.float32), (t, 1, 1)), face_visible=face_visible,
        joints=joints)
  flows = {1: zeros(t, size, size, 3, dtype=np.float16)}
  video = video_io.Video(
      rgb=zeros(t, size, size, 3, dtype=np.uint8), mask=zeros(t, size, size, dtype=np.uint8),
      depth=zeros(t, size, size, dtype=np.float32),
      feature=zeros(t, size, size, 4, dtype=np.float16), flow_fw=flows, flow_bw=dict(flows),
      intrinsics=np.tile(np.float32([8, 8, 2, 2]), (t, 1)),
      w2c=np.tile(np.eye(4, dtype=np.float32), (t, 1, 1)),
      meta={"fps": 10.0, "feature_kind": "oracle", "background": [0, 0, 0],
            "camera_path": "fixed", "source": {}, "normalisation": {"center": [0, 0, 0],
                                                                    "scale": 1.0}},
      gt=gt)
  video_io.write_video(path, video, contact_sheet=False)
  return path


@pytest.fixture(name="gt_dir", scope="module")
def fixture_gt_dir(tmp_path_factory):
  vertices, faces = blob_sequence(NUM_FRAMES)
  return write_gt_video(tmp_path_factory.mktemp("eval") / "video", vertices, faces)


def run_eval(capsys, *args):
  code = cli.main(["eval", *map(str, args)])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def test_ground_truth_npz_scores_perfectly(gt_dir, tmp_path, capsys):
  out = tmp_path / "scores" / "eval.json"
  code, stdout, _ = run_eval(capsys, "--pred", gt_dir / "gt" / "meshes.npz", "--gt", gt_dir,
                             "--out", out, "--samples", 2000)
  assert code == 0
  report = json.loads(out.read_text())
  assert report["format"] == "animdreamer-eval" and report["version"] == 1
  assert report["num_frames"] == NUM_FRAMES and report["samples_per_frame"] == 2000
  assert report["normalisation_length"] == pytest.approx(1.0, abs=1e-6)
  assert report["thresholds"] == [0.01, 0.02, 0.05]
  assert report["limb_fraction"] == 0.35 and report["up_axis"] == "+y"
  assert not report["chains_recorded"] and "chain_joints" not in report
  assert list(report["mean"]) == ["all", "seen", "unseen", "limbs", "body"]
  for part in report["mean"]:
    assert report["mean"][part]["chamfer"] < 1e-6
    assert report["mean"][part]["fscore@1%"] == 100.0
    assert len(report["per_frame"][part]["chamfer"]) == NUM_FRAMES
  alignment = report["alignment"]
  assert alignment["enabled"] and alignment["scale"] == pytest.approx(1.0, abs=1e-5)
  np.testing.assert_allclose(alignment["matrix"], np.eye(4), atol=1e-4)
  assert 0 < report["visibility"]["seen_area_fraction"] < 1
  for word in ("CD", "F@1%", "F@5%", "seen", "unseen", "alignment", "limbs", "body",
               "no gt/joints.npz"):
    assert word in stdout
  assert not list(out.parent.glob(".*tmp"))  # the atomic write left no temp file


def test_obj_folder_is_read_in_natural_order(gt_dir, tmp_path, capsys):
  vertices, faces = blob_sequence(NUM_FRAMES)
  folder = tmp_path / "pred"
  folder.mkdir()
  for t, number in enumerate((9, 10, 11)):  # "frame-10" sorts before "frame-9" as text
    f = faces if t != 1 else faces[::-1]  # one frame with its own face list: padded path
    assets.write_obj(folder / f"frame-{number}.obj", vertices[t], f)
  (folder / "notes.txt").write_text("not a frame")
  out = tmp_path / "eval.json"
  code, _, _ = run_eval(capsys, "--pred", folder, "--gt", gt_dir, "--out", out, "--no-align",
                        "--samples", 2000)
  assert code == 0
  report = json.loads(out.read_text())
  assert report["alignment"]["enabled"] is False
  assert max(report["per_frame"]["all"]["chamfer"]) < 1e-6


def test_no_align_scores_the_prediction_where_it_is(gt_dir, tmp_path, capsys):
  vertices, faces = blob_sequence(NUM_FRAMES)
  moved = tmp_path / "moved.npz"
  assets.save_sequence_npz(moved, assets.MeshSequence(
      vertices=(vertices * 1.3 + np.float32([0.2, 0.0, -0.1])), faces=faces, fps=10.0))
  code, _, _ = run_eval(capsys, "--pred", moved, "--gt", gt_dir, "--out", tmp_path / "a.json",
                        "--samples", 2000)
  assert code == 0
  aligned = json.loads((tmp_path / "a.json").read_text())
  assert aligned["mean"]["all"]["chamfer"] < 1e-6
  assert aligned["alignment"]["scale"] == pytest.approx(1 / 1.3, rel=1e-5)
  code, stdout, _ = run_eval(capsys, "--pred", moved, "--gt", gt_dir, "--no-align",
                             "--samples", 2000)
  assert code == 0 and "none (--no-align)" in stdout


def test_limb_fraction_flag_and_part_rows(tmp_path, capsys):
  vertices, faces = blob_sequence(NUM_FRAMES)
  rest = vertices[0]
  # Hand-made skeleton: the low half follows "LeftLeg" (under "Hip"), the +z end "Tail01".
  names = np.array(["Hip", "LeftLeg01", "Tail01"])
  vertex_joint = np.where(rest[:, 1] < 0, 1, np.where(rest[:, 2] > 0.15, 2, 0))
  joints = video_io.GroundTruthJoints(names=names, parents=np.int32([-1, 0, 0]),
                                      vertex_joint=vertex_joint.astype(np.int32))
  gt_dir = write_gt_video(tmp_path / "video", vertices, faces, joints=joints)
  reports = {}
  for fraction in ("0.2", "0.5"):
    out = tmp_path / f"eval_{fraction}.json"
    code, stdout, _ = run_eval(capsys, "--pred", gt_dir / "gt" / "meshes.npz", "--gt", gt_dir,
                               "--out", out, "--samples", 500, "--no-align",
                               "--limb-fraction", fraction)
    assert code == 0
    report = reports[fraction] = json.loads(out.read_text())
    assert report["limb_fraction"] == float(fraction)
    assert report["chains_recorded"]
    assert report["chain_joints"] == {"torso": ["Hip"], "legs": ["LeftLeg01"],
                                      "tail": ["Tail01"]}
    assert list(report["mean"]) == ["all", "seen", "unseen", "limbs", "body", "legs", "tail",
                                    "torso"]
    rows = {line.split()[0]: line.split() for line in stdout.splitlines()[3:]}
    for part, scores in report["mean"].items():
      assert scores["fscore@2%"] == 100.0
      # Each row: part, area share, CD, acc, comp, F@1/2/5%.
      assert rows[part][1] == f"{100 * report['area_fraction'][part]:.0f}%"
      assert rows[part][-2] == "100.00"
    assert f"the lowest {100 * float(fraction):g}% of the rest pose's height" in stdout
  low, high = reports["0.2"]["area_fraction"], reports["0.5"]["area_fraction"]
  assert 0 < low["limbs"] < high["limbs"] < 1
  assert low["limbs"] + low["body"] == pytest.approx(1.0)
  assert high["legs"] == low["legs"]  # the chains do not depend on the limb fraction


def test_bad_input_gives_one_error_line(gt_dir, tmp_path, capsys):
  vertices, faces = blob_sequence(NUM_FRAMES)
  short = tmp_path / "short.npz"
  assets.save_sequence_npz(short, assets.MeshSequence(vertices=vertices[:2], faces=faces,
                                                      fps=10.0))
  no_gt = write_gt_video(tmp_path / "no_gt", vertices, faces, with_gt=False)
  empty = tmp_path / "empty"
  empty.mkdir()
  out = tmp_path / "never.json"
  cases = [
      (("--pred", short, "--gt", gt_dir, "--out", out), "2 frames"),
      (("--pred", tmp_path / "missing.npz", "--gt", gt_dir, "--out", out), "missing.npz"),
      (("--pred", empty, "--gt", gt_dir, "--out", out), "no files matching"),
      (("--pred", short, "--gt", no_gt, "--out", out), "no ground truth"),
      (("--pred", short, "--gt", tmp_path / "nowhere", "--out", out), "nowhere"),
      (("--pred", gt_dir / "gt" / "meshes.npz", "--gt", gt_dir, "--samples", 0), "--samples"),
      (("--pred", gt_dir / "gt" / "meshes.npz", "--gt", gt_dir, "--out", out,
        "--limb-fraction", 1.5), "--limb-fraction"),
  ]
  for args, needle in cases:
    code, stdout, stderr = run_eval(capsys, *args)
    assert code == 2, args
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], stderr
    assert not out.exists()
