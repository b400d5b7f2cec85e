"""Stage B of the jnp tensor product as a multilinear form, so that its derivatives are written by hand too.

Stage B (see :mod:`e3nn_fast.xla.tensor_product`) contracts a path's *key* input with the stage-A product ``T``::

    key1:      z[r, u, v, k] = sum_m key[r, u, m] T[r, v, m, k]
    key2:      z[r, u, v, k] = sum_m T[r, u, m, k] key[r, v, m]
    diagonal:  z[r, u, k]    = sum_m key[r, u, m] T[r, u, m, k]

It is bilinear in ``key`` and ``T``, i.e. the derivative ``dF/dz`` of the trilinear form
``F(key, T, z) = sum z * key * T``.  Bound to the multilinear primitive (:mod:`e3nn_fast.kernels.multilinear`), its
JVP is stage B again and its transposes are the two other derivatives of ``F``, ``dF/dkey`` and ``dF/dT``; each of the
three is evaluated here in the form that XLA runs fastest, and derivatives of any order stay within these three.

Why not let autodiff transpose the forward: on XLA's CPU backend the transpose of a broadcast product is a reduction
over the short component axis ``k`` or a batched ``dot`` of tiny matrices, both handed to library calls that are
5-10x slower than the unrolled sums of broadcast products written here, which fuse into one loop per output (jax
0.10.2, 2 cores: the input-1 gradient of ``128x0e+128x1o (x) 0e+1o+2e+3o`` on 1,024 rows, 9.5 ms before).

Forms, with ``U``/``V`` the key's/other's channels and ``M``/``K`` the key's/output's components:

* the output ``z``: ``M`` broadcast products (a ``dot`` for ``M >= DOT_MIN_COMPONENTS``, where the unrolled sum loses);
* ``dF/dkey``: for one channel on the summed side (the spherical harmonics of a convolution), ``K`` broadcast
  products of ``(a, M)`` planes (a ``dot`` for ``K >= DOT_MIN_COMPONENTS``); otherwise a ``dot`` over the summed
  channel (a real matrix product);
* ``dF/dT``: an outer product when the summed channel has one element (every ``diagonal`` path); with one channel on
  the other side and at most ``UNROLLED_MAX_CHANNELS`` key channels, a broadcast product per key channel; otherwise a
  ``dot`` over the summed channel.

On a CPU, from ``APART_MIN_BYTES`` of output on, the dots of tiny matrices above become the unrolled sums again,
computed apart from their consumers (:mod:`e3nn_fast.xla.fusion_barrier`), and so are, for a path that is a whole
product (``stage_b(whole_product=True)``), its undifferentiated ``z`` and its ``dF/dkey``.  So is, from
``APART_MIN_MULTIPLY_ADDS`` on, ``dF/dT`` over a wide key with one channel on the other side (a convolution's
gradient with respect to its harmonics side: the contraction at the heart of force training).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from e3nn_fast._static_int import static_int
from e3nn_fast.xla.fusion_barrier import backend_separates, computed_apart


KEY1, KEY2, DIAGONAL = "key1", "key2", "diagonal"
KEY, T, Z = 0, 1, 2

# From this many summed components on (l >= 6), a contraction is a ``dot``; below it, one fused broadcast product per
# component.  The forward (over ``m``) and the key's gradient (over ``k``) switch on their own counts.  Measured on 2
# cores (jax 0.10.2, medians of 7-9 alternated runs, 2026-12-06), the fused form wins up to l = 5:
# * high-l5 (m = k = 11) fwd+bwd 20.9 -> 15.1 ms and forces 18.4 -> 14.1 ms against the dots from l = 4 on (its
#   forward within noise); sh-tp's k = 11 key gradients within noise (fwd+bwd 130 -> 126 ms);
# * tp-16's ``2e x 2e -> 4e`` key gradients (k = 9): fwd+bwd 36.8 -> 34.5 ms, forces 23.2 -> 19.3 ms (the dot needs
#   the cotangent copied into its layout);
# * at l = 7 (m = k = 15) the dots stay inline: unrolled, high-l7's forward took 5.3 instead of 4.0 ms, and the gain
#   of its forces pass in an alternated A/B (12.2 -> 9.7 ms) did not show in the bench harness (`python -m bench
#   --workloads high-l7 --repeats 9`: 1.21x e3nn-jax either way, the forward 1.34x -> 1.13x).  2l+1 = 15 terms is
#   also the most XLA's CPU fusion reads one operand through before it copies it instead (its code-duplication
#   limit).  The first version's dots from l = 4 on came from high-l7's forward.  (The unrolled sum lost because
#   XLA fused it into its consumer's loop over the flat layout; computed apart, it wins: ``APART_MIN_BYTES``.)
DOT_MIN_COMPONENTS = 12
# On a CPU, those dots give way to the unrolled sums again once the contraction's output reaches this many bytes,
# computed apart from their consumers (:func:`~e3nn_fast.xla.fusion_barrier.computed_apart`), so that, like the dot,
# each writes its own buffer in its natural shape.  Measured on 2 cores (jax 0.10.2, 2026-12-07, A/B in one process,
# medians of 7-9), high-l7 (``128x7e x 1x7e -> 128x7e``, m = k = 15): at 1,024 edges fwd 4.2 -> 1.2 ms, fwd+bwd 13.6
# -> 10.9 ms, forces 11.5 -> 8.4 ms; at 32 edges 0.18 / 0.50 / 0.40 -> 0.09 / 0.37 / 0.33 ms, but compile 0.07 /
# 0.14 / 0.17 -> 0.12 / 0.31 / 0.23 s, hence a threshold for outputs too small for run time to matter.
APART_MIN_BYTES = 2**18
# dF/dT when the other input has one channel (b = 1: the harmonics of a convolution) is an unrolled sum over the
# key's channels up to this many of them, a batched ``dot`` beyond (see ``StageBMaths._t``).
UNROLLED_MAX_CHANNELS = 16
# ... in groups of this many channels, each read from its own slice of the cotangent (see ``StageBMaths._t_unrolled``).
UNROLLED_GROUP_CHANNELS = 8
# On a CPU, dF/dT over more key channels than that (one channel on the other side) is the same grouped sum, computed
# apart from its consumers, once it has this many multiply-adds (rows * a * m * k); the batched ``dot`` below it.  The
# dot of tiny matrices slows down per row as the rows grow, the unrolled sum speeds up (2 cores, jax 0.10.2,
# 2026-12-07, medians of 7, the contraction and the stage-A product that consumes it): (rows, a, m, k) = (128, 64, 7,
# 7) 0.19 -> 0.07 ms, (1,024, 128, 15, 15) 3.7 -> 1.5 ms, (4,096, 64, 7, 7) 4.7 -> 0.49 ms, (4,096, 32, 3, 5) 3.0 ->
# 0.22 ms.  Inline, XLA fused the sum into the stage-A ``dot`` that reads it (5 ms at 1,024 x 128 x 15 x 15); summed
# as one chain of ``a`` terms instead of groups of 8, it ran 1.5-2.2x slower.  In whole passes (A/B in one process,
# medians of 7): high-l7 (1,024 x 128 x 15 x 15) fwd+bwd 7.6 -> 5.6 ms, forces 6.0 -> 3.7 ms; high-l5 fwd+bwd 11.4 ->
# 9.1 ms, forces 8.9 -> 4.9 ms.  Each such sum costs XLA 0.1-0.3 s of compile time, hence a threshold, set where the
# quick suite's medium convolutions stay as they were:
# * nequip-benzene at 128 edges (at most 128 x 64 x 7 x 7 = 0.4 M multiply-adds), every such sum apart: forces 7.5 ->
#   6.6 ms, compile 4.1 -> 11.3 s;
# * from 2**20 on: mace-medium at 1,024 edges fwd+bwd 13.4 -> 10.4 ms and forces 9.7 -> 7.0 ms (compile 0.6 -> 1.1 s),
#   but mace-large at 384 edges fwd+bwd 14.2 -> 24.6 ms: the conditionals' operands took its temporaries from 28.0 to
#   34.9 MiB, past the 32 MiB from which glibc maps each allocation afresh, and every call paid 8,900 page faults.
APART_MIN_MULTIPLY_ADDS = 2**22


class StageBMaths:
    """``F(key, T, z) = sum z * key * T`` for one layout and shape: the slots and the three contractions.

    Combined with :class:`~e3nn_fast.kernels.multilinear.MultilinearPlan` by :func:`_form` (cached, one per
    configuration), so that Pallas, which the primitive's module imports, is loaded at the first product only.

    ``a`` is the key's channel count, ``b`` the other input's (``a`` for ``diagonal``); slots are stored flat per row:
    ``key (a, m)``, ``T (b, m, k)`` and ``z``: ``(a, b, k)`` for key1, ``(b, a, k)`` for key2 (``z`` is always
    indexed input 1's channel first), ``(a, k)`` for diagonal.
    """

    family = "jnp-stage-b"
    uses_pallas = False

    def __init__(self, layout: str, a: int, b: int, m: int, k: int, apart: tuple = ()):
        if layout not in (KEY1, KEY2, DIAGONAL):
            raise ValueError(f"unknown stage-B layout {layout!r}; expected {KEY1!r}, {KEY2!r} or {DIAGONAL!r}")
        self.layout, self.a, self.b, self.m, self.k = layout, a, b, m, k
        self.apart = apart  # the slots whose contraction is computed apart whatever its form (see _computed_apart)
        self.z_shape = {KEY1: (a, b, k), KEY2: (b, a, k), DIAGONAL: (a, k)}[layout]
        from e3nn_fast.kernels.multilinear import Slot

        self.slots = (
            Slot("key", True, a * m),
            Slot("T", True, b * m * k),
            Slot("z", True, _product(self.z_shape)),
        )
        # An unrolled sum has one term per summed component: ``m`` per output element forward, ``k`` per element of
        # the key's gradient.  Each contraction switches to a small matmul on its own count, so a path with few
        # key components and many output ones keeps its forward fused (one switch on max(m, k), at 9 components
        # then, made sh-tp's forward 1.12x slower; 2 cores, 2026-12-06).
        self.z_uses_dot = m >= DOT_MIN_COMPONENTS
        self.key_uses_dot = k >= DOT_MIN_COMPONENTS
        self.t_is_unrolled = layout != DIAGONAL and a > 1 and b == 1 and a <= UNROLLED_MAX_CHANNELS
        self.t_has_wide_key = layout != DIAGONAL and b == 1 and a > UNROLLED_MAX_CHANNELS

    def has_terms(self, out_slot, require):
        return True  # every term involves all three slots

    def differentiated(self):
        """A whole product's form, differentiated: ``dF/dkey`` computed apart instead of ``z``.

        A differentiated forward's ``z`` also feeds the backward, which reads it in its natural shape, so XLA keeps it
        in a buffer of that shape anyway, and a conditional around it only adds one (high-l5, 2,048 edges: fwd+bwd
        12.6 -> 14.0 ms and forces 10.8 -> 11.4 ms with it).  The key's gradient, apart, reads ``T`` with its axes
        swapped (see :meth:`_contraction_apart`): high-l5 fwd+bwd 14.6 -> 12.5 ms, forces 11.7 -> 8.5 ms (2 cores,
        2026-12-07, medians of 11 alternated rounds).  Both apart took the fwd+bwd's temporaries past glibc's 32 MiB
        mmap threshold (see :meth:`_computed_apart`)."""
        return _form(self.layout, self.a, self.b, self.m, self.k, (KEY,)) if self.apart == (Z,) else self

    def evaluate(self, out_slot, require, operands, interpret):
        del require, interpret
        arrays = [op for s, op in enumerate(operands) if s != out_slot]
        dtype = jnp.result_type(*arrays)
        # float32 for 16-bit floats, as the kernels accumulate: the unrolled sums (up to 16 terms) would otherwise
        # round every partial sum to 8 mantissa bits (bfloat16 gradients of tp-16 w.r.t. the harmonics-side input:
        # 6.5e-3 relative error, against 5.0e-3 with the batched ``dot`` and 5.0e-3 now)
        compute = accumulation_dtype(dtype)
        rows = arrays[0].shape[0]
        if out_slot == T and self.t_is_unrolled:  # reads the flat operands (see _t_unrolled)
            key2d, _, z2d = (None if op is None else op.astype(compute) for op in operands)
            return self._t_unrolled(key2d, z2d).astype(dtype)
        shapes = ((self.a, self.m), (self.b, self.m, self.k), self.z_shape)
        key, t, z = (None if op is None else op.astype(compute).reshape((rows,) + shape)
                     for op, shape in zip(operands, shapes))
        if self._computed_apart(out_slot, rows, jnp.dtype(compute).itemsize):
            result = self._contraction_apart(out_slot, key, t, z, rows, compute)
        else:
            result = self._contraction(out_slot, key, t, z)
        return result.reshape(rows, self.slots[out_slot].columns).astype(dtype)

    def _computed_apart(self, out_slot, rows, itemsize) -> bool:
        """Whether the contraction into ``out_slot`` is an unrolled sum computed apart from its consumers
        (:func:`~e3nn_fast.xla.fusion_barrier.computed_apart`): on a CPU with one device, for an output of at least
        ``APART_MIN_BYTES`` (of a concrete size), where it would otherwise be a dot of tiny matrices
        (``DOT_MIN_COMPONENTS`` or more summed components, no channel summed), and for the slots in ``apart`` (a
        whole product's ``z``, or differentiated its ``dF/dkey``: :func:`stage_b`, :meth:`differentiated`); and
        ``dF/dT`` over a wide key with one channel on the other side from ``APART_MIN_MULTIPLY_ADDS`` of work.

        Computing both ``z`` and the key's gradient apart in high-l5's fwd+bwd (2,048 edges) took its temporaries
        from 24 to 34 MiB, past the 32 MiB from which glibc's ``malloc`` maps every allocation afresh, and the pass
        from 13.7 to 26.7 ms in page faults (2 cores, 2026-12-07, medians of 11 alternated rounds; 13.1 -> 13.6 ms
        in a process started with ``MALLOC_MMAP_THRESHOLD_`` raised, a setting glibc ignores above 32 MiB, so that
        process's heap happened to hold the temporaries); hence ``z`` inline where the key's gradient is apart.
        """
        if out_slot == Z:
            wanted = Z in self.apart or self.z_uses_dot
        elif out_slot == KEY:
            wanted = (KEY in self.apart or self.key_uses_dot) and self._key_is_unrollable
        else:
            wanted = self.t_has_wide_key
        if not wanted or not backend_separates():
            return False
        rows = static_int(rows)
        if rows is None:
            return False
        if out_slot == T:  # a small output, a long sum: the threshold counts the work (see APART_MIN_MULTIPLY_ADDS)
            return rows * self.a * self.m * self.k >= APART_MIN_MULTIPLY_ADDS
        return rows * self.slots[out_slot].columns * itemsize >= APART_MIN_BYTES

    def _contraction_apart(self, out_slot, key, t, z, rows, compute):
        """The unrolled sum into ``out_slot`` (``z``, ``dF/dkey`` or ``dF/dT``) as the taken branch of a conditional,
        kept apart from its consumers as a dot's library call would be (see :meth:`_computed_apart`).

        ``dF/dkey`` reads ``T`` with its component axes swapped, ``(rows, ., k, m)``, passed in as an operand of the
        conditional: XLA writes it out before the branch, so that each term of the sum reads a contiguous ``(., m)``
        plane where ``T``'s own layout is read with a stride of ``k`` (swapped inside the branch, the swap is fused
        into the sum and ``T`` read with that stride again).  high-l7 (m = k = 15), 1,024 edges: fwd+bwd 11.3 -> 8.5
        ms, forces 9.5 -> 6.8 ms (2 cores, 2026-12-07, medians of 9 alternated rounds).
        """
        if out_slot == KEY:
            t_km = jnp.swapaxes(t, -1, -2)
            return computed_apart(lambda: self._key_unrolled(self._z_per_key_channel(z), t_km, swapped=True), t,
                                  (rows, self.a, self.m), compute)
        if out_slot == T:
            def t_gradient():
                z_ak = self._z_per_key_channel(z)  # taken once, inside the branch
                return self._t_grouped_sum(lambda start, count: key[:, start:start + count],
                                           lambda start, count: z_ak[:, start:start + count])[:, None]

            return computed_apart(t_gradient, key, (rows, 1, self.m, self.k), compute)
        return computed_apart(lambda: self._z(key, t, use_dot=False), key, (rows,) + self.z_shape, compute)

    def _contraction(self, out_slot, key, t, z):
        """The contraction into ``out_slot``, inline, in the form's choice of form (see ``DOT_MIN_COMPONENTS``)."""
        if out_slot == Z:
            return self._z(key, t, self.z_uses_dot)
        if out_slot == KEY:
            return self._key(t, z, self.key_uses_dot)
        return self._t(key, z)

    def _z(self, key, t, use_dot):
        """The forward product.

        Unrolled over ``m`` on purpose: one broadcast product summed over the ``m`` axis (a single multiply and
        reduce, 4x fewer StableHLO ops) compiles 15-30 % faster but runs 25-50x slower on XLA's CPU backend (tp-16,
        nequip-benzene and mace-medium forward, 2026-12-06)."""
        if use_dot:
            spec = {KEY1: "ram,rbmk->rabk", KEY2: "ram,rbmk->rbak", DIAGONAL: "ram,ramk->rak"}[self.layout]
            return jnp.einsum(spec, key, t)
        return self._z_unrolled(key, t)

    def _z_unrolled(self, key, t):
        """``m`` broadcast products summed in one fused loop."""
        total = None
        for m in range(self.m):
            if self.layout == DIAGONAL:
                term = key[:, :, m, None] * t[:, :, m, :]
            elif self.layout == KEY1:
                term = key[:, :, None, m, None] * t[:, None, :, m, :]
            else:
                term = t[:, :, None, m, :] * key[:, None, :, m, None]
            total = term if total is None else total + term
        return total

    def _key(self, t, z, use_dot):
        """``dF/dkey[a, m] = sum_{b, k} z[.., a, .., k] T[b, m, k]`` (over ``k`` only for diagonal).

        With nothing or one channel summed, ``k`` broadcast products of ``(a, m)`` planes: one fused loop, and ``k``
        terms rather than ``m * k`` (unrolling over ``m`` too ran no faster and doubled XLA's compile time).  In a
        forces pass these loops are about half the time (nequip-benzene), scalar code since no operand is contiguous
        along the output's short minor axis ``m``; measured and not adopted there (2 cores, jax 0.10.2, 2026-12-06,
        A/B in one process): a batched ``dot`` (forces 7.1 -> 9.6 ms), the sum written channel-minor between two
        transposes (7.1 ms, unchanged: XLA's transposes cost what the loop saved), ``T`` transposed to ``(k, m)``
        (no change beyond the noise); on 2026-12-07, the sum written channel-minor from the ``(rows, k, a)``
        transpose of ``z`` that ``dF/dT``'s ``dot`` also reads (one explicit transpose for both, merged by XLA's
        CSE), then transposed back: forces 8.5 -> 10.1 ms, sevennet-l3i5 9.4 -> 14.0 ms.
        """
        if self._key_is_unrollable:
            if not use_dot:
                return self._key_unrolled(self._z_per_key_channel(z), t)
            if self.layout == DIAGONAL:
                return jnp.einsum("rak,ramk->ram", z, t)
        spec = "rabk,rbmk->ram" if self.layout == KEY1 else "rbak,rbmk->ram"
        return jnp.einsum(spec, z, t)

    @property
    def _key_is_unrollable(self):
        """Whether ``dF/dkey`` sums over ``k`` alone (no channel summed), so that it has an unrolled form."""
        return self.layout == DIAGONAL or self.b == 1

    def _z_per_key_channel(self, z):
        """``z`` as ``(rows, a, k)`` where the other side has one channel (or, diagonal, pairs its channels with the
        key's): what ``dF/dkey`` sums over ``k`` alone and ``dF/dT`` over the key's channels."""
        return z if self.layout == DIAGONAL else z[:, :, 0, :] if self.layout == KEY1 else z[:, 0, :, :]

    def _key_unrolled(self, z, t, swapped: bool = False):
        """``sum_k z[r, a, k] T[r, a or 1, m, k]`` (one channel of ``T`` serves every ``a``): ``k`` broadcast
        products of ``(a, m)`` planes, one fused loop.  ``swapped``: ``t`` is ``T`` with its last two axes swapped,
        ``(rows, a or 1, k, m)``."""
        plane = (lambda k: t[:, :, k, :]) if swapped else (lambda k: t[:, :, :, k])
        return _unrolled_sum(lambda k: z[:, :, None, k] * plane(k), self.k)

    def _t(self, key, z):
        """``dF/dT[b, m, k] = sum_a z[.., a, .., k] key[a, m]`` (no sum for diagonal)."""
        if self.layout == DIAGONAL:
            return z[:, :, None, :] * key[:, :, :, None]
        if self.a == 1:  # one channel summed: an outer product
            za = z[:, 0, :, :] if self.layout == KEY1 else z[:, :, 0, :]  # (rows, b, k)
            return za[:, :, None, :] * key[:, 0, None, :, None]
        # the product is written (r, b, k, m) and then transposed: XLA's CPU dot emitter is 2-5x slower when asked
        # for (r, b, m, k) directly (4,096 rows, a = 16, m = 3, k = 5: 2.2 ms against 0.43 ms).  The dot makes XLA
        # copy each path's z into (r, k, a) first.  A dot ordered to read z in place (``ram,rak->rmk`` for b = 1)
        # was slower still: tp-16 fwd+bwd 33 -> 42 ms.  For wide keys the alternatives lost (2 cores, jax 0.10.2,
        # 2026-12-06): the grouped unrolled sum of ``_t_unrolled`` over 32 channels ran nequip-water 13 % faster but
        # sh-tp 7 % slower with 50 % more compile time, over 64 and 128 it took nequip-benzene's compile time from
        # 4.4 to 14.8 s for no gain; ``sum(key * z, axis=a)`` is 3x faster than the dot alone but 3x slower in a whole
        # backward (XLA fuses the reduction into the stage-A ``dot`` after it: tp-16 fwd+bwd 37 -> 112 ms); the
        # unrolled sum over groups of 8 channels in a ``fori_loop`` gained nothing on sh-tp and lost 20-30 % on
        # nequip-benzene.  The unrolled sum lost inline because XLA fused it into that ``dot``; computed apart, it
        # wins for large enough contractions (``APART_MIN_MULTIPLY_ADDS``).
        spec = "rabk,ram->rbkm" if self.layout == KEY1 else "rbak,ram->rbkm"
        return jnp.swapaxes(jnp.einsum(spec, z, key), -1, -2)

    def _t_unrolled(self, key2d, z2d):
        """dF/dT when the other input has one channel: ``sum_a key[a, m, None] z[a, None, k]``, flat in and out.

        One broadcast product per key channel, summed in one fused loop that reads the cotangent ``z`` in place,
        where the dot needs it copied into ``(r, k, a)``: 10x faster alone (4,096 rows, a = 16, m = 5, k = 9: 0.35
        against 3.5 ms), tp-16 fwd+bwd 36.8 -> 29.8 ms and forces 23.2 -> 15.8 ms, the NequIP step's energy +
        forces 2.30 -> 2.04 ms (medians of 9, 2 cores, 2026-12-06).

        Each group of ``UNROLLED_GROUP_CHANNELS`` channels is sliced from the flat ``(rows, a * k)`` operands, not
        from their ``(rows, a, k)`` view: XLA's CPU fusion refuses to fuse a producer that a loop reads through more
        than 15 index expressions (its code-duplication limit) and copies it instead, but it merges a slice of a
        slice, so every group is its own slice of the cotangent, read by at most ``UNROLLED_GROUP_CHANNELS`` terms.
        That saves tp-16's backward 22 copies (its whole 21 MB cotangent once more) but no time measurably: the loop
        reading the strided cotangent takes what the copy cost (fwd+bwd 36.0 against 35.4 ms, forces 18.3 against
        17.5 ms, medians of 15 alternated runs, 2 cores, 2026-12-06).

        The loop runs over the flat ``(rows, m * k)`` output, whose index XLA's CPU emitter splits per element: alone,
        the same sum written ``(rows, m, k)`` took 0.15 against 0.82 ms, but the primitive's flat slot brings the
        reshape back into the loop (an ``optimization_barrier`` between them is dropped by XLA).  Measured and not
        adopted (2 cores, 2026-12-07, A/B in one process, medians of 7): one ``(rows, k)`` sum per key component
        ``m``, concatenated (XLA's concatenation emitter loops over each piece): tp-16 fwd+bwd 20.2 -> 17.2 ms and
        forces 13.5 -> 10.2 ms, but compile 1.9 -> 3.6 s and 1.5 -> 3.1 s; the NequIP step's energy + forces 2.01 ->
        1.89 ms for compile 2.3 -> 2.5 s, its training step unchanged (4.6 ms) for compile 4.0 -> 4.8 s.
        """
        rows, m, k = key2d.shape[0], self.m, self.k
        total = self._t_grouped_sum(
            lambda start, count: key2d[:, start * m:(start + count) * m].reshape(rows, count, m),
            lambda start, count: z2d[:, start * k:(start + count) * k].reshape(rows, count, k))
        return total.reshape(rows, m * k)

    def _t_grouped_sum(self, key_group, z_group):
        """``sum_a key[r, a, m] z[r, a, k]``, ``(rows, m, k)``: one broadcast product per key channel, summed in groups
        of ``UNROLLED_GROUP_CHANNELS`` (``key_group(start, count)``, ``z_group(start, count)``: the group's
        ``(rows, count, m)`` and ``(rows, count, k)`` operands).  The groups' partial sums are then added: one chain
        over 64-256 channels ran 1.5-2.2x slower (see ``APART_MIN_MULTIPLY_ADDS``)."""
        total = None
        for start in range(0, self.a, UNROLLED_GROUP_CHANNELS):
            count = min(UNROLLED_GROUP_CHANNELS, self.a - start)
            keys, zs = key_group(start, count), z_group(start, count)
            part = _unrolled_sum(lambda a: keys[:, a, :, None] * zs[:, a, None, :], count)
            total = part if total is None else total + part
        return total


def _unrolled_sum(term, count: int):
    """``term(0) + ... + term(count - 1)``: an unrolled sum that XLA fuses into one loop (not a reduction)."""
    total = term(0)
    for index in range(1, count):
        total = total + term(index)
    return total


def _product(shape) -> int:
    out = 1
    for n in shape:
        out *= n
    return out


def accumulation_dtype(dtype):
    """The dtype the jnp forms compute in: float32 for 16-bit floats, as the kernels accumulate (the kernels' rule,
    imported here only when called: the multilinear primitive, and Pallas with it, load at the first product)."""
    from e3nn_fast.kernels._aligned import compute_dtype

    return compute_dtype(dtype)


@functools.lru_cache(maxsize=None)
def _form_class() -> type:
    from e3nn_fast.kernels.multilinear import MultilinearPlan

    return type("StageBForm", (StageBMaths, MultilinearPlan), {"__doc__": StageBMaths.__doc__})


@functools.lru_cache(maxsize=1024)
def _form(layout: str, a: int, b: int, m: int, k: int, apart: tuple):
    # cached: the multilinear primitive compares plans by identity
    return _form_class()(layout, a, b, m, k, apart)


def stage_b(layout: str, key: jnp.ndarray, t: jnp.ndarray, whole_product: bool = False) -> jnp.ndarray:
    """Stage B of one path: ``key (..., a, m)`` and ``T (..., b, m, k)`` to ``z`` (see the module docstring).

    Leading axes are broadcast together and flattened into the primitive's rows.  ``whole_product``: the path is a
    whole tensor product, whose output no other path's joins and whose key no other path's gradient adds to; on a
    CPU its ``z`` (undifferentiated) and ``dF/dkey`` are then computed apart from their consumers (see
    ``StageBMaths._computed_apart``).
    """
    a, m = key.shape[-2:]
    b, _, k = t.shape[-3:]
    lead = tuple(jnp.broadcast_shapes(key.shape[:-2], t.shape[:-3]))
    rows = _product(lead)
    form = _form(layout, a, b, m, k, (Z,) if whole_product else ())
    from e3nn_fast.kernels.multilinear import contract

    key2d = jnp.broadcast_to(key, lead + (a, m)).reshape(rows, a * m)
    t2d = jnp.broadcast_to(t, lead + (b, m, k)).reshape(rows, b * m * k)
    z = contract(form, Z, [key2d, t2d, None])
    return z.reshape(lead + form.z_shape)
