r"""Signals on the rotation group SO(3) sampled on a grid (drop-in for ``e3nn_jax.SO3Signal``).

A rotation is written in axis-angle form :math:`R(\hat n, \theta)`.  The axis :math:`\hat n` runs over an S2 grid
(the ``(res_beta, res_alpha)`` grid of :class:`~e3nn_fast.s2grid.SphericalSignal`) and the angle over
``res_theta`` equally spaced values of :math:`[0, 2\pi]`, both ends included.  The values therefore live in a
:class:`SphericalSignal` of shape ``(..., res_theta, res_beta, res_alpha)``: one sphere signal per angle.

Integration uses the Haar measure in these coordinates, :math:`(1 - \cos\theta)\, d\theta\, d\hat n`, with a plain
Riemann sum over :math:`\theta` and the sphere quadrature over :math:`\hat n`, normalised so that the constant 1
integrates to 1 (the same numbers as e3nn-jax).
"""

from __future__ import annotations

from typing import Callable, Tuple, Union

import jax
import jax.numpy as jnp

from e3nn_fast.rotation import axis_angle_to_matrix
from e3nn_fast.s2grid import SphericalSignal

__all__ = ["SO3Signal"]


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def _theta_grid(res_theta: int) -> jax.Array:
    """The rotation angles of the grid: ``res_theta`` points from 0 to :math:`2\\pi`, both included."""
    return jnp.linspace(0, 2 * jnp.pi, res_theta)


class SO3Signal:
    r"""A signal on SO(3): one :class:`SphericalSignal` (over the rotation axis) per rotation angle.

    Args:
        s2_signals: sphere signals of shape ``(..., res_theta, res_beta, res_alpha)``; the leading axes are batch
            axes, axis ``-3`` indexes the rotation angle.
    """

    def __init__(self, s2_signals: SphericalSignal, *, _perform_checks: bool = True) -> None:
        if _perform_checks:
            if not isinstance(s2_signals, SphericalSignal):
                raise TypeError(f"s2_signals must be a SphericalSignal, got {type(s2_signals).__name__}")
            if len(s2_signals.shape) < 3:
                raise ValueError(
                    "s2_signals must have at least 3 axes (res_theta, res_beta, res_alpha), "
                    f"got shape {s2_signals.shape}"
                )
        self.s2_signals = s2_signals

    def __repr__(self) -> str:
        return (
            f"SO3Signal(shape={self.shape}, res_theta={self.res_theta}, res_beta={self.res_beta}, "
            f"res_alpha={self.res_alpha}, quadrature={self.s2_signals.quadrature})"
        )

    # -- shape and grid ------------------------------------------------------------------------------------------

    @property
    def batch_dims(self) -> Tuple[int, ...]:
        return self.s2_signals.shape[:-3]

    @property
    def shape(self) -> Tuple[int, ...]:
        return self.s2_signals.shape

    @property
    def res_beta(self) -> int:
        return self.s2_signals.res_beta

    @property
    def res_alpha(self) -> int:
        return self.s2_signals.res_alpha

    @property
    def res_theta(self) -> int:
        return self.s2_signals.shape[-3]

    @property
    def grid_values(self) -> jax.Array:
        return self.s2_signals.grid_values

    @property
    def grid_theta(self) -> jax.Array:
        """Rotation angles of the grid, shape ``(res_theta,)``."""
        return _theta_grid(self.res_theta)

    @property
    def grid_resolution(self) -> Tuple[int, int, int]:
        return (self.res_theta, self.res_beta, self.res_alpha)

    # -- construction --------------------------------------------------------------------------------------------

    @staticmethod
    def from_function(
        func: Callable[[jax.Array], float],
        res_beta: int,
        res_alpha: int,
        res_theta: int,
        quadrature: str,
        *,
        dtype: jnp.dtype = jnp.float32,
    ) -> "SO3Signal":
        """Sample ``func`` (rotation matrix ``(3, 3)`` -> scalar or array) on the grid.

        If ``func`` returns arrays of shape ``S``, the signal has batch shape ``S``.

        Args:
            func: function of a rotation matrix.
            res_beta, res_alpha: resolution of the S2 grid of rotation axes.
            res_theta: number of rotation angles in :math:`[0, 2\\pi]`.
            quadrature: ``"soft"`` or ``"gausslegendre"``.
            dtype: float dtype of the rotation matrices given to ``func``.
        """
        for name, value in (("res_beta", res_beta), ("res_alpha", res_alpha), ("res_theta", res_theta)):
            _check_positive_int(name, value)
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        axes_signal = SphericalSignal.zeros(res_beta, res_alpha, quadrature=quadrature, dtype=dtype)
        axes = jnp.asarray(axes_signal.grid_vectors, dtype)  # (res_beta, res_alpha, 3)
        angles = jnp.asarray(_theta_grid(res_theta), dtype)  # (res_theta,)

        # rotation matrices on the grid, broadcast to (res_theta, res_beta, res_alpha, 3, 3)
        rotations = axis_angle_to_matrix(axes[None], angles[:, None, None])
        values = jax.vmap(jax.vmap(jax.vmap(func)))(rotations)
        values = jnp.asarray(values)
        # func's own output axes become the leading (batch) axes, in their original order
        values = jnp.moveaxis(values, (0, 1, 2), (-3, -2, -1))
        return SO3Signal(axes_signal.replace_values(values))

    def replace_values(self, grid_values: jax.Array) -> "SO3Signal":
        """Same grid, new values of shape ``(..., res_theta, res_beta, res_alpha)``."""
        return SO3Signal(self.s2_signals.replace_values(grid_values))

    # -- arithmetic ----------------------------------------------------------------------------------------------

    def _check_same_shape(self, other: "SO3Signal") -> None:
        if self.shape != other.shape:
            raise ValueError(
                f"The two SO3Signals have different shapes, {self.shape} and {other.shape}; pointwise operations "
                "need the same grid and batch shape. Resample or broadcast one signal first."
            )

    def __mul__(self, other: Union[float, jax.Array, "SO3Signal"]) -> "SO3Signal":
        """Pointwise product with a signal of the same shape, or scaling by a scalar / batch-shaped array."""
        if isinstance(other, SO3Signal):
            self._check_same_shape(other)
            return SO3Signal(self.s2_signals * other.s2_signals)
        # an extra trailing axis so that a batch-shaped array lines up with the batch axes, not with theta
        return SO3Signal(self.s2_signals * jnp.asarray(other)[..., None])

    def __rmul__(self, other: Union[float, jax.Array]) -> "SO3Signal":
        return self * other

    def __neg__(self) -> "SO3Signal":
        return self * -1

    def __truediv__(self, other: Union[float, jax.Array, "SO3Signal"]) -> "SO3Signal":
        if isinstance(other, SO3Signal):
            self._check_same_shape(other)
            return self.replace_values(self.grid_values / other.grid_values)
        return self * (1 / jnp.asarray(other))

    def apply(self, func: Callable[..., jax.Array]) -> "SO3Signal":
        """Apply a pointwise function to the values."""
        return SO3Signal(self.s2_signals.apply(func))

    def vmap_over_batch_dims(self, func: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
        """``func`` vmapped once per batch axis of this signal."""
        for _ in range(len(self.batch_dims)):
            func = jax.vmap(func)
        return func

    # -- reductions ----------------------------------------------------------------------------------------------

    def _float_dtype(self):
        """The values' float dtype (grids and rotations use it, so float32 signals stay float32 under x64)."""
        return jnp.result_type(self.grid_values.dtype, jnp.float32)

    def _rotation(self, theta_idx: jax.Array, beta_idx: jax.Array, alpha_idx: jax.Array) -> jax.Array:
        """Rotation matrices ``(..., 3, 3)`` of grid points given by (batch-shaped) indices."""
        dtype = self._float_dtype()
        axis = jnp.asarray(self.s2_signals.grid_vectors, dtype)[beta_idx, alpha_idx]  # (..., 3)
        angle = self.grid_theta.astype(dtype)[theta_idx]
        return axis_angle_to_matrix(axis, angle)

    def argmax(self) -> Tuple[jax.Array, Tuple[jax.Array, jax.Array, jax.Array]]:
        """The grid rotation where the signal is largest, and its ``(theta, beta, alpha)`` indices (per batch)."""
        flat_index = jnp.argmax(self.grid_values.reshape(*self.batch_dims, -1), axis=-1)
        theta_idx, beta_idx, alpha_idx = jnp.unravel_index(flat_index, self.grid_resolution)
        return self._rotation(theta_idx, beta_idx, alpha_idx), (theta_idx, beta_idx, alpha_idx)

    def integrate_over_angles(self) -> SphericalSignal:
        r"""Integrate out the rotation angle with the Haar weight :math:`1 - \cos\theta`; a signal on the axes."""
        if self.res_theta < 2:
            raise ValueError(f"integrating over the rotation angle needs res_theta >= 2, got {self.res_theta}")
        theta = self.grid_theta.astype(self._float_dtype())
        haar = (1 - jnp.cos(theta))[:, None, None]
        delta_theta = theta[1] - theta[0]
        return self.s2_signals.replace_values(jnp.sum(self.grid_values * haar, axis=-3) * delta_theta)

    def integrate(self) -> jax.Array:
        """Integral over SO(3) with the normalised Haar measure (a constant 1 integrates to 1), per batch."""
        over_axes = self.integrate_over_angles().integrate().array[..., 0]
        return over_axes / (8 * jnp.pi**2)

    def sample(self, rng: jax.Array) -> jax.Array:
        """Draw a grid rotation with probability proportional to the (non-negative) signal; ``(..., 3, 3)``.

        The axis is drawn from the angle-integrated signal, then the angle from the values at that axis.
        """
        axis_rng, rng = jax.random.split(rng)
        beta_idx, alpha_idx = self.integrate_over_angles().sample(axis_rng)

        def values_at_axis(values, b, a):  # values (res_theta, res_beta, res_alpha) of one batch element
            return values[:, b, a]

        theta_probs = self.vmap_over_batch_dims(values_at_axis)(self.grid_values, beta_idx, alpha_idx)
        # log(0) -> use a tiny positive value instead
        theta_logits = jnp.log(jnp.where(theta_probs == 0, 1e-20, theta_probs))
        angle_rng, rng = jax.random.split(rng)
        theta_idx = jax.random.categorical(angle_rng, theta_logits)
        return self._rotation(theta_idx, beta_idx, alpha_idx)


jax.tree_util.register_pytree_node(
    SO3Signal,
    lambda s: ((s.s2_signals,), None),
    lambda _, leaves: SO3Signal(leaves[0], _perform_checks=False),
)
