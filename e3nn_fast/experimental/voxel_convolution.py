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
from typing import Callable, Dict, Optional, Tuple, Union

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
    if steps is None:
        steps = self.steps
    radius = self.diameter / 2
    axes = []
    for i in range(3):
        # the number of voxels comes from the static steps; the spacing may be dynamic
        s = math.floor(radius / self.steps[i])
        axes.append(jnp.arange(-s, s + 1.0) * steps[i])
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


def _reachable_irreps(self, irreps_in: Irreps) -> Irreps:
    """The blocks of ``irreps_out`` that some input irrep times some harmonic can produce."""
    irreps_sh = Irreps(self.irreps_sh)
    return Irreps(
        [
            (mul, ir)
            for mul, ir in Irreps(self.irreps_out)
            if any(ir in ir_in * ir_sh for _, ir_in in irreps_in for _, ir_sh in irreps_sh)
        ]
    )


def _convolve(self, input: IrrepsArray, steps) -> IrrepsArray:
    if not isinstance(input, IrrepsArray):
        raise ValueError("Convolution: input should be of type IrrepsArray")
    if input.ndim != 5:
        raise ValueError(f"Convolution: input must have shape [batch, x, y, z, irreps.dim], got {input.shape}")
    input = input.remove_zero_chunks().simplify()
    irreps_out = _reachable_irreps(self, input.irreps)

    array = lax.conv_general_dilated(
        lhs=input.array,
        rhs=self.kernel(input.irreps, irreps_out, steps, input.dtype),
        window_strides=(1, 1, 1),
        padding=self.padding,
        dimension_numbers=("NXYZC", "XYZIO", "NXYZC"),
    )
    output = IrrepsArray(irreps_out, array)

    full = Irreps(self.irreps_out)
    if irreps_out != full:
        # put back the unreachable blocks as zeros, so the output always has irreps_out
        chunks, i = [], 0
        for mul_ir in full:
            if i < len(irreps_out) and irreps_out[i] == mul_ir:
                chunks.append(output.chunks[i])
                i += 1
            else:
                chunks.append(None)
        output = from_chunks(full, chunks, output.shape[:-1], output.dtype)
    return output


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
        self.num_radial_basis = num_radial_basis
        self.relative_starts = relative_starts
        self.irreps_out = irreps_out
        self.irreps_sh = irreps_sh
        self.diameter = diameter
        self.padding = padding
        self.steps = steps

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

        def get_parameter(name: str, shape: Tuple[int, ...], std: float) -> jax.Array:
            return hk.get_parameter(name, shape=shape, init=hk.initializers.RandomNormal(std), dtype=dtype)

        return _kernel(self, irreps_in, irreps_out, steps, get_parameter, dtype)

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
        def get_parameter(name: str, shape: Tuple[int, ...], std: float) -> jax.Array:
            return self.param(name, flax.linen.initializers.normal(stddev=std), shape, dtype)

        return _kernel(self, irreps_in, irreps_out, steps, get_parameter, dtype)

    kernel.__doc__ = ConvolutionHaiku.kernel.__doc__

    @flax.linen.compact
    def __call__(self, input: IrrepsArray, steps: Optional[jax.Array] = None) -> IrrepsArray:
        return _convolve(self, input, steps)

    __call__.__doc__ = ConvolutionHaiku.__call__.__doc__
