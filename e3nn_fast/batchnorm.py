"""Equivariant batch (and instance) normalisation, independent of any module framework.

Each irrep copy is rescaled by one number computed from its *norm*, which is rotation invariant, so the operation is
equivariant.  Only ``0e`` scalars are also centred (subtracting a mean from anything else would break equivariance)
and only they receive a bias.

Statistics, per irrep copy (index ``u`` along the multiplicities of a block):

* mean (``0e`` only): average over batch and the other leading axes ("samples");
* "variance": squared norm (``"norm"``) or squared norm / (2l+1) (``"component"``) of the centred copies, reduced
  over samples by ``"mean"`` or ``"max"``, then averaged over the batch;
* the output is ``x / sqrt((1 - eps) * var + eps) * weight (+ bias)``.

Batch norm keeps running averages ``(1 - momentum) * running + momentum * batch_value`` of both statistics, used in
evaluation mode; instance norm computes them per batch element and keeps none.  The running mean has one entry per
``0e`` copy; the running variance and the weights one per irrep copy (``irreps.num_irreps``); the biases one per ``0e``
copy.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp

from e3nn_fast.errors import InvalidTypeError, InvalidValueError
from e3nn_fast.irreps_array import IrrepsArray, from_chunks

__all__ = ["batch_norm", "batch_norm_with_variables", "check_batch_norm_options", "num_scalars_and_irreps"]

NORMALIZATIONS = ("norm", "component")
REDUCTIONS = ("mean", "max")


def check_batch_norm_options(normalization, reduce, eps, momentum=0.1) -> None:
    """Raise a clear ValueError/TypeError for an unknown ``normalization``/``reduce``, or an ``eps`` or ``momentum``
    outside [0, 1] (a momentum of 2 would extrapolate the running averages instead of averaging)."""
    # e3nn-jax's haiku module asserts on reduce and normalization: these classes are also AssertionErrors
    if not isinstance(reduce, str):
        raise InvalidTypeError(f"BatchNorm: reduce must be a string, 'mean' or 'max', got {reduce!r}")
    if reduce not in REDUCTIONS:
        raise InvalidValueError(f"BatchNorm: reduce must be 'mean' or 'max', got {reduce!r}")
    if normalization not in NORMALIZATIONS:
        raise InvalidValueError(f"BatchNorm: normalization must be 'norm' or 'component', got {normalization!r}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"BatchNorm: eps must be between 0 and 1, got {eps!r}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"BatchNorm: momentum (the weight of a batch in the running averages) must be between 0 and 1, "
                         f"got {momentum!r}")


def num_scalars_and_irreps(irreps) -> Tuple[int, int]:
    """(number of ``0e`` copies, number of irrep copies): the sizes of the mean/bias and variance/weight vectors."""
    num_scalars = sum(mul for mul, ir in irreps if ir.is_scalar())
    return num_scalars, irreps.num_irreps


def _check_vector(name: str, value: Optional[jax.Array], size: int) -> None:
    if value is not None and tuple(value.shape) != (size,):
        raise ValueError(f"BatchNorm: {name} must have shape ({size},), got {tuple(value.shape)}")


def _rolling(momentum: float, current: jax.Array, batch_value: jax.Array) -> jax.Array:
    """Running-average update; statistics are not differentiated through."""
    return (1 - momentum) * current + momentum * jax.lax.stop_gradient(batch_value)


def _masked_batch_mean(values: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """Average of ``values [batch, mul]`` over the batch, counting only entries where ``mask`` is true."""
    if mask is None:
        return values.mean(0)
    return (values * mask[:, None]).sum(0) / mask.sum()


def batch_norm(
    input: IrrepsArray,
    running_mean: Optional[jax.Array],
    running_var: Optional[jax.Array],
    weight: Optional[jax.Array],
    bias: Optional[jax.Array],
    *,
    normalization: str,
    reduce: str,
    instance: bool,
    use_running_average: bool,
    momentum: float,
    eps: float,
    mask: Optional[jax.Array] = None,
) -> Tuple[IrrepsArray, Optional[jax.Array], Optional[jax.Array]]:
    """Normalise ``input`` of shape ``(batch, ..., irreps.dim)``; see the module docstring for the statistics.

    Args:
        input: the IrrepsArray; axis 0 is the batch, the axes between it and the irreps are samples.
        running_mean, running_var: the running statistics (ignored, may be None, for instance norm).
        weight, bias: affine parameters, or None for no affine transformation.
        normalization: ``"norm"`` or ``"component"``.
        reduce: ``"mean"`` or ``"max"`` over the samples.
        instance: per-batch-element statistics (instance norm), no running statistics.
        use_running_average: normalise with the running statistics instead of the batch ones.
        momentum: weight of the current batch in the running averages.
        eps: the variance is replaced by ``(1 - eps) * var + eps``.
        mask: optional ``(batch,)`` mask of the valid batch elements (for the batch statistics).

    Returns:
        ``(output, new_running_mean, new_running_var)``; the last two are None for instance norm.
    """
    check_batch_norm_options(normalization, reduce, eps, momentum)
    if not isinstance(input, IrrepsArray):
        raise TypeError(f"BatchNorm: the input must be an IrrepsArray, got {type(input).__name__}")
    if input.ndim < 2:
        raise ValueError(f"BatchNorm: the input must have shape (batch, ..., irreps.dim), got shape {input.shape}")
    num_scalars, num_irreps = num_scalars_and_irreps(input.irreps)
    if not instance:
        _check_vector("running_mean", running_mean, num_scalars)
        _check_vector("running_var", running_var, num_irreps)
    _check_vector("weight", weight, num_irreps)
    _check_vector("bias", bias, num_scalars)
    if mask is not None and tuple(mask.shape) != (input.shape[0],):
        raise ValueError(f"BatchNorm: mask must have shape (batch,) = ({input.shape[0]},), got {tuple(mask.shape)}")

    batch, *size = input.shape[:-1]
    x = input.reshape((batch, math.prod(size), -1))  # [batch, sample, irreps]

    new_means: List[jax.Array] = []
    new_vars: List[jax.Array] = []
    chunks = []
    i_irrep = 0  # offset in running_var / weight (every copy)
    i_scalar = 0  # offset in running_mean / bias (0e copies)

    for (mul, ir), chunk in zip(x.irreps, x.chunks):  # chunk: [batch, sample, mul, 2l+1]
        scalar = ir.is_scalar()
        scalar_slice = slice(i_scalar, i_scalar + mul)
        irrep_slice = slice(i_irrep, i_irrep + mul)

        if chunk is None:
            # A block known to be zero stays zero; its running statistics are reset to the initial values
            # (0 mean, unit variance), as e3nn-jax does.
            if not instance:
                if scalar:
                    new_means.append(jnp.zeros((mul,), x.dtype))
                new_vars.append(jnp.ones((mul,), x.dtype))
            chunks.append(None)
        else:
            if scalar:
                if instance:
                    mean = chunk.mean(1).reshape(batch, mul)
                else:
                    if mask is None:
                        mean = chunk.mean((0, 1)).reshape(mul)
                    else:
                        mean = _masked_batch_mean(chunk.mean(1).squeeze(2), mask)
                    new_means.append(_rolling(momentum, running_mean[scalar_slice], mean))
                if use_running_average:
                    mean = running_mean[scalar_slice]
                chunk = chunk - mean.reshape(-1, 1, mul, 1)

            squared = jnp.square(chunk)
            norm_squared = squared.sum(3) if normalization == "norm" else squared.mean(3)  # [batch, sample, mul]
            norm_squared = norm_squared.mean(1) if reduce == "mean" else norm_squared.max(1)  # [batch, mul]
            if not instance:
                norm_squared = _masked_batch_mean(norm_squared, mask)  # [mul]
                new_vars.append(_rolling(momentum, running_var[irrep_slice], norm_squared))
            if use_running_average:
                norm_squared = running_var[irrep_slice]

            scale = jax.lax.rsqrt((1 - eps) * norm_squared + eps)  # [(batch,) mul]
            if weight is not None:
                scale = scale * weight[irrep_slice]
            chunk = chunk * scale[..., None, :, None]
            if bias is not None and scalar:
                chunk = chunk + bias[scalar_slice].reshape(mul, 1)
            chunks.append(chunk)

        i_irrep += mul
        if scalar:
            i_scalar += mul

    output = from_chunks(x.irreps, chunks, x.shape[:-1], x.dtype)
    output = output.reshape((batch, *size, -1))

    if instance:
        return output, None, None
    new_mean = jnp.concatenate(new_means) if new_means else jnp.zeros((0,), output.dtype)
    new_var = jnp.concatenate(new_vars) if new_vars else jnp.zeros((0,), output.dtype)
    return output, new_mean, new_var


# ``get(kind, size, fill)`` -> the framework's variable ``kind`` of shape ``(size,)``, created filled with ``fill``
VariableGetter = Callable[[str, int, float], jax.Array]


def batch_norm_with_variables(
    input: IrrepsArray,
    *,
    get_statistic: VariableGetter,
    get_parameter: VariableGetter,
    instance: bool,
    affine: bool,
    **options,
) -> Tuple[IrrepsArray, Optional[jax.Array], Optional[jax.Array]]:
    """What the haiku and flax modules share: fetch their variables, then :func:`batch_norm`.

    The frameworks differ only in where variables live and what they are called, so each passes two getters:
    ``get_statistic("mean" | "var", size, fill)`` for the running statistics (not asked for with ``instance``) and
    ``get_parameter("weight" | "bias", size, fill)`` for the affine parameters (only asked for with ``affine``).
    Means and biases have one entry per ``0e`` copy, variances and weights one per irrep copy; statistics start at
    zero mean and unit variance, the affine map at the identity.  ``options`` are passed on to :func:`batch_norm`.
    """
    num_scalars, num_irreps = num_scalars_and_irreps(input.irreps)
    running_mean = running_var = weight = bias = None
    if not instance:
        running_mean = get_statistic("mean", num_scalars, 0.0)
        running_var = get_statistic("var", num_irreps, 1.0)
    if affine:
        weight = get_parameter("weight", num_irreps, 1.0)
        bias = get_parameter("bias", num_scalars, 0.0)
    return batch_norm(input, running_mean, running_var, weight, bias, instance=instance, **options)
