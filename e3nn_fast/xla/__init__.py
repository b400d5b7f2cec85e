"""Optimised pure-``jax.numpy`` executors, tuned for XLA (the dispatcher's ``jnp`` backend).

They compute exactly what :mod:`e3nn_fast.reference` computes, with fewer and larger operations: paths are fused,
Clebsch-Gordan blocks are stacked into one constant matrix, and the per-sample work is written as elementwise
products that XLA fuses into few loops.  Like the reference they are differentiable to any order by plain JAX
autodiff.  Executors live in submodules (e.g. :func:`e3nn_fast.xla.tensor_product.tensor_product`) and are
registered with :mod:`e3nn_fast.dispatch`.
"""
