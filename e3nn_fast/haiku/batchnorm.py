"""Haiku module for equivariant batch/instance normalisation; the maths lives in :mod:`e3nn_fast.batchnorm`."""

from __future__ import annotations

from typing import Optional

import haiku as hk
import jax

from e3nn_fast.batchnorm import batch_norm_with_variables, check_batch_norm_options
from e3nn_fast.configuration import config
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, as_irreps_array

__all__ = ["BatchNorm"]


# Haiku's variables are float32 whatever the input dtype (hk.get_state / hk.get_parameter's default), as in e3nn-jax.
def _haiku_statistic(kind: str, size: int, fill: float) -> jax.Array:
    return hk.get_state(f"running_{kind}", shape=(size,), init=hk.initializers.Constant(fill))


def _haiku_parameter(kind: str, size: int, fill: float) -> jax.Array:
    return hk.get_parameter(kind, shape=(size,), init=hk.initializers.Constant(fill))


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
        check_batch_norm_options(normalization, reduce, eps, momentum)
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

        output, new_mean, new_var = batch_norm_with_variables(
            input,
            get_statistic=_haiku_statistic,
            get_parameter=_haiku_parameter,
            instance=self.instance,
            affine=self.affine,
            normalization=self.normalization,
            reduce=self.reduce,
            use_running_average=not is_training and not self.instance,
            momentum=self.momentum,
            eps=self.eps,
        )

        if is_training and not self.instance:
            # an empty statistic (no 0e copy, hence no running mean) is left untouched, as e3nn-jax does
            for kind, value in (("mean", new_mean), ("var", new_var)):
                if value.shape[0] > 0:
                    hk.set_state(f"running_{kind}", value)
        return output
