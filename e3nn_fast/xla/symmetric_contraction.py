"""Optimised jnp executor of the per-species symmetric contraction (the dispatcher's default on CPU).

The reference contracts a dense ``d^n`` basis per node (``vmap`` of the Horner einsums, with per-node weights).
This executor evaluates the same multilinear form as the Pallas kernels
(:mod:`e3nn_fast.kernels.symmetric_contraction_plan`): the sparse, symmetry-folded terms, so a symmetric tensor's
``d^n`` entries collapse to the monomials ``x_i x_j x_l`` (``i <= j <= l``) that some term needs, and the node's
species weights are gathered once.  Each evaluation is a :mod:`gather program
<e3nn_fast.xla.symmetric_contraction_gathers>`: a fixed handful of gathers of whole plane slabs, whatever the
number of terms, so the compiled program stays small (MACE's 1301 terms unrolled one op each took 10-30 s to
compile with their gradients).

Rows are processed by a row loop (``lax.map``, :func:`row_loop`): iterations of :data:`CHUNK_LANES` lanes on CPU
(at least :data:`MIN_CPU_ITERATIONS`), each a flat slab per plane, planes first and padded off power-of-two strides
(:func:`slab_padding`), so that an iteration's planes and prefix products stay in cache while the gathers re-read
them.  The form is bound to the multilinear primitive like the kernels, so every gradient is another gather
program of the same form (not autodiff of gathers, which would scatter); the primitive also gives ``jax.jvp``,
``vmap`` and derivatives of any order.

Measured on the 2-core CPU VM, ``python -m bench --workloads sc-mace`` (200 nodes x 128 channels x
``0e+1o+2e+3o``, orders 1-3, 10 species, fp32, 2026-12-06): forward 7.3 ms, forward+backward 23 ms, forces 35 ms,
against e3nn-jax's 321 / 502 / 664 ms; compile 1.13x e3nn-jax's (geometric mean over the three passes).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from e3nn_fast import _shard_compat as shard_compat
from e3nn_fast._static_int import static_int
from e3nn_fast.reference.symmetric_contraction import gather_species
from e3nn_fast.symmetric_tensor_product import SymmetricContractionDescription
from e3nn_fast.xla.symmetric_contraction_gathers import gather_program, run_gather_program

__all__ = ["symmetric_contraction"]

# Lanes (rows x channels) per iteration of the row loop on CPU: small enough that every plane and prefix product of
# the rows in flight stays in cache while the gathers re-read them; the loop body is compiled once.  Measured at MACE
# size (128 channels, 2 CPU cores, all settings in one process): 9-16 rows per iteration within 10 % of each other,
# one pass over all rows several times slower.  10 rows (5 KiB slabs at 128 channels) with the padding of
# `slab_padding`, against 8 rows unpadded: fwd / fwd+bwd / forces 4.6 / 21 / 87 ms against 6.9 / 37 / 120 ms at
# 200 nodes, 33 / 128 / 422 against 44 / 207 / 600 ms at 1,000 nodes.
CHUNK_LANES = 1280
# Elsewhere (GPU, TPU) a loop iteration is a few kernel launches, so iterations are made large; the bound keeps the
# prefix products (about a thousand planes per lane for MACE's forms) to a few hundred MB.  Not yet measured: the
# device session sweeps it (``E3NN_FAST_TUNE=symmetric_contraction.jnp_chunk_lanes=N``, bench/device.py).
ACCELERATOR_CHUNK_LANES = 65536


# On CPU, a row loop of at least this many iterations even when the rows would fit in one: XLA compiles a single
# pass's gathers together with the ops that produce their operands (``concatenate_gather_fusion``s in the profile),
# and those ran 5-20x slower than the same program as a loop body (21 nodes x 32 channels, every irrep kept: forces
# 27 -> 5.0 ms with 2 iterations; 6 nodes: 14 -> 4.3 ms; 10 nodes x 64 channels: 44 -> 4.5 ms; 2 cores).
MIN_CPU_ITERATIONS = 2


def row_loop(rows: int, channels: int) -> tuple[int, int]:
    """``(iterations, rows per iteration)`` of the row loop (one pass for fewer than two rows)."""
    from e3nn_fast.kernels import tuning  # the knob table (no Pallas import)

    on_cpu = jax.default_backend() == "cpu"
    lanes = tuning.value("symmetric_contraction.jnp_chunk_lanes", CHUNK_LANES if on_cpu else ACCELERATOR_CHUNK_LANES)
    per_iteration = max(1, lanes // channels)
    if rows < 2:
        return 1, rows
    iterations = max(MIN_CPU_ITERATIONS if on_cpu else 1, -(-rows // per_iteration))
    return iterations, -(-rows // iterations)


def slab_padding(lanes: int, itemsize: int) -> int:
    """Lanes of zeros appended to each ``lanes``-long slab so that consecutive slabs do not start a multiple of
    2 KiB apart.  An evaluation reads some 30 slabs at the same offset at once (a bin's factors); at a power-of-two
    stride those all map to the same L1/L2 cache sets and evict each other (measured at 128 channels, 8 rows = 4 KiB
    slabs: fwd+bwd 40-45 ms, against 23-24 ms with 7 rows)."""
    return 16 if (lanes * itemsize) % 2048 == 0 else 0


def planes_first(x: jax.Array, iterations: int, planes: int, channels: int, pad: int) -> jax.Array:
    """``(rows, planes * channels)`` -> ``(iterations, planes, lanes + pad)``, iteration ``b`` holding rows
    ``b, b + iterations, ...`` (``lanes = rows // iterations * channels``): interleaved, so that every iteration spans
    every shard of a row-sharded operand; planes first, so that each gather copies a whole contiguous slab."""
    x = x.reshape(x.shape[0], planes, channels).reshape(-1, iterations, planes, channels)
    x = jnp.transpose(x, (1, 2, 0, 3))
    x = x.reshape(iterations, planes, -1)
    return jnp.pad(x, [(0, 0), (0, 0), (0, pad)]) if pad else x


def rows_first(out: jax.Array, channels: int, pad: int) -> jax.Array:
    """The inverse of :func:`planes_first`: ``(iterations, planes, lanes + pad)`` -> ``(rows, planes * channels)``."""
    iterations, planes, lanes = out.shape
    out = out[:, :, : lanes - pad].reshape(iterations, planes, -1, channels)
    return jnp.transpose(out, (2, 0, 1, 3)).reshape(-1, planes * channels)


@functools.lru_cache(maxsize=256)
def _form(description: SymmetricContractionDescription, channels: int):
    # imported here: the multilinear primitive lives with the kernels (Pallas is imported on first use only)
    from e3nn_fast.kernels._aligned import compute_dtype
    from e3nn_fast.kernels.symmetric_contraction_plan import SymmetricContractionForm

    class JnpForm(SymmetricContractionForm):
        """The form without padding, evaluated by its gather program on chunks of rows."""

        family = "jnp"
        uses_pallas = False

        def evaluate(self, out_slot, require, operands, interpret):
            del interpret
            program = gather_program(self, out_slot, frozenset(require))
            inputs = [op for s, op in enumerate(operands) if s != out_slot]
            rows, dtype = inputs[0].shape[0], jnp.result_type(*inputs)
            accumulate = compute_dtype(dtype)  # float32 for 16-bit inputs, like the kernels
            inputs = [x.astype(accumulate) for x in inputs]
            # one pass of (planes, rows, channels) slabs under explicit sharding: splitting the sharded row axis
            # into iterations, or merging it into flat lanes, would need a stated sharding; and for a symbolic row
            # count (jax.export), which the row loop cannot divide into iterations
            if shard_compat.has_explicit_sharding(inputs[0]) or static_int(rows) is None:
                shapes = [(rows, p, self.channels) for p in program.input_planes]
                slabs = [jnp.swapaxes(x.reshape(shape), 0, 1) for x, shape in zip(inputs, shapes)]
                out = jnp.swapaxes(run_gather_program(program, slabs), 0, 1)
                return out.reshape(rows, program.out_planes * self.channels).astype(dtype)
            iterations, per = row_loop(rows, self.channels)
            # zero rows pad the tail: every term has a factor from each batched input, so they stay zero
            padding = [(0, iterations * per - rows), (0, 0)]
            pad = slab_padding(per * self.channels, jnp.dtype(accumulate).itemsize)
            chunked = [
                planes_first(jnp.pad(x, padding), iterations, p, self.channels, pad)
                for x, p in zip(inputs, program.input_planes)
            ]
            if iterations == 1:
                out = run_gather_program(program, [x[0] for x in chunked])[None]
            else:
                out = jax.lax.map(lambda xs: run_gather_program(program, xs), chunked)
            return rows_first(out, self.channels, pad)[:rows].astype(dtype)

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
