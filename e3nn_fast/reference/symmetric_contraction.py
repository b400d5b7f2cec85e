"""The readable oracle of the per-species symmetric contraction (MACE's product basis).

Each node gathers its species' weights and runs the dense Horner contraction of
:func:`e3nn_fast.symmetric_tensor_product.horner_contraction` (the same maths as the haiku ``SymmetricTensorProduct``
for one species), ``vmap``-ed over the nodes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from e3nn_fast import _shard_compat
from e3nn_fast.symmetric_tensor_product import SymmetricContractionDescription, horner_contraction

__all__ = ["symmetric_contraction", "gather_species"]


def gather_species(w: jax.Array, species: jax.Array) -> jax.Array:
    """``w[species]`` along the first axis; a species outside ``[0, num_species)`` gets zero weights (and so a zero
    output), which is how padding nodes can be switched off."""
    # take counts negative indices from the end; send them past the end instead, where mode="fill" gives zeros.
    species = jnp.where(species < 0, w.shape[0], species)
    sharding = _shard_compat.explicit_row_sharding(species, w.ndim - 1)  # None except on explicit-axes meshes
    if sharding is not None:  # sharded nodes: the gathered weights are sharded like them
        return w.at[species].get(mode="fill", fill_value=0, out_sharding=sharding)
    return jnp.take(w, species, axis=0, mode="fill", fill_value=0)


def symmetric_contraction(
    description: SymmetricContractionDescription, x: jax.Array, species: jax.Array, weights: Sequence[jax.Array]
) -> jax.Array:
    """``x`` ``(nodes, channels, d)``, ``species`` ``(nodes,)``, ``weights`` in ``description.weight_names`` order,
    each ``(num_species, mul, channels)`` -> ``(nodes, channels, irreps_out.dim)``."""
    gathered = {name: gather_species(w, species) for name, w in zip(description.weight_names, weights)}

    def one_node(x_node, w_node):
        acc = horner_contraction(description, x_node, w_node)
        return jnp.concatenate([acc[ir] for _, ir in description.irreps_out], axis=-1)

    return jax.vmap(one_node)(x, gathered)
