"""The self-contained three.js viewer page: offline content, and headless-Chromium checks.

The browser tests serve the page from a loopback HTTP server. One lets the
animation run (Chromium's virtual time), takes screenshots and checks that the
animal's pixels are there and move. The others drive the page like a user over
the DevTools protocol (`_Browser`: keys, clicks, screenshots, and the state the
page keeps in `window.__viewer`): bones toggle, play button, timeline slider,
arrow-key stepping, framing. Skipped without Chromium (Debian `chromium`) or
without three.js (`npm ci --prefix animdreamer_jax/export/viewer_assets`).
"""

from __future__ import annotations

import base64
import functools
import http.server
import io
import json
import os
import pathlib
import re
import select
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from animdreamer_jax import assets
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer
from animdreamer_jax.export import viewer

BACKGROUND = np.array([0x1E, 0x21, 0x26])  # the page's clear colour
NUM_FRAMES, FPS = 24, 12.0  # the test clip: 2 s
LAST_FRAME = NUM_FRAMES - 1


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


def swinging_bar_rig(num_frames: int = NUM_FRAMES, fps: float = FPS,
                     lower_bone_at_origin: bool = False,
                     root_travel: float = 0.0) -> gltf_writer.Rig:
  """A box on two bones; the upper bone swings +-60 degrees about z.

  Args:
    lower_bone_at_origin: put the lower (never moving) bone's frame at the
      origin instead of its centre; the skinned mesh is the same, and the upper
      bone's transform is then also its transform relative to the lower one
      (see `as_tree`).
    root_travel: root motion: the object moves this far along +x over the clip.
  """
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
  centres = np.array([[0.0, 0.0 if lower_bone_at_origin else 0.25, 0.0], [0.0, 0.75, 0.0]])
  angles = np.radians(60.0) * np.sin(2 * np.pi * np.arange(num_frames) / num_frames)
  bone_quat = np.zeros((num_frames, 2, 4))
  bone_trans = np.zeros((num_frames, 2, 3))
  for t, a in enumerate(angles):
    swing = Rotation.from_euler("z", a)
    bone_quat[t] = [[0, 0, 0, 1.0], swing.as_quat()]
    bone_trans[t] = [centres[0], [0, 0.5, 0] + swing.apply(centres[1] - [0, 0.5, 0])]
  root_to_world = None
  if root_travel:
    root_to_world = np.tile(np.eye(4), (num_frames, 1, 1))
    root_to_world[:, 0, 3] = np.linspace(0.0, root_travel, num_frames)
  colors = np.tile(np.array([[230, 140, 40]], np.uint8), (vertices.shape[0], 1))
  return gltf_writer.Rig(rest_vertices=vertices, faces=np.asarray(faces, np.int32),
                         skin_weights=weights, rest_bone_quat=np.tile([0, 0, 0, 1.0], (2, 1)),
                         rest_bone_trans=centres, bone_quat=bone_quat, bone_trans=bone_trans,
                         fps=fps, root_to_world=root_to_world, vertex_colors=colors, name="bar")


def as_tree(rig: gltf_writer.Rig) -> bytes:
  """The .glb of a `lower_bone_at_origin` bar with the upper bone a child of the lower one.

  The lower bone's transform is the identity in every frame, so the upper
  bone's local transform is unchanged by the reparenting: only the node tree
  changes (root -> bone_000 -> bone_001), as in a hierarchical armature.
  """
  assert np.allclose(rig.bone_trans[:, 0], 0) and np.allclose(rig.bone_quat[:, 0], [0, 0, 0, 1])
  doc, binary = gltf_writer.build_gltf(rig)
  nodes = {node["name"]: node for node in doc["nodes"]}
  nodes["root"]["children"] = [2]
  nodes["bone_000"]["children"] = [3]
  return gltf_writer.encode_glb(doc, binary)


def write_page(folder: pathlib.Path, name: str, glb: bytes) -> pathlib.Path:
  """The viewer page of `glb`, framed as the export command frames it (all frames' vertices)."""
  (folder / f"{name}.glb").write_bytes(glb)
  times = np.arange(NUM_FRAMES) / FPS
  posed = assets.load_gltf(folder / f"{name}.glb").pose(gltf_writer.CLIP_NAME, times)
  viewer.write_viewer(folder / f"{name}.html", glb, name, viewer.clip_bounds(posed), FPS,
                      NUM_FRAMES)
  return folder / f"{name}.html"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
  if not _three_installed():
    pytest.skip("three.js not installed")
  folder = tmp_path_factory.mktemp("viewer")
  write_page(folder, "tree", as_tree(swinging_bar_rig(lower_bone_at_origin=True)))
  write_page(folder, "flat0", gltf_writer.glb_bytes(swinging_bar_rig(lower_bone_at_origin=True)))
  write_page(folder, "travel", gltf_writer.glb_bytes(swinging_bar_rig(root_travel=3.0)))
  return write_page(folder, "bar", gltf_writer.glb_bytes(swinging_bar_rig()))


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


def test_clip_bounds():
  points = np.random.default_rng(0).normal(size=(5, 7, 3))
  bounds = viewer.clip_bounds(points)
  flat = points.reshape(-1, 3)
  expected = [[min(p[k] for p in flat) for k in range(3)],
              [max(p[k] for p in flat) for k in range(3)]]
  np.testing.assert_array_equal(bounds, expected)
  with pytest.raises(UserError, match="not finite"):
    viewer.clip_bounds(np.full((2, 3), np.nan))


@needs_three
def test_bad_bounds_are_a_clear_error():
  with pytest.raises(UserError, match=r"\(2, 3\) \[min, max\] box"):
    viewer.viewer_html(b"", "x", [[1, 0, 0], [0, 1, 1]], FPS, NUM_FRAMES)


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


# ----------------------------------------------------------------------------
# Headless Chromium driven over the DevTools protocol.


class _Browser:
  """Headless Chromium controlled over the DevTools protocol on a pipe (stdlib only).

  `--remote-debugging-pipe`: the browser reads commands on its fd 3 and writes
  replies and events on its fd 4, each a JSON message ended by a NUL byte.
  """

  def __init__(self, tmp: pathlib.Path, width: int = 320, height: int = 240):
    to_browser_r, self._to_browser = os.pipe()
    self._from_browser, from_browser_w = os.pipe()

    def at_fds_3_and_4():  # runs in the child before exec
      r, w = os.dup(to_browser_r), os.dup(from_browser_w)  # out of the way of 3 and 4
      os.dup2(r, 3)
      os.dup2(w, 4)

    self._process = subprocess.Popen(
        [_chromium(), "--headless", "--no-sandbox", "--use-angle=swiftshader",
         "--enable-unsafe-swiftshader", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={tmp / 'profile'}", f"--window-size={width},{height}",
         "--remote-debugging-pipe", "about:blank"],
        close_fds=False, preexec_fn=at_fds_3_and_4, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    self._buffer, self._id, self._session = b"", 0, None
    target = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
    self._session = self.send("Target.attachToTarget",
                              {"targetId": target["targetId"], "flatten": True})["sessionId"]
    self.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

  def send(self, method: str, params: dict | None = None, timeout_s: float = 60.0) -> dict:
    self._id += 1
    message = {"id": self._id, "method": method, "params": params or {}}
    if self._session:
      message["sessionId"] = self._session
    os.write(self._to_browser, json.dumps(message).encode() + b"\0")
    deadline = time.monotonic() + timeout_s
    while True:
      while b"\0" not in self._buffer:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
          raise TimeoutError(f"no reply to {method}")
        chunk = os.read(self._from_browser, 1 << 16)
        assert chunk, "the browser closed the pipe"
        self._buffer += chunk
      raw, self._buffer = self._buffer.split(b"\0", 1)
      reply = json.loads(raw)
      if reply.get("id") == self._id:  # (events have no id)
        assert "error" not in reply, (method, reply["error"])
        return reply["result"]

  def evaluate(self, expression: str):
    result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
    assert "exceptionDetails" not in result, result["exceptionDetails"]
    return result["result"].get("value")

  def wait_for(self, expression: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while not (value := self.evaluate(expression)):
      assert time.monotonic() < deadline, f"timed out waiting for {expression}"
      time.sleep(0.05)
    return value

  def open(self, url: str) -> None:
    self.send("Page.navigate", {"url": url})
    self.wait_for("window.__viewer !== undefined && "
                  "(window.__viewer.ready || window.__viewer.error)")
    assert self.state()["error"] is None, self.state()["error"]

  def state(self) -> dict:
    return self.evaluate("window.__viewer")

  def hud(self) -> str:
    return self.evaluate("document.getElementById('frame').textContent")

  def key(self, code: str, key: str, key_code: int) -> None:
    for kind in ("keyDown", "keyUp"):
      self.send("Input.dispatchKeyEvent", {"type": kind, "code": code, "key": key,
                                           "windowsVirtualKeyCode": key_code})

  def right(self) -> None:
    self.key("ArrowRight", "ArrowRight", 39)

  def left(self) -> None:
    self.key("ArrowLeft", "ArrowLeft", 37)

  def space(self) -> None:
    self.key("Space", " ", 32)

  def rect(self, element_id: str) -> dict:
    return self.evaluate(f"(() => {{ const r = document.getElementById('{element_id}')"
                         ".getBoundingClientRect(); return {left: r.left, top: r.top, "
                         "width: r.width, height: r.height}; })()")

  def click(self, x: float, y: float) -> None:
    for kind in ("mousePressed", "mouseReleased"):
      self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left",
                                             "clickCount": 1})

  def click_element(self, element_id: str) -> None:
    r = self.rect(element_id)
    self.click(r["left"] + r["width"] / 2, r["top"] + r["height"] / 2)

  def screenshot(self) -> np.ndarray:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
    self.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
    png = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])
    return imageio.imread(io.BytesIO(png))[..., :3].astype(np.int64)

  def close(self) -> None:
    try:
      self.send("Browser.close", timeout_s=10)
      self._process.wait(timeout=20)
    except (TimeoutError, AssertionError, OSError, subprocess.TimeoutExpired):
      self._process.kill()
      self._process.wait()
    os.close(self._to_browser)
    os.close(self._from_browser)


needs_chromium = pytest.mark.skipif(_chromium() is None,
                                    reason="needs Debian `chromium` (apt-get install chromium)")


@pytest.fixture
def browser(served, tmp_path):
  del served  # (the pages are served)
  driver = _Browser(tmp_path)
  yield driver
  driver.close()


def _sibling(served: str, name: str) -> str:
  return served.rsplit("/", 1)[0] + f"/{name}.html"


def _bone_pixels(image: np.ndarray) -> np.ndarray:
  """Pixels of the skeleton's colours (cyan to white): blue and green high, well above red."""
  return (image[..., 1] > 150) & (image[..., 2] > 150) & (image[..., 2] - image[..., 0] > 60)


@pytest.mark.node
@needs_chromium
@needs_three
def test_bones_toggle_draws_the_skeleton(served, browser):
  browser.open(served + "?t=0.5&hud=0")
  assert browser.state()["bones"] is False  # off by default
  assert browser.state()["joints"] == 3  # the root and two bones
  assert browser.state()["segments"] == [["root", "bone_000"], ["root", "bone_001"]]  # flat rig
  without = browser.screenshot()
  assert _bone_pixels(without).sum() == 0
  browser.key("KeyB", "b", 66)
  assert browser.state()["bones"] is True
  with_bones = browser.screenshot()
  drawn = _bone_pixels(with_bones)
  assert drawn.sum() > 40
  # Drawn over the mesh: some skeleton pixels where the mesh is without it.
  assert (drawn & _animal(without)).sum() > 10
  browser.key("KeyB", "b", 66)
  assert browser.state()["bones"] is False
  assert _bone_pixels(browser.screenshot()).sum() == 0


@pytest.mark.node
@needs_chromium
@needs_three
def test_bones_of_a_tree_armature(served, browser):
  # The same motion as a joint tree (root -> bone_000 -> bone_001): the same
  # pose on screen, and the skeleton's segments follow the tree.
  browser.open(_sibling(served, "flat0") + "?t=0.5&hud=0")
  flat = _animal(browser.screenshot())
  browser.open(_sibling(served, "tree") + "?t=0.5&hud=0")
  assert browser.state()["segments"] == [["root", "bone_000"], ["bone_000", "bone_001"]]
  tree = _animal(browser.screenshot())
  assert flat.sum() > 500 and (flat ^ tree).sum() < 0.02 * flat.sum()
  browser.key("KeyB", "b", 66)
  assert _bone_pixels(browser.screenshot()).sum() > 40


@pytest.mark.node
@needs_chromium
@needs_three
def test_play_button_and_timeline(served, browser):
  browser.open(served)
  assert browser.state()["playing"] is True
  assert browser.evaluate("document.getElementById('timeline').max") == str(LAST_FRAME)
  # The play/pause button.
  browser.click_element("play")
  assert browser.state()["playing"] is False
  paused_at = browser.state()["frame"]
  time.sleep(0.3)
  assert browser.state()["frame"] == paused_at
  assert browser.evaluate("document.getElementById('play').textContent") == "play"
  browser.click_element("play")
  assert browser.state()["playing"] is True
  # Clicking the slider's ends and middle sets the frame and pauses.
  slider = browser.rect("timeline")
  y = slider["top"] + slider["height"] / 2
  browser.click(slider["left"] + slider["width"] - 1, y)
  state = browser.state()
  assert state["playing"] is False and state["frame"] == LAST_FRAME
  assert browser.hud() == f"frame {LAST_FRAME} / {LAST_FRAME} (paused)"
  assert state["time"] == pytest.approx(LAST_FRAME / FPS, abs=1e-4)  # the pose at the last key
  browser.click(slider["left"] + slider["width"] / 2, y)
  assert abs(browser.state()["frame"] - LAST_FRAME / 2) <= 1.5
  browser.click(slider["left"] + 1, y)
  assert browser.state()["frame"] == 0 and browser.hud() == f"frame 0 / {LAST_FRAME} (paused)"
  # The picture follows the slider.
  first = _animal(browser.screenshot())
  browser.click(slider["left"] + slider["width"] / 4, y)
  assert (first ^ _animal(browser.screenshot())).sum() > 100


@pytest.mark.node
@needs_chromium
@needs_three
def test_arrow_keys_step_one_frame_after_playing(served, browser):
  browser.open(served)
  # Play past the end of the loop (the frame counter wraps), then stop early in the loop.
  browser.wait_for(f"window.__viewer.frame >= {LAST_FRAME - 6}")
  browser.wait_for("window.__viewer.frame <= 6 && window.__viewer.frame >= 2")
  before = browser.state()["frame"]
  browser.right()  # while playing: pauses one frame on
  after = browser.state()
  assert after["playing"] is False
  assert 1 <= after["frame"] - before <= 6  # (the frame may have advanced before the key)
  # Paused: each key moves exactly one frame from the frame shown, to the last one.
  browser.space()
  browser.wait_for("window.__viewer.frame > 8")
  browser.space()
  shown = browser.state()["frame"]
  assert browser.hud() == f"frame {shown} / {LAST_FRAME} (paused)"
  for expected in range(shown + 1, LAST_FRAME + 1):
    browser.right()
    assert browser.state()["frame"] == expected
  assert browser.hud() == f"frame {LAST_FRAME} / {LAST_FRAME} (paused)"
  assert browser.state()["time"] == pytest.approx(LAST_FRAME / FPS, abs=1e-4)
  browser.right()  # clamped at the last frame (no wrap)
  assert browser.state()["frame"] == LAST_FRAME
  browser.left()
  assert browser.state()["frame"] == LAST_FRAME - 1
  assert browser.hud() == f"frame {LAST_FRAME - 1} / {LAST_FRAME} (paused)"
  for _ in range(LAST_FRAME + 2):
    browser.left()
  assert browser.state()["frame"] == 0  # clamped at the first frame
  assert browser.state()["time"] == 0
  # A focused control does not act on the keys as well (one step per key).
  browser.click_element("bones")  # (focuses the button)
  browser.right()
  assert browser.state()["frame"] == 1
  slider = browser.rect("timeline")
  browser.click(slider["left"] + 1, slider["top"] + slider["height"] / 2)  # frame 0, focused
  browser.right()
  assert browser.state()["frame"] == 1


def _extent(mask: np.ndarray) -> tuple[float, float]:
  """The share of the image's width and height spanned by the mask's pixels."""
  ys, xs = np.nonzero(mask)
  return (xs.max() - xs.min() + 1) / mask.shape[1], (ys.max() - ys.min() + 1) / mask.shape[0]


@pytest.mark.node
@needs_chromium
@needs_three
def test_camera_frames_the_clip(served, browser):
  # The bar over its swing (upright, swung right, swung left): the whole motion
  # in view and filling it.
  swing = np.zeros((240, 320), bool)
  for seconds in (0.0, 0.5, 1.5):
    browser.open(served + f"?t={seconds}&hud=0")
    swing |= _animal(browser.screenshot())
  assert not (swing[0].any() or swing[-1].any() or swing[:, 0].any() or swing[:, -1].any())
  assert max(_extent(swing)) > 0.68, _extent(swing)  # (0.73; a bounding ball gave 0.59)
  assert swing.mean() > 0.08, swing.mean()
  # Root motion: the bar travels 3 units (3x its height); the first and the last
  # frame are both in view, and together they span most of the width.
  browser.open(_sibling(served, "travel") + "?t=0&hud=0")
  start = _animal(browser.screenshot())
  browser.open(_sibling(served, "travel") + f"?t={LAST_FRAME / FPS}&hud=0")
  end = _animal(browser.screenshot())
  for mask in (start, end):
    assert mask.sum() > 200
    assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
  assert _extent(start | end)[0] > 0.8, _extent(start | end)  # (0.90)
