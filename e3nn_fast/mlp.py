"""Framework-independent core of the scalar multi-layer perceptron shared by the haiku and flax modules.

The modules differ only in how a dense layer (and its parameter) is created; everything else -- argument checking,
the normalisation of the activations and the weight scaling -- lives here, once.

Weight scaling (``gradient_normalization`` = g in [0, 1], "element" = 0, "path" = 1): with fan-in ``n``, a layer
computes ``n^(-g/2) * (x @ W)`` with ``W ~ N(0, n^(-(1-g)))``.  Every choice gives unit-variance pre-activations at
initialisation; g moves the ``1/sqrt(n)`` from the initial weights (g=0, as in PyTorch) into the forward pass (g=1),
which changes how the learning rate is shared between layers of different widths.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from e3nn_fast.activation import normalize_function
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import parse_gradient_normalization

__all__ = ["check_mlp_arguments", "resolve_output_activation", "mlp_forward"]

Activation = Callable[[jax.Array], jax.Array]
# make_dense(index, features, stddev, input_dtype) -> a function x -> x @ W (+ b), creating W ~ N(0, stddev^2) on
# first use
DenseFactory = Callable[[int, int, jax.Array, jnp.dtype], Callable[[jax.Array], jax.Array]]


def check_mlp_arguments(list_neurons, act, output_activation) -> None:
    """Validate the constructor arguments shared by the MLP modules (clear TypeError/ValueError)."""
    if isinstance(list_neurons, (str, bytes)) or not isinstance(list_neurons, (Sequence, np.ndarray)):
        raise TypeError(f"MultiLayerPerceptron: list_neurons must be a sequence of ints, got {list_neurons!r}")
    for h in list_neurons:
        if isinstance(h, bool) or not isinstance(h, (int, np.integer)):
            raise TypeError(f"MultiLayerPerceptron: list_neurons must contain ints, got {list_neurons!r}")
        if h < 0:
            raise ValueError(f"MultiLayerPerceptron: list_neurons must be non-negative, got {list_neurons!r}")
    if any(h == 0 for h in list(list_neurons)[:-1]):
        # The next layer would have no inputs, and its 1/fan-in normalisation would divide by zero.
        raise ValueError(
            f"MultiLayerPerceptron: a hidden layer of width 0 leaves the next layer without inputs, got list_neurons="
            f"{list(list_neurons)!r}; only the last entry may be 0"
        )
    if act is not None and not callable(act):
        raise TypeError(f"MultiLayerPerceptron: act must be a callable or None, got {act!r}")
    if not isinstance(output_activation, bool) and not callable(output_activation):
        raise TypeError(
            f"MultiLayerPerceptron: output_activation must be True (use act), False (none) or a callable, "
            f"got {output_activation!r}"
        )


def resolve_output_activation(act: Optional[Activation], output_activation: Union[Activation, bool]):
    """The activation after the last layer: ``act`` for True, none for False, else the given callable."""
    if output_activation is True:
        return act
    if output_activation is False:
        return None
    return output_activation


def mlp_forward(
    x: Union[jax.Array, IrrepsArray],
    list_neurons: Sequence[int],
    act: Optional[Activation],
    output_activation: Optional[Activation],
    gradient_normalization: Union[str, float, None],
    make_dense: DenseFactory,
) -> Union[jax.Array, IrrepsArray]:
    """Run the MLP; ``output_activation`` is already resolved (callable or None).

    A plain array ``(..., n)`` gives a plain array ``(..., list_neurons[-1])``; an IrrepsArray (scalars ``0e`` only)
    gives an IrrepsArray ``list_neurons[-1] x 0e``.  Activations are normalised with :func:`normalize_function`.
    """
    g = parse_gradient_normalization(gradient_normalization)

    irreps_array_io = isinstance(x, IrrepsArray)
    if irreps_array_io:
        if not x.irreps.is_scalar():
            raise ValueError(f"MultiLayerPerceptron only works on scalar (0e) input, got irreps {x.irreps}")
        x = x.array
    elif not hasattr(x, "shape") or len(x.shape) == 0:
        raise TypeError(
            f"MultiLayerPerceptron: input must be an array of shape (..., features) or an IrrepsArray, got {x!r}"
        )

    hidden_act = None if act is None else normalize_function(act)
    last_act = None if output_activation is None else normalize_function(output_activation)

    if len(list_neurons) > 0 and x.shape[-1] == 0:
        raise ValueError(
            f"MultiLayerPerceptron: the input has no features (shape {tuple(x.shape)}); the first layer needs at least "
            "one input feature"
        )
    for i, features in enumerate(list_neurons):
        alpha = 1 / x.shape[-1]  # 1 / fan-in
        dense = make_dense(i, features, jnp.sqrt(alpha) ** (1.0 - g), x.dtype)
        x = jnp.sqrt(alpha) ** g * dense(x)
        layer_act = hidden_act if i < len(list_neurons) - 1 else last_act
        if layer_act is not None:
            x = layer_act(x)

    if irreps_array_io:
        return IrrepsArray(Irreps(f"{x.shape[-1]}x0e"), x)
    return x
