"""Flax (linen) wrapper of the equivariant linear layer; the maths lives in :mod:`e3nn_fast.linear`."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import flax.linen
import jax

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import LinearOptions, linear_module_call

__all__ = ["Linear"]


class Linear(flax.linen.Module):
    r"""Equivariant linear layer (flax.linen).

    Maps an input ``(..., [channel_in,] irreps_in.dim)`` to ``(..., [channel_out,] irreps_out.dim)`` by mixing the
    multiplicities of each irrep; irreps of ``irreps_out`` absent from the input are dropped (unless
    ``force_irreps_out``). Parameters are named ``'w[i_in,i_out] <in>,<out>'`` / ``'b[i_out] <out>'`` like e3nn-jax.

    Attributes:
        irreps_out: output irreps.
        irreps_in: expected input irreps (checked at call time); needed with ``instructions``.
        channel_out: if given, the axis before the irreps is a channel axis, mixed together with the multiplicities,
            and the output has ``channel_out`` channels.
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default from :func:`config`.
        path_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default from :func:`config`.
        biases: add a (zero-initialised) bias to the scalar outputs.
        parameter_initializer: zero-argument callable returning a flax initializer; default: normal with the
            standard deviation given by the normalisation.
        instructions: explicit ``(i_in, i_out)`` connections (requires ``irreps_in`` and
            ``simplify_irreps_internally=False``).
        num_indexed_weights: number of weight sets; call as ``module(indices, x)`` with integer ``indices``
            choosing a set per element (e.g. per atomic species).
        weights_per_channel: with external float weights, use separate weights for each channel of the input
            ``(..., channels, irreps)``.
        force_irreps_out: return exactly ``irreps_out`` (blocks that cannot be reached are zero).
        simplify_irreps_internally: regroup input and output irreps before building the map.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from e3nn_fast.irreps_array import IrrepsArray
        >>> linear = Linear("1e")
        >>> x = IrrepsArray("2x1e", jnp.ones(6))
        >>> params = linear.init(jax.random.PRNGKey(0), x)
        >>> linear.apply(params, x).irreps
        1x1e
    """

    irreps_out: Irreps
    irreps_in: Optional[Irreps] = None
    channel_out: Optional[int] = None
    gradient_normalization: Optional[Union[float, str]] = None
    path_normalization: Optional[Union[float, str]] = None
    biases: bool = False
    parameter_initializer: Optional[Callable[[], jax.nn.initializers.Initializer]] = None
    instructions: Optional[List[Tuple[int, int]]] = None
    num_indexed_weights: Optional[int] = None
    weights_per_channel: bool = False
    force_irreps_out: bool = False
    simplify_irreps_internally: bool = True

    def _get_parameter(self, name: str, shape: Tuple[int, ...], std, dtype) -> jax.Array:
        """Fetch (or create, normal(0, std) by default) the parameter ``name`` in this module's scope."""
        if self.parameter_initializer is None:
            init = flax.linen.initializers.normal(stddev=std)
        else:
            init = self.parameter_initializer()
        return self.param(name, init, shape, dtype)

    @flax.linen.compact
    def __call__(self, weights_or_input, input_or_none=None) -> IrrepsArray:
        """Apply the layer: ``module(x)``, ``module(weights, x)`` or ``module(indices, x)``.

        Returns:
            IrrepsArray of shape ``(..., [channel_out,] irreps_out.dim)``, normalised assuming normalised inputs.
        """
        options = LinearOptions(
            irreps_out=self.irreps_out,
            irreps_in=None if self.irreps_in is None else Irreps(self.irreps_in),
            channel_out=self.channel_out,
            biases=self.biases,
            path_normalization=self.path_normalization,
            gradient_normalization=self.gradient_normalization,
            instructions=self.instructions,
            num_indexed_weights=self.num_indexed_weights,
            weights_per_channel=self.weights_per_channel,
            force_irreps_out=self.force_irreps_out,
            simplify_irreps_internally=self.simplify_irreps_internally,
        )
        return linear_module_call(options, self._get_parameter, weights_or_input, input_or_none)
