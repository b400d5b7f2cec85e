"""Flax (linen) module for equivariant batch/instance normalisation; the maths is in :mod:`e3nn_fast.batchnorm`."""

from __future__ import annotations

from typing import Optional

import flax.linen
import jax
import jax.numpy as jnp

from e3nn_fast.batchnorm import batch_norm_with_variables
from e3nn_fast.configuration import config
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array

__all__ = ["BatchNorm"]

# e3nn-jax's flax module names its affine parameters in the plural (the haiku one does not)
_FLAX_PARAMETER_NAMES = {"weight": "weights", "bias": "biases"}


class BatchNorm(flax.linen.Module):
    """Equivariant batch normalisation (flax.linen): every irrep copy is divided by the running RMS of its norm.

    Variables: ``params`` ``weights`` (one per irrep copy, ones) and ``biases`` (one per ``0e`` copy, zeros) if
    ``affine``; ``batch_stats`` ``mean`` (one per ``0e`` copy) and ``var`` (one per irrep copy) for batch norm.  All
    take the dtype of the input.  Pass ``mutable=["batch_stats"]`` to ``apply`` in training mode.

    Attributes:
        use_running_average: normalise with the stored statistics instead of the batch ones (can be overridden
            per call).
        eps: in [0, 1]; the variance is replaced by ``(1 - eps) * var + eps``.
        momentum: weight of the current batch in the running averages.
        affine: learn a scale per irrep copy and a bias per ``0e`` copy.
        reduce: ``"mean"`` or ``"max"``, how the squared norms are reduced over the non-batch axes.
        instance: instance normalisation (statistics per batch element, no running averages).
        normalization: ``"norm"`` or ``"component"``; default ``config("irrep_normalization")`` at call time.
    """

    use_running_average: Optional[bool] = None
    eps: float = 1e-4
    momentum: float = 0.1
    affine: bool = True
    reduce: str = "mean"
    instance: bool = False
    normalization: str = None

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(eps={self.eps}, momentum={self.momentum})"

    @flax.linen.compact
    def __call__(
        self,
        input: IrrepsArray,
        use_running_average: Optional[bool] = None,
        mask: Optional[jax.Array] = None,
    ) -> IrrepsArray:
        """Normalise ``input`` of shape ``(batch, ..., irreps.dim)`` (a plain array is read as scalars ``0e``).

        Args:
            input: the input.
            use_running_average: overrides the attribute of the same name (default False).
            mask: optional boolean ``(batch,)`` mask of the valid batch elements, for the batch statistics.

        The running statistics are updated (``mutable=["batch_stats"]`` needed) in training mode only, and not while
        the module is being initialised.
        """
        input = as_irreps_array(input)
        if mask is not None and tuple(mask.shape) != (input.shape[0],):
            raise ValueError(f"BatchNorm: mask must have shape (batch,) but got {tuple(mask.shape)} instead.")

        use_running_average = next(
            value for value in (use_running_average, self.use_running_average, False) if value is not None
        )
        if use_running_average and self.instance:
            # instance statistics are per batch element: there is no running average to use
            raise ValueError("BatchNorm: if instance is True, use_running_average must be False")

        dtype = input.dtype  # unlike the haiku module, the variables follow the input's dtype (as in e3nn-jax)
        statistics = {}  # kind -> flax Variable, kept to write the updated averages back

        def get_statistic(kind: str, size: int, fill: float) -> jax.Array:
            statistics[kind] = self.variable("batch_stats", kind, jnp.full, (size,), fill, dtype)
            return statistics[kind].value

        def get_parameter(kind: str, size: int, fill: float) -> jax.Array:
            return self.param(_FLAX_PARAMETER_NAMES[kind], lambda _: jnp.full((size,), fill, dtype))

        output, new_mean, new_var = batch_norm_with_variables(
            input,
            get_statistic=get_statistic,
            get_parameter=get_parameter,
            instance=self.instance,
            affine=self.affine,
            normalization=self.normalization or config("irrep_normalization"),
            reduce=self.reduce,
            use_running_average=use_running_average,
            momentum=self.momentum,
            eps=self.eps,
            mask=mask,
        )

        # Unlike e3nn-jax 0.21 (which always writes them, so evaluation needs mutable=["batch_stats"] and moves the
        # statistics), the running statistics are only updated when the batch statistics are used, as in
        # flax.linen.BatchNorm and in the haiku module.
        if not self.is_initializing() and not self.instance and not use_running_average:
            statistics["mean"].value = new_mean
            statistics["var"].value = new_var
        return output
