"""Pure-jnp geometry: quaternions (x, y, z, w), dual quaternions, SE(3), camera rays.

`geometry.mesh` (host-side meshing of the SDF, surface sampling) is imported on
its own: it pulls in scikit-image and scipy, which the jnp modules do not need.
"""

from animdreamer_jax.geometry import dual_quaternion
from animdreamer_jax.geometry import quaternion
from animdreamer_jax.geometry import rays
from animdreamer_jax.geometry import se3
from animdreamer_jax.geometry.dual_quaternion import (
    dq_apply, dq_blend, dq_conjugate, dq_from_rt, dq_identity, dq_inverse,
    dq_multiply, dq_normalize, dq_to_rt)
from animdreamer_jax.geometry.quaternion import (
    axis_angle_to_quat, matrix_to_quat, quat_conjugate, quat_identity,
    quat_multiply, quat_normalize, quat_rotate, quat_to_axis_angle,
    quat_to_matrix)
from animdreamer_jax.geometry.rays import camera_rays, pixel_grid, pixel_rays, project
from animdreamer_jax.geometry.se3 import (
    apply_se3, matrix_to_quat_t, matrix_to_rt, quat_t_to_matrix, rt_to_matrix,
    se3_inverse)
