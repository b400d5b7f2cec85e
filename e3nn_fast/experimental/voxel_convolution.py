r"""Equivariant 3D convolution on voxel grids (drop-in for ``e3nn_jax.experimental.voxel_convolution``).

The kernel :math:`K(\vec r)` at a lattice displacement :math:`\vec r` maps ``irreps_in`` to ``irreps_out`` through a
fully connected tensor product with the spherical harmonics :math:`Y(\hat r)`, whose weights are smooth radial
functions :math:`\sum_k w_k\, \phi_k(|\vec r|)` (``smooth_finite`` bumps spread over ``[start, diameter / 2]``, zero
at both ends).  At :math:`\vec r = 0`, where the harmonics are undefined, the kernel is instead an equivariant
linear map (the self-connection).  The convolution itself is ``lax.conv_general_dilated`` on the channels-last
layout ``[batch, x, y, z, irreps]``.

The voxel size (``steps``) may differ along the three axes, and may be passed at call time (e.g. per image); the
kernel's lattice size is always fixed by the static ``steps``.

Two flavours with shared maths: :class:`ConvolutionHaiku` and :class:`ConvolutionFlax` (flax.linen).  Parameter
names and shapes are those of e3nn-jax 0.21.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Tuple, Union

import flax.linen
import haiku as hk
import jax
import jax.numpy as jnp
from jax import lax

from e3nn_fast.harmonics import spherical_harmonics
from e3nn_fast.irreps import Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.legacy import FunctionalFullyConnectedTensorProduct
from e3nn_fast.linear import FunctionalLinear
from e3nn_fast.radial import soft_one_hot_linspace

__all__ = ["ConvolutionHaiku", "ConvolutionFlax"]

# ``get_parameter(name, shape, std)`` -> the (possibly freshly initialised, normal(0, std)) parameter
GetParameter = Callable[[str, Tuple[int, ...], float], jax.Array]


def _haiku_parameters(dtype) -> GetParameter:
    """Parameters in the current haiku module, initialised from ``normal(0, std)`` (e3nn-jax's convention)."""

    def get_parameter(name: str, shape: Tuple[int, ...], std: float) -> jax.Array:
        return hk.get_parameter(name, shape=shape, init=hk.initializers.RandomNormal(std), dtype=dtype)

    return get_parameter


def _flax_parameters(module: flax.linen.Module, dtype) -> GetParameter:
    """Parameters of the flax ``module``, initialised from ``normal(0, std)`` (e3nn-jax's convention)."""

    def get_parameter(name: str, shape: Tuple[int, ...], std: float) -> jax.Array:
        return module.param(name, flax.linen.initializers.normal(stddev=std), shape, dtype)

    return get_parameter


def _per_degree(value, l: int, what: str):
    """``value`` if it is a plain number, else ``value[l]`` (a per-spherical-harmonic-degree dict)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    try:
        return value[l]
    except (KeyError, IndexError, TypeError):
        raise ValueError(
            f"Convolution: {what} must be a number or give a value for every l of irreps_sh; missing l={l}"
        ) from None


def _lattice(self, steps, dtype) -> jax.Array:
    """Displacements ``(nx, ny, nz, 3)`` covered by the kernel: a box of half-size ``diameter / 2``."""
    if len(self.steps) != 3:
        raise ValueError(
            f"Convolution: steps must give the voxel size along x, y and z (3 numbers), got {self.steps!r}"
        )
    if steps is None:
        steps = self.steps
    radius = self.diameter / 2
    # The number of voxels per axis must be a Python int, so it comes from the static ``self.steps``; only the
    # spacing of the points may follow the (possibly traced) ``steps`` given at call time.
    half_sizes = [math.floor(radius / static_step) for static_step in self.steps]
    axes = [jnp.arange(-n, n + 1.0) * step for n, step in zip(half_sizes, steps)]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1).astype(dtype)


def _radial_weights(self, lattice, ins, tp, get_parameter: GetParameter) -> jax.Array:
    """The weights of one tensor-product path at every lattice point: ``(nx, ny, nz) + path_shape``."""
    mul_ir_in, ir_sh, mul_ir_out = tp.irreps_in1[ins.i_in1], tp.irreps_in2[ins.i_in2].ir, tp.irreps_out[ins.i_out]
    number = _per_degree(self.num_radial_basis, ir_sh.l, "num_radial_basis")
    start = _per_degree(self.relative_starts, ir_sh.l, "relative_starts")
    embedding = soft_one_hot_linspace(
        jnp.linalg.norm(lattice, ord=2, axis=-1),
        start=start * self.diameter / 2,
        end=self.diameter / 2,
        number=number,
        basis="smooth_finite",
        start_zero=True,
        end_zero=True,
    )  # (nx, ny, nz, number)
    w = get_parameter(
        f"w[{ins.i_in1},{ins.i_in2},{ins.i_out}] {mul_ir_in},{ir_sh},{mul_ir_out}",
        (number,) + tuple(ins.path_shape),
        ins.weight_std,
    )
    num_points = lattice.shape[0] * lattice.shape[1] * lattice.shape[2]
    return jnp.einsum("xyzk,k...->xyz...", embedding, w) / num_points


def _kernel(self, irreps_in, irreps_out, steps, get_parameter: GetParameter, dtype) -> jax.Array:
    """The convolution kernel ``(nx, ny, nz, irreps_in.dim, irreps_out.dim)``."""
    irreps_in, irreps_out, irreps_sh = Irreps(irreps_in), Irreps(irreps_out), Irreps(self.irreps_sh)
    lattice = _lattice(self, steps, dtype)

    tp = FunctionalFullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out)
    ws = [_radial_weights(self, lattice, ins, tp, get_parameter) for ins in tp.instructions]
    sh = spherical_harmonics(irreps_out=irreps_sh, input=lattice, normalize=True)  # (nx, ny, nz, sh)

    # the tensor product is linear in its first input: its matrix at every lattice point
    right = tp.right
    for _ in range(3):
        right = jax.vmap(right)
    kernel = right(ws, sh)

    # The centre (zero displacement, the middle of the odd-sized lattice) gets an equivariant linear map instead.
    lin = FunctionalLinear(irreps_in, irreps_out)
    w = [
        get_parameter(
            f"self-connection[{ins.i_in},{ins.i_out}] {lin.irreps_in[ins.i_in]},{lin.irreps_out[ins.i_out]}",
            ins.path_shape,
            ins.weight_std,
        )
        for ins in lin.instructions
    ]
    centre = tuple(n // 2 for n in kernel.shape[:3])
    return kernel.at[centre].set(lin.matrix(w).astype(kernel.dtype))


def _reachable_blocks(self, irreps_in: Irreps) -> List[bool]:
    """For each block of ``irreps_out``: can some input irrep times some harmonic of ``irreps_sh`` produce it?

    Unreachable blocks get no kernel (hence no parameters) and come out as zeros.
    """
    products = {ir for _, ir_in in irreps_in for _, ir_sh in Irreps(self.irreps_sh) for ir in ir_in * ir_sh}
    return [ir in products for _, ir in Irreps(self.irreps_out)]


def _convolve(self, input: IrrepsArray, steps) -> IrrepsArray:
    """The convolution of ``input`` ``[batch, x, y, z, irreps]`` with the module's kernel; irreps ``irreps_out``."""
    if not isinstance(input, IrrepsArray):
        raise ValueError(
            f"Convolution: input must be an IrrepsArray of shape [batch, x, y, z, irreps.dim], got "
            f"{type(input).__name__}; wrap the image with e3nn.IrrepsArray(irreps, image)"
        )
    if input.ndim != 5:
        raise ValueError(f"Convolution: input must have shape [batch, x, y, z, irreps.dim], got {input.shape}")
    # zero blocks and repeated irreps would only add parameters that multiply zeros / duplicate paths
    input = input.remove_zero_chunks().simplify()
    full = Irreps(self.irreps_out)
    reachable = _reachable_blocks(self, input.irreps)
    irreps_out = Irreps([mul_ir for mul_ir, keep in zip(full, reachable) if keep])

    array = lax.conv_general_dilated(
        lhs=input.array,
        rhs=self.kernel(input.irreps, irreps_out, steps, input.dtype),
        window_strides=(1, 1, 1),
        padding=self.padding,
        dimension_numbers=("NXYZC", "XYZIO", "NXYZC"),
    )
    output = IrrepsArray(irreps_out, array)
    if all(reachable):
        return output
    # reinsert the unreachable blocks as known zeros so that the output always has the full irreps_out
    computed = iter(output.chunks)
    chunks = [next(computed) if keep else None for keep in reachable]
    return from_chunks(full, chunks, output.shape[:-1], output.dtype)


class ConvolutionHaiku(hk.Module):
    r"""Equivariant 3D voxel convolution (see the module docstring).

    Args:
        irreps_out: irreps of the output.
        irreps_sh: irreps of the spherical harmonics of the kernel.
        diameter: diameter of the kernel, in the physical unit of ``steps`` (say millimetres).
        num_radial_basis: number of radial functions, or a dict giving it per harmonic degree ``l``.
        steps: voxel size along x, y and z, e.g. ``(1.0, 1.0, 3.0)``.
        relative_starts: start of the radial functions as a fraction of the radius (or a dict per ``l``).
        padding: padding of ``lax.conv_general_dilated`` (``"SAME"`` keeps the image size).
    """

    def __init__(
        self,
        irreps_out: Irreps,
        irreps_sh: Irreps,
        diameter: float,
        num_radial_basis: Union[int, Dict[int, int]],
        steps: Tuple[float, float, float],
        *,
        relative_starts: Union[float, Dict[int, float]] = 0.0,
        padding: str = "SAME",
    ):
        super().__init__()
        # stored as given (as the flax fields are): the shared functions above read them through ``self``
        self.irreps_out, self.irreps_sh, self.padding = irreps_out, irreps_sh, padding
        self.diameter, self.steps = diameter, steps
        self.num_radial_basis, self.relative_starts = num_radial_basis, relative_starts

    def kernel(
        self,
        irreps_in: Irreps,
        irreps_out: Irreps,
        steps: Optional[jax.Array] = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> jax.Array:
        r"""The kernel ``[x, y, z, irreps_in.dim, irreps_out.dim]``.

        Args:
            irreps_in: irreps of the input.
            irreps_out: irreps of the output.
            steps: voxel size at call time; ``None`` uses the static ``steps``.
            dtype: dtype of the kernel and its parameters.
        """
        return _kernel(self, irreps_in, irreps_out, steps, _haiku_parameters(dtype), dtype)

    def __call__(self, input: IrrepsArray, steps: Optional[jax.Array] = None) -> IrrepsArray:
        r"""Convolve ``input`` of shape ``[batch, x, y, z, irreps_in.dim]``; the output has ``irreps_out``."""
        return _convolve(self, input, steps)


class ConvolutionFlax(flax.linen.Module):
    __doc__ = ConvolutionHaiku.__doc__

    irreps_out: Irreps
    irreps_sh: Irreps
    diameter: float
    num_radial_basis: Union[int, Dict[int, int]]
    steps: Tuple[float, float, float]
    relative_starts: Union[float, Dict[int, float]] = 0.0
    padding: str = "SAME"

    def kernel(
        self,
        irreps_in: Irreps,
        irreps_out: Irreps,
        steps: Optional[jax.Array] = None,
        dtype: jnp.dtype = jnp.float32,
    ) -> jax.Array:
        return _kernel(self, irreps_in, irreps_out, steps, _flax_parameters(self, dtype), dtype)

    kernel.__doc__ = ConvolutionHaiku.kernel.__doc__

    @flax.linen.compact
    def __call__(self, input: IrrepsArray, steps: Optional[jax.Array] = None) -> IrrepsArray:
        return _convolve(self, input, steps)

    __call__.__doc__ = ConvolutionHaiku.__call__.__doc__
