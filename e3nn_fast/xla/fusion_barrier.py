"""Computing a result apart from its consumers on XLA's CPU backend: ``computed_apart``.

XLA's CPU fusion pulls a computation into whatever consumes it, reshapes included.  For the jnp executor that is
often a loss: a contraction written ``(rows, a, k)`` is reshaped to the flat ``(rows, a * k)`` layout of an
``IrrepsArray``, and the fused loop then runs over the flat index.  Its innermost axis is no longer the short
component axis ``k``, every operand is read through a division and a remainder, and LLVM leaves the loop scalar:
the 15-term sum of high-l7's forward (1,024 rows, 128 channels) took 0.5-0.8 ms writing ``(rows, a, k)`` and 4.8-6.6
ms writing ``(rows, a * k)`` (2 cores, jax 0.10.2, 2026-12-07).

The boundaries XLA's CPU fusion never crosses are library calls (its ``dot`` fusions), concatenations of more than 8
operands, and the results of control flow.  ``computed_apart`` uses the last: the computation becomes the taken
branch of a conditional whose predicate, ``isnan(v) | ~isnan(v)`` for one input element ``v``, is true for every
value but is not folded by XLA.  The branch's loop writes the result in its natural shape; consumers read that
buffer, and the reshape to the flat layout is free.  The other branch (zeros, never taken) costs nothing at run time.

Measured and not adopted as the boundary (same day, same shapes): an ``optimization_barrier`` (removed by XLA before
fusion), a ``while`` loop around the computation (XLA hoists the loop-invariant computation out and copies it in),
a ``dynamic_update_slice`` or one-element scatter on the result (fused again as soon as the result has a consumer),
zeros concatenated to it (simplified to a fusible ``pad``), and nine blocks of rows joined by one concatenation
(works, but compiles nine loops and copies the result once more: high-l7's forward 1.6 against 1.1 ms, compile 0.37
against 0.15 s).

Only on a CPU with one device (other backends fuse differently and keep the computation inline), and only for
concrete, non-empty operands (a symbolic size under ``jax.export`` has no element to read before run time).

:func:`cotangent_apart` applies the same boundary to a derivative: the identity, whose tangent and cotangent are
computed apart, in the array's own shape.  The cotangent of an input that several paths read is the sum of their
contributions; without the boundary XLA fuses that sum into the loop of its consumer, over the flat layout.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax

from e3nn_fast._static_int import static_int


def backend_separates() -> bool:
    """Whether the default backend is one where :func:`computed_apart` inserts its boundary: a CPU with one device.
    (With several devices the probed element of a sharded operand lives on one of them, and every other device's
    program would wait for it.)"""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def separates_on_this_backend(probe: jnp.ndarray) -> bool:
    """Whether :func:`computed_apart` inserts its boundary for an operand like ``probe``: where
    :func:`backend_separates`, for a concrete, non-empty array."""
    if not backend_separates():
        return False
    sizes = [static_int(n) for n in probe.shape]
    return None not in sizes and all(n > 0 for n in sizes)


def computed_apart(compute: Callable[[], jnp.ndarray], probe: jnp.ndarray, shape, dtype) -> jnp.ndarray:
    """``compute()`` (an array of ``shape`` and ``dtype``), as the taken branch of a conditional that XLA cannot fold
    (see the module docstring).

    ``probe`` is any operand of the computation: one of its elements feeds the predicate, so the conditional is
    evaluated once per call after that operand is ready.  Where :func:`separates_on_this_backend` is false, simply
    ``compute()``.
    """
    if not separates_on_this_backend(probe):
        return compute()
    element = probe.reshape(-1)[0]
    always = jnp.isnan(element) | ~jnp.isnan(element)
    return lax.cond(always, compute, lambda: jnp.zeros(shape, dtype))


@jax.custom_jvp
def cotangent_apart(x: jnp.ndarray) -> jnp.ndarray:
    """``x`` unchanged; its tangent, and under reverse mode its cotangent, are computed apart from their consumers
    (:func:`computed_apart`), in ``x``'s shape.

    For a chunk ``(rows, mul, 2l + 1)`` that several tensor-product paths read, the cotangent is the sum of every
    path's gradient.  XLA fuses that sum into the loop of whatever reads it next, the reshape to the flat
    ``(rows, mul * (2l + 1))`` layout of the input's gradient, which runs over the flat index without vectorising;
    computed apart, the sum's loop runs over ``(rows, mul, 2l + 1)``.  Where :func:`separates_on_this_backend` is
    false, a plain identity.
    """
    return x


@cotangent_apart.defjvp
def _cotangent_apart_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    if type(t) is _primitive_api().Zero:
        return x, t
    return x, _identity_apart_p().bind(t, x)


def _primitive_api():
    """JAX's primitive-extension names, through the kernels' version shim (imported on first use: it loads Pallas,
    which the first tensor product loads anyway through stage B's primitive)."""
    from e3nn_fast.kernels import _pallas_compat

    return _pallas_compat


@functools.lru_cache(maxsize=None)
def _identity_apart_p():
    """The primitive ``identity_apart(t, probe) = t``, computed apart (:func:`computed_apart`, ``probe`` feeding the
    predicate).  A primitive rather than a conditional written in the JVP rule: under ``vmap`` the probe is batched,
    and JAX turns a conditional with a batched predicate into a ``select`` whose transpose fails; this one's batching
    rule applies it to the batched array as is (any element of the probe serves).  Linear in ``t``, its own
    transpose."""
    compat = _primitive_api()
    from e3nn_fast import _shard_compat

    primitive = compat.Primitive("e3nn_fast_identity_apart")

    def impl(t, probe):
        return computed_apart(lambda: t, probe, t.shape, t.dtype)

    def jvp(primals, tangents):
        t, probe = primals
        out = primitive.bind(t, probe)
        dt = tangents[0]
        return out, (compat.symbolic_zero_like(out) if type(dt) is compat.Zero else primitive.bind(dt, probe))

    def transpose(cotangent, t, probe):
        if type(cotangent) is compat.Zero:
            return [compat.Zero(t.aval), None]
        return [primitive.bind(cotangent, probe), None]

    def batch(args, dims):
        return primitive.bind(*args), dims[0]

    primitive.def_impl(impl)
    primitive.def_abstract_eval(lambda t, probe: _shard_compat.aval_like(t.shape, t.dtype, t))
    compat.primitive_jvps[primitive] = jvp
    compat.primitive_transposes[primitive] = transpose
    compat.primitive_batchers[primitive] = batch
    compat.register_lowering(primitive, compat.lower_fun(impl, multiple_results=False))
    return primitive
