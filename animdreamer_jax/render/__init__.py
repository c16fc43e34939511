"""Pure rendering numerics: ray sampling, SDF -> density, alpha compositing, and
the warp-composed renderer of the articulated model (`warp_render.render_rays`)."""
