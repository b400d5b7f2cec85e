"""``jax.vmap`` that keeps the zero flags of IrrepsArrays.

An IrrepsArray's pytree carries only its array (its zero flags are dropped on purpose, see
:mod:`e3nn_fast.irreps_array`), so under plain ``jax.vmap`` the knowledge that some blocks are zero is lost.  Here
every IrrepsArray crossing the vmap boundary (inputs and outputs) is wrapped in a carrier whose pytree keeps the
flags as static data; they are the same for every mapped element, so this is sound.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import jax

from e3nn_fast.irreps_array import IrrepsArray

__all__ = ["vmap"]


class _FlaggedIrrepsArray:
    """Pytree wrapper of an IrrepsArray: leaf = the array, static data = (irreps, zero flags).

    The fields are kept apart (the IrrepsArray is only rebuilt by ``_unwrap``) because JAX also unflattens pytrees
    with non-array leaves, e.g. axis specifications.
    """

    __slots__ = ("array", "irreps", "zero_flags")

    def __init__(self, array, irreps, zero_flags):
        self.array = array
        self.irreps = irreps
        self.zero_flags = zero_flags

    @classmethod
    def of(cls, x: IrrepsArray) -> "_FlaggedIrrepsArray":
        return cls(x.array, x.irreps, x.zero_flags)

    def unwrap(self) -> IrrepsArray:
        return IrrepsArray(self.irreps, self.array, zero_flags=self.zero_flags)


jax.tree_util.register_pytree_node(
    _FlaggedIrrepsArray,
    lambda w: ((w.array,), (w.irreps, w.zero_flags)),
    lambda static, leaves: _FlaggedIrrepsArray(leaves[0], *static),
)


def _wrap(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: _FlaggedIrrepsArray.of(x) if isinstance(x, IrrepsArray) else x,
        tree,
        is_leaf=lambda x: isinstance(x, IrrepsArray),
    )


def _unwrap(tree: Any) -> Any:
    return jax.tree_util.tree_map(
        lambda x: x.unwrap() if isinstance(x, _FlaggedIrrepsArray) else x,
        tree,
        is_leaf=lambda x: isinstance(x, _FlaggedIrrepsArray),
    )


def vmap(
    fun: Callable[..., Any],
    in_axes: Union[int, None, Sequence[Any]] = 0,
    out_axes: Any = 0,
) -> Callable[..., Any]:
    """Vectorise ``fun`` like :func:`jax.vmap`, keeping the zero flags (``None`` chunks) of IrrepsArrays.

    ``in_axes``/``out_axes`` have :func:`jax.vmap`'s meaning, an IrrepsArray counting as a single leaf.

    Raises:
        ValueError: ``in_axes`` or ``out_axes`` is ``-1`` (that would map over the irreps axis).
    """
    if in_axes == -1:
        raise ValueError("in_axes=-1 is not supported by e3nn.vmap (it would map over the irreps axis)")
    if out_axes == -1:
        raise ValueError("out_axes=-1 is not supported by e3nn.vmap (it would map over the irreps axis)")

    def inside(*args, **kwargs):
        args, kwargs = _unwrap((args, kwargs))
        return _wrap(fun(*args, **kwargs))

    def batched(*args, **kwargs):
        args, kwargs = _wrap((args, kwargs))
        return _unwrap(jax.vmap(inside, in_axes, out_axes)(*args, **kwargs))

    return batched
