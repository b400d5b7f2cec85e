"""Haiku wrapper of the equivariant linear layer; the maths lives in :mod:`e3nn_fast.linear`."""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple, Union

import haiku as hk
import jax

from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import LinearOptions, linear_module_call, parse_gradient_normalization

__all__ = ["Linear"]


class Linear(hk.Module):
    r"""Equivariant linear layer (haiku).

    Maps an input ``(..., [channel_in,] irreps_in.dim)`` to ``(..., [channel_out,] irreps_out.dim)`` by mixing the
    multiplicities of each irrep; irreps of ``irreps_out`` absent from the input are dropped (unless
    ``force_irreps_out``). Parameters are named ``'w[i_in,i_out] <in>,<out>'`` / ``'b[i_out] <out>'`` like e3nn-jax.

    Args:
        irreps_out: output irreps.
        channel_out: if given, the axis before the irreps is a channel axis, mixed together with the multiplicities,
            and the output has ``channel_out`` channels.
        irreps_in: expected input irreps (checked at call time); needed with ``instructions``.
        biases: add a (zero-initialised) bias to the scalar outputs.
        path_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default from :func:`config`.
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; read from :func:`config` when the
            module is constructed if not given.
        parameter_initializer: zero-argument callable returning a haiku initializer; default: normal with the
            standard deviation given by the normalisation.
        instructions: explicit ``(i_in, i_out)`` connections (requires ``irreps_in`` and
            ``simplify_irreps_internally=False``).
        num_indexed_weights: number of weight sets; the module is then called as ``module(indices, x)`` with integer
            ``indices`` choosing a set per element (e.g. per atomic species).
        weights_per_channel: with external float weights, use separate weights for each channel of the input
            ``(..., channels, irreps)``.
        force_irreps_out: return exactly ``irreps_out`` (blocks that cannot be reached are zero).
        simplify_irreps_internally: regroup input and output irreps before building the map.
        name: haiku module name.

    Call as ``module(x)``, ``module(weights, x)`` (float weights ``(..., d)`` mixed into the parameters) or
    ``module(indices, x)`` (with ``num_indexed_weights``).
    """

    def __init__(
        self,
        irreps_out: Irreps,
        channel_out: int = None,
        *,
        irreps_in: Optional[Irreps] = None,
        biases: bool = False,
        path_normalization: Union[str, float] = None,
        gradient_normalization: Union[str, float] = None,
        parameter_initializer: Optional[Callable[[], hk.initializers.Initializer]] = None,
        instructions: Optional[List[Tuple[int, int]]] = None,
        num_indexed_weights: Optional[int] = None,
        weights_per_channel: bool = False,
        force_irreps_out: bool = False,
        simplify_irreps_internally: bool = True,
        name: Optional[str] = None,
    ):
        super().__init__(name)
        self.irreps_in = None if irreps_in is None else Irreps(irreps_in)
        self.irreps_out = Irreps(irreps_out)
        self.channel_out = channel_out
        self.biases = biases
        self.path_normalization = path_normalization
        # Resolved now, as e3nn-jax does: a later config() change does not affect an existing module.
        self.gradient_normalization = parse_gradient_normalization(gradient_normalization)
        self.parameter_initializer = parameter_initializer
        self.instructions = instructions
        self.num_indexed_weights = num_indexed_weights
        self.weights_per_channel = weights_per_channel
        self.force_irreps_out = force_irreps_out
        self.simplify_irreps_internally = simplify_irreps_internally

    def _get_parameter(self, name: str, shape: Tuple[int, ...], std, dtype) -> jax.Array:
        """Fetch (or create, normal(0, std) by default) the parameter ``name`` in this module's scope."""
        if self.parameter_initializer is None:
            init = hk.initializers.RandomNormal(stddev=std)
        else:
            init = self.parameter_initializer()
        return hk.get_parameter(name, shape=shape, dtype=dtype, init=init)

    def __call__(self, weights_or_input, input_or_none=None) -> IrrepsArray:
        """Apply the layer: ``module(x)``, ``module(weights, x)`` or ``module(indices, x)``.

        Returns:
            IrrepsArray of shape ``(..., [channel_out,] irreps_out.dim)``, normalised assuming normalised inputs.
        """
        options = LinearOptions(
            irreps_out=self.irreps_out,
            irreps_in=self.irreps_in,
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
