"""A single static HTML page that plays an exported .glb with three.js, offline.

The page is self-contained: the .glb and the three.js modules it needs
(three.module.js + three.core.js, GLTFLoader, OrbitControls and their helpers)
are embedded as base64 `data:` URLs behind an import map, so it opens from
disk (file://) or any static server with no network. three.js is not part of
this repository: it is taken at export time from an npm install,

  npm ci --prefix animdreamer_jax/export/viewer_assets

(`viewer_assets/package.json` pins the version; `node_modules` is git-ignored),
or from the folder named by the ANIMDREAMER_THREE_DIR environment variable
(the `three` package folder). Its MIT licence is copied into the page.

Relative imports inside the embedded modules are rewritten to import-map keys
("three-local/<path in the package>"), since a module loaded from a data: URL
has no base URL to resolve them against.

Page controls: drag to orbit, wheel to zoom; a play/pause button (space), a
timeline slider (dragging it pauses on the frame), arrow keys step one frame
from the frame shown (clamped at the first and last frame, no wrap; stepping
pauses); a "bones" button (B) draws the armature (three.js SkeletonHelper: a
line from each joint to its parent joint, flat rig or tree, plus a dot per
joint) over the mesh; F frames the model again. Paused, the pose is always a
whole frame, the one the HUD names. Playing loops every num_frames / fps
seconds. The camera starts framing the box given by the caller (the clip's
posed vertices, root motion included). URL parameters: `?t=SECONDS` shows
that instant, paused (stills, tests); `?hud=0` hides the overlay (text and
controls).

The page keeps its state in `window.__viewer` (ready, error, time, frame,
numFrames, playing, bones, joints, segments) for tests.
"""

from __future__ import annotations

import base64
import html
import json
import os
import pathlib
import re
from typing import Optional

import numpy as np

from animdreamer_jax import files
from animdreamer_jax.errors import UserError
from animdreamer_jax.export import gltf_writer

ASSETS_DIR = pathlib.Path(__file__).resolve().parent / "viewer_assets"
INSTALL_HINT = "npm ci --prefix animdreamer_jax/export/viewer_assets"
_ENTRY_MODULES = {
    "three": "build/three.module.js",
    "three-addons/GLTFLoader.js": "examples/jsm/loaders/GLTFLoader.js",
    "three-addons/OrbitControls.js": "examples/jsm/controls/OrbitControls.js",
}
# import ... from '...';  export ... from '...';  import '...';  at a line start.
_IMPORT_RE = re.compile(
    r"""^(\s*(?:import|export)\b[^;'"]*?\bfrom\s*|\s*import\s*)(['"])([^'"]+)\2""",
    re.MULTILINE)


def node_modules_dir() -> pathlib.Path:
  """The git-ignored node_modules of viewer_assets (may not exist)."""
  return ASSETS_DIR / "node_modules"


def three_package_dir() -> pathlib.Path:
  """The npm `three` package folder: $ANIMDREAMER_THREE_DIR or viewer_assets/node_modules/three.

  Raises:
    UserError: not installed.
  """
  env = os.environ.get("ANIMDREAMER_THREE_DIR")
  candidates = [pathlib.Path(env)] if env else []
  candidates.append(node_modules_dir() / "three")
  for folder in candidates:
    if all((folder / rel).is_file() for rel in _ENTRY_MODULES.values()):
      return folder
  raise UserError(f"{candidates[0]}: three.js is not installed (needed for the viewer page); "
                  f"run `{INSTALL_HINT}` or set ANIMDREAMER_THREE_DIR to an npm `three` folder")


def _module_key(rel: str) -> str:
  for key, entry in _ENTRY_MODULES.items():
    if entry == rel:
      return key
  return "three-local/" + rel


def collect_modules(three_dir: pathlib.Path) -> dict[str, str]:
  """Import-map key -> module source with imports rewritten to keys.

  Follows relative imports from the entry modules; bare `three` stays `three`.
  """
  sources: dict[str, str] = {}
  pending = list(_ENTRY_MODULES.values())
  root = three_dir.resolve()
  while pending:
    rel = pending.pop()
    key = _module_key(rel)
    if key in sources:
      continue
    path = (root / rel).resolve()
    if root not in path.parents or not path.is_file():
      raise UserError(f"{path}: module imported by the three.js viewer files is missing")
    text = path.read_text(encoding="utf-8")

    def rewrite(match, base=path.parent):
      specifier = match.group(3)
      if specifier.startswith("."):
        target = (base / specifier).resolve().relative_to(root).as_posix()
        pending.append(target)
        specifier = _module_key(target)
      elif specifier != "three":
        raise UserError(f"{path}: unexpected import '{specifier}' in three.js")
      return f"{match.group(1)}{match.group(2)}{specifier}{match.group(2)}"

    sources[key] = _IMPORT_RE.sub(rewrite, text)
  return sources


def _data_url(mime: str, data: bytes) -> str:
  return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<!--
__LICENSE__
-->
<style>
  html, body { margin: 0; height: 100%; overflow: hidden; background: #1e2126; }
  canvas { display: block; }
  #hud { position: absolute; left: 10px; top: 8px; color: #d8dde6; font: 13px/1.4 sans-serif;
         text-shadow: 0 1px 2px #000; pointer-events: none; }
  #status { color: #ffb0a0; }
  #controls { position: absolute; left: 8px; right: 8px; bottom: 8px; display: flex; gap: 6px;
              align-items: center; font: 12px sans-serif; }
  #controls button { font: inherit; color: #d8dde6; background: #2e333b; border: 1px solid #4a515c;
                     border-radius: 3px; padding: 2px 8px; min-width: 52px; cursor: pointer; }
  #controls button[aria-pressed="true"] { background: #00a8c0; border-color: #00e5ff; color: #fff; }
  #controls button:disabled { opacity: 0.4; cursor: default; }
  #timeline { flex: 1; min-width: 40px; margin: 0; }
</style>
<script type="importmap">
__IMPORT_MAP__
</script>
</head>
<body>
<div id="hud"><b>__TITLE__</b><br><span id="frame"></span><br>
<span>drag: orbit &middot; wheel: zoom &middot; space: play/pause &middot;
&larr;/&rarr;: step &middot; B: bones &middot; F: frame</span><br>
<span id="status">loading&hellip;</span></div>
<div id="controls">
<button id="play" type="button" title="play/pause (space)" disabled>play</button>
<input id="timeline" type="range" min="0" max="0" step="1" value="0"
       title="frame (&larr;/&rarr;)" aria-label="frame" disabled>
<button id="bones" type="button" title="show the skeleton (B)" aria-pressed="false"
        disabled>bones</button>
</div>
<script type="module">
import * as THREE from 'three';
import { GLTFLoader } from 'three-addons/GLTFLoader.js';
import { OrbitControls } from 'three-addons/OrbitControls.js';

const CONFIG = __CONFIG__;
const GLB_BASE64 = '__GLB__';
const FPS = CONFIG.fps;
const LAST_FRAME = CONFIG.num_frames - 1;
// Playing loops every num_frames / fps seconds, like the video: the last frame
// is held for one frame time before frame 0 comes back.
const PERIOD = CONFIG.num_frames / FPS;
const FILL = 0.9;  // the clip's bounding box reaches this share of the half view
const VERTICAL_FOV = 35, AZIMUTH = 35, ELEVATION = 20;  // degrees
const BONE_COLOR = 0x00e5ff, BONE_TIP_COLOR = 0xffffff;  // visible on the mesh and the background
const JOINT_SIZE_PX = 6;

const status = document.getElementById('status');
const frameText = document.getElementById('frame');
const playButton = document.getElementById('play');
const timeline = document.getElementById('timeline');
const bonesButton = document.getElementById('bones');
// The page's state, read by tests (and handy in the console).
const state = window.__viewer = {
  ready: false, error: null, time: 0, frame: 0, numFrames: CONFIG.num_frames, playing: false,
  bones: false, joints: 0, segments: [] };

function fail(message) {
  status.textContent = 'error: ' + message;
  state.error = String(message);
}

try {
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setSize(window.innerWidth, window.innerHeight);
  renderer.setClearColor(0x1e2126);
  document.body.insertBefore(renderer.domElement, document.body.firstChild);

  const scene = new THREE.Scene();
  scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 2.0));
  const sun = new THREE.DirectionalLight(0xffffff, 2.0);
  sun.position.set(1, 2, 1.5);
  scene.add(sun);

  const box = new THREE.Box3(new THREE.Vector3(...CONFIG.bounds[0]),
                             new THREE.Vector3(...CONFIG.bounds[1]));
  const center = box.getCenter(new THREE.Vector3());
  const radius = Math.max(box.getSize(new THREE.Vector3()).length() / 2, 1e-6);
  const camera = new THREE.PerspectiveCamera(VERTICAL_FOV, window.innerWidth / window.innerHeight,
                                             radius / 100, radius * 100);
  const controls = new OrbitControls(camera, renderer.domElement);

  // The camera looks along a fixed azimuth/elevation from the closest place
  // that has every corner of the box inside FILL of the view. In the camera's
  // axes (right, up, back) a corner c is in view from p when
  // |c_x - p_x| <= tan(half fov) (p_z - c_z), and likewise for y: linear in p,
  // so per axis p_z >= A - p_x / tan and p_z >= B + p_x / tan with
  // A = max(c_z + c_x / tan), B = max(c_z - c_x / tan); the lowest p_z is
  // (A + B) / 2, at p_x = (A - B) tan / 2 (the box's image centred).
  function frameModel() {
    const az = THREE.MathUtils.degToRad(AZIMUTH), el = THREE.MathUtils.degToRad(ELEVATION);
    const back = new THREE.Vector3(Math.cos(el) * Math.sin(az), Math.sin(el),
                                   Math.cos(el) * Math.cos(az));
    const right = new THREE.Vector3(0, 1, 0).cross(back).normalize();
    const up = new THREE.Vector3().crossVectors(back, right);
    const tanY = FILL * Math.tan(THREE.MathUtils.degToRad(VERTICAL_FOV / 2));
    const tanX = tanY * camera.aspect;
    const bounds = { xPlus: -Infinity, xMinus: -Infinity, yPlus: -Infinity, yMinus: -Infinity,
                     nearest: -Infinity };
    const corner = new THREE.Vector3();
    for (let i = 0; i < 8; i++) {
      corner.set(i & 1 ? box.max.x : box.min.x, i & 2 ? box.max.y : box.min.y,
                 i & 4 ? box.max.z : box.min.z);
      const x = corner.dot(right), y = corner.dot(up), z = corner.dot(back);
      bounds.xPlus = Math.max(bounds.xPlus, z + x / tanX);
      bounds.xMinus = Math.max(bounds.xMinus, z - x / tanX);
      bounds.yPlus = Math.max(bounds.yPlus, z + y / tanY);
      bounds.yMinus = Math.max(bounds.yMinus, z - y / tanY);
      bounds.nearest = Math.max(bounds.nearest, z);
    }
    const px = (bounds.xPlus - bounds.xMinus) * tanX / 2;
    const py = (bounds.yPlus - bounds.yMinus) * tanY / 2;
    const pz = Math.max((bounds.xPlus + bounds.xMinus) / 2, (bounds.yPlus + bounds.yMinus) / 2,
                        bounds.nearest + radius / 50);
    camera.position.set(0, 0, 0).addScaledVector(right, px).addScaledVector(up, py)
        .addScaledVector(back, pz);
    // Orbit about the point of the view axis level with the box's centre.
    controls.target.copy(camera.position).addScaledVector(back, center.dot(back) - pz);
    camera.near = radius / 100;
    camera.far = 100 * (pz - center.dot(back) + radius);
    camera.updateProjectionMatrix();
    controls.update();
  }
  frameModel();

  const bytes = Uint8Array.from(atob(GLB_BASE64), (c) => c.charCodeAt(0));
  const params = new URLSearchParams(window.location.search);
  const fixedTime = params.has('t') ? parseFloat(params.get('t')) : null;
  if (params.get('hud') === '0') {
    document.getElementById('hud').style.display = 'none';
    document.getElementById('controls').style.display = 'none';
  }
  let mixer = null, action = null, clip = null, skeleton = null, joints = null;
  let playing = false;
  let time = 0;  // seconds into the loop, in [0, PERIOD)
  const clock = new THREE.Clock();

  // The frame whose pose is (nearest to) the one shown.
  function currentFrame() {
    return Math.min(Math.max(Math.round(time * FPS), 0), LAST_FRAME);
  }

  function updateHud() {
    const frame = currentFrame();
    frameText.textContent = 'frame ' + frame + ' / ' + LAST_FRAME + (playing ? '' : ' (paused)');
    timeline.value = String(frame);
    playButton.textContent = playing ? 'pause' : 'play';
    state.frame = frame;
    state.playing = playing;
  }

  // Shows the clip at `seconds` into the loop (past the last key: the last frame).
  function showTime(seconds) {
    time = seconds;
    if (mixer) {
      // The action's own looping would wrap the last key's time to 0: set the
      // time and evaluate it as is.
      action.time = Math.min(time, clip.duration);
      mixer.update(0);
      state.time = action.time;
    }
    updateHud();
  }

  function showFrame(frame) {
    showTime(Math.min(Math.max(frame, 0), LAST_FRAME) / FPS);
  }

  function setPlaying(play) {
    if (!mixer) return;
    playing = play;
    if (playing) clock.getDelta();  // no jump by the time spent paused
    else showFrame(currentFrame());  // paused on a whole frame: the pose is the HUD's
    updateHud();
  }

  // Stepping clamps at the first and last frame (no wrap).
  function step(frames) {
    if (!mixer) return;
    const frame = currentFrame();
    setPlaying(false);
    showFrame(frame + frames);
  }

  function setBones(visible) {
    if (!skeleton) return;
    skeleton.visible = joints.visible = visible;
    bonesButton.setAttribute('aria-pressed', String(visible));
    state.bones = visible;
  }

  // Joint dots at the bones' world positions (the helper's lines skip joints
  // without a bone parent, e.g. a lone root).
  function updateJoints() {
    if (!joints || !joints.visible) return;
    const position = joints.geometry.getAttribute('position');
    const world = new THREE.Vector3();
    skeleton.bones.forEach((bone, i) => {
      world.setFromMatrixPosition(bone.matrixWorld);
      position.setXYZ(i, world.x, world.y, world.z);
    });
    position.needsUpdate = true;
  }

  new GLTFLoader().parse(bytes.buffer, '', (gltf) => {
    scene.add(gltf.scene);
    gltf.scene.traverse((o) => { if (o.isMesh) o.frustumCulled = false; });
    clip = gltf.animations.find((a) => a.name === CONFIG.clip) || gltf.animations[0];
    skeleton = new THREE.SkeletonHelper(gltf.scene);
    if (skeleton.bones.length > 0) {
      skeleton.setColors(new THREE.Color(BONE_COLOR), new THREE.Color(BONE_TIP_COLOR));
      skeleton.renderOrder = 1;  // over the mesh (the helper ignores depth)
      const dots = new THREE.BufferGeometry();
      dots.setAttribute('position', new THREE.Float32BufferAttribute(
          new Float32Array(3 * skeleton.bones.length), 3));
      joints = new THREE.Points(dots, new THREE.PointsMaterial({
          color: BONE_COLOR, size: JOINT_SIZE_PX, sizeAttenuation: false, depthTest: false,
          depthWrite: false, transparent: true }));
      joints.renderOrder = 2;
      joints.frustumCulled = false;
      scene.add(skeleton, joints);
      state.joints = skeleton.bones.length;
      state.segments = skeleton.bones.filter((b) => b.parent && b.parent.isBone)
          .map((b) => [b.parent.name, b.name]);
      bonesButton.disabled = false;
      setBones(false);
    } else {
      skeleton = null;
    }
    if (clip) {
      mixer = new THREE.AnimationMixer(gltf.scene);
      action = mixer.clipAction(clip);
      action.play();
      timeline.max = String(LAST_FRAME);
      timeline.disabled = playButton.disabled = false;
      // ?t= shows that very instant (not snapped to a frame), paused.
      if (fixedTime !== null) showTime(((fixedTime % PERIOD) + PERIOD) % PERIOD);
      else { showTime(0); setPlaying(true); }
    }
    status.textContent = '';
    state.ready = true;
  }, (err) => fail(err && err.message ? err.message : err));

  playButton.addEventListener('click', () => setPlaying(!playing));
  bonesButton.addEventListener('click', () => setBones(!state.bones));
  timeline.addEventListener('pointerdown', () => setPlaying(false));
  timeline.addEventListener('input', () => {
    if (playing) setPlaying(false);
    showFrame(parseInt(timeline.value, 10));
  });
  window.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    // preventDefault: a focused button or slider must not act on the key as well.
    if (e.code === 'Space') setPlaying(!playing);
    else if (e.code === 'ArrowRight') step(1);
    else if (e.code === 'ArrowLeft') step(-1);
    else if (e.code === 'KeyB') setBones(!state.bones);
    else if (e.code === 'KeyF') frameModel();
    else return;
    e.preventDefault();
  });
  window.addEventListener('resize', () => {
    camera.aspect = window.innerWidth / window.innerHeight;
    camera.updateProjectionMatrix();
    renderer.setSize(window.innerWidth, window.innerHeight);
  });
  renderer.setAnimationLoop(() => {
    const dt = clock.getDelta();
    if (mixer && playing) showTime((time + dt) % PERIOD);
    controls.update();
    scene.updateMatrixWorld();
    updateJoints();
    renderer.render(scene, camera);
  });
} catch (e) {
  fail(e && e.message ? e.message : e);
}
</script>
</body>
</html>
"""


def clip_bounds(points) -> np.ndarray:
  """(2, 3): the min and max corner of the box holding (..., 3) points.

  For the viewer pass every frame's posed vertices in the exported frame (root
  motion included), so the camera frames the whole clip.
  """
  flat = np.asarray(points, np.float64).reshape(-1, 3)
  if flat.shape[0] == 0 or not np.all(np.isfinite(flat)):
    raise UserError("viewer: the posed points are empty or not finite (no box to frame)")
  return np.stack([flat.min(0), flat.max(0)])


def viewer_html(glb: bytes, title: str, bounds, fps: float, num_frames: int,
                three_dir: Optional[pathlib.Path] = None) -> str:
  """The page's text for the .glb bytes `glb`.

  Args:
    glb: the .glb file's bytes (embedded).
    title: shown in the tab and the corner.
    bounds: (2, 3) min and max corner of a box holding the animation in every
      frame (`clip_bounds`); the camera frames it, OrbitControls turn about its
      centre.
    fps, num_frames: of the animation clip (frame counter, timeline, stepping).
    three_dir: the npm `three` folder (default: `three_package_dir()`).
  """
  bounds = np.asarray(bounds, np.float64)
  if bounds.shape != (2, 3) or not np.all(np.isfinite(bounds)) or np.any(bounds[0] > bounds[1]):
    raise UserError(f"viewer: bounds must be a finite (2, 3) [min, max] box, got {bounds.tolist()}")
  three_dir = three_package_dir() if three_dir is None else pathlib.Path(three_dir)
  modules = collect_modules(three_dir)
  imports = {key: _data_url("text/javascript", src.encode("utf-8"))
             for key, src in sorted(modules.items())}
  licence_file = three_dir / "LICENSE"
  licence = licence_file.read_text(encoding="utf-8") if licence_file.is_file() else "MIT"
  version = ""
  package = three_dir / "package.json"
  if package.is_file():
    version = json.loads(package.read_text(encoding="utf-8")).get("version", "")
  licence = (f"Embedded: three.js {version} (npm package `three`), under its licence:\n\n"
             + licence.replace("--", "- -"))
  config = {"bounds": bounds.tolist(), "fps": float(fps), "num_frames": int(num_frames),
            "clip": gltf_writer.CLIP_NAME}
  page = _PAGE
  # Substitute the small fields first, the large base64 blobs last.
  page = page.replace("__TITLE__", html.escape(title))
  page = page.replace("__LICENSE__", licence)
  page = page.replace("__CONFIG__", json.dumps(config))
  page = page.replace("__IMPORT_MAP__", json.dumps({"imports": imports}, indent=1))
  return page.replace("__GLB__", base64.b64encode(glb).decode("ascii"))


def write_viewer(path: str | os.PathLike, glb: bytes, title: str, bounds, fps: float,
                 num_frames: int, three_dir: Optional[pathlib.Path] = None) -> None:
  """Writes the viewer page (see `viewer_html`) atomically."""
  text = viewer_html(glb, title, bounds, fps, num_frames, three_dir)
  files.save_text(path, text)
