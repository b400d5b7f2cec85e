"""e3nn-jax's ``_src.activation`` path (compatibility only, see :mod:`e3nn_fast._src`).

mace-jax imports ``parity_function`` and ``scalar_activation`` from here; scripts import the module to wrap
``normalize_function`` (e3nn_fast already caches it per function, so such a wrapper changes nothing).
"""

from e3nn_fast.activation import (
    is_zero_in_zero,
    norm_activation,
    normalize_function,
    parity_function,
    scalar_activation,
    soft_normalization,
    soft_odd,
)

__all__ = [
    "soft_odd",
    "normalize_function",
    "parity_function",
    "is_zero_in_zero",
    "scalar_activation",
    "norm_activation",
    "soft_normalization",
]
