"""The stage-agnostic trainer.

  state       the donated train state
  optimizer   the `optim` section and the AdamW chain
  update      the one update rule (spike/NaN refusal, parameter groups, moments)
  step        the jitted step of a step kind (a sum of loss terms)
  loop        the host loop (`TrainSettings`, `TrainingPlan`, rollback, proxy mesh, logs)
  checkpoint  atomic orbax checkpoints
"""
