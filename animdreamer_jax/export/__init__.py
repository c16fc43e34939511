"""Rigged glTF export, motion files, re-animation, videos and the viewer page.

Modules: gltf_writer (arrays -> .glb), rig_from_run (run folder -> arrays),
motion_file (root + bone motion, JSON/NPZ), videos (turntable, animation,
reference view), viewer (self-contained three.js HTML page).
"""
