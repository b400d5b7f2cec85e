"""e3nn-jax's ``_src.irreps`` path (compatibility only, see :mod:`e3nn_fast._src`).

Forks and extensions of e3nn-jax import the classes and the ``IntoIrreps`` type hint from here.
"""

from e3nn_fast.irreps import IntoIrrep, IntoIrreps, Irrep, Irreps, MulIrrep

__all__ = ["Irrep", "MulIrrep", "Irreps", "IntoIrrep", "IntoIrreps"]
