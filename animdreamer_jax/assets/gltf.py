"""Skinned, animated glTF 2.0 assets (.glb, .gltf + .bin): loading and posing.

Posing follows the glTF 2.0 specification, section "Skins" / "Animations":
  * node local transform = `matrix`, or T * R * S (quaternions x, y, z, w);
    global = parent global * local, from the roots down;
  * skin matrix of joint j = global(j) * inverseBind(j);
  * posed vertex = sum_k w_k * skin(j_k) * (rest + morph offsets), weights
    renormalised to sum 1; the skinned mesh node's own transform (and its
    parents') is NOT applied: the joints' globals already carry it.
Mesh nodes without a skin inside a skinned asset (e.g. rigid eyes parented to a
bone) are posed by their node's global transform, as renderers do; internally
they become one extra "joint" with weight 1.

Everything is NumPy, float64 inside, vectorised over vertices and times (the
only Python loops run over nodes, channels and primitives). Matrices are stored
row-major for column vectors (glTF's column-major matrices are transposed on
load).

Vertex colours: material baseColorFactor x base-colour texture (sampled
bilinearly at the vertex UV, top-left image origin, the sampler's wrap modes)
x COLOR_0, multiplied in linear space as glTF defines them, then encoded to
sRGB uint8.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import pathlib
import struct
import urllib.parse

import cv2
import numpy as np

from animdreamer_jax.errors import UserError
from animdreamer_jax.geometry import quaternion_np
from animdreamer_jax.geometry import transforms_np

_COMPONENT_DTYPES = {
    5120: np.dtype("<i1"), 5121: np.dtype("<u1"), 5122: np.dtype("<i2"),
    5123: np.dtype("<u2"), 5125: np.dtype("<u4"), 5126: np.dtype("<f4"),
}
_TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4,
               "MAT3": 9, "MAT4": 16}
# Required extensions that do not change how geometry or animation is read
# (or that this module implements).
_HANDLED_EXTENSIONS = ("KHR_mesh_quantization", "KHR_texture_transform",
                       "EXT_texture_webp", "KHR_lights_punctual",
                       "KHR_materials_")
_COMPRESSION_EXTENSIONS = ("KHR_draco_mesh_compression",
                           "EXT_meshopt_compression",
                           "KHR_meshopt_compression")
_TRIANGLES, _TRIANGLE_STRIP, _TRIANGLE_FAN = 4, 5, 6
_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_WRAP_REPEAT, _WRAP_CLAMP, _WRAP_MIRROR = 10497, 33071, 33648
_FILTER_NEAREST = 9728
_POSE_CHUNK = 32  # times posed at once: bounds the (N, V, 3, 4) blend memory


# ----------------------------------------------------------------------------
# Small pure helpers (float64 NumPy).


def _decompose_matrix(m: np.ndarray):
  """T, R (x,y,z,w), S of a TRS 4x4 matrix (glTF forbids shear)."""
  translation = m[:3, 3].copy()
  scale = np.linalg.norm(m[:3, :3], axis=0)
  if np.linalg.det(m[:3, :3]) < 0:
    scale[0] = -scale[0]
  rotation = m[:3, :3] / np.where(scale == 0, 1.0, scale)[None, :]
  return translation, quaternion_np.matrix_to_quaternion(rotation), scale


def sample_keyframes(key_times: np.ndarray, key_values: np.ndarray,
                     interpolation: str, times: np.ndarray,
                     rotation: bool = False) -> np.ndarray:
  """Evaluates one glTF animation sampler at arbitrary times.

  Times before the first key / after the last key are clamped to the first /
  last value (glTF has no looping; callers loop by taking time mod duration).

  Args:
    key_times: (K,) increasing key times in seconds.
    key_values: (K, C) values; for CUBICSPLINE (K, 3, C): in-tangent, value,
      out-tangent per key (tangents per second, as stored in glTF).
    interpolation: "LINEAR", "STEP" or "CUBICSPLINE".
    times: (N,) query times.
    rotation: the values are quaternions (x, y, z, w): LINEAR uses slerp and
      CUBICSPLINE renormalises.
  Returns:
    (N, C) float64.
  """
  key_times = np.asarray(key_times, np.float64)
  key_values = np.asarray(key_values, np.float64)
  times = np.asarray(times, np.float64).reshape(-1)
  if interpolation == "CUBICSPLINE":
    in_tangents, values, out_tangents = (key_values[:, 0], key_values[:, 1],
                                         key_values[:, 2])
  else:
    values = key_values
  num_keys = key_times.shape[0]
  if num_keys == 1:
    return np.repeat(values[:1], times.shape[0], axis=0)
  i = np.clip(np.searchsorted(key_times, times, side="right") - 1, 0,
              num_keys - 2)
  t0, t1 = key_times[i], key_times[i + 1]
  dt = t1 - t0
  u = np.clip((times - t0) / np.where(dt > 0, dt, 1.0), 0.0, 1.0)
  if interpolation == "STEP":
    return values[np.where(times >= t1, i + 1, i)].copy()
  if interpolation == "LINEAR":
    if rotation:
      return quaternion_np.slerp(values[i], values[i + 1], u)
    return values[i] + u[:, None] * (values[i + 1] - values[i])
  if interpolation == "CUBICSPLINE":
    u2, u3 = u * u, u * u * u
    h00 = 2 * u3 - 3 * u2 + 1
    h10 = u3 - 2 * u2 + u
    h01 = -2 * u3 + 3 * u2
    h11 = u3 - u2
    out = (h00[:, None] * values[i]
           + (h10 * dt)[:, None] * out_tangents[i]
           + h01[:, None] * values[i + 1]
           + (h11 * dt)[:, None] * in_tangents[i + 1])
    if rotation:
      out = out / np.linalg.norm(out, axis=-1, keepdims=True)
    return out
  raise ValueError(f"unknown interpolation {interpolation!r}")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
  """sRGB-encoded values in [0, 1] -> linear (glTF: textures are sRGB, COLOR_0 is linear)."""
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
  """Linear values -> sRGB encoding, clipped to [0, 1]."""
  c = np.clip(c, 0.0, 1.0)
  return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def _wrap_index(index: np.ndarray, size: int, mode: int) -> np.ndarray:
  if mode == _WRAP_CLAMP:
    return np.clip(index, 0, size - 1)
  if mode == _WRAP_MIRROR:
    period = np.mod(index, 2 * size)
    return np.where(period < size, period, 2 * size - 1 - period)
  return np.mod(index, size)


def sample_texture(image: np.ndarray, uv: np.ndarray,
                   wrap_s: int = _WRAP_REPEAT, wrap_t: int = _WRAP_REPEAT,
                   nearest: bool = False) -> np.ndarray:
  """Samples an image at glTF texture coordinates.

  Args:
    image: (H, W, C) float.
    uv: (N, 2) glTF UVs: (0, 0) is the top-left corner of the image, (1, 1)
      the bottom-right; pixel (col, row) has its centre at ((col+0.5)/W,
      (row+0.5)/H).
    wrap_s, wrap_t: glTF sampler wrap modes (REPEAT, CLAMP_TO_EDGE,
      MIRRORED_REPEAT) along u and v.
    nearest: nearest-texel instead of bilinear.
  Returns:
    (N, C) float64.
  """
  height, width = image.shape[:2]
  x = uv[:, 0] * width - 0.5
  y = uv[:, 1] * height - 0.5
  if nearest:
    col = _wrap_index(np.floor(x + 0.5).astype(np.int64), width, wrap_s)
    row = _wrap_index(np.floor(y + 0.5).astype(np.int64), height, wrap_t)
    return image[row, col].astype(np.float64)
  x0, y0 = np.floor(x), np.floor(y)
  fx, fy = (x - x0)[:, None], (y - y0)[:, None]
  c0 = _wrap_index(x0.astype(np.int64), width, wrap_s)
  c1 = _wrap_index(x0.astype(np.int64) + 1, width, wrap_s)
  r0 = _wrap_index(y0.astype(np.int64), height, wrap_t)
  r1 = _wrap_index(y0.astype(np.int64) + 1, height, wrap_t)
  img = image.astype(np.float64)
  top = img[r0, c0] * (1 - fx) + img[r0, c1] * fx
  bottom = img[r1, c0] * (1 - fx) + img[r1, c1] * fx
  return top * (1 - fy) + bottom * fy


# ----------------------------------------------------------------------------
# The file: JSON, buffers, accessors.


class _Document:
  """A parsed glTF file: its JSON plus lazily read buffers and accessors."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.name = str(path)
    if not path.is_file():
      raise UserError(f"{path}: file not found")
    try:
      raw = path.read_bytes()
    except OSError as e:
      raise UserError(f"{path}: cannot read ({e.strerror})") from e
    self._glb_bin: bytes | None = None
    if raw[:4] == b"glTF":
      json_bytes = self._split_glb(raw)
    else:
      json_bytes = raw
    try:
      self.json = json.loads(json_bytes.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise UserError(f"{path}: not a glTF 2.0 file (invalid JSON: {e})") from e
    if not isinstance(self.json, dict) or not str(
        self.json.get("asset", {}).get("version", "")).startswith("2"):
      raise UserError(f"{path}: not a glTF 2.0 file (asset.version is not 2.x)")
    self._buffers: dict[int, bytes] = {}
    self._accessors: dict[int, np.ndarray] = {}
    self._check_extensions()

  def _split_glb(self, raw: bytes) -> bytes:
    if len(raw) < 20:
      raise UserError(f"{self.path}: truncated GLB file")
    magic, version, length = struct.unpack_from("<III", raw, 0)
    if magic != _GLB_MAGIC or version != 2:
      raise UserError(f"{self.path}: not a glTF 2.0 binary (GLB version "
                      f"{version})")
    if length > len(raw):
      raise UserError(f"{self.path}: truncated GLB file ({len(raw)} of "
                      f"{length} bytes)")
    offset, json_bytes = 12, None
    while offset + 8 <= length:
      chunk_length, chunk_type = struct.unpack_from("<II", raw, offset)
      chunk = raw[offset + 8: offset + 8 + chunk_length]
      if len(chunk) != chunk_length:
        raise UserError(f"{self.path}: truncated GLB chunk")
      if chunk_type == _GLB_JSON and json_bytes is None:
        json_bytes = chunk
      elif chunk_type == _GLB_BIN and self._glb_bin is None:
        self._glb_bin = chunk
      offset += 8 + chunk_length
    if json_bytes is None:
      raise UserError(f"{self.path}: GLB file has no JSON chunk")
    return json_bytes

  def _check_extensions(self) -> None:
    used = set(self.json.get("extensionsUsed", []))
    required = set(self.json.get("extensionsRequired", []))
    for ext in sorted(used | required):
      if ext in _COMPRESSION_EXTENSIONS:
        raise UserError(
            f"{self.path}: uses {ext} (compressed geometry), which this loader "
            "cannot decode; decompress it first (e.g. re-export from Blender "
            "with compression off)")
    for ext in sorted(required):
      if not ext.startswith(_HANDLED_EXTENSIONS):
        raise UserError(f"{self.path}: requires the unsupported glTF "
                        f"extension {ext}")

  def get(self, kind: str, index) -> dict:
    items = self.json.get(kind, [])
    if not isinstance(index, int) or not 0 <= index < len(items):
      raise UserError(f"{self.path}: {kind}[{index}] does not exist")
    return items[index]

  def _uri_bytes(self, uri: str, what: str) -> bytes:
    if uri.startswith("data:"):
      header, _, payload = uri.partition(",")
      try:
        if header.endswith(";base64"):
          return base64.b64decode(payload)
        return urllib.parse.unquote_to_bytes(payload)
      except ValueError as e:
        raise UserError(f"{self.path}: {what} has a corrupt data URI") from e
    file = self.path.parent / urllib.parse.unquote(uri)
    if not file.is_file():
      raise UserError(f"{file}: missing file ({what} of {self.path})")
    return file.read_bytes()

  def buffer(self, index: int) -> bytes:
    if index not in self._buffers:
      spec = self.get("buffers", index)
      if "uri" in spec:
        data = self._uri_bytes(spec["uri"], f"buffers[{index}]")
      elif index == 0 and self._glb_bin is not None:
        data = self._glb_bin
      else:
        raise UserError(f"{self.path}: buffers[{index}] has no data")
      if len(data) < spec.get("byteLength", 0):
        raise UserError(f"{self.path}: buffers[{index}] is truncated "
                        f"({len(data)} of {spec['byteLength']} bytes)")
      self._buffers[index] = data
    return self._buffers[index]

  def buffer_view(self, index: int) -> tuple[memoryview, int | None]:
    """Bytes of a buffer view and its byteStride (None: tightly packed)."""
    view = self.get("bufferViews", index)
    data = self.buffer(view.get("buffer"))
    start = view.get("byteOffset", 0)
    end = start + view.get("byteLength", 0)
    if end > len(data):
      raise UserError(f"{self.path}: bufferViews[{index}] runs past the end "
                      "of its buffer")
    return memoryview(data)[start:end], view.get("byteStride")

  def accessor(self, index: int) -> np.ndarray:
    """Accessor data as (count, components): float64, or int64 for integers.

    Normalised integers are mapped to [0, 1] / [-1, 1]; sparse substitution
    applied; MAT4 comes back as (count, 16) in glTF's column-major order.
    """
    if index in self._accessors:
      return self._accessors[index]
    acc = self.get("accessors", index)
    where = f"{self.path}: accessors[{index}]"
    try:
      dtype = _COMPONENT_DTYPES[acc["componentType"]]
      width = _TYPE_SIZES[acc["type"]]
      count = int(acc["count"])
    except KeyError as e:
      raise UserError(f"{where}: bad or missing componentType/type/count"
                      ) from e
    if acc["type"] in ("MAT2", "MAT3") and dtype.itemsize < 4:
      raise UserError(f"{where}: padded {acc['type']} of small integers is "
                      "not supported")
    element = dtype.itemsize * width
    if "bufferView" in acc:
      data, stride = self.buffer_view(acc["bufferView"])
      stride = stride or element
      offset = acc.get("byteOffset", 0)
      if count and offset + stride * (count - 1) + element > len(data):
        raise UserError(f"{where}: runs past the end of its buffer view")
      values = np.ndarray((count, width), dtype, buffer=data, offset=offset,
                          strides=(stride, dtype.itemsize)).copy()
    else:
      values = np.zeros((count, width), dtype)
    if "sparse" in acc:
      values = self._apply_sparse(acc["sparse"], values, dtype, width, where)
    if acc.get("normalized", False) and dtype.kind in "iu":
      limit = float(np.iinfo(dtype).max)
      values = np.maximum(values.astype(np.float64) / limit, -1.0)
    elif dtype.kind == "f":
      values = values.astype(np.float64)
    else:
      values = values.astype(np.int64)
    self._accessors[index] = values
    return values

  def _apply_sparse(self, sparse: dict, values: np.ndarray, dtype, width,
                    where) -> np.ndarray:
    count = int(sparse.get("count", 0))
    try:
      idx_spec, val_spec = sparse["indices"], sparse["values"]
      idx_dtype = _COMPONENT_DTYPES[idx_spec["componentType"]]
      idx_data, _ = self.buffer_view(idx_spec["bufferView"])
      val_data, _ = self.buffer_view(val_spec["bufferView"])
      idx = np.frombuffer(idx_data, idx_dtype, count,
                          idx_spec.get("byteOffset", 0))
      val = np.frombuffer(val_data, dtype, count * width,
                          val_spec.get("byteOffset", 0)).reshape(count, width)
    except (KeyError, ValueError) as e:
      raise UserError(f"{where}: corrupt sparse storage") from e
    if count and idx.max() >= values.shape[0]:
      raise UserError(f"{where}: sparse index out of range")
    values = values.copy()
    values[idx.astype(np.int64)] = val
    return values

  def image(self, index: int) -> np.ndarray:
    """Decoded image as (H, W, C) float in [0, 1], RGB(A) channel order."""
    spec = self.get("images", index)
    if "uri" in spec:
      data = self._uri_bytes(spec["uri"], f"images[{index}]")
    elif "bufferView" in spec:
      data = bytes(self.buffer_view(spec["bufferView"])[0])
    else:
      raise UserError(f"{self.path}: images[{index}] has no data")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
      raise UserError(f"{self.path}: images[{index}] cannot be decoded")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    img = img.astype(np.float64) / scale
    if img.ndim == 2:
      img = img[:, :, None]
    if img.shape[2] >= 3:  # OpenCV decodes to BGR(A)
      img = np.concatenate([img[:, :, 2::-1], img[:, :, 3:]], axis=2)
    return img


# ----------------------------------------------------------------------------
# The asset.


class _JointTable:
  """Joint entries in order of first use: one per (skin, joint) pair or rigid mesh node."""

  def __init__(self):
    self.nodes: list[int] = []  # the node each entry follows
    self.ibms: list[np.ndarray] = []  # its (4, 4) inverse bind matrix
    self._index: dict[tuple, int] = {}

  def entry(self, key: tuple, node: int, ibm: np.ndarray) -> int:
    """The entry of `key`, added with its node and inverse bind matrix on first use."""
    if key not in self._index:
      self._index[key] = len(self.nodes)
      self.nodes.append(node)
      self.ibms.append(ibm)
    return self._index[key]


@dataclasses.dataclass
class _Primitive:
  """One triangle primitive, in its instance's rest frame (rigid meshes pre-transformed)."""
  positions: np.ndarray  # (v, 3) base positions, before morph targets
  faces: np.ndarray  # (f, 3) into the primitive's own vertices
  entries: np.ndarray  # (v, k) joint-table entries
  weights: np.ndarray  # (v, k) skin weights, rows sum to 1
  deltas: np.ndarray  # (targets, v, 3) morph-target offsets
  default_weights: np.ndarray  # (targets,) morph weights when not animated
  colors: np.ndarray  # (v, 3) linear RGB


class GltfAsset:
  """A skinned, animated glTF 2.0 asset, posed by linear blend skinning.

  Vertices are every triangle primitive of every mesh instance in the default
  scene, concatenated in scene order (depth first, node before children,
  primitives in order); they are not welded (see `weld_vertices`).

  "Joints" J are the skin joints (one per (skin, joint) pair), followed by one
  per rigid mesh node if the asset has any.

  Attributes:
    path: the file.
    clip_names: animation names in file order (unnamed ones: "animation_<i>").
    rest_vertices: (V, 3) float32 bind-pose positions (skin matrices identity).
    faces: (F, 3) int32 counter-clockwise triangles into the vertices.
    vertex_colors: (V, 3) uint8 sRGB.
    skin_weights: (V, J) float32, rows sum to 1.
    joint_parents: (J,) int32 parent joint, -1 for roots.
    joint_names: list of J node names.
    rest_joint_positions: (J, 3) float32 joint positions in the bind pose.
  """

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)
    doc = _Document(self.path)
    self._doc = doc
    self._read_nodes()
    self._read_animations()
    self._read_meshes()

  # -- nodes ------------------------------------------------------------------

  def _read_nodes(self) -> None:
    doc = self._doc
    nodes = doc.json.get("nodes", [])
    num_nodes = len(nodes)
    parents = np.full(num_nodes, -1, np.int64)
    for n, node in enumerate(nodes):
      for c in node.get("children", []):
        if not isinstance(c, int) or not 0 <= c < num_nodes or parents[c] >= 0:
          raise UserError(f"{self.path}: nodes[{n}] has an invalid or shared "
                          f"child {c}")
        parents[c] = n
    order, frontier = [], [n for n in range(num_nodes) if parents[n] < 0]
    while frontier:  # breadth first: every parent before its children
      order.extend(frontier)
      frontier = [c for n in frontier for c in nodes[n].get("children", [])]
    if len(order) != num_nodes:
      raise UserError(f"{self.path}: the node hierarchy has a cycle")
    self._node_parents = parents
    self._node_order = order
    self._node_names = [node.get("name", f"node_{n}")
                        for n, node in enumerate(nodes)]
    self._rest_translation = np.zeros((num_nodes, 3))
    self._rest_rotation = np.tile([0.0, 0.0, 0.0, 1.0], (num_nodes, 1))
    self._rest_scale = np.ones((num_nodes, 3))
    for n, node in enumerate(nodes):
      if "matrix" in node:
        # Column-major; decomposed to TRS (as three.js does) so that an
        # animation may override parts of it.
        m = np.asarray(node["matrix"], np.float64).reshape(4, 4).T
        t, r, s = _decompose_matrix(m)
      else:
        t = node.get("translation", [0.0, 0.0, 0.0])
        r = node.get("rotation", [0.0, 0.0, 0.0, 1.0])
        s = node.get("scale", [1.0, 1.0, 1.0])
      self._rest_translation[n], self._rest_rotation[n] = t, r
      self._rest_scale[n] = s
    self._rest_globals = self._globals(self._rest_translation[None],
                                       self._rest_rotation[None],
                                       self._rest_scale[None])[0]
    scenes = doc.json.get("scenes", [])
    if scenes:
      scene = doc.get("scenes", doc.json.get("scene", 0))
      self._scene_roots = list(scene.get("nodes", []))
    else:
      self._scene_roots = [n for n in range(num_nodes) if parents[n] < 0]

  def _globals(self, translation, rotation, scale) -> np.ndarray:
    """(N, nodes, 4, 4) global transforms from (N, nodes, .) local TRS."""
    local = transforms_np.compose_trs(translation, rotation, scale)
    glob = np.empty_like(local)
    for n in self._node_order:
      p = self._node_parents[n]
      glob[:, n] = local[:, n] if p < 0 else glob[:, p] @ local[:, n]
    return glob

  # -- animations -------------------------------------------------------------

  def _read_animations(self) -> None:
    doc = self._doc
    self._clips: dict[str, list[tuple]] = {}
    self._clip_durations: dict[str, float] = {}
    self._clip_keys: dict[str, int] = {}
    num_nodes = len(self._node_parents)
    for a, anim in enumerate(doc.json.get("animations", [])):
      name = anim.get("name") or f"animation_{a}"
      while name in self._clips:
        name += "_"
      channels, duration, keys = [], 0.0, 0
      for c, channel in enumerate(anim.get("channels", [])):
        target = channel.get("target", {})
        node, path = target.get("node"), target.get("path")
        if node is None or path not in ("translation", "rotation", "scale",
                                        "weights"):
          continue  # e.g. KHR_animation_pointer: nothing we can pose
        if not 0 <= node < num_nodes:
          raise UserError(f"{self.path}: animations[{a}].channels[{c}] "
                          f"targets missing node {node}")
        samplers = anim.get("samplers", [])
        s = channel.get("sampler")
        if not isinstance(s, int) or not 0 <= s < len(samplers):
          raise UserError(f"{self.path}: animations[{a}].channels[{c}] has "
                          "no sampler")
        interpolation = samplers[s].get("interpolation", "LINEAR")
        if interpolation not in ("LINEAR", "STEP", "CUBICSPLINE"):
          raise UserError(f"{self.path}: animations[{a}] has unknown "
                          f"interpolation {interpolation}")
        key_times = doc.accessor(samplers[s]["input"])[:, 0]
        key_values = doc.accessor(samplers[s]["output"])
        num_keys = key_times.shape[0]
        if num_keys == 0 or np.any(np.diff(key_times) < 0):
          raise UserError(f"{self.path}: animations[{a}] sampler {s} has no "
                          "or unsorted key times")
        per_key = 3 if interpolation == "CUBICSPLINE" else 1
        width = {"translation": 3, "rotation": 4, "scale": 3}.get(path)
        if width is None:  # morph weights: scalars, num_targets per key
          if key_values.size % (num_keys * per_key):
            raise UserError(f"{self.path}: animations[{a}] sampler {s} has "
                            "a weights output of the wrong length")
          width = key_values.size // (num_keys * per_key)
        if key_values.size != num_keys * per_key * width:
          raise UserError(f"{self.path}: animations[{a}] sampler {s} output "
                          f"count does not match its {num_keys} keys")
        key_values = key_values.reshape(
            (num_keys, 3, width) if per_key == 3 else (num_keys, width))
        channels.append((node, path, interpolation, key_times, key_values))
        duration = max(duration, float(key_times[-1]))
        keys = max(keys, num_keys)
      self._clips[name] = channels
      self._clip_durations[name] = duration
      self._clip_keys[name] = keys
    if not self._clips:
      raise UserError(f"{self.path}: has no animation clips (a skinned, "
                      "animated glTF is needed)")

  @property
  def clip_names(self) -> list[str]:
    return list(self._clips)

  def _clip(self, name: str) -> list[tuple]:
    if name not in self._clips:
      raise UserError(f"{self.path}: no animation clip named {name!r}; "
                      f"available: {', '.join(self._clips)}")
    return self._clips[name]

  def clip_duration(self, name: str) -> float:
    """Seconds from 0 to the clip's last key."""
    self._clip(name)
    return self._clip_durations[name]

  def clip_num_keys(self, name: str) -> int:
    """Key count of the clip's longest sampler (the first key repeated last)."""
    self._clip(name)
    return self._clip_keys[name]

  def clip_native_fps(self, name: str) -> float:
    """The clip's key rate, (keys - 1) / duration; 30 for a single-key clip."""
    duration, keys = self.clip_duration(name), self.clip_num_keys(name)
    if duration <= 0 or keys < 2:
      return 30.0
    return (keys - 1) / duration

  def _node_globals_and_weights(self, clip: str, times: np.ndarray):
    """Node globals (N, nodes, 4, 4) and animated morph weights per node."""
    channels = self._clip(clip)
    num = times.shape[0]
    translation = np.repeat(self._rest_translation[None], num, 0)
    rotation = np.repeat(self._rest_rotation[None], num, 0)
    scale = np.repeat(self._rest_scale[None], num, 0)
    morph_weights = {}
    for node, path, interpolation, key_times, key_values in channels:
      values = sample_keyframes(key_times, key_values, interpolation, times,
                                rotation=path == "rotation")
      if path == "translation":
        translation[:, node] = values
      elif path == "rotation":
        rotation[:, node] = values
      elif path == "scale":
        scale[:, node] = values
      else:
        morph_weights[node] = values
    return self._globals(translation, rotation, scale), morph_weights

  # -- meshes -----------------------------------------------------------------

  def _read_meshes(self) -> None:
    instances = self._mesh_instances()
    joints = _JointTable()
    # Skin joints first (all skins, in order of use) so that for the usual
    # one-skin asset joint j is the skin's joint j.
    skin_entries = self._skin_entries(instances, joints)
    prims = [(n, prim) for n, m, s in instances
             for prim in self._instance_primitives(n, m, s, skin_entries, joints)]
    if sum(prim.positions.shape[0] for _, prim in prims) == 0:
      raise UserError(f"{self.path}: has no triangle meshes")
    self._store_vertices(prims)
    self._store_joints(joints)

  def _mesh_instances(self) -> list[tuple[int, int, int | None]]:
    """(node, mesh index, skin index or None) of the default scene, in scene order."""
    doc = self._doc
    instances = []
    stack = list(reversed(self._scene_roots))
    visited = set()
    while stack:
      n = stack.pop()
      if n in visited:
        continue
      visited.add(n)
      node = doc.get("nodes", n)
      if "mesh" in node:
        instances.append((n, node["mesh"], node.get("skin")))
      stack.extend(reversed(node.get("children", [])))
    if not any(skin is not None for _, _, skin in instances):
      raise UserError(f"{self.path}: has no skinned mesh in its scene (a "
                      "skinned, animated glTF is needed)")
    return instances

  def _skin_entries(self, instances, joints: _JointTable) -> dict[int, np.ndarray]:
    """Skin index -> (skin joints,) joint-table entries, added to `joints` in order of use."""
    doc = self._doc
    skin_entries = {}
    for _, _, s in instances:
      if s is not None and s not in skin_entries:
        skin = doc.get("skins", s)
        skin_joints = list(skin.get("joints", []))
        if not skin_joints:
          raise UserError(f"{self.path}: skins[{s}] has no joints")
        if "inverseBindMatrices" in skin:
          ibm = doc.accessor(skin["inverseBindMatrices"])
          if ibm.shape != (len(skin_joints), 16):
            raise UserError(f"{self.path}: skins[{s}] inverseBindMatrices "
                            "do not match its joints")
          ibm = ibm.reshape(-1, 4, 4).transpose(0, 2, 1)
        else:
          ibm = np.tile(np.eye(4), (len(skin_joints), 1, 1))
        for node in skin_joints:
          doc.get("nodes", node)
        skin_entries[s] = np.array(
            [joints.entry(("skin", s, j), node, ibm[j])
             for j, node in enumerate(skin_joints)], np.int64)
    return skin_entries

  def _instance_primitives(self, n: int, m: int, s: int | None,
                           skin_entries: dict[int, np.ndarray],
                           joints: _JointTable) -> list[_Primitive]:
    """The triangle primitives of mesh m placed at node n (skinned by skin s, or rigid)."""
    mesh = self._doc.get("meshes", m)
    node = self._doc.get("nodes", n)
    where = f"{self.path}: meshes[{m}]"
    default_weights = np.asarray(
        node.get("weights", mesh.get("weights", [])), np.float64)
    prims = []
    for p, prim in enumerate(mesh.get("primitives", [])):
      mode = prim.get("mode", _TRIANGLES)
      if mode not in (_TRIANGLES, _TRIANGLE_STRIP, _TRIANGLE_FAN):
        continue  # points and lines have no surface
      table = skin_entries[s] if s is not None else None
      prims.append(self._primitive(prim, mode, f"{where}.primitives[{p}]", n, s,
                                   table, default_weights, joints))
    return prims

  def _primitive(self, prim: dict, mode: int, where: str, n: int, s: int | None,
                 skin_table: np.ndarray | None, default_weights: np.ndarray,
                 joints: _JointTable) -> _Primitive:
    """One triangle primitive: positions, faces, morph targets, influences, colours."""
    ext = prim.get("extensions", {})
    for name in _COMPRESSION_EXTENSIONS:
      if name in ext:
        raise UserError(f"{where} uses {name}, which this "
                        "loader cannot decode; decompress it first")
    attrs = prim.get("attributes", {})
    if "POSITION" not in attrs:
      raise UserError(f"{where} has no POSITION")
    pos = self._doc.accessor(attrs["POSITION"])
    if pos.shape[1] != 3:
      raise UserError(f"{where} POSITION is not VEC3")
    num_verts = pos.shape[0]
    tri = self._triangles(prim, mode, num_verts, where)
    deltas, weights0 = self._morph_targets(prim, num_verts, default_weights)

    if skin_table is not None and "JOINTS_0" in attrs and "WEIGHTS_0" in attrs:
      entries, weights = self._skin_influences(attrs, skin_table, s, num_verts, where)
    else:
      # Rigid mesh: one joint (its node) with bind matrix = inverse rest
      # global, vertices pre-transformed to the rest pose.
      g = self._rest_globals[n]
      e = joints.entry(("rigid", n), n, np.linalg.inv(g))
      pos = pos @ g[:3, :3].T + g[:3, 3]
      deltas = deltas @ g[:3, :3].T
      if np.linalg.det(g[:3, :3]) < 0:  # mirrored: keep CCW facing out
        tri = tri[:, ::-1]
      entries = np.full((num_verts, 1), e, np.int64)
      weights = np.ones((num_verts, 1))
    total = weights.sum(1, keepdims=True)
    # Renormalise (exported sums drift); an all-zero row binds to slot 0.
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1),
                       np.eye(weights.shape[1])[0])
    return _Primitive(positions=pos, faces=tri, entries=entries, weights=weights,
                      deltas=deltas, default_weights=weights0,
                      colors=self._vertex_colors(prim, num_verts, where))

  def _morph_targets(self, prim: dict, num_verts: int, default_weights: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(targets, V, 3) POSITION offsets and the (targets,) weights used when not animated."""
    targets = prim.get("targets", [])
    deltas = np.zeros((len(targets), num_verts, 3))
    for k, target in enumerate(targets):
      if "POSITION" in target:
        deltas[k] = self._doc.accessor(target["POSITION"])
    weights0 = np.zeros(len(targets))
    weights0[:min(len(targets), len(default_weights))] = (
        default_weights[:len(targets)])
    return deltas, weights0

  def _skin_influences(self, attrs: dict, skin_table: np.ndarray, s: int, num_verts: int,
                       where: str) -> tuple[np.ndarray, np.ndarray]:
    """(V, k) joint-table entries and raw weights from all JOINTS_i / WEIGHTS_i sets."""
    doc = self._doc
    joint_sets, weight_sets, i = [], [], 0
    while f"JOINTS_{i}" in attrs and f"WEIGHTS_{i}" in attrs:
      joint_sets.append(doc.accessor(attrs[f"JOINTS_{i}"]))
      weight_sets.append(doc.accessor(attrs[f"WEIGHTS_{i}"]))
      i += 1
    joint_ids = np.concatenate(joint_sets, 1)
    weights = np.concatenate(weight_sets, 1).astype(np.float64)
    if joint_ids.shape != weights.shape or joint_ids.shape[0] != num_verts:
      raise UserError(f"{where} JOINTS/WEIGHTS do not "
                      "match POSITION")
    if joint_ids.min() < 0 or joint_ids.max() >= len(skin_table):
      raise UserError(f"{where} JOINTS index a joint "
                      f"outside skins[{s}]")
    # Zero-weight slots may hold any index: map them, they count 0.
    return skin_table[joint_ids], weights

  def _store_vertices(self, prims: list[tuple[int, _Primitive]]) -> None:
    """Concatenates the primitives: base positions, morphs, influences, faces, colours, rest."""
    width = max(prim.entries.shape[1] for _, prim in prims)
    pad = lambda a, v: np.pad(a, ((0, 0), (0, width - a.shape[1])),
                              constant_values=v)
    self._influence_entries = np.concatenate(
        [pad(prim.entries, 0) for _, prim in prims])
    self._influence_weights = np.concatenate(
        [pad(prim.weights, 0.0) for _, prim in prims])
    self._base_positions = np.concatenate([prim.positions for _, prim in prims])
    starts = np.cumsum([0] + [prim.positions.shape[0] for _, prim in prims])
    morphed = [(start, n, prim) for start, (n, prim) in zip(starts, prims)
               if prim.deltas.shape[0]]
    self._morph_slices = [(int(start), int(start) + prim.positions.shape[0], n,
                           prim.default_weights) for start, n, prim in morphed]
    self._morph_deltas = [prim.deltas for _, _, prim in morphed]
    self.faces = np.concatenate(
        [prim.faces + start for start, (_, prim) in zip(starts, prims)]).astype(np.int32)
    linear = np.concatenate([prim.colors for _, prim in prims])
    self.vertex_colors = np.round(linear_to_srgb(linear) * 255).astype(
        np.uint8)

    rest = self._base_positions.copy()
    for (start, end, _, w0), deltas in zip(self._morph_slices, self._morph_deltas):
      rest[start:end] += np.einsum("k,kvc->vc", w0, deltas)
    self._rest = rest
    self.rest_vertices = rest.astype(np.float32)

  def _store_joints(self, joints: _JointTable) -> None:
    """Joint nodes, bind matrices, dense (V, J) skin weights, names, parents, rest positions."""
    entry_nodes = joints.nodes
    self._entry_nodes = np.asarray(entry_nodes, np.int64)
    self._entry_ibms = np.asarray(joints.ibms, np.float64)
    num_vertices, width = self._influence_entries.shape
    num_joints = len(entry_nodes)
    dense = np.zeros((num_vertices, num_joints))
    rows = np.repeat(np.arange(num_vertices), width)
    np.add.at(dense, (rows, self._influence_entries.reshape(-1)),
              self._influence_weights.reshape(-1))
    self.skin_weights = dense.astype(np.float32)
    self.joint_names = [self._node_names[n] for n in entry_nodes]
    # A joint's parent is the first entry of its nearest ancestor node that is a joint.
    first_entry = {}
    for e, n in enumerate(entry_nodes):
      first_entry.setdefault(n, e)
    parents = np.full(num_joints, -1, np.int32)
    for e, n in enumerate(entry_nodes):
      a = self._node_parents[n]
      while a >= 0 and a not in first_entry:
        a = self._node_parents[a]
      if a >= 0:
        parents[e] = first_entry[a]
    self.joint_parents = parents
    self.rest_joint_positions = (
        np.linalg.inv(self._entry_ibms)[:, :3, 3].astype(np.float32))

  def _triangles(self, prim: dict, mode: int, num_verts: int,
                 where: str) -> np.ndarray:
    if "indices" in prim:
      idx = self._doc.accessor(prim["indices"])[:, 0]
      if idx.size and (idx.min() < 0 or idx.max() >= num_verts):
        raise UserError(f"{where}: indices out of range")
    else:
      idx = np.arange(num_verts, dtype=np.int64)
    if mode == _TRIANGLES:
      if idx.size % 3:
        raise UserError(f"{where}: index count is not a multiple of 3")
      return idx.reshape(-1, 3)
    count = max(idx.size - 2, 0)
    i = np.arange(count)
    if mode == _TRIANGLE_STRIP:  # glTF: {v_i, v_i+(1+i%2), v_i+(2-i%2)}
      tri = np.stack([idx[i], idx[i + 1 + i % 2], idx[i + 2 - i % 2]], 1)
    else:  # fan: {v_i+1, v_i+2, v_0}
      tri = np.stack([idx[i + 1], idx[i + 2], np.full(count, idx[0])], 1)
    degenerate = ((tri[:, 0] == tri[:, 1]) | (tri[:, 1] == tri[:, 2])
                  | (tri[:, 0] == tri[:, 2]))
    return tri[~degenerate]

  def _vertex_colors(self, prim: dict, num_verts: int, where: str
                     ) -> np.ndarray:
    """(num_verts, 3) linear RGB: factor x texture x COLOR_0."""
    doc = self._doc
    color = np.ones((num_verts, 3))
    attrs = prim.get("attributes", {})
    if "material" in prim:
      pbr = doc.get("materials", prim["material"]).get("pbrMetallicRoughness",
                                                        {})
      color = color * np.asarray(pbr.get("baseColorFactor", [1, 1, 1, 1]),
                                 np.float64)[:3]
      info = pbr.get("baseColorTexture")
      if info is not None:
        color = color * self._texture_colors(info, attrs, num_verts, where)
    if "COLOR_0" in attrs:
      c = doc.accessor(attrs["COLOR_0"])
      if c.shape != (num_verts, c.shape[1]) or c.shape[1] not in (3, 4):
        raise UserError(f"{where}: COLOR_0 does not match POSITION")
      color = color * c[:, :3]
    return color

  def _texture_colors(self, info: dict, attrs: dict, num_verts: int,
                      where: str) -> np.ndarray:
    doc = self._doc
    transform = info.get("extensions", {}).get("KHR_texture_transform", {})
    tex_coord = transform.get("texCoord", info.get("texCoord", 0))
    if f"TEXCOORD_{tex_coord}" not in attrs:
      return np.ones((num_verts, 3))  # invalid per spec: ignore the texture
    uv = doc.accessor(attrs[f"TEXCOORD_{tex_coord}"])[:, :2]
    if transform:
      ox, oy = transform.get("offset", [0.0, 0.0])
      sx, sy = transform.get("scale", [1.0, 1.0])
      r = transform.get("rotation", 0.0)
      cos, sin = np.cos(r), np.sin(r)
      u = uv[:, 0] * sx
      v = uv[:, 1] * sy
      uv = np.stack([cos * u + sin * v + ox, -sin * u + cos * v + oy], 1)
    texture = doc.get("textures", info.get("index"))
    source = texture.get("source")
    webp = texture.get("extensions", {}).get("EXT_texture_webp", {})
    if "source" in webp:
      source = webp["source"]
    if source is None:
      raise UserError(f"{where}: base-colour texture has no image this "
                      "loader can decode")
    image = doc.image(source)
    if image.shape[2] == 1:
      image = np.repeat(image, 3, axis=2)
    image = srgb_to_linear(image[:, :, :3])  # base colour is sRGB-encoded
    sampler = {}
    if "sampler" in texture:
      sampler = doc.get("samplers", texture["sampler"])
    return sample_texture(image, uv, sampler.get("wrapS", _WRAP_REPEAT),
                          sampler.get("wrapT", _WRAP_REPEAT),
                          nearest=sampler.get("magFilter") == _FILTER_NEAREST)

  # -- posing -----------------------------------------------------------------

  def _skin_matrices(self, node_globals: np.ndarray) -> np.ndarray:
    """(N, J, 4, 4) skin matrices global(joint) x inverseBind(joint)."""
    return node_globals[:, self._entry_nodes] @ self._entry_ibms

  def _posed(self, clip: str, times: np.ndarray) -> np.ndarray:
    node_globals, morph_weights = self._node_globals_and_weights(clip, times)
    skin = self._skin_matrices(node_globals)[..., :3, :]  # (N, J, 3, 4)
    num = times.shape[0]
    verts = np.repeat(self._base_positions[None], num, 0)
    for (start, end, node, w0), deltas in zip(self._morph_slices,
                                              self._morph_deltas):
      w = morph_weights.get(node, np.broadcast_to(w0, (num,) + w0.shape))
      verts[:, start:end] += np.einsum("nk,kvc->nvc", w[:, :deltas.shape[0]],
                                       deltas)
    blend = np.zeros((num, verts.shape[1], 3, 4))
    for k in range(self._influence_entries.shape[1]):
      blend += (self._influence_weights[None, :, k, None, None]
                * skin[:, self._influence_entries[:, k]])
    return np.einsum("nvij,nvj->nvi", blend[..., :3], verts) + blend[..., 3]

  def pose(self, clip: str, times) -> np.ndarray:
    """Posed vertices of `clip` at `times` (seconds, clamped to the keys).

    Args:
      clip: a name from `clip_names`.
      times: (N,) seconds; no looping here (see load_sequence for that).
    Returns:
      (N, V, 3) float32 positions in the glTF scene's world frame.
    """
    self._clip(clip)
    times = np.asarray(times, np.float64).reshape(-1)
    chunks = [self._posed(clip, times[i:i + _POSE_CHUNK])
              for i in range(0, times.shape[0], _POSE_CHUNK)]
    if not chunks:
      return np.zeros((0,) + self.rest_vertices.shape, np.float32)
    return np.concatenate(chunks).astype(np.float32)

  def joint_world_positions(self, clip: str, times) -> np.ndarray:
    """(N, J, 3) float32 world positions of the joints' nodes at `times`."""
    times = np.asarray(times, np.float64).reshape(-1)
    node_globals, _ = self._node_globals_and_weights(clip, times)
    return node_globals[:, self._entry_nodes][..., :3, 3].astype(np.float32)


def load_gltf(path: str | pathlib.Path) -> GltfAsset:
  """Loads a skinned, animated glTF 2.0 file (.glb or .gltf).

  Raises:
    UserError: missing/corrupt file or buffers, compressed (Draco/meshopt)
      geometry, no skinned mesh, no animation.
  """
  return GltfAsset(path)
