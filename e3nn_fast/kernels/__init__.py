"""Hand-written Pallas kernels for the hot operations of e3nn_fast.

Each kernel family (channelwise, fully connected and elementwise tensor products, fused message passing, symmetric
contraction) lives in its own module with its gradient kernels beside it.  Tensor-product kernels are bound to one JAX primitive
(:mod:`.multilinear`) with JVP, transpose and batching rules, so every derivative, of any order and in forward or
reverse mode, is again a kernel of the same family (a ``custom_vjp`` would refuse ``jax.jvp``/``jax.hessian``).  Kernels consume the same path descriptors as the reference
executors in :mod:`e3nn_fast.reference`; the dispatcher decides per call which one runs.

Tensor products (this package today):

===================================== ==========================================================================
:mod:`.tensor_product`                the executor (same signature as the reference): splits paths by family,
                                      packs the chunks, runs the kernels, sends the remaining paths to the reference
:mod:`.channelwise`                   ``uvu`` / ``uvuv`` / ``uvv`` with a mul-1 input (``x (x) sh``, convolutions)
:mod:`.elementwise`                   ``uuu`` (and ``uuw`` into one channel): ``elementwise_tensor_product``
:mod:`._aligned`                      the engine both run on: all their paths in one ``pallas_call``
:mod:`.fully_connected`               ``uvw`` with shared weights, and its weight-gradient kernel
:mod:`.multilinear`                   the JAX primitive all families share: JVP, transpose and batching rules whose
                                      results are kernels of the same family (derivatives of any order, ``jax.jvp``,
                                      ``jax.hessian``, ``jax.vmap``).  A primitive rather than ``jax.custom_vjp``:
                                      ``custom_vjp`` would block forward mode (see that module's docstring).
:mod:`.layout`                        the packed layout (component planes, power-of-two multiplicities) and the
                                      conversions from/to e3nn chunks
:mod:`._pallas_compat`                every JAX-version-dependent import, and the per-family GPU lowering table
                                      (Triton today; Mosaic GPU rejects the kernels' unaligned column slices)
===================================== ==========================================================================

The executors are registered with :mod:`e3nn_fast.dispatch` as ``pallas`` and ``pallas-interpret``; the functions
below import the Pallas modules only when first called, so ``import e3nn_fast`` stays fast.
"""


def tensor_product_pallas(description, weights, chunks1, chunks2):
    """The ``pallas`` executor of a tensor-product description (compiled kernels; GPU/TPU)."""
    from e3nn_fast.kernels.tensor_product import tensor_product

    return tensor_product(description, weights, chunks1, chunks2, interpret=False)


def tensor_product_pallas_interpret(description, weights, chunks1, chunks2):
    """The ``pallas-interpret`` executor: the same kernels in Pallas interpret mode (CPU testing only; slow)."""
    from e3nn_fast.kernels.tensor_product import tensor_product

    return tensor_product(description, weights, chunks1, chunks2, interpret=True)
