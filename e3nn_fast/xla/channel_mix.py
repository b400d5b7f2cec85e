"""The weights of a ``uvw`` path as a multilinear form: ``out[w, k] = sum_q W[q, w] z[q, k]``, derivatives by hand.

A ``uvw`` path (every input channel pair ``q = (u, v)`` mixed into every output channel ``w`` by its own weight)
is stage A and B of :mod:`e3nn_fast.xla.tensor_product`, which give ``z[..., q, k]``, then this mixing.  It is the
trilinear form ``F(z, W, out) = sum out[w, k] W[q, w] z[q, k]`` per row, bound to the multilinear primitive
(:mod:`e3nn_fast.kernels.multilinear`) like stage B, so that its derivatives (``dF/dz``, ``dF/dW``) and theirs are
again one of the three contractions, each written in the form XLA runs fastest.

The weights are either **shared** (one ``(q, w)`` matrix; the three contractions are matrix products over the rows)
or **per row** (a DiffDock-style convolution, whose weights an MLP computes per edge).  Per row they are the
largest operand: each row reads ``q * w`` weights for ``q * k`` inputs, so the contractions are written to read
them once, in place, and vectorised along ``w``:

* ``out``: for at most ``UNROLLED_MAX_PAIRS`` pairs, a sum of one broadcast product per pair ``q``, each reading its
  ``w`` weights as a slice of the flat weights.  The batched ``dot`` (what a per-path ``einsum`` runs) needs each
  path's weights copied out of the flat vector first, and XLA's CPU loop reading a ``(rows, q, w)`` view through
  more than 15 slices copies it as well (its code-duplication limit): ``diffdock``'s forward (12 paths, 7,128
  weights per edge, 256 edges) 1.64 -> 0.86 ms, the copies of its two ``48 x 48`` weight blocks having taken 1.7 ms
  each (2 cores, jax 0.10.2, 2026-12-06).  The sum is written ``(k, w)``, ``w`` minor, and transposed after; for
  ``k > 1`` it is computed apart from its consumers (:func:`~e3nn_fast.xla.fusion_barrier.computed_apart`), since
  XLA otherwise fuses it, transpose included, into the loop writing the output's ``(w, k)`` layout, where it is no
  longer vectorised along ``w``: ``diffdock``'s forward 0.75 -> 0.39 ms at 256 edges (its ``48 -> 10`` pairs of
  ``k = 3`` took 0.5 ms inline), 0.22 -> 0.14 ms at 64 and 8.5 -> 5.3 ms at 2,048 (2 cores, jax 0.10.2,
  2026-12-07, medians of 7 alternated rounds; fwd+bwd and forces within noise or faster).
* ``dF/dW``: ``dW[q, w] = sum_k z[q, k] out[w, k]``: ``k`` broadcast products (a ``dot`` from
  ``DOT_MIN_COMPONENTS`` components on), written flat and contiguous along ``w``.
* ``dF/dz``: ``dz[q, k] = sum_w W[q, w] out[w, k]``, a batched ``dot`` (it copies each path's weights; reading
  them in place by one row reduction per component, or an unrolled sum over ``w``, ran no faster: ``diffdock``
  fwd+bwd 5.4 / 5.2 ms against 5.4 ms).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from e3nn_fast.xla.fusion_barrier import computed_apart
from e3nn_fast.xla.stage_b import DOT_MIN_COMPONENTS, accumulation_dtype

Z, WEIGHT, OUT = 0, 1, 2

# The per-row forward is an unrolled sum over the channel pairs up to this many of them (a batched ``dot`` beyond,
# whose compile time does not grow with the pairs).  diffdock's paths have 10 and 48 pairs; its forward compiles in
# 0.9 s unrolled against 0.45 s with dots.
UNROLLED_MAX_PAIRS = 64


class ChannelMixMaths:
    """``F(z, W, out) = sum out[w, k] W[q, w] z[q, k]`` for one shape: slots and contractions.

    Slots, flat per row: ``z (q, k)``, ``W (q, w)`` (per row, or one matrix shared by every row) and
    ``out (w, k)``.  Combined with :class:`~e3nn_fast.kernels.multilinear.MultilinearPlan` by :func:`_form`.
    """

    family = "jnp-channel-mix"
    uses_pallas = False

    def __init__(self, pairs: int, components: int, channels_out: int, per_row: bool):
        self.q, self.k, self.w, self.per_row = pairs, components, channels_out, per_row
        from e3nn_fast.kernels.multilinear import Slot

        self.slots = (
            Slot("z", True, pairs * components),
            Slot("weight", per_row, pairs * channels_out),
            Slot("out", True, channels_out * components),
        )

    def has_terms(self, out_slot, require):
        return True  # every term involves all three slots

    def per_row_variant(self, converted):
        """Under ``vmap`` with a weight matrix per mapped element: the same form with the weights per row."""
        del converted  # the weights are the only slot that is not per row
        return _form(self.q, self.k, self.w, True)

    def evaluate(self, out_slot, require, operands, interpret):
        del require, interpret
        arrays = [op for s, op in enumerate(operands) if s != out_slot]
        dtype = jnp.result_type(*arrays)
        compute = accumulation_dtype(dtype)
        z, weight, out = (None if op is None else op.astype(compute) for op in operands)
        rows = (z if z is not None else out).shape[0]
        if out_slot == OUT:
            result = self._out(z, weight, rows)
        elif out_slot == Z:
            result = self._z(weight, out, rows)
        else:
            result = self._weight(z, out, rows)
        return result.astype(dtype)

    def _out(self, z, weight, rows):
        """``out[w, k] = sum_q z[q, k] W[q, w]``, flat ``(rows, w * k)``."""
        q, k, w = self.q, self.k, self.w
        z3 = z.reshape(rows, q, k)
        if not self.per_row:
            mixed = jnp.einsum("rqk,qw->rwk", z3, weight.reshape(q, w))
        elif q > UNROLLED_MAX_PAIRS:
            mixed = jnp.einsum("rqk,rqw->rwk", z3, weight.reshape(rows, q, w))
        elif k == 1:  # (k, w) is already the output's layout
            mixed = _unrolled_mix(z3, weight, w)
        else:  # written apart in (k, w), then transposed (see the module docstring)
            mixed = jnp.swapaxes(computed_apart(lambda: _unrolled_mix(z3, weight, w), z, (rows, k, w), z.dtype), 1, 2)
        return mixed.reshape(rows, w * k)

    def _z(self, weight, out, rows):
        """``dz[q, k] = sum_w W[q, w] out[w, k]``, flat ``(rows, q * k)``."""
        q, k, w = self.q, self.k, self.w
        out3 = out.reshape(rows, w, k)
        if self.per_row:
            result = jnp.einsum("rqw,rwk->rqk", weight.reshape(rows, q, w), out3)
        else:
            result = jnp.einsum("qw,rwk->rqk", weight.reshape(q, w), out3)
        return result.reshape(rows, q * k)

    def _weight(self, z, out, rows):
        """``dW[q, w] = sum_k z[q, k] out[w, k]``: flat ``(rows, q * w)`` per row, summed over the rows if shared."""
        q, k, w = self.q, self.k, self.w
        z3, out3 = z.reshape(rows, q, k), out.reshape(rows, w, k)
        if not self.per_row:
            return jnp.einsum("rqk,rwk->qw", z3, out3).reshape(q * w)
        if k >= DOT_MIN_COMPONENTS:
            return jnp.einsum("rqk,rwk->rqw", z3, out3).reshape(rows, q * w)
        total = None
        for component in range(k):
            term = z3[:, :, component, None] * out3[:, None, :, component]
            total = term if total is None else total + term
        return total.reshape(rows, q * w)


def _unrolled_mix(z3: jnp.ndarray, weight: jnp.ndarray, w: int) -> jnp.ndarray:
    """``total[r, k, w] = sum_q z3[r, q, k] W[r, q * w + w]``: one broadcast product per pair ``q``, each reading its
    ``w`` weights as a slice of the flat per-row weights ``(rows, q * w)``, vectorised along ``w``."""
    total = None
    for pair in range(z3.shape[1]):
        term = z3[:, pair, :, None] * weight[:, pair * w:(pair + 1) * w][:, None, :]
        total = term if total is None else total + term
    return total


@functools.lru_cache(maxsize=None)
def _form_class() -> type:
    from e3nn_fast.kernels.multilinear import MultilinearPlan

    return type("ChannelMixForm", (ChannelMixMaths, MultilinearPlan), {"__doc__": ChannelMixMaths.__doc__})


@functools.lru_cache(maxsize=1024)
def _form(pairs: int, components: int, channels_out: int, per_row: bool):
    # cached: the multilinear primitive compares plans by identity
    return _form_class()(pairs, components, channels_out, per_row)


def channel_mix(z: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """``out[..., w, k] = sum_q W[..., q, w] z[..., q, k]`` for ``z (..., q, k)`` and ``W (..., q, w)`` with the same
    leading axes (none for one matrix shared by every row)."""
    q, k = z.shape[-2:]
    w = weight.shape[-1]
    if weight.shape[-2] != q:
        raise ValueError(f"channel_mix: the weights have {weight.shape[-2]} channel pairs, z has {q}")
    lead = z.shape[:-2]
    per_row = weight.ndim > 2
    if per_row and weight.shape[:-2] != lead:
        raise ValueError(f"channel_mix: per-row weights need the leading axes {lead} of z, got {weight.shape[:-2]}")
    rows = 1
    for n in lead:
        rows *= n
    from e3nn_fast.kernels.multilinear import contract

    flat_weight = weight.reshape(rows, q * w) if per_row else weight.reshape(q * w)
    out = contract(_form(q, k, w, per_row), OUT, [z.reshape(rows, q * k), flat_weight, None])
    return out.reshape(lead + (w, k))
