"""MACE's symmetric contraction (product basis) with per-species weights, as a functional op.

For every node ``a`` of species ``s = species[a]`` and every channel ``c``, each output irrep ``ir`` is::

    out[a, c, ir] = sum_{n in orders} sum_m  w{n}_{ir}[s, m, c] * < U_n[ir, m] / mul, x[a, c]^(x)n >

where ``U_n`` is the reduced basis of the symmetric ``n``-th tensor power of ``irreps_in`` (see
:func:`~e3nn_fast.reduced_tensor_product.reduced_symmetric_tensor_product_basis`).  With one species this is exactly
the haiku ``SymmetricTensorProduct`` (and e3nn-jax's) with weights ``w{n}_{ir}[0]``; the weight names are the
module's parameter names, with a leading species axis.

The maths (the bases, dense and as sparse symmetry-folded terms) is described once by
:func:`~e3nn_fast.symmetric_tensor_product.describe_symmetric_contraction`; the dispatcher op
``"symmetric_contraction"`` runs it with the reference (dense Horner einsums per node), the optimised ``jnp``
executor (the default on CPU) or the Pallas kernels (``pallas``, ``pallas-interpret``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast import dispatch
from e3nn_fast.graph import clamp_indices_to_int32
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.reference import symmetric_contraction as _reference
from e3nn_fast.symmetric_tensor_product import (
    SymmetricContractionDescription,
    describe_symmetric_contraction,
    parse_keep,
    parse_orders,
)
from e3nn_fast.xla import symmetric_contraction as _xla

__all__ = ["symmetric_contraction", "symmetric_contraction_weight_shapes", "describe", "contract_shared_weights"]

OP = "symmetric_contraction"


def describe(irreps_in, orders, keep_irrep_out=None) -> SymmetricContractionDescription:
    """The cached description of the contraction of ``irreps_in`` (orders and ``keep_irrep_out`` as in the op)."""
    orders = parse_orders(orders)
    keep = parse_keep(keep_irrep_out)
    return describe_symmetric_contraction(Irreps(irreps_in), orders, None if keep is None else frozenset(keep))


def symmetric_contraction_weight_shapes(
    irreps_in, num_channel: int, num_species: int, orders, keep_irrep_out=None
) -> Dict[str, Tuple[int, int, int]]:
    """``{name: (num_species, mul, num_channel)}``: the weights :func:`symmetric_contraction` expects.

    Initialise them with unit-variance normal values (the bases are normalised for that), e.g.
    ``{k: jax.random.normal(key_k, shape) for k, shape in ...items()}``.
    """
    description = describe(irreps_in, orders, keep_irrep_out)
    if int(num_species) < 1:
        raise ValueError(
            f"symmetric_contraction_weight_shapes: num_species must be at least 1, got {num_species} "
            "(one set of weights per species; use 1 when all nodes share them)"
        )
    return {block.name: (int(num_species), block.mul, int(num_channel)) for block in description.blocks}


def _species_rows(species, num_species: int) -> jax.Array:
    """``species`` as int32 weight rows, every value outside ``[0, num_species)`` mapped to ``num_species``.

    The executors gather with ``mode="fill"``, which zeroes the row ``num_species`` (past the end): that is the
    documented zero output for padding nodes.  Mapping here, in the species' own dtype, keeps a negative value from
    counting from the end (``-1`` would pick the last species) and an unsigned or 64-bit value from wrapping.
    """
    rows = clamp_indices_to_int32(species, -1, num_species)
    return jnp.where(rows < 0, num_species, rows)


def _check_inputs(x, species, weights, description) -> Tuple[jax.Array, Tuple[jax.Array, ...]]:
    if not isinstance(x, IrrepsArray):
        raise TypeError(f"symmetric_contraction: x should be an IrrepsArray, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"symmetric_contraction: x should have shape (..., num_channel, irreps), got shape {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"symmetric_contraction: x should be a floating-point array, got dtype {x.dtype}")
    species = species if isinstance(species, jax.Array) else np.asarray(species)  # NumPy keeps its 64-bit values
    if not jnp.issubdtype(species.dtype, jnp.integer):
        raise TypeError(f"symmetric_contraction: species should be an integer array, got dtype {species.dtype}")
    if species.shape != x.shape[:-2]:
        raise ValueError(
            f"symmetric_contraction: species should have shape {x.shape[:-2]} (x's leading axes), got {species.shape}"
        )
    if not isinstance(weights, Mapping):
        raise TypeError(f"symmetric_contraction: weights should be a dict {{name: array}}, got {type(weights).__name__}")
    expected = description.weight_muls
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    if missing or unexpected:
        raise ValueError(
            f"symmetric_contraction: weights should be exactly {sorted(expected)} for {description.irreps_in} and "
            f"orders {description.orders}; missing {missing}, unexpected {unexpected}"
        )
    num_channel = x.shape[-2]
    arrays, num_species = [], None
    for name in description.weight_names:
        w = jnp.asarray(weights[name])
        shape = (w.shape[0] if w.ndim == 3 else None, expected[name], num_channel)
        if w.ndim != 3 or w.shape[1:] != shape[1:]:
            raise ValueError(
                f"symmetric_contraction: weight {name} should have shape (num_species, {expected[name]}, "
                f"{num_channel}), got {w.shape}"
            )
        if num_species is not None and w.shape[0] != num_species:
            raise ValueError(
                f"symmetric_contraction: every weight needs the same num_species; {name} has {w.shape[0]}, "
                f"others {num_species}"
            )
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(f"symmetric_contraction: weight {name} should be floating-point, got {w.dtype}")
        if w.shape[0] == 0:
            raise ValueError(
                f"symmetric_contraction: weight {name} has num_species = 0 (shape {w.shape}); at least one species "
                "is needed (see symmetric_contraction_weight_shapes)"
            )
        num_species = w.shape[0]
        arrays.append(w)
    if num_species is None:  # no weights at all (nothing kept): the output is empty and species are unused
        return jnp.asarray(species), tuple(arrays)
    return _species_rows(species, num_species), tuple(arrays)


def symmetric_contraction(
    x: IrrepsArray,
    species: Any,
    weights: Mapping[str, jax.Array],
    orders,
    keep_irrep_out=None,
) -> IrrepsArray:
    r"""MACE's product basis with per-species weights.

    Args:
        x: IrrepsArray of shape ``(..., num_channel, irreps_in)``, e.g. ``(num_nodes, 128, "0e+1o+2e+3o")``.
        species: integers (any integer dtype) of shape ``(...)`` (``x``'s leading axes), each in
            ``[0, num_species)``; a value outside that range, negative ones included, selects all-zero weights (a
            zero output: padding nodes).
        weights: ``{f"w{order}_{ir}": array (num_species, mul, num_channel)}``, the haiku
            ``SymmetricTensorProduct`` parameter names with a leading species axis (see
            :func:`symmetric_contraction_weight_shapes`).
        orders: the tensor powers to include, e.g. ``(1, 2, 3)``.
        keep_irrep_out: the output irreps to keep (irreps string, Irreps or a set of irreps); all if None.

    Returns:
        IrrepsArray of shape ``(..., num_channel, irreps_out)``, ``irreps_out`` the sorted kept irreps, each once.
    """
    if not isinstance(x, IrrepsArray):
        raise TypeError(f"symmetric_contraction: x should be an IrrepsArray, got {type(x).__name__}")
    description = describe(x.irreps, orders, keep_irrep_out)
    species, arrays = _check_inputs(x, species, weights, description)
    leading = x.shape[:-2]
    num_channel = x.shape[-2]
    nodes = math.prod(leading)  # symbolic under jax.export with a symbolic batch size
    dtype = jnp.result_type(x.dtype, *[w.dtype for w in arrays])
    array = x.array.astype(dtype).reshape(nodes, num_channel, x.irreps.dim)
    arrays = tuple(w.astype(dtype) for w in arrays)
    if not description.blocks:  # keep_irrep_out excludes every irrep the powers contain: an empty output
        return IrrepsArray(description.irreps_out, jnp.zeros(leading + (num_channel, 0), dtype))
    qualifies = max(description.orders) <= 3
    run = dispatch.executor(OP, size=dispatch.problem_size(nodes, num_channel, description.irreps_out.dim),
                            qualifies=qualifies)
    out = run(description, array, species.reshape(nodes), arrays)
    return IrrepsArray(description.irreps_out, out.reshape(leading + (num_channel, description.irreps_out.dim)))


def _check_module_weights(description: SymmetricContractionDescription, weights, num_channel: int) -> None:
    """The weights a module's ``get_parameter`` returned: ``(mul, num_channel)`` floating arrays, one per block."""
    for block in description.blocks:
        w = weights[block.name]
        if tuple(getattr(w, "shape", ())) != (block.mul, num_channel):
            raise ValueError(
                f"SymmetricTensorProduct: get_parameter returned shape {tuple(getattr(w, 'shape', ()))} for "
                f"{block.name}; it must return the requested shape (mul, num_channel) = ({block.mul}, {num_channel})"
            )
        if not jnp.issubdtype(w.dtype, jnp.floating):
            raise TypeError(
                f"SymmetricTensorProduct: get_parameter returned dtype {w.dtype} for {block.name}; weights must be "
                "floating-point"
            )


def contract_shared_weights(
    description: SymmetricContractionDescription, x: jax.Array, weights: Mapping[str, jax.Array]
) -> jax.Array:
    """One node of the ``SymmetricTensorProduct`` modules: ``x`` ``(num_channel, d)`` and weights ``w{n}_{ir}`` of
    shape ``(mul, num_channel)`` (one species) -> ``(num_channel, irreps_out.dim)``, by the dispatcher's executor.

    The modules are ``vmap``-ed over nodes (haiku's ``hk.vmap``, MACE's per-species ``get_parameter``): the jnp and
    Pallas executors are one multilinear primitive, whose batching rule folds the mapped nodes into its rows, so a
    vmapped module runs as one contraction over all nodes (and per-node weights become per-row weights).
    """
    num_channel = x.shape[0]
    _check_module_weights(description, weights, num_channel)
    dtype = jnp.result_type(x.dtype, *[weights[name].dtype for name in description.weight_names])
    if not description.blocks:
        return jnp.zeros((num_channel, 0), dtype)
    arrays = tuple(weights[name].astype(dtype)[None] for name in description.weight_names)
    run = dispatch.executor(OP, size=dispatch.problem_size(num_channel, description.irreps_out.dim),
                            qualifies=max(description.orders) <= 3)
    return run(description, x.astype(dtype)[None], jnp.zeros((1,), jnp.int32), arrays)[0]


def _pallas(description, x, species, weights):
    from e3nn_fast.kernels.symmetric_contraction import symmetric_contraction as kernel

    return kernel(description, x, species, weights, interpret=False)


def _pallas_interpret(description, x, species, weights):
    from e3nn_fast.kernels.symmetric_contraction import symmetric_contraction as kernel

    return kernel(description, x, species, weights, interpret=True)


dispatch.register(OP, "reference", _reference.symmetric_contraction)
dispatch.register(OP, "jnp", _xla.symmetric_contraction)
dispatch.register(OP, "pallas", _pallas)
dispatch.register(OP, "pallas-interpret", _pallas_interpret)
