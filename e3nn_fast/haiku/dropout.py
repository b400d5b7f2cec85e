"""Equivariant dropout (haiku): whole irrep copies are dropped, never single components."""

from __future__ import annotations

from typing import Optional

import haiku as hk
import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray

__all__ = ["Dropout"]


class Dropout(hk.Module):
    r"""Equivariant dropout: each irrep copy is kept with probability ``1 - p`` and then scaled by ``1 / (1 - p)``.

    Dropping a whole copy (all its ``2l+1`` components together) keeps the output equivariant.  The mask depends
    only on the position of the copy along the irreps axis, not on the leading axes: one mask for the whole batch.
    Each block draws its mask from the same key (e3nn-jax's convention, kept so that the same key drops the same
    copies); blocks of equal multiplicity therefore share their mask.

    Args:
        p: dropout probability (``p <= 0``: identity, ``p >= 1``: everything dropped).
        irreps: if given, the input is rechunked to these irreps first.
        name: haiku module name (default ``dropout``).

    The module has no parameters; call it as ``module(rng, x, is_training=True)``.
    """

    def __init__(self, p: float, *, irreps: Irreps = None, name: Optional[str] = None):
        super().__init__(name=name)
        if isinstance(p, bool) or not isinstance(p, (int, float)) and not hasattr(p, "__float__"):
            raise TypeError(f"Dropout: p must be a number, got {p!r}")
        self.irreps = None if irreps is None else Irreps(irreps)
        self.p = p

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} (p={self.p})"

    def _block_mask(self, rng: jax.Array, mul: int, ir, zero: bool, dtype) -> jax.Array:
        """Flat mask of one block, ``(mul * (2l+1),)``: 0 or ``1/(1-p)`` per copy, repeated over its components."""
        if self.p >= 1 or (zero and self.p > 0):
            return jnp.zeros((mul * ir.dim,), dtype)
        if self.p <= 0:
            return jnp.ones((mul * ir.dim,), dtype)
        keep = jax.random.bernoulli(rng, p=1 - self.p, shape=(mul, 1))
        scale = (keep / (1 - self.p)).astype(dtype)
        return jnp.repeat(scale, ir.dim, axis=1).reshape(-1)

    def __call__(self, rng: jax.Array, x: IrrepsArray, is_training: bool = True) -> IrrepsArray:
        """Apply dropout in training mode; return ``x`` unchanged otherwise.

        Args:
            rng: PRNG key for the mask.
            x: IrrepsArray of shape ``(..., irreps.dim)``.
            is_training: whether to drop.
        """
        if not is_training:
            return x
        if not isinstance(x, IrrepsArray):
            raise TypeError(f"{self.__class__.__name__} only supports IrrepsArray, got {type(x).__name__}")
        if self.irreps is not None:
            x = x.rechunk(self.irreps)

        zero_flags = [self.p >= 1 or (zero and self.p > 0) for zero in x.zero_flags]
        masks = [self._block_mask(rng, mul, ir, zero, x.dtype) for (mul, ir), zero in zip(x.irreps, x.zero_flags)]
        mask = jnp.concatenate(masks) if masks else jnp.zeros((0,), x.dtype)
        return IrrepsArray(x.irreps, x.array * mask, zero_flags=zero_flags)
