"""The extraction stage (video -> animatable model).

  settings   every config section of the stage, composed (`base_config`, `from_config`)
  plan       the model, data, loss terms (reconstruction, CSD) and schedule handed to the trainer
  outputs    the files a finished run writes
  run        `run_extraction`: the stage end to end
"""
