"""Haiku module for equivariant batch/instance normalisation; the maths lives in :mod:`e3nn_fast.batchnorm`."""

from __future__ import annotations

from typing import Optional

import haiku as hk
import jax.numpy as jnp

from e3nn_fast.batchnorm import batch_norm, check_batch_norm_options, num_scalars_and_irreps
from e3nn_fast.configuration import config
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array

__all__ = ["BatchNorm"]


class BatchNorm(hk.Module):
    r"""Equivariant batch normalisation (haiku): every irrep copy is divided by the running RMS of its norm.

    Parameters (if ``affine``): ``weight`` (one per irrep copy, ones) and ``bias`` (one per ``0e`` copy, zeros).
    State (batch norm only): ``running_mean`` (one per ``0e`` copy) and ``running_var`` (one per irrep copy).  As in
    e3nn-jax, both are created in float32 whatever the input dtype.

    Args:
        irreps: if given, the input is rechunked to these irreps first.
        eps: in [0, 1]; the variance is replaced by ``(1 - eps) * var + eps``.
        momentum: weight of the current batch in the running averages.
        affine: learn a scale per irrep copy and a bias per ``0e`` copy.
        reduce: ``"mean"`` or ``"max"``, how the squared norms are reduced over the non-batch axes.
        instance: instance normalisation (statistics per batch element, no running averages).
        normalization: ``"norm"`` or ``"component"``; default ``config("irrep_normalization")`` at construction.
        name: haiku module name (default ``batch_norm``).
    """

    def __init__(
        self,
        *,
        irreps: Irreps = None,
        eps: float = 1e-4,
        momentum: float = 0.1,
        affine: bool = True,
        reduce: str = "mean",
        instance: bool = False,
        normalization: str = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        if normalization is None:
            normalization = config("irrep_normalization")
        check_batch_norm_options(normalization, reduce, eps)
        self.irreps = None if irreps is None else Irreps(irreps)
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.reduce = reduce
        self.instance = instance
        self.normalization = normalization

    def __repr__(self) -> str:
        return f"{self.__class__.__name__} ({self.irreps}, eps={self.eps}, momentum={self.momentum})"

    def __call__(self, input: IrrepsArray, is_training: bool = True) -> IrrepsArray:
        r"""Normalise ``input`` of shape ``(batch, ..., irreps.dim)``.

        In training mode the batch statistics are used and the running averages updated (``hk.set_state``); in
        evaluation mode (``is_training=False``) the running averages are used (instance norm always uses the
        statistics of each input).
        """
        input = as_irreps_array(input)  # a plain array holds scalars 0e
        if self.irreps is not None:
            input = input.rechunk(self.irreps)

        num_scalars, num_irreps = num_scalars_and_irreps(input.irreps)
        running_mean = running_var = weight = bias = None
        if not self.instance:
            running_mean = hk.get_state("running_mean", shape=(num_scalars,), init=jnp.zeros)
            running_var = hk.get_state("running_var", shape=(num_irreps,), init=jnp.ones)
        if self.affine:
            weight = hk.get_parameter("weight", shape=(num_irreps,), init=jnp.ones)
            bias = hk.get_parameter("bias", shape=(num_scalars,), init=jnp.zeros)

        output, new_mean, new_var = batch_norm(
            input,
            running_mean,
            running_var,
            weight,
            bias,
            normalization=self.normalization,
            reduce=self.reduce,
            instance=self.instance,
            use_running_average=not is_training and not self.instance,
            momentum=self.momentum,
            eps=self.eps,
        )

        if is_training and not self.instance:
            if new_mean.shape[0] > 0:
                hk.set_state("running_mean", new_mean)
            if new_var.shape[0] > 0:
                hk.set_state("running_var", new_var)
        return output
