"""flax.nnx wrapper of the equivariant linear layer; the maths lives in :mod:`e3nn_fast.linear`."""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
from flax import nnx

from e3nn_fast._parameters import record_parameters
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import LinearOptions, linear_module_call, parse_gradient_normalization, parse_path_normalization
from e3nn_fast.nnx._params import (
    InitializerFactory,
    check_rngs,
    create_parameters,
    densify,
    parameter_value,
    positive_int,
    to_irreps,
)

__all__ = ["Linear"]


def _frozen(value: Any) -> Any:
    """Lists -> tuples, recursively: nnx keeps these settings in the (hashed) graph definition."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


class Linear(nnx.Module):
    r"""Equivariant linear layer (flax.nnx).

    Same layer as :class:`e3nn_fast.haiku.Linear` / :class:`e3nn_fast.flax.Linear`, with the parameters created at
    construction, so the input layout must be given up front.

    Args:
        irreps_in: input irreps (the input must have these irreps, up to regrouping).
        irreps_out: output irreps; those the input cannot reach are dropped unless ``force_irreps_out``.
        channel_out: if given, the axis before the irreps is a channel axis (of size ``channel_in``), mixed together
            with the multiplicities, and the output has ``channel_out`` channels.
        rngs: ``nnx.Rngs``; one key is drawn from ``rngs.params()``.
        channel_in: size of the channel axis ``(..., channel_in, irreps_in.dim)``; required with ``channel_out`` or
            ``weights_per_channel``.
        weights_dim: size ``d`` of external float weights ``(..., d)``; the module is then called as
            ``module(weights, x)`` and its parameters are mixed by ``weights``.
        num_indexed_weights: number of weight sets; the module is then called as ``module(indices, x)`` with integer
            ``indices`` choosing a set per element (e.g. per atomic species).
        weights_per_channel: with external weights, separate weights for each of the ``channel_in`` channels.
        biases: add a (zero-initialised) bias to the scalar outputs.
        path_normalization, gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default from
            :func:`~e3nn_fast.config`, read at construction.
        parameter_initializer: zero-argument callable returning a jax initializer ``init(key, shape, dtype)``;
            default: normal with the standard deviation given by the normalisation.
        instructions: explicit ``(i_in, i_out)`` connections (requires ``simplify_irreps_internally=False``).
        force_irreps_out: return exactly ``irreps_out`` (blocks that cannot be reached are zero).
        simplify_irreps_internally: regroup input and output irreps before building the map.
        param_dtype: dtype of the parameters (default float32).  linen and haiku create them in the dtype of the
            first input; here they keep ``param_dtype`` and promote with the input at call time, as linen's do.

    Parameters live in ``self.params`` (an ``nnx.Dict``) under e3nn-jax's names, ``'w[i_in,i_out] <in>,<out>'`` and
    ``'b[i_out] <out>'``, with the haiku/linen shapes: ``nnx.to_pure_dict(nnx.state(module))["params"]`` has the
    layout of a linen ``Linear``'s ``variables["params"]`` and of a haiku ``Linear``'s module dict, and
    ``nnx.update(module, {"params": linen_params})`` loads one.  With the same key, the initial values equal those of
    linen's ``Linear.init({"params": key}, x)`` where ``key = nnx.Rngs(seed).params()`` and ``x`` has dtype
    ``param_dtype``.  Blocks of the input flagged as zero are treated as explicit zeros.

    Example:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> from e3nn_fast.irreps_array import IrrepsArray
        >>> linear = Linear("2x1e", "1e", rngs=nnx.Rngs(0))
        >>> linear(IrrepsArray("2x1e", jnp.ones(6))).irreps
        1x1e
    """

    def __init__(
        self,
        irreps_in: Irreps,
        irreps_out: Irreps,
        channel_out: Optional[int] = None,
        *,
        rngs: nnx.Rngs,
        channel_in: Optional[int] = None,
        weights_dim: Optional[int] = None,
        num_indexed_weights: Optional[int] = None,
        weights_per_channel: bool = False,
        biases: Union[bool, Sequence[bool]] = False,
        path_normalization: Union[str, float, None] = None,
        gradient_normalization: Union[str, float, None] = None,
        parameter_initializer: Optional[InitializerFactory] = None,
        instructions: Optional[List[Tuple[int, int]]] = None,
        force_irreps_out: bool = False,
        simplify_irreps_internally: bool = True,
        param_dtype: Any = jnp.float32,
    ):
        check_rngs(rngs, "Linear")
        self.irreps_in = to_irreps(irreps_in, "Linear irreps_in")
        self.irreps_out = to_irreps(irreps_out, "Linear irreps_out")
        self.channel_in = positive_int(channel_in, "Linear channel_in")
        self.weights_dim = positive_int(weights_dim, "Linear weights_dim")
        num_indexed_weights = positive_int(num_indexed_weights, "Linear num_indexed_weights")
        if (channel_out is not None or weights_per_channel) and self.channel_in is None:
            raise ValueError("Linear: channel_out and weights_per_channel need channel_in (size of the channel axis)")
        if self.weights_dim is not None and num_indexed_weights is not None:
            raise ValueError("Linear: weights_dim (mixed float weights) and num_indexed_weights exclude each other")
        if weights_per_channel and self.weights_dim is None:
            raise ValueError("Linear: weights_per_channel needs external weights: give weights_dim")
        self.options = LinearOptions(
            irreps_out=self.irreps_out,
            # With channel_out the shared code checks irreps_in against the input with its channels folded into the
            # multiplicities; this module checks the unfolded input itself (_check_call).
            irreps_in=self.irreps_in if channel_out is None else None,
            channel_out=positive_int(channel_out, "Linear channel_out"),
            biases=_frozen(biases),
            # Both resolved now: the parameters are created now, a later config() change must not reinterpret them.
            path_normalization=parse_path_normalization(path_normalization),
            gradient_normalization=parse_gradient_normalization(gradient_normalization),
            instructions=_frozen(instructions),
            num_indexed_weights=num_indexed_weights,
            weights_per_channel=bool(weights_per_channel),
            force_irreps_out=bool(force_irreps_out),
            simplify_irreps_internally=bool(simplify_irreps_internally),
        )
        specs = record_parameters(self._forward, *self._example_arguments(param_dtype))
        self.params = create_parameters(specs, rngs, param_dtype, parameter_initializer)

    def _example_arguments(self, dtype: Any) -> Tuple[Any, ...]:
        """Abstract ``(input, weights)`` with the layout the module is built for (weights None if none)."""
        lead = () if self.channel_in is None else (self.channel_in,)
        x = jax.ShapeDtypeStruct(lead + (self.irreps_in.dim,), dtype)
        if self.options.num_indexed_weights is not None:
            return x, jax.ShapeDtypeStruct((), jnp.int32)
        if self.weights_dim is not None:
            return x, jax.ShapeDtypeStruct((self.weights_dim,), dtype)
        return x, None

    def _forward(self, get_parameter, x: jax.Array, weights: Optional[jax.Array]) -> IrrepsArray:
        """The shared forward pass on a raw input array (used to record the parameters)."""
        x = IrrepsArray(self.irreps_in, x)
        if weights is None:
            return linear_module_call(self.options, get_parameter, x)
        return linear_module_call(self.options, get_parameter, weights, x)

    def _built_for(self) -> str:
        return (
            f"irreps_in={self.irreps_in}, channel_in={self.channel_in}, weights_dim={self.weights_dim}, "
            f"num_indexed_weights={self.options.num_indexed_weights}"
        )

    def _get_parameter(self, name: str, shape: Tuple[int, ...], std: Any, dtype: Any) -> jax.Array:
        return parameter_value(self.params, name, shape, "Linear", self._built_for())

    def _check_call(self, weights: Any, input: Any) -> None:
        """Clear errors for calls that do not match how the module was built."""
        if self.options.num_indexed_weights is not None and weights is None:
            raise ValueError("Linear: built with num_indexed_weights; call it as module(indices, x)")
        if self.weights_dim is not None and weights is None:
            raise ValueError("Linear: built with weights_dim; call it as module(weights, x)")
        if weights is not None and self.options.num_indexed_weights is None and self.weights_dim is None:
            raise ValueError(
                "Linear: got external weights but the module was built without weights_dim or num_indexed_weights"
            )
        if self.weights_dim is not None and tuple(getattr(weights, "shape", ()))[-1:] != (self.weights_dim,):
            raise ValueError(
                f"Linear: expected external weights of shape (..., weights_dim={self.weights_dim}), "
                f"got {getattr(weights, 'shape', weights)}"
            )
        if isinstance(input, IrrepsArray) and input.irreps.regroup() != self.irreps_in.regroup():
            raise ValueError(f"Linear: the input irreps ({input.irreps}) do not match irreps_in ({self.irreps_in})")
        if self.channel_in is not None and (self.options.channel_out is not None or self.options.weights_per_channel):
            shape = getattr(input, "shape", ())
            if len(shape) < 2 or shape[-2] != self.channel_in:
                raise ValueError(
                    f"Linear: expected an input of shape (..., channel_in={self.channel_in}, irreps), got {shape}"
                )

    def __call__(self, weights_or_input: Any, input_or_none: Any = None) -> IrrepsArray:
        """Apply the layer: ``module(x)``, ``module(weights, x)`` or ``module(indices, x)``.

        Returns:
            IrrepsArray of shape ``(..., [channel_out,] irreps_out.dim)``, normalised assuming normalised inputs.
        """
        if input_or_none is None:
            weights, input = None, weights_or_input
        else:
            weights, input = weights_or_input, input_or_none
        self._check_call(weights, input)
        input = densify(input)
        if weights is None:
            return linear_module_call(self.options, self._get_parameter, input)
        return linear_module_call(self.options, self._get_parameter, weights, input)
