"""glTF loading and posing vs three.js goldens and slow loop references."""

from __future__ import annotations

import base64
import json
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from scipy.spatial.transform import Slerp

from animdreamer_jax import assets
from animdreamer_jax.assets import gltf
from animdreamer_jax.errors import UserError

GOLDENS = pathlib.Path(__file__).parent / "data" / "threejs_goldens"
TOOLS = pathlib.Path(__file__).parent / "tools"
ANIMALS = {
    "khronos_fox": "khronos_fox/Fox.gltf",
    "quaternius_fox": "quaternius_animals/Fox.glb",
    "quaternius_deer": "quaternius_animals/Deer.glb",
    "quaternius_wolf": "quaternius_animals/Wolf.glb",
}
RELATIVE_TOLERANCE = 1e-5  # of the rest-pose bounding-box diagonal


def _bbox_diagonal(points: np.ndarray) -> float:
  return float(np.linalg.norm(points.max(0) - points.min(0)))


def _compare_to_threejs(asset: gltf.GltfAsset, golden) -> float:
  """Worst |python - three.js| over vertices and joints / bbox diagonal."""
  idx = golden["vertex_indices"]
  assert asset.rest_vertices.shape[0] == int(golden["num_vertices"])
  diag = _bbox_diagonal(asset.rest_vertices)
  worst = 0.0
  num_joints = golden["joint_positions"].shape[2]
  for c, clip in enumerate(golden["clip_names"]):
    times = golden["times"][c]
    posed = asset.pose(str(clip), times)
    assert posed.shape == (times.size,) + asset.rest_vertices.shape
    worst = max(worst, np.abs(posed[:, idx] - golden["positions"][c]).max())
    joints = asset.joint_world_positions(str(clip), times)[:, :num_joints]
    worst = max(worst, np.abs(joints - golden["joint_positions"][c]).max())
  return float(worst / diag)


# ----------------------------------------------------------------------------
# Posing vs three.js.


@pytest.mark.parametrize("name", list(ANIMALS))
def test_pose_matches_threejs_goldens(shared_assets, name):
  golden = np.load(GOLDENS / f"{name}.npz")
  asset = assets.load_gltf(shared_assets / ANIMALS[name])
  assert sorted(map(str, golden["clip_names"])) == sorted(asset.clip_names)
  # The goldens do pose the animal (not just the rest mesh).
  moved = np.abs(golden["positions"]
                 - golden["rest_positions"][None, None]).max()
  assert moved > 0.05 * _bbox_diagonal(asset.rest_vertices)
  # No morph targets or rigid meshes here: the rest mesh is POSITION as is.
  np.testing.assert_array_equal(
      asset.rest_vertices[golden["vertex_indices"]], golden["rest_positions"])
  assert _compare_to_threejs(asset, golden) < RELATIVE_TOLERANCE


def test_bundled_demo_animal_matches_shared_copy(repo_root):
  golden = np.load(GOLDENS / "khronos_fox.npz")
  asset = assets.load_gltf(repo_root / "third_party/khronos_fox/Fox.gltf")
  assert _compare_to_threejs(asset, golden) < RELATIVE_TOLERANCE


def _node_and_three_available() -> bool:
  return (shutil.which("node") is not None
          and (TOOLS / "node_modules" / "three").is_dir())


def _run_threejs(asset_path, out, *args):
  subprocess.run(["node", str(TOOLS / "threejs_pose.mjs"), "--asset",
                  str(asset_path), "--out", str(out), "--all-vertices", *args],
                 check=True, capture_output=True, text=True, timeout=120)
  return np.load(out)


@pytest.mark.node
@pytest.mark.skipif(not _node_and_three_available(),
                    reason="needs node and `cd tests/tools && npm install`")
@pytest.mark.parametrize("name,clips", [("khronos_fox", "Survey,Walk,Run"),
                                        ("quaternius_deer", "Walk,Eating")])
def test_pose_matches_threejs_live(shared_assets, tmp_path, name, clips):
  golden = _run_threejs(shared_assets / ANIMALS[name], tmp_path / "g.npz",
                        "--clips", clips, "--fractions", "0.05,0.5,0.95")
  asset = assets.load_gltf(shared_assets / ANIMALS[name])
  assert _compare_to_threejs(asset, golden) < RELATIVE_TOLERANCE


@pytest.mark.node
@pytest.mark.skipif(not _node_and_three_available(),
                    reason="needs node and `cd tests/tools && npm install`")
def test_synthetic_asset_matches_threejs_live(tmp_path):
  # CUBICSPLINE / STEP samplers, morph targets, sparse accessors, rigid and
  # mirrored meshes, triangle strips: none of them is in the animals.
  path = _write_synthetic(tmp_path, glb=True)
  # Fractions of each clip's duration: past the end three.js loops while a
  # glTF sampler clamps.
  golden = _run_threejs(path, tmp_path / "g.npz",
                        "--fractions", "0,0.07,0.2,0.33,0.47,0.6,0.8,0.99")
  asset = assets.load_gltf(path)
  assert _compare_to_threejs(asset, golden) < RELATIVE_TOLERANCE


# ----------------------------------------------------------------------------
# Mesh data vs independent readers / the asset manifest.


def _glb_chunks(path: pathlib.Path):
  raw = path.read_bytes()
  offset, json_doc, binary = 12, None, None
  while offset < len(raw):
    length, kind = struct.unpack_from("<II", raw, offset)
    chunk = raw[offset + 8: offset + 8 + length]
    if kind == 0x4E4F534A:
      json_doc = json.loads(chunk)
    else:
      binary = chunk
    offset += 8 + length
  return json_doc, binary


def _packed_accessor(doc, binary, index):
  acc = doc["accessors"][index]
  view = doc["bufferViews"][acc["bufferView"]]
  dtype = np.dtype({5121: "<u1", 5123: "<u2", 5125: "<u4", 5126: "<f4"}[
      acc["componentType"]])
  width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}[
      acc["type"]]
  assert view.get("byteStride", dtype.itemsize * width) == (
      dtype.itemsize * width)  # tightly packed
  start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
  return np.frombuffer(binary, dtype, acc["count"] * width,
                       start).reshape(acc["count"], width)


@pytest.mark.parametrize("name", ["quaternius_fox", "quaternius_deer",
                                  "quaternius_wolf"])
def test_quaternius_mesh_data(shared_assets, name):
  manifest = json.loads((shared_assets / "manifest.json").read_text())[name]
  asset = assets.load_gltf(shared_assets / ANIMALS[name])
  assert asset.rest_vertices.shape == (manifest["vertices"], 3)
  assert asset.faces.shape == (manifest["triangles"], 3)
  assert asset.faces.dtype == np.int32
  assert asset.skin_weights.shape == (manifest["vertices"],
                                      manifest["joints"])
  np.testing.assert_allclose(asset.skin_weights.sum(1), 1.0, atol=1e-6)
  assert set(asset.clip_names) == set(manifest["clips"])
  for clip, info in manifest["clips"].items():
    assert asset.clip_num_keys(clip) == info["keys"]
    assert asset.clip_duration(clip) == pytest.approx(info["duration_s"],
                                                      abs=1e-4)
  # Independent read of the primitives: positions, indices, colours.
  doc, binary = _glb_chunks(shared_assets / ANIMALS[name])
  offset, faces, colors = 0, [], []
  for prim in doc["meshes"][0]["primitives"]:
    pos = _packed_accessor(doc, binary, prim["attributes"]["POSITION"])
    np.testing.assert_array_equal(
        asset.rest_vertices[offset:offset + len(pos)], pos)
    idx = _packed_accessor(doc, binary, prim["indices"]).reshape(-1, 3)
    faces.append(idx + offset)
    factor = np.asarray(doc["materials"][prim["material"]][
        "pbrMetallicRoughness"]["baseColorFactor"][:3])
    srgb = np.where(factor <= 0.0031308, 12.92 * factor,
                    1.055 * factor ** (1 / 2.4) - 0.055)
    colors.append(np.tile(np.round(srgb * 255), (len(pos), 1)))
    offset += len(pos)
  np.testing.assert_array_equal(asset.faces, np.concatenate(faces))
  np.testing.assert_array_equal(asset.vertex_colors, np.concatenate(colors))


def test_khronos_fox_texture_colours(shared_assets):
  import cv2  # pylint: disable=g-import-not-at-top

  path = shared_assets / ANIMALS["khronos_fox"]
  asset = assets.load_gltf(path)
  assert asset.rest_vertices.shape == (1728, 3)
  np.testing.assert_array_equal(asset.faces,
                                np.arange(1728).reshape(-1, 3))
  doc = json.loads(path.read_text())
  binary = (path.parent / "Fox.bin").read_bytes()
  uv_accessor = doc["meshes"][0]["primitives"][0]["attributes"]["TEXCOORD_0"]
  uv = _packed_accessor(doc, binary, uv_accessor).astype(np.float32)
  image = cv2.imread(str(path.parent / "Texture.png"))[:, :, ::-1] / 255.0
  linear = np.where(image <= 0.04045, image / 12.92,
                    ((image + 0.055) / 1.055) ** 2.4).astype(np.float32)
  height, width = linear.shape[:2]
  # OpenCV's bilinear remap (pixel centres at integers, wrap-around) as the
  # reference sampler; glTF UV (0, 0) is the image's top-left corner.
  map_x = (uv[:, 0] * width - 0.5).reshape(1, -1)
  map_y = (uv[:, 1] * height - 0.5).reshape(1, -1)
  sampled = cv2.remap(linear, map_x, map_y, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_WRAP)[0]
  srgb = np.where(sampled <= 0.0031308, 12.92 * sampled,
                  1.055 * np.clip(sampled, 0, 1) ** (1 / 2.4) - 0.055)
  expected = np.round(srgb * 255)
  # OpenCV interpolates with 5-bit fixed-point weights: allow 1 level.
  assert np.abs(asset.vertex_colors.astype(int) - expected).max() <= 1
  assert len(np.unique(asset.vertex_colors, axis=0)) > 5


# ----------------------------------------------------------------------------
# Rest pose: an animation that puts every joint at its bind pose gives back
# the stored mesh (skin matrices are identities).


def _trs_of(matrix):
  scale = np.linalg.norm(matrix[:3, :3], axis=0)
  quat = Rotation.from_matrix(matrix[:3, :3] / scale).as_quat()
  return matrix[:3, 3], quat, scale


def _local_of(node):
  if "matrix" in node:
    return np.asarray(node["matrix"], np.float64).reshape(4, 4).T
  m = np.eye(4)
  r = Rotation.from_quat(node.get("rotation", [0, 0, 0, 1])).as_matrix()
  m[:3, :3] = r * np.asarray(node.get("scale", [1, 1, 1]))
  m[:3, 3] = node.get("translation", [0, 0, 0])
  return m


def _add_bind_pose_clip(doc, inverse_binds):
  """Adds clip "Bind": one key per joint at its bind-pose local TRS."""
  joints = doc["skins"][0]["joints"]
  bind_global = {j: np.linalg.inv(m) for j, m in zip(joints, inverse_binds)}
  parent = {c: p for p, n in enumerate(doc["nodes"])
            for c in n.get("children", [])}
  globals_ = {}

  def global_of(n):  # bind-pose global: joints fixed, others from the file
    if n not in globals_:
      if n in bind_global:
        globals_[n] = bind_global[n]
      else:
        up = global_of(parent[n]) if n in parent else np.eye(4)
        globals_[n] = up @ _local_of(doc["nodes"][n])
    return globals_[n]

  blob, samplers, channels = bytearray(), [], []
  doc["bufferViews"].append({"buffer": len(doc["buffers"]), "byteOffset": 0,
                             "byteLength": 0})
  view = len(doc["bufferViews"]) - 1

  def accessor(values, kind):
    doc["accessors"].append({"bufferView": view, "byteOffset": len(blob),
                             "componentType": 5126, "count": 1,
                             "type": kind})
    blob.extend(np.asarray(values, "<f4").tobytes())
    return len(doc["accessors"]) - 1

  time_index = accessor([0.0], "SCALAR")
  for j in joints:
    up = global_of(parent[j]) if j in parent else np.eye(4)
    t, r, s = _trs_of(np.linalg.inv(up) @ bind_global[j])
    for path, value, kind in (("translation", t, "VEC3"),
                              ("rotation", r, "VEC4"), ("scale", s, "VEC3")):
      samplers.append({"input": time_index, "output": accessor(value, kind),
                       "interpolation": "LINEAR"})
      channels.append({"sampler": len(samplers) - 1,
                       "target": {"node": j, "path": path}})
  doc["bufferViews"][view]["byteLength"] = len(blob)
  doc["buffers"].append({
      "byteLength": len(blob),
      "uri": "data:application/octet-stream;base64,"
             + base64.b64encode(bytes(blob)).decode()})
  doc["animations"].append({"name": "Bind", "samplers": samplers,
                            "channels": channels})


def _write_glb(path, doc, binary):
  text = json.dumps(doc).encode()
  text += b" " * (-len(text) % 4)
  binary = bytes(binary) + b"\0" * (-len(binary) % 4)
  total = 12 + 8 + len(text) + 8 + len(binary)
  path.write_bytes(struct.pack("<III", 0x46546C67, 2, total)
                   + struct.pack("<II", len(text), 0x4E4F534A) + text
                   + struct.pack("<II", len(binary), 0x004E4942) + binary)


def _copy_khronos_fox(shared_assets, tmp_path, edit=None):
  src = shared_assets / ANIMALS["khronos_fox"]
  for name in ("Fox.bin", "Texture.png"):
    shutil.copy(src.parent / name, tmp_path / name)
  doc = json.loads(src.read_text())
  if edit is not None:
    edit(doc)
  (tmp_path / "Fox.gltf").write_text(json.dumps(doc))
  return tmp_path / "Fox.gltf"


@pytest.mark.parametrize("name", ["khronos_fox", "quaternius_wolf"])
def test_bind_pose_reproduces_mesh(shared_assets, tmp_path, name):
  src = shared_assets / ANIMALS[name]
  if src.suffix == ".glb":
    doc, binary = _glb_chunks(src)
    path = tmp_path / "bind.glb"
  else:
    doc = json.loads(src.read_text())
    binary = (src.parent / "Fox.bin").read_bytes()
  ibm = _packed_accessor(doc, binary,
                         doc["skins"][0]["inverseBindMatrices"])
  _add_bind_pose_clip(doc, ibm.reshape(-1, 4, 4).transpose(0, 2, 1))
  if src.suffix == ".glb":
    _write_glb(path, doc, binary)
  else:
    path = _copy_khronos_fox(shared_assets, tmp_path,
                             lambda d: d.update(doc))
  asset = assets.load_gltf(path)
  posed = asset.pose("Bind", [0.0, 0.5])
  diag = _bbox_diagonal(asset.rest_vertices)
  assert np.abs(posed - asset.rest_vertices[None]).max() < 1e-5 * diag
  np.testing.assert_allclose(asset.joint_world_positions("Bind", [0.0])[0],
                             asset.rest_joint_positions, atol=1e-5 * diag)


# ----------------------------------------------------------------------------
# Samplers vs slow references.


def _slow_sample(key_times, key_values, interpolation, t, rotation):
  """One time, by the spec's formulas, with loops and scipy's Slerp."""
  cubic = interpolation == "CUBICSPLINE"
  value = (lambda k: key_values[k][1]) if cubic else (lambda k: key_values[k])
  if t <= key_times[0]:
    return value(0)
  if t >= key_times[-1]:
    return value(len(key_times) - 1)
  k = 0
  while not key_times[k] <= t < key_times[k + 1]:
    k += 1
  t0, t1 = key_times[k], key_times[k + 1]
  s = (t - t0) / (t1 - t0)
  if interpolation == "STEP":
    return value(k)
  if interpolation == "LINEAR":
    if rotation:
      slerp = Slerp([t0, t1], Rotation.from_quat([value(k), value(k + 1)]))
      return slerp([t]).as_quat()[0]
    return (1 - s) * value(k) + s * value(k + 1)
  p0, m0 = key_values[k][1], (t1 - t0) * key_values[k][2]
  p1, m1 = key_values[k + 1][1], (t1 - t0) * key_values[k + 1][0]
  out = ((2 * s**3 - 3 * s**2 + 1) * p0 + (s**3 - 2 * s**2 + s) * m0
         + (-2 * s**3 + 3 * s**2) * p1 + (s**3 - s**2) * m1)
  return out / np.linalg.norm(out) if rotation else out


def _random_keys(rng, num_keys, width, cubic, rotation):
  key_times = np.sort(rng.uniform(0, 2, num_keys))
  shape = (num_keys, 3, width) if cubic else (num_keys, width)
  values = rng.normal(size=shape)
  if rotation:
    if cubic:
      values[:, 1] /= np.linalg.norm(values[:, 1], axis=-1, keepdims=True)
    else:
      values /= np.linalg.norm(values, axis=-1, keepdims=True)
  return key_times, values


@pytest.mark.parametrize("interpolation", ["LINEAR", "STEP", "CUBICSPLINE"])
@pytest.mark.parametrize("rotation", [False, True])
def test_sampler_matches_slow_reference(interpolation, rotation):
  rng = np.random.default_rng(0)
  width = 4 if rotation else 3
  key_times, values = _random_keys(rng, 7, width,
                                   interpolation == "CUBICSPLINE", rotation)
  times = np.concatenate([rng.uniform(-0.5, 2.5, 200), key_times])
  got = gltf.sample_keyframes(key_times, values, interpolation, times,
                              rotation)
  expected = np.stack([_slow_sample(key_times, values, interpolation, t,
                                    rotation) for t in times])
  if rotation and interpolation == "LINEAR":
    # q and -q are one rotation: compare the rotations.
    np.testing.assert_allclose(np.abs(np.sum(got * expected, -1)), 1.0,
                               atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-12)
  else:
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_cubicspline_is_exact_for_cubics():
  # Hermite interpolation with the true derivative as tangents reproduces a
  # cubic polynomial exactly.
  rng = np.random.default_rng(1)
  coeffs = rng.normal(size=(4, 3))
  f = lambda t: np.stack([t**0, t, t**2, t**3], -1) @ coeffs
  df = lambda t: np.stack([0 * t, t**0, 2 * t, 3 * t**2], -1) @ coeffs
  key_times = np.array([0.0, 0.3, 1.1, 1.5])
  values = np.stack([df(key_times), f(key_times), df(key_times)], 1)
  times = rng.uniform(0, 1.5, 100)
  got = gltf.sample_keyframes(key_times, values, "CUBICSPLINE", times)
  np.testing.assert_allclose(got, f(times), atol=1e-12)


# ----------------------------------------------------------------------------
# A small synthetic asset exercising what the animals do not have, posed by a
# slow per-vertex reference written here.


class _Builder:
  """Packs arrays into one binary buffer and describes them as accessors."""

  def __init__(self):
    self.blob = bytearray()
    self.doc = {"asset": {"version": "2.0"}, "buffers": [], "bufferViews": [],
                "accessors": []}

  def accessor(self, array, component_type, kind, normalized=False):
    array = np.ascontiguousarray(array)
    self.blob.extend(b"\0" * (-len(self.blob) % 4))
    self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.blob),
                                    "byteLength": array.nbytes})
    self.blob.extend(array.tobytes())
    acc = {"bufferView": len(self.doc["bufferViews"]) - 1,
           "componentType": component_type, "count": array.shape[0],
           "type": kind}
    if normalized:
      acc["normalized"] = True
    self.doc["accessors"].append(acc)
    return len(self.doc["accessors"]) - 1

  def floats(self, array, kind):
    return self.accessor(np.asarray(array, "<f4"), 5126, kind)

  def sparse_vec3(self, count, indices, values):
    """VEC3 float accessor of zeros except `values` at `indices`."""
    self.blob.extend(b"\0" * (-len(self.blob) % 4))
    idx_view = len(self.doc["bufferViews"])
    idx = np.asarray(indices, "<u2")
    self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.blob),
                                    "byteLength": idx.nbytes})
    self.blob.extend(idx.tobytes())
    self.blob.extend(b"\0" * (-len(self.blob) % 4))
    val = np.asarray(values, "<f4")
    self.doc["bufferViews"].append({"buffer": 0, "byteOffset": len(self.blob),
                                    "byteLength": val.nbytes})
    self.blob.extend(val.tobytes())
    self.doc["accessors"].append({
        "componentType": 5126, "count": count, "type": "VEC3",
        "sparse": {"count": len(idx),
                   "indices": {"bufferView": idx_view, "componentType": 5123},
                   "values": {"bufferView": idx_view + 1}}})
    return len(self.doc["accessors"]) - 1


def _trs(t=(0, 0, 0), axis_angle=(0, 0, 0), s=(1, 1, 1)):
  return {"translation": list(map(float, t)),
          "rotation": list(Rotation.from_rotvec(axis_angle).as_quat()),
          "scale": list(map(float, s))}


def _synthetic_spec():
  """Everything the slow reference needs, as plain arrays."""
  rng = np.random.default_rng(7)
  static_matrix = _local_of(_trs((0.2, -0.3, 0.1), (0.3, 0.0, 0.2),
                                 (1.5, 1.5, 1.5)))
  nodes = [
      dict(name="root", children=[1, 3], **_trs((1, 0, 0), (0, 0, 0.5))),
      dict(name="bone", children=[4], **_trs((0, 1, 0), (0.2, 0, 0))),
      dict(name="skinned", mesh=0, skin=0, **_trs((5, 5, 5), (1, 0, 0))),
      dict(name="static", mesh=1, matrix=list(static_matrix.T.reshape(-1))),
      dict(name="mirrored", mesh=1, **_trs((0, 0, 0.5), (0, 0, 0),
                                           (-1, 1, 1))),
  ]
  bind = [_local_of(_trs((0.9, 0.1, 0), (0, 0, 0.4))),
          _local_of(_trs((0.5, 1.0, 0.2), (0.1, 0, 0.4)))]
  skin_positions = rng.normal(size=(6, 3))
  joints = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0],
                     [1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0]], np.uint8)
  weights = np.array([[100, 50, 0, 0], [255, 0, 0, 0], [60, 60, 60, 0],
                      [30, 90, 0, 0], [0, 0, 0, 0], [128, 127, 0, 0]],
                     np.uint8)
  sparse_idx = [1, 4]
  sparse_val = rng.normal(size=(2, 3))
  dense_target = rng.normal(size=(6, 3)) * 0.1
  color0 = rng.integers(0, 65535, size=(6, 4)).astype(np.uint16)
  rigid_positions = rng.normal(size=(3, 3))
  quats = Rotation.from_rotvec(rng.normal(size=(3, 3))).as_quat()
  tangents = rng.normal(size=(3, 2, 4)) * 0.2
  clips = {
      "Anim": [
          (1, "rotation", "CUBICSPLINE", [0.0, 0.5, 1.5],
           np.stack([tangents[:, 0], quats, tangents[:, 1]], 1)),
          (0, "translation", "STEP", [0.2, 0.7, 1.0],
           rng.normal(size=(3, 3))),
          (1, "scale", "LINEAR", [0.0, 1.0], [[1, 1, 1], [1.2, 0.8, 1.0]]),
          (2, "weights", "LINEAR", [0.0, 1.0], [[0.0, 1.0], [1.0, 0.5]]),
      ],
      "Second": [
          (0, "rotation", "LINEAR", [0.0, 1.0],
           [[0, 0, 0, 1], -Rotation.from_rotvec([0, 2.0, 0]).as_quat()]),
      ],
  }
  return dict(nodes=nodes, scene=[0, 2], bind=bind, joints=[0, 1],
              skin_positions=skin_positions, strip=[0, 1, 2, 3, 4, 5],
              skin_joints=joints, skin_weights=weights, sparse_idx=sparse_idx,
              sparse_val=sparse_val, dense_target=dense_target,
              mesh_weights=[0.25, 0.0], color0=color0,
              factor=[0.5, 0.25, 1.0, 1.0], rigid_positions=rigid_positions,
              clips=clips)


def _write_synthetic(directory: pathlib.Path, glb: bool,
                     spec=None) -> pathlib.Path:
  spec = spec or _synthetic_spec()
  b = _Builder()
  doc = b.doc
  doc["nodes"] = [dict(n) for n in spec["nodes"]]
  doc["scenes"] = [{"nodes": spec["scene"]}]
  doc["scene"] = 0
  ibm = np.stack([np.linalg.inv(m).T for m in spec["bind"]])
  doc["skins"] = [{"joints": spec["joints"],
                   "inverseBindMatrices": b.floats(ibm.reshape(-1, 16),
                                                   "MAT4")}]
  doc["materials"] = [{"pbrMetallicRoughness": {
      "baseColorFactor": spec["factor"]}}]
  n = len(spec["skin_positions"])
  doc["meshes"] = [
      {"weights": spec["mesh_weights"], "primitives": [{
          "mode": 5, "material": 0,
          "indices": b.accessor(np.asarray(spec["strip"], "<u2"), 5123,
                                "SCALAR"),
          "attributes": {
              "POSITION": b.floats(spec["skin_positions"], "VEC3"),
              "JOINTS_0": b.accessor(spec["skin_joints"], 5121, "VEC4"),
              "WEIGHTS_0": b.accessor(spec["skin_weights"], 5121, "VEC4",
                                      normalized=True),
              "COLOR_0": b.accessor(spec["color0"].astype("<u2"), 5123,
                                    "VEC4", normalized=True)},
          "targets": [
              {"POSITION": b.sparse_vec3(n, spec["sparse_idx"],
                                         spec["sparse_val"])},
              {"POSITION": b.floats(spec["dense_target"], "VEC3")}]}]},
      {"primitives": [{"attributes": {
          "POSITION": b.floats(spec["rigid_positions"], "VEC3")}}]},
  ]
  doc["animations"] = []
  for name, channels in spec["clips"].items():
    samplers, chans = [], []
    for node, path, interpolation, key_times, values in channels:
      samplers.append({
          "input": b.floats(np.asarray(key_times).reshape(-1, 1), "SCALAR"),
          "output": b.floats(
              np.asarray(values).reshape(
                  -1, 1 if path == "weights" else np.shape(values)[-1]),
              "SCALAR" if path == "weights" else
              {3: "VEC3", 4: "VEC4"}[np.shape(values)[-1]]),
          "interpolation": interpolation})
      chans.append({"sampler": len(samplers) - 1,
                    "target": {"node": node, "path": path}})
    doc["animations"].append({"name": name, "samplers": samplers,
                              "channels": chans})
  blob = bytes(b.blob) + b"\0" * (-len(b.blob) % 4)
  if glb:
    doc["buffers"] = [{"byteLength": len(blob)}]
    path = directory / "synthetic.glb"
    _write_glb(path, doc, blob)
  else:
    doc["buffers"] = [{"byteLength": len(blob), "uri": "synthetic%20data.bin"}]
    (directory / "synthetic data.bin").write_bytes(blob)
    path = directory / "synthetic.gltf"
    path.write_text(json.dumps(doc))
  return path


def _slow_reference_pose(spec, clip, t):
  """Posed vertices in scene order, with per-node/per-vertex loops."""
  nodes = spec["nodes"]
  trs = [dict(translation=np.asarray(n.get("translation", [0, 0, 0])),
              rotation=np.asarray(n.get("rotation", [0, 0, 0, 1])),
              scale=np.asarray(n.get("scale", [1, 1, 1])),
              matrix=n.get("matrix")) for n in nodes]
  morph = np.asarray(spec["mesh_weights"], np.float64)
  for node, path, interpolation, key_times, values in spec["clips"][clip]:
    values = np.asarray(values, np.float64)
    if interpolation == "CUBICSPLINE":
      values = values.reshape(len(key_times), 3, -1)
    v = _slow_sample(np.asarray(key_times), values, interpolation, t,
                     path == "rotation")
    if path == "weights":
      morph = v
    else:
      trs[node][path] = v

  def local(n):
    if trs[n]["matrix"] is not None:
      return np.asarray(trs[n]["matrix"]).reshape(4, 4).T
    m = np.eye(4)
    m[:3, :3] = (Rotation.from_quat(trs[n]["rotation"]).as_matrix()
                 * trs[n]["scale"])
    m[:3, 3] = trs[n]["translation"]
    return m

  parent = {c: p for p, n in enumerate(nodes) for c in n.get("children", [])}

  def global_of(n):
    return local(n) if n not in parent else global_of(parent[n]) @ local(n)

  out = []
  for n in (4, 3):  # rigid meshes, in scene order (root > bone > mirrored)
    for p in spec["rigid_positions"]:
      out.append((global_of(n) @ np.append(p, 1))[:3])
  skin = [global_of(j) @ np.linalg.inv(b)
          for j, b in zip(spec["joints"], spec["bind"])]
  deltas = [np.zeros_like(spec["skin_positions"]), spec["dense_target"]]
  for i, v in zip(spec["sparse_idx"], spec["sparse_val"]):
    deltas[0][i] = v
  for v in range(len(spec["skin_positions"])):
    p = spec["skin_positions"][v] + sum(w * d[v] for w, d in zip(morph,
                                                                 deltas))
    weights = spec["skin_weights"][v] / 255.0
    if weights.sum() == 0:
      weights = np.array([1.0, 0, 0, 0])
    weights = weights / weights.sum()
    m = sum(w * skin[j] for w, j in zip(weights, spec["skin_joints"][v]))
    out.append((m @ np.append(p, 1))[:3])
  return np.asarray(out)


@pytest.mark.parametrize("glb", [False, True])
def test_synthetic_pose_matches_slow_reference(tmp_path, glb):
  spec = _synthetic_spec()
  asset = assets.load_gltf(_write_synthetic(tmp_path, glb, spec))
  assert asset.clip_names == ["Anim", "Second"]
  assert asset.clip_duration("Anim") == pytest.approx(1.5)
  times = np.array([-0.2, 0.0, 0.1, 0.2, 0.45, 0.5, 0.7, 0.99, 1.2, 1.5, 2.0])
  for clip in asset.clip_names:
    posed = asset.pose(clip, times)
    expected = np.stack([_slow_reference_pose(spec, clip, t) for t in times])
    np.testing.assert_allclose(posed, expected, atol=2e-5)


def test_synthetic_faces_colours_weights(tmp_path):
  spec = _synthetic_spec()
  asset = assets.load_gltf(_write_synthetic(tmp_path, glb=True, spec=spec))
  # Vertex order: mirrored rigid (3), static rigid (3), skinned strip (6).
  # Strip {v_i, v_i+1+i%2, v_i+2-i%2}; the mirrored mesh is flipped.
  expected_faces = [[2, 1, 0], [3, 4, 5]] + [
      [6 + i, 6 + i + 1 + i % 2, 6 + i + 2 - i % 2] for i in range(4)]
  np.testing.assert_array_equal(asset.faces, expected_faces)
  linear = (np.asarray(spec["factor"][:3])
            * spec["color0"][:, :3] / 65535.0)
  srgb = np.where(linear <= 0.0031308, 12.92 * linear,
                  1.055 * linear ** (1 / 2.4) - 0.055)
  np.testing.assert_array_equal(asset.vertex_colors[6:],
                                np.round(srgb * 255))
  np.testing.assert_array_equal(asset.vertex_colors[:6], 255)
  # Joints: the two skin joints, then one per rigid mesh node.
  assert asset.joint_names == ["root", "bone", "mirrored", "static"]
  np.testing.assert_array_equal(asset.joint_parents, [-1, 0, 1, 0])
  w = asset.skin_weights
  assert w.shape == (12, 4)
  np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(w[:3, 2], 1.0)
  np.testing.assert_array_equal(w[3:6, 3], 1.0)
  np.testing.assert_allclose(w[6], [2 / 3, 1 / 3, 0, 0], atol=1e-6)
  np.testing.assert_allclose(w[8], [1 / 3, 2 / 3, 0, 0], atol=1e-6)  # j1 twice
  np.testing.assert_allclose(w[10], [1, 0, 0, 0])  # all-zero row -> slot 0
  # Rest vertices: stored positions + default morph weights (0.25, 0) on the
  # skinned part; rigid parts at their node's rest global.
  morph = np.zeros_like(spec["skin_positions"])
  morph[spec["sparse_idx"]] = 0.25 * spec["sparse_val"]
  np.testing.assert_allclose(asset.rest_vertices[6:],
                             spec["skin_positions"] + morph, atol=1e-6)


# ----------------------------------------------------------------------------
# Bad input.


def test_unknown_clip_lists_available(shared_assets):
  asset = assets.load_gltf(shared_assets / ANIMALS["khronos_fox"])
  with pytest.raises(UserError, match=r"'Trot'.*available: Survey, Walk, Run"):
    asset.pose("Trot", [0.0])


def test_missing_file(tmp_path):
  with pytest.raises(UserError, match="nope.glb: file not found"):
    assets.load_gltf(tmp_path / "nope.glb")


def test_corrupt_files(shared_assets, tmp_path):
  (tmp_path / "junk.gltf").write_bytes(b"\x00\xff not json")
  with pytest.raises(UserError, match="junk.gltf: not a glTF 2.0 file"):
    assets.load_gltf(tmp_path / "junk.gltf")
  raw = (shared_assets / ANIMALS["quaternius_fox"]).read_bytes()
  (tmp_path / "cut.glb").write_bytes(raw[:5000])
  with pytest.raises(UserError, match="cut.glb: truncated"):
    assets.load_gltf(tmp_path / "cut.glb")


def test_missing_buffer_file(shared_assets, tmp_path):
  path = _copy_khronos_fox(shared_assets, tmp_path)
  (tmp_path / "Fox.bin").unlink()
  with pytest.raises(UserError, match="Fox.bin: missing file"):
    assets.load_gltf(path)


def _without_skins(doc):
  doc.pop("skins")
  for node in doc["nodes"]:
    node.pop("skin", None)


@pytest.mark.parametrize("edit,message", [
    (_without_skins, "no skinned mesh"),
    (lambda d: d.pop("animations"), "no animation clips"),
    (lambda d: d.update(extensionsUsed=["KHR_draco_mesh_compression"]),
     "KHR_draco_mesh_compression"),
    (lambda d: d["meshes"][0]["primitives"][0].update(
        extensions={"KHR_draco_mesh_compression": {}}),
     "KHR_draco_mesh_compression"),
    (lambda d: d.update(extensionsRequired=["EXT_fancy"]), "EXT_fancy"),
    (lambda d: d["accessors"][0].update(count=10**6), "past the end"),
])
def test_bad_assets(shared_assets, tmp_path, edit, message):
  path = _copy_khronos_fox(shared_assets, tmp_path, edit)
  with pytest.raises(UserError, match=f"Fox.gltf.*{message}"):
    assets.load_gltf(path)
