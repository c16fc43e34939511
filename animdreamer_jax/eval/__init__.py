"""Evaluation: Chamfer distance and F-score of predicted mesh sequences.

Surface points are sampled by area; one similarity transform per sequence
aligns the prediction to the ground truth (coarse init + ICP with scale);
scores are reported per frame, averaged, and per part of the ground-truth
surface (`eval.parts`: seen / never-seen, limbs / body by rest height, legs /
tail / head ... from joint names). Definitions: animdreamer_jax.eval.metrics.
Scores of a finished run: `eval.run_scores` (metrics.json) and
`eval.novel_views` (renders against the ground truth's from around the animal);
a run's skeleton against the ground-truth rig: `eval.rig_metrics`.
"""

from animdreamer_jax.eval.alignment import AlignmentResult
from animdreamer_jax.eval.alignment import Similarity
from animdreamer_jax.eval.alignment import align_similarity
from animdreamer_jax.eval.alignment import axis_aligned_rotations
from animdreamer_jax.eval.alignment import umeyama
from animdreamer_jax.eval.metrics import THRESHOLDS
from animdreamer_jax.eval.metrics import evaluate_sequence
from animdreamer_jax.eval.metrics import sequence_distances
from animdreamer_jax.eval.metrics import summarise
from animdreamer_jax.eval.metrics import surface_scores
from animdreamer_jax.eval.surface_sampling import SurfaceIndex
from animdreamer_jax.eval.surface_sampling import closest_point_on_triangles
from animdreamer_jax.eval.surface_sampling import pad_mesh_frames
from animdreamer_jax.eval.surface_sampling import sample_surface_frames
from animdreamer_jax.geometry.mesh import sample_surface

__all__ = [
    "AlignmentResult", "Similarity", "align_similarity", "axis_aligned_rotations",
    "umeyama", "THRESHOLDS", "evaluate_sequence", "sequence_distances", "summarise",
    "surface_scores", "SurfaceIndex", "closest_point_on_triangles", "pad_mesh_frames",
    "sample_surface", "sample_surface_frames",
]
