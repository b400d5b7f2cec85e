"""Gate nonlinearity: scalars are activated directly, non-scalars are multiplied by activated scalar "gates".

Layout convention (e3nn-jax's): among the scalars (``0e`` and ``0o`` blocks, in order), the *last* ones, as many as
there are non-scalar irrep copies, are the gates; the first ones are ordinary scalars.  The i-th gate multiplies the
i-th non-scalar copy, in the order of the irreps.  An odd gate flips the parity of the copy it multiplies.
"""

from __future__ import annotations

from typing import Callable

import jax

from e3nn_fast.activation import _as_irreps_array, _check_callable, scalar_activation, soft_odd
from e3nn_fast.irreps_array import IrrepsArray, concatenate
from e3nn_fast.irreps_only import accepts_bare_irreps

__all__ = ["gate"]

Activation = Callable[[jax.Array], jax.Array]
_SCALARS = ["0e", "0o"]


@accepts_bare_irreps(argnums=(0,))
def gate(
    input: IrrepsArray,
    even_act: Activation = jax.nn.gelu,
    odd_act: Activation = soft_odd,
    even_gate_act: Activation = jax.nn.sigmoid,
    odd_gate_act: Activation = jax.nn.tanh,
    normalize_act: bool = True,
) -> IrrepsArray:
    r"""Gate activation.

    Output: ``[act(extra scalars), gate_act(gates) * non-scalars]``, i.e. the activated non-gate scalars followed by
    the gated non-scalars.  Without non-scalars, every scalar is simply activated.

    Args:
        input: IrrepsArray (a plain array ``(..., n)`` is read as ``n x 0e``); given bare irreps, the output irreps
            are returned, e.g. ``gate("15x0e + 2x1e + 1x2e")`` is ``12x0e+2x1e+1x2e``.
        even_act: activation of the non-gate ``0e`` scalars (default :func:`jax.nn.gelu`).
        odd_act: activation of the non-gate ``0o`` scalars (default :func:`soft_odd`).
        even_gate_act: activation of the ``0e`` gates (default :func:`jax.nn.sigmoid`).
        odd_gate_act: activation of the ``0o`` gates (default :func:`jax.nn.tanh`).
        normalize_act: rescale the activations with :func:`normalize_function`.

    Raises:
        ValueError: fewer scalars than non-scalar irrep copies to gate.
        TypeError: an activation is not callable, or ``input`` is not an IrrepsArray/array.
    """
    for value, what in [
        (even_act, "even_act"),
        (odd_act, "odd_act"),
        (even_gate_act, "even_gate_act"),
        (odd_gate_act, "odd_gate_act"),
    ]:
        _check_callable(value, f"gate: {what}")
    input = _as_irreps_array(input, "gate")

    scalars = input.filter(keep=_SCALARS)
    others = input.filter(drop=_SCALARS)

    if others.shape[-1] == 0:
        return scalar_activation(scalars, even_act=even_act, odd_act=odd_act, normalize_act=normalize_act)

    num_gates = others.irreps.num_irreps
    num_scalars = scalars.irreps.num_irreps  # == scalars.irreps.dim
    if num_scalars < num_gates:
        raise ValueError(
            f"gate: the input {input.irreps} has {num_scalars} scalars (0e/0o) but {num_gates} non-scalar irreps "
            f"({others.irreps}) to gate; it needs at least as many scalars as non-scalar irreps "
            f"(the last {num_gates} scalars are used as gates)"
        )

    extra = scalars.slice_by_mul[: num_scalars - num_gates]
    gates = scalars.slice_by_mul[num_scalars - num_gates :]

    extra = scalar_activation(extra, even_act=even_act, odd_act=odd_act, normalize_act=normalize_act)
    gates = scalar_activation(gates, even_act=even_gate_act, odd_act=odd_gate_act, normalize_act=normalize_act)
    return concatenate([extra, gates * others], axis=-1)
