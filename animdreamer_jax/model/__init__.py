"""The animatable model: Flax fields and time MLPs (`articulated_model`), encodings,
initialisation (`init`), and Gaussian-bone skinning (`skinning`, pure functions).

Typical use:

  from animdreamer_jax.model import articulated_model as am, init
  model, variables = init.model_and_variables(am.cpu_config(video_lengths=(48,)))
  bones = model.apply(variables, frame_idx, method="bones")
"""
