"""e3nn-jax's ``_src.s2grid`` path (compatibility only, see :mod:`e3nn_fast._src`).

e3nn-jax's own tests import ``m0_values_to_irrepsarray`` and ``betas_to_spherical_signal`` from here.  Its private
FFT helpers are not served: e3nn_fast's inverse transform is scaled differently, so it is no drop-in for them.
"""

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

__all__ = [
    "SphericalSignal",
    "betas_to_spherical_signal",
    "from_s2grid",
    "get_s2fft_grid_resolution",
    "legendre_transform_from_s2grid",
    "legendre_transform_to_s2grid",
    "m0_values_to_irrepsarray",
    "s2_dirac",
    "s2_irreps",
    "to_s2grid",
    "to_s2point",
]
