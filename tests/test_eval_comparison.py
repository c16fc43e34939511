"""comparison.png: which pixels each column draws, from an independent projection."""

from __future__ import annotations

import numpy as np

from animdreamer_jax.eval import comparison
from animdreamer_jax.geometry import rays as rays_lib


def box(centre, half):
  corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
  faces = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                    [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
  return centre + half * corners, faces


def test_columns_show_ground_truth_and_prediction():
  body, faces = box(np.zeros(3), np.array([0.12, 0.12, 0.4]))
  gt = np.stack([body, body])
  pred = gt + np.array([0.0, 0.0, 0.0])
  limb = body[:, 1] < 0  # the lower four corners: faces among them are limb-coloured
  w2c = np.stack([rays_lib.look_at(np.array([0.0, 0.0, 2.0]), np.zeros(3))] * 2)
  intrinsics = np.tile([120.0, 120.0, 32.0, 32.0], (2, 1))
  picture = comparison.comparison_picture(pred, faces, gt, faces, w2c, intrinsics, (64, 64),
                                          [0, 1], limb, size=96)
  assert picture.shape == (comparison.HEADER_HEIGHT + 2 * 96, 4 * 96, 3)
  row = picture[comparison.HEADER_HEIGHT:comparison.HEADER_HEIGHT + 96].astype(int)
  columns = [row[:, i * 96:(i + 1) * 96] for i in range(4)]

  def share(image, colour):  # pixels whose hue follows `colour` (shading scales brightness)
    rgb = image[..., :3] / np.maximum(image.max(-1, keepdims=True), 1)
    ref = np.asarray(colour) / max(colour)
    return np.mean(np.all(np.abs(rgb - ref) < 0.08, axis=-1))

  for gt_col, pred_col in ((columns[0], columns[1]), (columns[2], columns[3])):
    assert share(pred_col, comparison.PRED_COLOR) > 0.02
    assert share(gt_col, comparison.PRED_COLOR) < 0.005
    assert share(gt_col, comparison.GT_COLOR) > 0.005
  # The side camera (+x) sees the box's long side: wider than tall in the picture.
  mask = np.any(columns[2] < 250, axis=-1)
  rows, cols = np.nonzero(mask[20:])
  assert np.ptp(cols) > 2.5 * np.ptp(rows)
  # The video camera looks along the box's long axis: about as wide as tall.
  mask = np.any(columns[0] < 250, axis=-1)
  rows, cols = np.nonzero(mask[20:])
  assert np.ptp(cols) < 2 * max(np.ptp(rows), 1)


def test_the_side_view_looks_at_the_side_the_cameras_never_saw():
  """Cameras all at x > 0: the side columns look from -x (a marker on the -x face shows);
  cameras on both sides: +x, as before."""
  def centres_to_w2c(xs):
    return np.stack([rays_lib.look_at(np.array([x, 0.0, 1.0]), np.zeros(3)) for x in xs])

  assert comparison.unseen_side(centres_to_w2c([0.5, 1.0])) == -1
  assert comparison.unseen_side(centres_to_w2c([-0.5, -1.0])) == 1
  assert comparison.unseen_side(centres_to_w2c([-0.5, 1.0])) == 0
  # The reference of which side a camera sees: its w2c maps the far (-x) face's centre
  # nearer than the near (+x) one's only on the -x side.
  w2c, _ = comparison.side_camera(np.array([[-0.1, 0, 0], [0.1, 0, 0]]), 64, sign=-1.0)
  depth = lambda p: (w2c[:3, :3] @ p + w2c[:3, 3])[2]  # noqa: E731
  assert depth(np.array([-0.1, 0, 0])) < depth(np.array([0.1, 0, 0]))
  w2c, _ = comparison.side_camera(np.array([[-0.1, 0, 0], [0.1, 0, 0]]), 64)
  assert depth(np.array([-0.1, 0, 0])) > depth(np.array([0.1, 0, 0]))
