"""Pure ``jax.numpy`` implementations of e3nn_fast's operations.

This sub-package is the code of record for the maths: readable, differentiable to any order, and used as the oracle
that every Pallas kernel in :mod:`e3nn_fast.kernels` is tested against.  It is itself validated against e3nn-jax.
"""
