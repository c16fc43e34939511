"""Stage two: a new animatable model on an extracted skeleton and motion (CSD)."""
