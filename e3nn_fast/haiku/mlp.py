"""Haiku multi-layer perceptron on scalars; the shared logic lives in :mod:`e3nn_fast.mlp`."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import haiku as hk
import jax

from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import parse_gradient_normalization
from e3nn_fast.mlp import check_mlp_arguments, mlp_forward, resolve_output_activation

__all__ = ["MultiLayerPerceptron"]


class MultiLayerPerceptron(hk.Module):
    r"""A plain MLP acting on scalars (no equivariance beyond invariance of its ``0e`` inputs).

    Layer ``i`` is an ``hk.Linear`` named ``linear_{i}`` (weight ``w``, and bias ``b`` if ``with_bias``), so the
    parameters are ``{name}/linear_{i}``.

    Args:
        list_neurons: width of each layer, input layer excluded.
        act: activation between layers (normalised with :func:`normalize_function`), or None.
        gradient_normalization: ``"element"`` (the ``1/sqrt(fan_in)`` is in the initial weights, as in PyTorch),
            ``"path"`` (it is in the forward pass, so every layer learns at the same pace whatever its width) or a
            float in between; read from :func:`config` when the module is constructed if not given.
        output_activation: activation after the last layer: True for ``act``, False for none, or a callable.
        with_bias: add a (zero-initialised) bias to each layer.
        name: haiku module name.
    """

    def __init__(
        self,
        list_neurons: Sequence[int],
        act: Optional[Callable],
        *,
        gradient_normalization: Union[str, float] = None,
        output_activation: Union[Callable, bool] = True,
        with_bias: bool = False,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        check_mlp_arguments(list_neurons, act, output_activation)
        self.list_neurons = list_neurons
        self.act = act
        self.output_activation = resolve_output_activation(act, output_activation)
        # Resolved now, as e3nn-jax does: a later config() change does not affect an existing module.
        self.gradient_normalization = parse_gradient_normalization(gradient_normalization)
        self.with_bias = with_bias

    def __call__(self, x: Union[jax.Array, IrrepsArray]) -> Union[jax.Array, IrrepsArray]:
        """Apply the MLP to ``x`` of shape ``(..., features)`` (array, or IrrepsArray of ``0e`` scalars).

        Returns:
            Same kind as the input, of shape ``(..., list_neurons[-1])`` (irreps ``list_neurons[-1] x 0e``).
        """

        def dense(index: int, features: int, stddev: jax.Array, input_dtype) -> hk.Linear:
            # A closure, not a method: haiku would open a name scope for a method call and change the parameter
            # names. hk.Linear creates its parameters in the dtype of its input.
            return hk.Linear(
                features,
                with_bias=self.with_bias,
                w_init=hk.initializers.RandomNormal(stddev=stddev),
                b_init=hk.initializers.Constant(0.0),
                name=f"linear_{index}",
            )

        return mlp_forward(
            x, self.list_neurons, self.act, self.output_activation, self.gradient_normalization, dense
        )
