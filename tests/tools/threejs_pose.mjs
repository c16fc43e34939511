// Poses a skinned, animated glTF with three.js (GLTFLoader + AnimationMixer +
// SkinnedMesh.getVertexPosition) under Node and writes the posed vertices and
// joint positions to an .npz, as an independent reference for
// animdreamer_jax.assets.gltf (see README.md here).
//
// usage: node threejs_pose.mjs --asset PATH --out OUT.npz
//          [--clips A,B] [--fractions 0.13,0.61] [--times 0.1,0.5]
//          [--max-vertices 128] [--all-vertices]
//   --fractions: sample times as fractions of each clip's duration (default)
//   --times: absolute times in seconds (used for every clip instead)
//
// Output arrays: clip_names (C,) str, times (C,S) f8, vertex_indices (K,) i4,
// rest_positions (K,3) f4 (POSITION attribute, scene order), positions
// (C,S,K,3) f4 world positions, joint_positions (C,S,J,3) f4 (bones of the
// first skinned mesh's skeleton), num_vertices () i4, three_revision str.
// Vertices are every triangle mesh in gltf.scene in traversal order, the order
// the Python loader uses. The file is repacked as one GLB in memory (buffers
// merged) and textures are stripped before parsing: Node has no DOM, fetch
// progress events or image decoding, and none of them affects positions.

import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import * as THREE from 'three';
import { GLTFLoader } from 'three/examples/jsm/loaders/GLTFLoader.js';

function parseArgs(argv) {
  const args = { fractions: '0.13,0.61', maxVertices: 128, allVertices: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`missing value for ${key}`);
      return argv[++i];
    };
    if (key === '--asset') args.asset = next();
    else if (key === '--out') args.out = next();
    else if (key === '--clips') args.clips = next().split(',');
    else if (key === '--fractions') args.fractions = next();
    else if (key === '--times') args.times = next().split(',').map(Number);
    else if (key === '--max-vertices') args.maxVertices = Number(next());
    else if (key === '--all-vertices') args.allVertices = true;
    else throw new Error(`unknown argument ${key}`);
  }
  if (!args.asset || !args.out) throw new Error('need --asset and --out');
  args.fractions = args.fractions.split(',').map(Number);
  return args;
}

// ---------------------------------------------------------------------------
// glTF JSON with every buffer inlined as a data URI and textures removed.

function readGltfJson(file) {
  const raw = fs.readFileSync(file);
  let json;
  let glbBin = null;
  if (raw.readUInt32LE(0) === 0x46546c67) { // 'glTF' binary container
    let offset = 12;
    while (offset + 8 <= raw.length) {
      const length = raw.readUInt32LE(offset);
      const type = raw.readUInt32LE(offset + 4);
      const chunk = raw.subarray(offset + 8, offset + 8 + length);
      if (type === 0x4e4f534a) json = JSON.parse(chunk.toString('utf8'));
      else if (type === 0x004e4942) glbBin = chunk;
      offset += 8 + length;
    }
  } else {
    json = JSON.parse(raw.toString('utf8'));
  }
  // All buffers merged into one GLB binary chunk: GLTFLoader then reads them
  // without its FileLoader (which needs browser globals).
  const parts = [];
  let total = 0;
  const starts = (json.buffers || []).map((buffer) => {
    let data;
    if (buffer.uri === undefined) data = glbBin;
    else if (buffer.uri.startsWith('data:')) data = Buffer.from(buffer.uri.split(',')[1], 'base64');
    else data = fs.readFileSync(path.join(path.dirname(file), decodeURIComponent(buffer.uri)));
    const start = total;
    const padded = Math.ceil(data.length / 4) * 4;
    parts.push(data, Buffer.alloc(padded - data.length));
    total += padded;
    return start;
  });
  for (const view of json.bufferViews || []) {
    view.byteOffset = (view.byteOffset || 0) + starts[view.buffer];
    view.buffer = 0;
  }
  json.buffers = [{ byteLength: total }];
  json.__bin = Buffer.concat(parts);
  delete json.textures;
  delete json.images;
  delete json.samplers;
  for (const material of json.materials || []) stripTextures(material);
  return json;
}

function stripTextures(obj) {
  for (const key of Object.keys(obj)) {
    if (key.endsWith('Texture')) delete obj[key];
    else if (obj[key] && typeof obj[key] === 'object') stripTextures(obj[key]);
  }
}

function toGlb(json) {
  const { __bin: bin, ...rest } = json;
  let text = Buffer.from(JSON.stringify(rest), 'utf8');
  text = Buffer.concat([text, Buffer.alloc((4 - (text.length % 4)) % 4, 0x20)]);
  const header = Buffer.alloc(12);
  header.writeUInt32LE(0x46546c67, 0);
  header.writeUInt32LE(2, 4);
  header.writeUInt32LE(12 + 8 + text.length + 8 + bin.length, 8);
  const chunk = (length, type) => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(length, 0);
    b.writeUInt32LE(type, 4);
    return b;
  };
  const glb = Buffer.concat([header, chunk(text.length, 0x4e4f534a), text, chunk(bin.length, 0x004e4942), bin]);
  return glb.buffer.slice(glb.byteOffset, glb.byteOffset + glb.byteLength);
}

function parseGltf(json) {
  const loader = new GLTFLoader();
  return new Promise((resolve, reject) => {
    loader.parse(toGlb(json), '', resolve, reject);
  });
}

// ---------------------------------------------------------------------------
// Posing.

function triangleMeshes(scene) {
  const meshes = [];
  scene.traverse((obj) => {
    if (obj.isMesh && !obj.isLine && !obj.isPoints) meshes.push(obj);
  });
  return meshes;
}

function worldPositions(meshes, vertexIndices) {
  // vertexIndices index the concatenation of all meshes' vertices.
  const starts = [];
  let total = 0;
  for (const mesh of meshes) {
    starts.push(total);
    total += mesh.geometry.attributes.position.count;
  }
  const out = new Float32Array(vertexIndices.length * 3);
  const v = new THREE.Vector3();
  vertexIndices.forEach((index, k) => {
    let m = starts.length - 1;
    while (starts[m] > index) m--;
    const mesh = meshes[m];
    // SkinnedMesh: bindMatrixInverse * sum_k w_k bone_k * bindMatrix * v, in the
    // mesh's local space; matrixWorld brings it back to the scene frame.
    mesh.getVertexPosition(index - starts[m], v);
    v.applyMatrix4(mesh.matrixWorld);
    out.set([v.x, v.y, v.z], 3 * k);
  });
  return out;
}

function bonePositions(meshes) {
  const skinned = meshes.find((m) => m.isSkinnedMesh);
  const out = new Float32Array(skinned.skeleton.bones.length * 3);
  const v = new THREE.Vector3();
  skinned.skeleton.bones.forEach((bone, j) => {
    v.setFromMatrixPosition(bone.matrixWorld);
    out.set([v.x, v.y, v.z], 3 * j);
  });
  return out;
}

// ---------------------------------------------------------------------------
// .npz writer (zip of .npy files, deflated).

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function npy(descr, shape, bytes) {
  const shapeText = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeText}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const head = Buffer.alloc(10);
  head.write('\x93NUMPY', 0, 'latin1');
  head[6] = 1;
  head[7] = 0;
  head.writeUInt16LE(header.length, 8);
  return Buffer.concat([head, Buffer.from(header, 'latin1'), Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)]);
}

function stringArray(strings) {
  const width = Math.max(1, ...strings.map((s) => [...s].length));
  const buf = Buffer.alloc(strings.length * width * 4);
  strings.forEach((s, i) => {
    [...s].forEach((ch, j) => buf.writeUInt32LE(ch.codePointAt(0), (i * width + j) * 4));
  });
  return { descr: `<U${width}`, bytes: new Uint8Array(buf) };
}

function writeNpz(file, arrays) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const [name, { descr, shape, data }] of Object.entries(arrays)) {
    const raw = npy(descr, shape, data);
    const packed = zlib.deflateRawSync(raw, { level: 9 });
    const fileName = Buffer.from(`${name}.npy`, 'utf8');
    const crc = crc32(raw);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(0, 6);
    local.writeUInt16LE(8, 8); // deflate
    local.writeUInt32LE(0, 10); // time/date
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(packed.length, 18);
    local.writeUInt32LE(raw.length, 22);
    local.writeUInt16LE(fileName.length, 26);
    local.writeUInt16LE(0, 28);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(0, 8);
    central.writeUInt16LE(8, 10);
    central.writeUInt32LE(0, 12);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(packed.length, 20);
    central.writeUInt32LE(raw.length, 24);
    central.writeUInt16LE(fileName.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, fileName, packed);
    centrals.push(central, fileName);
    offset += local.length + fileName.length + packed.length;
  }
  const centralBytes = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(centrals.length / 2, 8);
  end.writeUInt16LE(centrals.length / 2, 10);
  end.writeUInt32LE(centralBytes.length, 12);
  end.writeUInt32LE(offset, 16);
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, Buffer.concat([...locals, centralBytes, end]));
  fs.renameSync(tmp, file);
}

// ---------------------------------------------------------------------------

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const json = readGltfJson(args.asset);
  const first = await parseGltf(json);
  const clipNames = args.clips || first.animations.map((clip) => clip.name);
  const meshes0 = triangleMeshes(first.scene);
  const numVertices = meshes0.reduce((n, m) => n + m.geometry.attributes.position.count, 0);
  const count = args.allVertices ? numVertices : Math.min(numVertices, args.maxVertices);
  const vertexIndices = Int32Array.from({ length: count }, (_, k) =>
    count === numVertices ? k : Math.round((k * (numVertices - 1)) / (count - 1)));
  const numTimes = args.times ? args.times.length : args.fractions.length;
  const numJoints = meshes0.find((m) => m.isSkinnedMesh).skeleton.bones.length;

  const rest = new Float32Array(count * 3);
  {
    const starts = [];
    let total = 0;
    for (const m of meshes0) { starts.push(total); total += m.geometry.attributes.position.count; }
    vertexIndices.forEach((index, k) => {
      let m = starts.length - 1;
      while (starts[m] > index) m--;
      const attr = meshes0[m].geometry.attributes.position;
      rest.set([attr.getX(index - starts[m]), attr.getY(index - starts[m]), attr.getZ(index - starts[m])], 3 * k);
    });
  }

  const times = new Float64Array(clipNames.length * numTimes);
  const positions = new Float32Array(clipNames.length * numTimes * count * 3);
  const joints = new Float32Array(clipNames.length * numTimes * numJoints * 3);
  for (let c = 0; c < clipNames.length; c++) {
    // A fresh parse per clip: no state left over from another clip's tracks.
    const gltf = await parseGltf(json);
    const clip = gltf.animations.find((a) => a.name === clipNames[c]);
    if (!clip) throw new Error(`no clip ${clipNames[c]}`);
    const mixer = new THREE.AnimationMixer(gltf.scene);
    mixer.clipAction(clip).play();
    const meshes = triangleMeshes(gltf.scene);
    for (let s = 0; s < numTimes; s++) {
      const t = args.times ? args.times[s] : args.fractions[s] * clip.duration;
      times[c * numTimes + s] = t;
      mixer.setTime(t);
      gltf.scene.updateMatrixWorld(true);
      positions.set(worldPositions(meshes, vertexIndices), (c * numTimes + s) * count * 3);
      joints.set(bonePositions(meshes), (c * numTimes + s) * numJoints * 3);
    }
  }

  const names = stringArray(clipNames);
  const revision = stringArray([THREE.REVISION]);
  writeNpz(args.out, {
    clip_names: { descr: names.descr, shape: [clipNames.length], data: names.bytes },
    times: { descr: '<f8', shape: [clipNames.length, numTimes], data: times },
    vertex_indices: { descr: '<i4', shape: [count], data: vertexIndices },
    rest_positions: { descr: '<f4', shape: [count, 3], data: rest },
    positions: { descr: '<f4', shape: [clipNames.length, numTimes, count, 3], data: positions },
    joint_positions: { descr: '<f4', shape: [clipNames.length, numTimes, numJoints, 3], data: joints },
    num_vertices: { descr: '<i4', shape: [], data: Int32Array.of(numVertices) },
    three_revision: { descr: revision.descr, shape: [], data: revision.bytes },
  });
  console.log(`${args.out}: ${clipNames.length} clips x ${numTimes} times x ${count}/${numVertices} vertices (three r${THREE.REVISION})`);
}

main().catch((e) => {
  console.error(`error: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
