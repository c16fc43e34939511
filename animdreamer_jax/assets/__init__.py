"""Rigged/animated assets: glTF 2.0 loading and posing, mesh sequences, OBJ."""

from animdreamer_jax.assets.gltf import GltfAsset
from animdreamer_jax.assets.gltf import load_gltf
from animdreamer_jax.assets.mesh_sequence import load_sequence
from animdreamer_jax.assets.mesh_sequence import load_sequence_npz
from animdreamer_jax.assets.mesh_sequence import MeshSequence
from animdreamer_jax.assets.mesh_sequence import save_sequence_npz
from animdreamer_jax.assets.mesh_sequence import validate_sequence
from animdreamer_jax.assets.mesh_sequence import weld_sequence
from animdreamer_jax.assets.mesh_sequence import weld_vertices
from animdreamer_jax.assets.obj import read_obj
from animdreamer_jax.assets.obj import write_obj

__all__ = [
    "GltfAsset", "load_gltf", "load_sequence", "load_sequence_npz",
    "MeshSequence", "save_sequence_npz", "validate_sequence", "weld_sequence",
    "weld_vertices", "read_obj", "write_obj",
]
