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

Page controls: drag to orbit, wheel to zoom, space to pause/play, arrow keys to
step frames. URL parameters: `?t=SECONDS` shows that instant, paused (stills,
tests); `?hud=0` hides the text overlay.
"""

from __future__ import annotations

import base64
import html
import json
import os
import pathlib
import re
from typing import Optional

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
</style>
<script type="importmap">
__IMPORT_MAP__
</script>
</head>
<body>
<div id="hud"><b>__TITLE__</b><br><span id="frame"></span><br>
<span>drag: orbit &middot; wheel: zoom &middot; space: play/pause &middot;
&larr;/&rarr;: step</span><br>
<span id="status">loading&hellip;</span></div>
<script type="module">
import * as THREE from 'three';
import { GLTFLoader } from 'three-addons/GLTFLoader.js';
import { OrbitControls } from 'three-addons/OrbitControls.js';

const CONFIG = __CONFIG__;
const GLB_BASE64 = '__GLB__';
const status = document.getElementById('status');
const frameText = document.getElementById('frame');
window.__viewer = { ready: false, error: null, time: 0 };

function fail(message) {
  status.textContent = 'error: ' + message;
  window.__viewer.error = String(message);
}

try {
  const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
  renderer.setPixelRatio(window.devicePixelRatio);
  renderer.setSize(window.innerWidth, window.innerHeight);
  renderer.setClearColor(0x1e2126);
  document.body.appendChild(renderer.domElement);

  const scene = new THREE.Scene();
  scene.add(new THREE.HemisphereLight(0xffffff, 0x404040, 2.0));
  const sun = new THREE.DirectionalLight(0xffffff, 2.0);
  sun.position.set(1, 2, 1.5);
  scene.add(sun);

  const [cx, cy, cz] = CONFIG.center;
  const radius = CONFIG.radius;
  const camera = new THREE.PerspectiveCamera(35, window.innerWidth / window.innerHeight,
                                             radius / 100, radius * 100);
  const distance = 1.15 * radius / Math.sin(THREE.MathUtils.degToRad(35 / 2));
  const az = THREE.MathUtils.degToRad(35), el = THREE.MathUtils.degToRad(20);
  camera.position.set(cx + distance * Math.cos(el) * Math.sin(az), cy + distance * Math.sin(el),
                      cz + distance * Math.cos(el) * Math.cos(az));
  const controls = new OrbitControls(camera, renderer.domElement);
  controls.target.set(cx, cy, cz);
  controls.update();

  const bytes = Uint8Array.from(atob(GLB_BASE64), (c) => c.charCodeAt(0));
  const params = new URLSearchParams(window.location.search);
  const fixedTime = params.has('t') ? parseFloat(params.get('t')) : null;
  if (params.get('hud') === '0') document.getElementById('hud').style.display = 'none';
  let mixer = null, action = null, clip = null, playing = fixedTime === null;
  const clock = new THREE.Clock();

  new GLTFLoader().parse(bytes.buffer, '', (gltf) => {
    scene.add(gltf.scene);
    gltf.scene.traverse((o) => { if (o.isMesh) o.frustumCulled = false; });
    clip = gltf.animations.find((a) => a.name === CONFIG.clip) || gltf.animations[0];
    if (clip) {
      mixer = new THREE.AnimationMixer(gltf.scene);
      action = mixer.clipAction(clip);
      action.play();
      if (fixedTime !== null) mixer.setTime(fixedTime);
    }
    status.textContent = '';
    window.__viewer.ready = true;
  }, (err) => fail(err && err.message ? err.message : err));

  function step(frames) {
    if (!mixer) return;
    playing = false;
    const frame = Math.round(mixer.time * CONFIG.fps + frames);
    const t = Math.max(0, Math.min(clip.duration, frame / CONFIG.fps));
    mixer.setTime(t);
  }
  window.addEventListener('keydown', (e) => {
    if (e.code === 'Space') { playing = !playing; e.preventDefault(); }
    else if (e.code === 'ArrowRight') step(1);
    else if (e.code === 'ArrowLeft') step(-1);
  });
  window.addEventListener('resize', () => {
    camera.aspect = window.innerWidth / window.innerHeight;
    camera.updateProjectionMatrix();
    renderer.setSize(window.innerWidth, window.innerHeight);
  });
  renderer.setAnimationLoop(() => {
    const dt = clock.getDelta();
    if (mixer && playing) mixer.update(dt);
    if (mixer) {
      const t = clip.duration > 0 ? mixer.time % clip.duration : 0;
      window.__viewer.time = t;
      frameText.textContent = 'frame ' + Math.round(t * CONFIG.fps) + ' / ' +
          (CONFIG.num_frames - 1) + (playing ? '' : ' (paused)');
    }
    controls.update();
    renderer.render(scene, camera);
  });
} catch (e) {
  fail(e && e.message ? e.message : e);
}
</script>
</body>
</html>
"""


def viewer_html(glb: bytes, title: str, center, radius: float, fps: float, num_frames: int,
                three_dir: Optional[pathlib.Path] = None) -> str:
  """The page's text for the .glb bytes `glb`.

  Args:
    glb: the .glb file's bytes (embedded).
    title: shown in the tab and the corner.
    center, radius: a ball holding the animation in every frame (the camera
      frames it; OrbitControls turn about its centre).
    fps, num_frames: of the animation clip (for the frame counter).
    three_dir: the npm `three` folder (default: `three_package_dir()`).
  """
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
  config = {"center": [float(c) for c in center], "radius": float(radius), "fps": float(fps),
            "num_frames": int(num_frames), "clip": gltf_writer.CLIP_NAME}
  page = _PAGE
  # Substitute the small fields first, the large base64 blobs last.
  page = page.replace("__TITLE__", html.escape(title))
  page = page.replace("__LICENSE__", licence)
  page = page.replace("__CONFIG__", json.dumps(config))
  page = page.replace("__IMPORT_MAP__", json.dumps({"imports": imports}, indent=1))
  return page.replace("__GLB__", base64.b64encode(glb).decode("ascii"))


def write_viewer(path: str | os.PathLike, glb: bytes, title: str, center, radius: float,
                 fps: float, num_frames: int, three_dir: Optional[pathlib.Path] = None) -> None:
  """Writes the viewer page (see `viewer_html`) atomically."""
  text = viewer_html(glb, title, center, radius, fps, num_frames, three_dir)
  files.save_text(path, text)
