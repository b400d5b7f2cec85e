"""e3nn-jax's ``_src.so3`` path (compatibility only, see :mod:`e3nn_fast._src`).

Clients read ``change_basis_real_to_complex`` and ``clebsch_gordan`` from here (same matrices as e3nn-jax).
"""

from e3nn_fast.so3 import change_basis_real_to_complex, clebsch_gordan, generators

__all__ = ["change_basis_real_to_complex", "clebsch_gordan", "generators"]
