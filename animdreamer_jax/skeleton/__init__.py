"""Skeletons over the learned bones: construction, the skeleton.json file, posing of joints."""
