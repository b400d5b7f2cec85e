"""Equinox wrapper of the equivariant linear layer; the maths lives in :mod:`e3nn_fast.linear`.

Unlike haiku and flax, equinox has no deferred initialisation: a module owns its parameters from the moment it is
built.  So the input irreps, the kind of weights (``linear_type``) and a PRNG key are constructor arguments, the
:class:`~e3nn_fast.linear.FunctionalLinear` is laid out once in the constructor, and the parameters are drawn there
with the same naming, shapes and key sequence as ``e3nn_jax.equinox.Linear`` (same key, same numbers).  The call
then runs the helpers shared with the haiku and flax modules, with a ``get_parameter`` that reads the stored arrays.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp

from e3nn_fast.errors import InvalidValueError
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array
from e3nn_fast.linear import (
    FunctionalLinear,
    _compute_input,
    _get_weights,
    _mixing_std,
    _scalar_weights,
    _to_irreps,
    linear_indexed,
    linear_mixed,
    linear_mixed_per_channel,
    linear_vanilla,
    optional_size,
    parameter_name,
    parse_gradient_normalization,
)

__all__ = ["Linear"]

LINEAR_TYPES = ("vanilla", "indexed", "mixed", "mixed_per_channel")
_WHERE = "equinox.Linear"  # names the module in size errors


def _check_weight_options(
    linear_type: str,
    num_indexed_weights: Optional[int],
    weights_dim: Optional[int],
    channel_in: Optional[int],
    channel_out: Optional[int],
    weights_per_channel: bool,
) -> None:
    """Reject a ``linear_type`` that is unknown or lacks (or contradicts) the sizes its parameters need.

    Everything is checked here rather than at the first call: the parameters are created in the constructor, so
    their shapes must be fully determined by then.
    """
    if linear_type not in LINEAR_TYPES:
        raise ValueError(f"equinox.Linear: linear_type must be one of {LINEAR_TYPES}, got {linear_type!r}")
    needs = {
        "indexed": ("num_indexed_weights", num_indexed_weights, "the number of weight sets (e.g. of species)"),
        "mixed": ("weights_dim", weights_dim, "the size d of the last axis of the weights passed at call time"),
        "mixed_per_channel": ("weights_dim", weights_dim, "the size d of the last axis of the call-time weights"),
    }
    if linear_type in needs:
        name, value, meaning = needs[linear_type]
        if value is None:
            raise ValueError(f"equinox.Linear: linear_type={linear_type!r} needs {name}=... ({meaning})")
    if linear_type == "mixed_per_channel" and channel_in is None:
        raise ValueError(
            "equinox.Linear: linear_type='mixed_per_channel' needs channel_in=... (the size of the input axis just "
            "before the irreps, one weight set per channel)"
        )
    if linear_type in ("mixed", "mixed_per_channel") and num_indexed_weights is not None:
        # e3nn-jax asserts on this combination (at call time): AssertionError-compatible class.
        raise InvalidValueError(
            f"equinox.Linear: num_indexed_weights={num_indexed_weights} only applies to linear_type='indexed'; "
            f"drop it for linear_type={linear_type!r}"
        )
    if channel_out is not None and weights_per_channel:
        # e3nn-jax asserts on this combination: AssertionError-compatible class.
        raise InvalidValueError("equinox.Linear: channel_out and weights_per_channel=True cannot be used together")
    if weights_per_channel and linear_type != "mixed_per_channel":
        # The flag would be silently ignored otherwise (linear_type alone decides the parameter layout).
        raise ValueError(
            f"equinox.Linear: weights_per_channel=True needs linear_type='mixed_per_channel' (with weights_dim and "
            f"channel_in), got linear_type={linear_type!r}"
        )


def _layout(
    irreps_in: Irreps, irreps_out: Irreps, channel_out: Optional[int], force_irreps_out: bool
) -> Tuple[Irreps, Irreps, Irreps]:
    """``(irreps the input is regrouped to, irreps of the output, irreps_out of the functional map)``.

    Regrouping the input makes the parameters independent of how the caller chunks it.  Outputs the input cannot
    reach are dropped (then merged where neighbours coincide) unless ``force_irreps_out``, which keeps ``irreps_out``
    exactly as given, so its zero blocks appear in the output.  ``channel_out`` multiplies the output multiplicities:
    the map produces all channels at once and the call moves them to their own axis.
    """
    irreps_in = irreps_in.regroup()
    if not force_irreps_out:
        irreps_out = irreps_out.filter(keep=irreps_in).simplify()
    map_out = irreps_out if channel_out is None else channel_out * irreps_out
    return irreps_in, irreps_out, map_out


def _draw_parameters(
    lin: FunctionalLinear, key: jax.Array, lead: Tuple[int, ...], std_scale: Any, dtype
) -> Dict[str, jax.Array]:
    """Fresh parameters, one per instruction in instruction order, keyed by their e3nn-jax name.

    Each instruction splits the running key in two and draws ``normal(std)`` with the first half, so a given key
    yields e3nn-jax's numbers (biases have std 0: they start at zero).
    """
    state = {"key": key}

    def draw(name: str, shape: Tuple[int, ...], std, param_dtype) -> jax.Array:
        del name
        subkey, state["key"] = jax.random.split(state["key"])
        return std * jax.random.normal(subkey, shape, param_dtype)

    arrays = _get_weights(lin, draw, lead, dtype, std_scale)
    return {parameter_name(lin, ins): w for ins, w in zip(lin.instructions, arrays)}


class Linear(eqx.Module):
    r"""Equivariant linear layer (equinox).

    Maps an input ``(..., irreps_in.dim)`` to ``(..., [channel_out,] irreps_out.dim)`` by mixing the multiplicities
    of each irrep; irreps of ``irreps_out`` absent from ``irreps_in`` are dropped (unless ``force_irreps_out``).
    The parameters live in ``_weights``, a dict named like e3nn-jax's (``'w[i_in,i_out] <in>,<out>'``,
    ``'b[i_out] <out>'``); it is the module's only array leaf.

    All arguments are keyword-only.

    Args:
        irreps_out: output irreps.
        irreps_in: input irreps (required: the parameters are created here); inputs must match them up to
            regrouping.
        channel_out: if given, the output gets an extra axis of this size just before the irreps; as in e3nn-jax,
            the input is not read as having a channel axis (its leading axes are all batch axes).
        channel_in: size of the input axis just before the irreps; checked at call time, and required (as the
            number of per-channel weight sets) with ``linear_type="mixed_per_channel"``.
        biases: add a (zero-initialised) bias to the scalar outputs.
        path_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; default from :func:`config`.
        gradient_normalization: ``"element"``, ``"path"`` or a float in [0, 1]; read from :func:`config` now if not
            given (stored as a number).
        num_indexed_weights: number of weight sets with ``linear_type="indexed"``.
        weights_per_channel: only meaningful (and only accepted) with ``linear_type="mixed_per_channel"``.
        force_irreps_out: return exactly ``irreps_out`` (blocks that cannot be reached are zero).
        weights_dim: size ``d`` of the call-time weights with ``linear_type="mixed"`` / ``"mixed_per_channel"``.
        input_dtype: dtype of the parameters.
        linear_type: how weights reach the map:

            * ``"vanilla"``: one set of weights, call ``module(x)``;
            * ``"indexed"``: ``num_indexed_weights`` sets, call ``module(indices, x)`` with integer ``indices``
              (broadcast against ``x``'s leading axes) picking one per element, e.g. per atomic species;
            * ``"mixed"``: call ``module(w, x)`` with float ``w`` of shape ``(..., weights_dim)``; the weights are
              a linear function of ``w``;
            * ``"mixed_per_channel"``: like ``"mixed"``, separately for each of the ``channel_in`` channels of an
              input ``(..., channel_in, irreps)``.
        key: PRNG key for the initial parameters.

    Example:
        >>> import jax
        >>> import e3nn_fast as e3nn
        >>> linear = e3nn.equinox.Linear(irreps_out="2x0e + 1o + 2e", irreps_in="0e + 1o", key=jax.random.PRNGKey(0))
        >>> linear(e3nn.normal("0e + 1o", jax.random.PRNGKey(1), (3,))).irreps  # 2e is unreachable: dropped
        2x0e+1x1o
    """

    irreps_out: Irreps = eqx.field(static=True)
    irreps_in: Irreps = eqx.field(static=True)
    channel_out: Optional[int] = eqx.field(static=True)
    channel_in: Optional[int] = eqx.field(static=True)
    gradient_normalization: float = eqx.field(static=True)
    path_normalization: Optional[Union[float, str]] = eqx.field(static=True)
    biases: bool = eqx.field(static=True)
    num_indexed_weights: Optional[int] = eqx.field(static=True)
    weights_per_channel: bool = eqx.field(static=True)
    force_irreps_out: bool = eqx.field(static=True)
    weights_dim: Optional[int] = eqx.field(static=True)
    linear_type: str = eqx.field(static=True)

    # Same names as e3nn-jax's module, so the pytree (and serialised checkpoints) line up.
    _linear: FunctionalLinear = eqx.field(static=True)
    _weights: Dict[str, jax.Array]
    _input_dtype: Any = eqx.field(static=True)

    def __init__(
        self,
        *,
        irreps_out: Irreps,
        irreps_in: Irreps,
        channel_out: Optional[int] = None,
        channel_in: Optional[int] = None,
        biases: bool = False,
        path_normalization: Optional[Union[str, float]] = None,
        gradient_normalization: Optional[Union[str, float]] = None,
        num_indexed_weights: Optional[int] = None,
        weights_per_channel: bool = False,
        force_irreps_out: bool = False,
        weights_dim: Optional[int] = None,
        input_dtype: Any = jnp.float32,
        linear_type: str = "vanilla",
        key: jax.Array,
    ):
        if irreps_in is None:
            raise ValueError(
                "equinox.Linear: irreps_in is required (the parameters are created in the constructor, so the input "
                "irreps must be known there); pass irreps_in=x.irreps"
            )
        self.channel_out = optional_size(channel_out, "channel_out", _WHERE)
        self.channel_in = optional_size(channel_in, "channel_in", _WHERE)
        self.num_indexed_weights = optional_size(num_indexed_weights, "num_indexed_weights", _WHERE)
        self.weights_dim = optional_size(weights_dim, "weights_dim", _WHERE)
        _check_weight_options(
            linear_type, self.num_indexed_weights, self.weights_dim, self.channel_in, self.channel_out,
            weights_per_channel,
        )
        self.linear_type = linear_type
        self.biases = biases
        self.path_normalization = path_normalization
        # Resolved now, as e3nn-jax does: a later config() change does not affect an existing module.
        self.gradient_normalization = parse_gradient_normalization(gradient_normalization)
        self.weights_per_channel = weights_per_channel
        self.force_irreps_out = force_irreps_out
        self._input_dtype = input_dtype

        self.irreps_in, self.irreps_out, map_out = _layout(
            _to_irreps(irreps_in, "equinox.Linear irreps_in"),
            _to_irreps(irreps_out, "equinox.Linear irreps_out"),
            self.channel_out,
            force_irreps_out,
        )
        self._linear = FunctionalLinear(
            self.irreps_in,
            map_out,
            biases=biases,
            path_normalization=path_normalization,
            gradient_normalization=self.gradient_normalization,
        )
        lead, std_scale = self._parameter_lead()
        self._weights = _draw_parameters(self._linear, key, lead, std_scale, input_dtype)

    def _parameter_lead(self) -> Tuple[Tuple[int, ...], Any]:
        """Axes each parameter carries before its path shape, and the extra factor on its initial std.

        Mixed weights are contracted with the ``weights_dim`` call-time scalars, whose fan-in share goes into the
        initialisation (see :func:`e3nn_fast.linear.linear_mixed`).
        """
        if self.linear_type == "indexed":
            return (self.num_indexed_weights,), 1.0
        if self.linear_type == "mixed":
            return (self.weights_dim,), _mixing_std(self.weights_dim, self.gradient_normalization)
        if self.linear_type == "mixed_per_channel":
            return (self.weights_dim, self.channel_in), _mixing_std(self.weights_dim, self.gradient_normalization)
        return (), 1.0

    def _stored_parameter(self, name: str, shape: Tuple[int, ...], std, dtype) -> jax.Array:
        """``get_parameter`` for the shared helpers: the array made in the constructor (std and dtype unused)."""
        del std, dtype
        w = self._weights[name]
        if tuple(w.shape) != tuple(shape):
            # Only reachable when the parameters were swapped for arrays of another shape (e.g. eqx.tree_at).
            raise ValueError(f"equinox.Linear: parameter {name!r} has shape {tuple(w.shape)}, expected {tuple(shape)}")
        return w

    def _checked_input(self, input: IrrepsArray) -> IrrepsArray:
        """The input regrouped like ``irreps_in``, after checking its irreps and channel axis."""
        if input.irreps.regroup() != self.irreps_in:
            raise ValueError(
                f"equinox.Linear: the input has irreps {input.irreps}, which do not match irreps_in={self.irreps_in} "
                "(up to regrouping); pass an input with those irreps, or build the module with irreps_in=x.irreps"
            )
        if self.channel_in is not None and (input.ndim < 2 or input.shape[-2] != self.channel_in):
            raise ValueError(
                f"equinox.Linear: channel_in={self.channel_in} expects an input of shape (..., {self.channel_in}, "
                f"{self.irreps_in.dim}), got {input.shape}"
            )
        # Zero chunks are kept: the functional map skips them (their paths contribute nothing).
        return input.regroup()

    def _checked_weights(self, weights: Optional[jax.Array]) -> None:
        """Check that the call's weights (or their absence) fit ``linear_type``."""
        if self.linear_type == "vanilla":
            if weights is not None:
                # e3nn-jax asserts here: AssertionError-compatible class.
                raise InvalidValueError(
                    "equinox.Linear: linear_type='vanilla' takes no weights; call module(x), or build the module "
                    "with linear_type='indexed' (integer indices) or 'mixed' (float weights)"
                )
            return
        if weights is None:
            raise InvalidValueError(
                f"equinox.Linear: linear_type={self.linear_type!r} needs weights: call module(weights, x)"
            )
        if self.linear_type == "indexed":
            if weights.dtype.kind not in "iu":
                raise InvalidValueError(
                    f"equinox.Linear: linear_type='indexed' takes integer indices, got dtype {weights.dtype}"
                )
            return
        if weights.dtype.kind not in "fc":
            raise InvalidValueError(
                f"equinox.Linear: linear_type={self.linear_type!r} takes float weights of shape (..., "
                f"{self.weights_dim}), got dtype {weights.dtype}; integer indices need linear_type='indexed'"
            )
        if weights.ndim == 0 or weights.shape[-1] != self.weights_dim:
            raise ValueError(
                f"equinox.Linear: the weights must have shape (..., weights_dim={self.weights_dim}), got "
                f"{weights.shape}"
            )

    def __call__(self, weights_or_input, input_or_none=None) -> IrrepsArray:
        """Apply the layer: ``module(x)`` (vanilla) or ``module(weights, x)`` (indexed and mixed types).

        ``x`` may be an IrrepsArray or a plain array (read as scalars); ``weights`` a plain array or a scalar-only
        IrrepsArray.  The computation runs in the promoted dtype of weights and input (float32 for integers only).

        Returns:
            IrrepsArray of shape ``(..., [channel_out,] irreps_out.dim)`` with irreps ``self.irreps_out``,
            normalised assuming normalised inputs.
        """
        if input_or_none is None:
            weights, input = None, weights_or_input
        else:
            weights, input = weights_or_input, input_or_none
        weights = None if weights is None else _scalar_weights(weights)
        input = self._checked_input(_compute_input(weights, as_irreps_array(input)))
        self._checked_weights(weights)

        get = self._stored_parameter
        if self.linear_type == "vanilla":
            output = linear_vanilla(input, self._linear, get)
        elif self.linear_type == "indexed":
            output = linear_indexed(input, self._linear, get, weights, self.num_indexed_weights)
        elif self.linear_type == "mixed":
            output = linear_mixed(input, self._linear, get, weights, self.gradient_normalization)
        else:
            output = linear_mixed_per_channel(input, self._linear, get, weights, self.gradient_normalization)

        if self.channel_out is not None:
            output = output.mul_to_axis(self.channel_out)
        return output.rechunk(self.irreps_out)
