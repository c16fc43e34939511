"""The MVDream multi-view diffusion prior in Flax.

Modules (imported on use; this package imports nothing heavy):
  unet              MultiViewUNet (SD2.1-base UNet + camera MLP + multi-view self-attention), UNetConfig
  attention         scaled dot-product attention and LDM's CrossAttention
  camera_embedding  MVDream's 16-D camera vectors (orbit cameras, from OpenCV world-to-camera matrices)
  convert           checkpoint conversion (.pt / .safetensors / diffusers folder) and loading of converted folders
  text_encoder, tokenizer, vae, schedule, ddim, guidance: the rest of the prior (text, latents, sampling)
"""
