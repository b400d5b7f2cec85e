"""Optimised jnp executor of the per-species symmetric contraction (the dispatcher's default on CPU).

The reference contracts a dense ``d^n`` basis per node (``vmap`` of the Horner einsums, with per-node weights).
This executor evaluates the same multilinear form as the Pallas kernels
(:mod:`e3nn_fast.kernels.symmetric_contraction_plan`): the sparse, symmetry-folded terms, factorised Horner-style
and unrolled at trace time, so that a symmetric tensor's ``d^n`` entries collapse to the few monomials
``x_i x_j x_l`` (``i <= j <= l``) that some term needs, each weight plane is multiplied once per output plane, and
the node's species weights are gathered once.

Every slot is laid out ``(nodes, planes, channels)`` and read with static plane slices only (runs of ``channels``
contiguous values): XLA fuses each output plane's polynomial into one elementwise loop (gathers of planes by index
arrays are ~100x slower on CPU).  Rows are processed in chunks of ~:data:`CHUNK_LANES` lanes (``lax.map``) so that
the planes stay in cache while each output plane's loop reads them.  The form is bound to the multilinear
primitive like the kernels, so the gradients are such unrolled polynomials too, stacked once, rather than the pads
and scatters that autodiff of row slices makes; the primitive also gives ``jax.jvp``, ``vmap`` and derivatives of
any order.

Measured on 2 shared CPU cores, 1000 nodes x 128 channels x ``0e+1o+2e+3o``, orders (1, 2, 3), 10 species, fp32:
forward 29x (out ``0e+1o``) and 33x (out ``0e+1o+2e``) faster than the reference; forward + ``d/dx, d/dw`` 12x.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from e3nn_fast.reference.symmetric_contraction import gather_species
from e3nn_fast.symmetric_tensor_product import SymmetricContractionDescription

__all__ = ["symmetric_contraction"]

# Lanes (rows x channels) per chunk: small enough that every plane of a chunk stays in cache while each output
# plane's loop re-reads them (measured at MACE size on CPU: 4x faster gradients than one pass over all rows, and a
# much faster compilation, since the loop body is compiled once).
CHUNK_LANES = 4096


@functools.lru_cache(maxsize=256)
def _form(description: SymmetricContractionDescription, channels: int):
    # imported here: the multilinear primitive lives with the kernels (Pallas is imported on first use only)
    from e3nn_fast.kernels._aligned import compute_dtype
    from e3nn_fast.kernels.symmetric_contraction_plan import SymmetricContractionForm, emit, programs

    class JnpForm(SymmetricContractionForm):
        """The form without padding, evaluated with jnp over all lanes."""

        family = "jnp"
        uses_pallas = False

        def evaluate(self, out_slot, require, operands, interpret):
            del interpret
            inputs = [op for s, op in enumerate(operands) if s != out_slot]
            rows = inputs[0].shape[0]
            chunk = max(1, CHUNK_LANES // self.channels)
            if rows <= chunk:
                return self._evaluate(out_slot, require, operands)
            n = -(-rows // chunk)  # zero rows pad the tail: every term has a factor from each batched input
            chunked = [jnp.pad(x, [(0, n * chunk - rows), (0, 0)]).reshape(n, chunk, x.shape[1]) for x in inputs]

            def one(xs):
                full = list(xs)
                full.insert(out_slot, None)
                return self._evaluate(out_slot, require, full)

            out = jax.lax.map(one, chunked)
            return out.reshape(n * chunk, out.shape[-1])[:rows]

        def _evaluate(self, out_slot, require, operands):
            inputs = [op for s, op in enumerate(operands) if s != out_slot]
            in_planes = [p for s, p in enumerate(self.planes) if s != out_slot]
            rows = inputs[0].shape[0]
            dtype = jnp.result_type(*inputs)
            # (rows, planes, channels) views: a plane is rows of `channels` contiguous values, and XLA fuses the
            # static plane slices of a whole output plane's polynomial into one loop (no transposes needed)
            accumulate = compute_dtype(dtype)  # float32 for 16-bit inputs, like the kernels
            planes = [x.reshape(rows, p, self.channels).astype(accumulate) for x, p in zip(inputs, in_planes)]
            load = lambda factor: planes[factor[0]][:, factor[1], :]
            outs = {plane: emit(items, load) for plane, items in programs(self, out_slot, frozenset(require))}
            zeros = jnp.zeros((rows, self.channels), dtype)
            stacked = [
                jnp.broadcast_to(jnp.asarray(outs.get(p, zeros)).astype(dtype), (rows, self.channels))
                for p in range(self.planes[out_slot])
            ]
            return jnp.stack(stacked, axis=1).reshape(rows, self.planes[out_slot] * self.channels)

    return JnpForm(description, channels, padded=False)


def symmetric_contraction(
    description: SymmetricContractionDescription, x: jax.Array, species: jax.Array, weights: Sequence[jax.Array]
) -> jax.Array:
    """Same signature and result as :func:`e3nn_fast.reference.symmetric_contraction.symmetric_contraction`."""
    from e3nn_fast.kernels.multilinear import contract

    nodes, channels, d = x.shape
    form = _form(description, channels)
    packed_x = jnp.swapaxes(x, 1, 2).reshape(nodes, d * channels)  # (nodes, planes * channels), plane-major
    w = jnp.concatenate(weights, axis=1).astype(x.dtype)  # (species, weight planes, channels)
    w = w.reshape(w.shape[0], w.shape[1] * w.shape[2])
    operands = [packed_x] * form.order + [gather_species(w, species), None]
    out = contract(form, form.order + 1, operands)
    return jnp.swapaxes(out.reshape(nodes, description.irreps_out.dim, channels), 1, 2)
