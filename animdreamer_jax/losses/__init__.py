"""Loss terms: the units a stage composes its objective from.

  term            what a term is (`LossTerm`, `StepContext`)
  lab4d_losses    lab4d's pure loss functions and reductions
  reconstruction  the reconstruction term (video rays through the warp) and the `loss` section
  skeleton_constraints  AnimatableDreamer's L_skel (joints of a skeleton.json) and L_bone (bones inside)
"""
