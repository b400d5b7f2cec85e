"""Flax (linen) multi-layer perceptron on scalars; the shared logic lives in :mod:`e3nn_fast.mlp`."""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import flax.linen
import jax

from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.mlp import check_mlp_arguments, mlp_forward, resolve_output_activation

__all__ = ["MultiLayerPerceptron"]


class MultiLayerPerceptron(flax.linen.Module):
    r"""A plain MLP acting on scalars (no equivariance beyond invariance of its ``0e`` inputs).

    Layer ``i`` is a ``flax.linen.Dense`` named ``Dense_{i}`` (``kernel``, and ``bias`` if ``with_bias``) whose
    parameters take the dtype of the layer's input.

    Attributes:
        list_neurons: width of each layer, input layer excluded.
        act: activation between layers (normalised with :func:`normalize_function`), or None.
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1] (see :mod:`e3nn_fast.mlp`); read
            from :func:`config` at call time if not given.
        output_activation: activation after the last layer: True for ``act``, False for none, or a callable.
        with_bias: add a (zero-initialised) bias to each layer.
    """

    list_neurons: Tuple[int, ...]
    act: Optional[Callable] = None
    gradient_normalization: Union[str, float] = None
    output_activation: Union[Callable, bool] = True
    with_bias: bool = False

    @flax.linen.compact
    def __call__(self, x: Union[jax.Array, IrrepsArray]) -> Union[jax.Array, IrrepsArray]:
        """Apply the MLP to ``x`` of shape ``(..., features)`` (array, or IrrepsArray of ``0e`` scalars).

        Returns:
            Same kind as the input, of shape ``(..., list_neurons[-1])`` (irreps ``list_neurons[-1] x 0e``).
        """
        check_mlp_arguments(self.list_neurons, self.act, self.output_activation)

        def dense(index: int, features: int, stddev: jax.Array, input_dtype) -> flax.linen.Dense:
            # created inside this compact method, so flax names them Dense_0, Dense_1, ... in order
            return flax.linen.Dense(
                features=features,
                use_bias=self.with_bias,
                kernel_init=flax.linen.initializers.normal(stddev=stddev),
                bias_init=flax.linen.initializers.zeros,
                param_dtype=input_dtype,
            )

        return mlp_forward(
            x,
            self.list_neurons,
            self.act,
            resolve_output_activation(self.act, self.output_activation),
            self.gradient_normalization,
            dense,
        )
