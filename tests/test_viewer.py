"""The self-contained three.js viewer page: offline content, and a headless-Chromium check.

The browser test serves the page from a loopback HTTP server, lets the animation
run (Chromium's virtual time), takes screenshots and checks that the animal's
pixels are there and move. Skipped without Chromium (Debian `chromium`) or
without three.js (`npm ci --prefix animdreamer_jax/export/viewer_assets`).
"""

from __future__ import annotations

import functools
import http.server
import json
import pathlib
import re
import shutil
import subprocess
import threading

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import viewer

BACKGROUND = np.array([0x1E, 0x21, 0x26])  # the page's clear colour


def _three_installed() -> bool:
  try:
    viewer.three_package_dir()
    return True
  except UserError:
    return False


needs_three = pytest.mark.skipif(
    not _three_installed(), reason="needs `npm ci --prefix animdreamer_jax/export/viewer_assets`")


def _chromium() -> str | None:
  return shutil.which("chromium") or shutil.which("chromium-browser")


def swinging_bar_glb(num_frames: int = 24, fps: float = 12.0) -> tuple[bytes, np.ndarray]:
  """A box on two bones; the upper bone swings +-60 degrees about z. -> (glb, all posed points)."""
  xs, ys, zs = np.meshgrid([-0.1, 0.1], np.linspace(0, 1, 11), [-0.1, 0.1], indexing="ij")
  vertices = np.stack([xs, ys, zs], -1).reshape(-1, 3)
  # Box faces via the convex hull of each slab of 2 rings: triangulate the side quads.
  grid = np.arange(vertices.shape[0]).reshape(2, 11, 2)
  faces = []
  for j in range(10):
    ring = [grid[0, j, 0], grid[1, j, 0], grid[1, j, 1], grid[0, j, 1]]
    ring_up = [grid[0, j + 1, 0], grid[1, j + 1, 0], grid[1, j + 1, 1], grid[0, j + 1, 1]]
    for k in range(4):
      a, b, c, d = ring[k], ring[(k + 1) % 4], ring_up[k], ring_up[(k + 1) % 4]
      faces += [[a, b, d], [a, d, c]]
  for ring in ([grid[0, 0, 0], grid[1, 0, 0], grid[1, 0, 1], grid[0, 0, 1]],
               [grid[0, 10, 0], grid[1, 10, 0], grid[1, 10, 1], grid[0, 10, 1]]):
    faces += [[ring[0], ring[1], ring[2]], [ring[0], ring[2], ring[3]]]
  weights = np.stack([1.0 - vertices[:, 1], vertices[:, 1]], 1)
  centres = np.array([[0.0, 0.25, 0.0], [0.0, 0.75, 0.0]])
  angles = np.radians(60.0) * np.sin(2 * np.pi * np.arange(num_frames) / num_frames)
  bone_quat = np.zeros((num_frames, 2, 4))
  bone_trans = np.zeros((num_frames, 2, 3))
  for t, a in enumerate(angles):
    swing = Rotation.from_euler("z", a)
    bone_quat[t] = [[0, 0, 0, 1.0], swing.as_quat()]
    bone_trans[t] = [centres[0], [0, 0.5, 0] + swing.apply(centres[1] - [0, 0.5, 0])]
  colors = np.tile(np.array([[230, 140, 40]], np.uint8), (vertices.shape[0], 1))
  rig = gltf_writer.Rig(rest_vertices=vertices, faces=np.asarray(faces, np.int32),
                        skin_weights=weights, rest_bone_quat=np.tile([0, 0, 0, 1.0], (2, 1)),
                        rest_bone_trans=centres, bone_quat=bone_quat, bone_trans=bone_trans,
                        fps=fps, vertex_colors=colors, name="bar")
  glb = gltf_writer.glb_bytes(rig)
  reach = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.87, 0.75, 0.0], [-0.87, 0.75, 0.0]])
  return glb, np.concatenate([vertices, reach])


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  if not _three_installed():
    pytest.skip("three.js not installed")
  folder = tmp_path_factory.mktemp("viewer")
  glb, points = swinging_bar_glb()
  (folder / "bar.glb").write_bytes(glb)
  center = (points.min(0) + points.max(0)) / 2
  radius = float(np.linalg.norm(points - center, axis=1).max())
  viewer.write_viewer(folder / "bar.html", glb, "bar", center, radius, 12.0, 24)
  return folder / "bar.html"


# ----------------------------------------------------------------------------
# Content (no browser needed).


@needs_three
def test_page_is_self_contained(page):
  text = page.read_text()
  imports = json.loads(re.search(r'<script type="importmap">(.*?)</script>', text, re.S).group(1))
  assert set(imports["imports"]) >= {"three", "three-addons/GLTFLoader.js",
                                     "three-addons/OrbitControls.js"}
  assert all(url.startswith("data:text/javascript;base64,") for url in imports["imports"].values())
  assert "<script src" not in text and "<link" not in text  # nothing fetched
  assert "MIT License" in text and "three.js authors" in text


@needs_three
def test_rewritten_modules_only_import_map_keys():
  modules = viewer.collect_modules(viewer.three_package_dir())
  for key, source in modules.items():
    for match in viewer._IMPORT_RE.finditer(source):  # pylint: disable=protected-access
      assert match.group(3) in modules, (key, match.group(3))


def test_missing_three_is_a_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(viewer, "ASSETS_DIR", tmp_path)
  monkeypatch.setenv("ANIMDREAMER_THREE_DIR", str(tmp_path / "nothing"))
  with pytest.raises(UserError, match="npm ci --prefix animdreamer_jax/export/viewer_assets"):
    viewer.three_package_dir()


# ----------------------------------------------------------------------------
# Headless Chromium.


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):  # keep the test output clean
    del args


@pytest.fixture(scope="module")
def served(page):
  handler = functools.partial(_QuietHandler, directory=str(page.parent))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield f"http://127.0.0.1:{server.server_address[1]}/{page.name}"
  server.shutdown()
  server.server_close()


def _chromium_run(url: str, tmp: pathlib.Path, budget_ms: int, extra: list[str]) -> str:
  args = [_chromium(), "--headless", "--no-sandbox", "--use-angle=swiftshader",
          "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--hide-scrollbars",
          f"--user-data-dir={tmp / 'profile'}", "--window-size=320,240",
          f"--virtual-time-budget={budget_ms}", *extra, url]
  result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def _screenshot(url: str, tmp: pathlib.Path, budget_ms: int, name: str) -> np.ndarray:
  import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
  path = tmp / name
  _chromium_run(url, tmp, budget_ms, [f"--screenshot={path}"])
  return imageio.imread(path)[..., :3].astype(np.int64)


def _animal(image: np.ndarray) -> np.ndarray:
  return np.abs(image - BACKGROUND).sum(-1) > 40


@pytest.mark.node
@pytest.mark.skipif(_chromium() is None,
                    reason="needs Debian `chromium` (apt-get install chromium)")
@needs_three
def test_page_in_headless_chromium(served, tmp_path):
  # The page loads without an error (the status line empties when the asset is up).
  dom = _chromium_run(served + "?t=0", tmp_path, 3000, ["--dump-dom"])
  status = re.search(r'<span id="status">(.*?)</span>', dom, re.S).group(1)
  assert status == "", status
  # Two fixed instants: the bar swings right (t = 0.5 s) and left (1.5 s).
  right = _screenshot(served + "?t=0.5&hud=0", tmp_path, 3000, "right.png")
  left = _screenshot(served + "?t=1.5&hud=0", tmp_path, 3000, "left.png")
  for image in (right, left):
    assert 500 < _animal(image).sum() < 0.5 * image.shape[0] * image.shape[1]
    assert np.all(np.abs(image[0, 0] - BACKGROUND) <= 2)  # the corner stays background
  moved = _animal(right) ^ _animal(left)
  assert moved.sum() > 300
  # The orange box: most animal pixels are orange-ish (red > green > blue).
  pixels = right[_animal(right)]
  assert np.mean((pixels[:, 0] > pixels[:, 1]) & (pixels[:, 1] > pixels[:, 2])) > 0.8
  # Playing: the picture changes between two moments of the running animation.
  early = _screenshot(served + "?hud=0", tmp_path, 1200, "early.png")
  late = _screenshot(served + "?hud=0", tmp_path, 2000, "late.png")
  assert _animal(early).sum() > 500
  assert (_animal(early) ^ _animal(late)).sum() > 100
