"""Stages: each a config, its loss terms and schedule over the one trainer, and its outputs.

  extraction/   video folder -> run folder (canonical model, bones, motion, meshes)
  run_folder    the one reader of finished run folders (export, eval, later stages)
"""
