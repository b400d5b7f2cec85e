"""flax.nnx multi-layer perceptron on scalars; the shared logic lives in :mod:`e3nn_fast.mlp`."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx

from e3nn_fast._parameters import record_parameters
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray
from e3nn_fast.linear import parse_gradient_normalization
from e3nn_fast.mlp import check_mlp_arguments, mlp_forward, resolve_output_activation
from e3nn_fast.nnx._params import check_rngs, initial_values, positive_int

__all__ = ["MultiLayerPerceptron"]


def _layer_name(index: int) -> str:
    """linen's automatic name of the ``index``-th Dense layer, reused so that the parameter trees line up."""
    return f"Dense_{index}"


def _in_features(value: Any) -> int:
    """The input width: an int, or scalar irreps such as ``"8x0e"``."""
    if isinstance(value, (str, Irreps)):
        irreps = Irreps(value)
        if not irreps.is_scalar():
            raise ValueError(f"MultiLayerPerceptron: the input must be scalars (0e), got irreps {irreps}")
        return irreps.dim
    return positive_int(value, "MultiLayerPerceptron in_features", optional=False)


def _given(value: jax.Array) -> Callable:
    """An initializer returning ``value`` (drawn beforehand with linen's key), whatever key nnx.Linear hands it."""

    def init(_unused_key: jax.Array, shape, dtype) -> jax.Array:
        return value.astype(dtype)

    return init


class MultiLayerPerceptron(nnx.Module):
    r"""A plain MLP acting on scalars (flax.nnx); same layer as the haiku and linen ``MultiLayerPerceptron``.

    Args:
        in_features: width of the input (an int, or scalar irreps such as ``"8x0e"``).
        list_neurons: width of each layer, input layer excluded.
        act: activation between layers (normalised with :func:`~e3nn_fast.normalize_function`), or None.
        rngs: ``nnx.Rngs``; one key is drawn from ``rngs.params()`` (``nnx.Linear`` also draws, and ignores, one
            per parameter).
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1] (see :mod:`e3nn_fast.mlp`); read
            from :func:`~e3nn_fast.config` at construction if not given.
        output_activation: activation after the last layer: True for ``act``, False for none, or a callable.
        with_bias: add a (zero-initialised) bias to each layer.
        param_dtype: dtype of the parameters (default float32).

    Layer ``i`` is an ``nnx.Linear`` stored as attribute ``Dense_{i}`` (``kernel`` of shape ``(in, out)``, and
    ``bias`` if ``with_bias``): ``nnx.to_pure_dict(nnx.state(mlp))`` has the layout of a linen
    ``MultiLayerPerceptron``'s ``variables["params"]`` (haiku's ``linear_{i}`` ``w``/``b`` hold the same arrays).
    With ``key = nnx.Rngs(seed).params()``, the initial values equal linen's ``init({"params": key}, x)`` for an
    input ``x`` of dtype ``param_dtype``.

    Call on ``(..., in_features)`` (array, or IrrepsArray of scalars); returns the same kind with
    ``list_neurons[-1]`` features.
    """

    def __init__(
        self,
        in_features: Union[int, str, Irreps],
        list_neurons: Sequence[int],
        act: Optional[Callable] = None,
        *,
        rngs: nnx.Rngs,
        gradient_normalization: Union[str, float, None] = None,
        output_activation: Union[Callable, bool] = True,
        with_bias: bool = False,
        param_dtype: Any = jnp.float32,
    ):
        check_rngs(rngs, "MultiLayerPerceptron")
        check_mlp_arguments(list_neurons, act, output_activation)
        self.in_features = _in_features(in_features)
        self.list_neurons = tuple(int(n) for n in list_neurons)
        self.act = act
        self.output_activation = resolve_output_activation(act, output_activation)
        # Resolved now: the initial weights depend on it, a later config() change must not reinterpret them.
        self.gradient_normalization = parse_gradient_normalization(gradient_normalization)
        self.with_bias = bool(with_bias)

        specs = record_parameters(self._recording_forward, jax.ShapeDtypeStruct((self.in_features,), param_dtype))
        # Dense_{i}'s kernel is the first parameter of that linen submodule: path (name, 1); its bias starts at zero.
        kernels = initial_values(specs, [(spec.name, 1) for spec in specs], rngs.params(), param_dtype)
        for spec, kernel in zip(specs, kernels):
            fan_in, features = spec.shape
            layer = nnx.Linear(
                fan_in,
                features,
                use_bias=self.with_bias,
                kernel_init=_given(kernel),
                bias_init=jax.nn.initializers.zeros,
                param_dtype=param_dtype,
                rngs=rngs,
            )
            setattr(self, spec.name, layer)

    def _forward(self, x: Any, make_dense: Callable) -> Any:
        return mlp_forward(
            x, self.list_neurons, self.act, self.output_activation, self.gradient_normalization, make_dense
        )

    def _recording_forward(self, get_parameter: Callable, x: jax.Array) -> Any:
        """The shared forward pass, asking ``get_parameter`` for each kernel (to learn their shapes and scales)."""

        def make_dense(index: int, features: int, stddev: Any, dtype: Any) -> Callable:
            def dense(h: jax.Array) -> jax.Array:
                return h @ get_parameter(_layer_name(index), (h.shape[-1], features), stddev, dtype)

            return dense

        return self._forward(x, make_dense)

    def __call__(self, x: Union[jax.Array, IrrepsArray]) -> Union[jax.Array, IrrepsArray]:
        """Apply the MLP to ``x`` of shape ``(..., in_features)`` (array, or IrrepsArray of ``0e`` scalars).

        Returns:
            Same kind as the input, of shape ``(..., list_neurons[-1])`` (irreps ``list_neurons[-1] x 0e``).
        """
        shape = getattr(x, "shape", None)
        if shape is not None and len(shape) > 0 and shape[-1] != self.in_features:
            raise ValueError(
                f"MultiLayerPerceptron: expected an input of shape (..., {self.in_features}), got {tuple(shape)}"
            )

        def make_dense(index: int, features: int, stddev: Any, dtype: Any) -> nnx.Linear:
            return getattr(self, _layer_name(index))

        return self._forward(x, make_dense)
