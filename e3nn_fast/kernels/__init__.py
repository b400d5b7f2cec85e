"""Hand-written Pallas kernels for the hot operations of e3nn_fast.

Each kernel family (channelwise, fully connected and elementwise tensor products, fused message passing, symmetric
contraction) lives in its own module with its gradient kernels beside it, wrapped in a ``jax.custom_vjp`` whose
backward pass is built from kernels of the same family.  Kernels consume the same path descriptors as the reference
executors in :mod:`e3nn_fast.reference`; the dispatcher decides per call which one runs.
"""
