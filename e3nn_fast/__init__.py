"""e3nn_fast: O(3)-equivariant neural networks on JAX, a drop-in replacement for e3nn-jax with Pallas kernels.

``import e3nn_fast as e3nn`` gives e3nn-jax 0.21's public API with the same numbers.  The hot operations go through
:mod:`e3nn_fast.dispatch`, which picks the reference jnp implementation, an optimised jnp executor or a Pallas
kernel per operation, backend and size; force one with ``E3NN_FAST_BACKEND`` or ``with e3nn_fast.backend(...)``.
"""

import importlib as _importlib

from e3nn_fast.configuration import config
from e3nn_fast.dispatch import backend
from e3nn_fast.irreps import Irrep, Irreps, MulIrrep
from e3nn_fast.so3 import clebsch_gordan, generators, su2_clebsch_gordan, su2_generators
from e3nn_fast.rotation import (
    angles_to_axis_angle,
    angles_to_log_coordinates,
    angles_to_matrix,
    angles_to_quaternion,
    angles_to_xyz,
    axis_angle_to_angles,
    axis_angle_to_log_coordinates,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    compose_angles,
    compose_axis_angle,
    compose_log_coordinates,
    compose_quaternion,
    identity_angles,
    identity_log_coordinates,
    identity_quaternion,
    inverse_angles,
    inverse_log_coordinates,
    inverse_quaternion,
    log_coordinates_to_angles,
    log_coordinates_to_axis_angle,
    log_coordinates_to_matrix,
    log_coordinates_to_quaternion,
    matrix_to_angles,
    matrix_to_axis_angle,
    matrix_to_log_coordinates,
    matrix_to_quaternion,
    matrix_x,
    matrix_y,
    matrix_z,
    quaternion_to_angles,
    quaternion_to_axis_angle,
    quaternion_to_log_coordinates,
    quaternion_to_matrix,
    rand_angles,
    rand_axis_angle,
    rand_log_coordinates,
    rand_matrix,
    rand_quaternion,
    rotation_angle_from_angles,
    rotation_angle_from_axis_angle,
    rotation_angle_from_log_coordinates,
    rotation_angle_from_matrix,
    rotation_angle_from_quaternion,
    xyz_to_angles,
)
from e3nn_fast.irreps_array import (
    IrrepsArray,
    as_irreps_array,
    concatenate,
    cross,
    dot,
    from_chunks,
    mean,
    norm,
    normal,
    ones,
    ones_like,
    stack,
    sum,
    where,
    zeros,
    zeros_like,
)
from e3nn_fast.harmonics import sh, spherical_harmonics
from e3nn_fast.tensor_products import (
    elementwise_tensor_product,
    tensor_product,
    tensor_product_with_spherical_harmonics,
    tensor_square,
)
from e3nn_fast.message_passing import message_passing, message_passing_irreps_out
from e3nn_fast.symmetric_contraction import symmetric_contraction, symmetric_contraction_weight_shapes
from e3nn_fast.radial import bessel, poly_envelope, soft_envelope, soft_one_hot_linspace, sus
from e3nn_fast.graph import index_add, radius_graph, scatter_max, scatter_mean, scatter_sum
from e3nn_fast.linear import FunctionalLinear
from e3nn_fast.grad import grad
from e3nn_fast.activation import norm_activation, normalize_function, scalar_activation, soft_normalization, soft_odd
from e3nn_fast.gate import gate
from e3nn_fast.reduced_tensor_product import (
    reduced_antisymmetric_tensor_product_basis,
    reduced_symmetric_tensor_product_basis,
    reduced_tensor_product_basis,
)
from e3nn_fast.utils.vmap import vmap
from e3nn_fast.s2grid import (
    SphericalSignal,
    betas_to_spherical_signal,
    from_s2grid,
    get_s2fft_grid_resolution,
    legendre_transform_from_s2grid,
    legendre_transform_to_s2grid,
    m0_values_to_irrepsarray,
    s2_dirac,
    s2_irreps,
    to_s2grid,
    to_s2point,
)
from e3nn_fast.so3grid import SO3Signal
from e3nn_fast import legacy, legendre, perm, sharding, utils

# Sub-packages that need optional dependencies (dm-haiku, flax, flax.nnx, equinox) load on first access:
# ``e3nn_fast.haiku.Linear``.
_OPTIONAL_SUBPACKAGES = ("haiku", "flax", "nnx", "equinox", "experimental")


def __getattr__(name):
    if name in _OPTIONAL_SUBPACKAGES:
        return _importlib.import_module(f"e3nn_fast.{name}")
    raise AttributeError(f"module 'e3nn_fast' has no attribute {name!r}")


__version__ = "0.1.0"
