r"""Tensor products with the spherical harmonics of one direction, computed in the direction's own frame.

A tensor product :math:`x \otimes Y(\hat d)` with the spherical harmonics of a unit vector is expensive in general,
but once everything is rotated so that :math:`\hat d` is the y axis (the polar axis of e3nn's spherical harmonics),
:math:`Y^l(e_y)` has only its :math:`m = 0` component and the product only couples components with the same
:math:`|m|`: an SO(2) convolution (the eSCN trick, https://arxiv.org/abs/2302.03655).  For each input irrep
:math:`l_x` and output irrep :math:`l_z` (with :math:`l = \min(l_x, l_z)`), the product with any linear
combination of the harmonics is spanned by two families of maps on the components :math:`|m| \le l`:

- *symmetric*: :math:`z_m = w_{|m|}\, x_m` (:math:`l + 1` free weights);
- *antisymmetric*: :math:`z_m = \operatorname{sign}(m)\, w_{|m|}\, x_{-m}` (:math:`l` free weights, none at m = 0).

Which family is allowed depends on parity: the symmetric family behaves like :math:`Y^{l_y}` with
:math:`l_y \equiv l_x + l_z \pmod 2`, the antisymmetric one like :math:`l_y \equiv l_x + l_z + 1`, and
:math:`Y^{l_y}(\hat d)` has parity :math:`p_d^{l_y}` which must equal :math:`p_x p_z`.

:class:`LinearSHTP` (a flax.linen module) learns those weights; :func:`shtp` lists every such map as a separate
output channel.  Both rotate into the frame of the direction, apply the maps and rotate back, so they are exactly
equivariant.  Parameters have e3nn-jax 0.21's names and shapes, so e3nn-jax parameters load unchanged.

When the direction is close to the y axis the angles :math:`(\alpha, \beta)` of the frame are ill-conditioned
(gimbal lock); the whole computation is then done after a fixed quarter turn about x, which moves the direction
away from the pole.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import flax.linen
import jax
import jax.numpy as jnp

from e3nn_fast.irreps import Irrep, Irreps
from e3nn_fast.irreps_array import IrrepsArray, from_chunks
from e3nn_fast.rotation import xyz_to_angles

__all__ = ["LinearSHTP", "shtp", "sum_tensors", "normalize", "sl"]

# Above this |y| (of the unit direction) the frame is built after a quarter turn, see the module docstring.
_GIMBAL_LOCK_THRESHOLD = 0.99


def normalize(x: jax.Array) -> jax.Array:
    """``x / |x|`` along the last axis; the zero vector stays zero."""
    norm2 = jnp.sum(x**2, axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.where(norm2 > 0.0, norm2, 1.0))


def sl(l_data: int, l_extracted: int) -> slice:
    """Slice of the components :math:`|m| \\le` ``l_extracted`` inside an irrep of degree ``l_data``."""
    return slice(l_data - l_extracted, l_data + l_extracted + 1)


def sum_tensors(xs: Sequence[Optional[jax.Array]], shape, empty_return_none: bool = False, dtype=None):
    """Sum of the non-``None`` arrays of ``xs``, each reshaped to ``shape``.

    With nothing to sum: ``None`` if ``empty_return_none`` else zeros of ``shape`` and ``dtype``.
    """
    xs = [x for x in xs if x is not None]
    if not xs:
        return None if empty_return_none else jnp.zeros(shape, dtype=dtype)
    total = xs[0].reshape(shape)
    for x in xs[1:]:
        total = total + x.reshape(shape)
    return total


# ----------------------------------------------------------------------------------------------------------------
# the frame of the direction
# ----------------------------------------------------------------------------------------------------------------


def _check_inputs(input: IrrepsArray, direction: IrrepsArray, who: str) -> Irrep:
    """Validate the arguments; return the irrep (``1o`` or ``1e``) of the direction."""
    if not isinstance(input, IrrepsArray):
        raise TypeError(f"{who}: input must be an IrrepsArray, got {type(input).__name__}")
    if not isinstance(direction, IrrepsArray):
        raise TypeError(f"{who}: direction must be an IrrepsArray ('1o' or '1e'), got {type(direction).__name__}")
    if input.shape != (input.irreps.dim,):
        raise ValueError(
            f"{who}: input must have shape (irreps.dim,) = ({input.irreps.dim},), got {input.shape}; "
            "use jax.vmap / e3nn.vmap to map over leading axes"
        )
    if direction.shape != (3,) or direction.irreps.num_irreps != 1 or direction.irreps[0].ir.l != 1:
        raise ValueError(
            f"{who}: direction must be a single vector of shape (3,) with irreps '1o' or '1e', "
            f"got irreps {direction.irreps} and shape {direction.shape}"
        )
    return direction.irreps[0].ir


def _choose(flag: jax.Array, if_true: IrrepsArray, if_false: IrrepsArray) -> IrrepsArray:
    return IrrepsArray(if_true.irreps, jnp.where(flag, if_true.array, if_false.array))


def _into_direction_frame(
    input: IrrepsArray, direction: IrrepsArray
) -> Tuple[IrrepsArray, Callable[[IrrepsArray], IrrepsArray]]:
    """Rotate ``input`` so that ``direction`` becomes the y axis; also return the map rotating results back."""
    direction = IrrepsArray(direction.irreps, normalize(direction.array))
    near_pole = jnp.abs(direction.array[1]) > _GIMBAL_LOCK_THRESHOLD
    # the non-zero angle in the data's dtype so that float32 stays float32 under x64; the zeros stay Python
    # numbers, which the Wigner matrices special-case
    quarter = jnp.asarray(jnp.pi / 2.0, input.dtype)

    def quarter_turn(x: IrrepsArray, inverse: bool) -> IrrepsArray:
        return _choose(near_pole, x.transform_by_angles(0.0, quarter, 0.0, inverse=inverse), x)

    input = quarter_turn(input, inverse=True)
    direction = quarter_turn(direction, inverse=True)
    alpha, beta = xyz_to_angles(direction.array)
    input = input.transform_by_angles(alpha, beta, 0.0, inverse=True)

    def back(out: IrrepsArray) -> IrrepsArray:
        return quarter_turn(out.transform_by_angles(alpha, beta, 0.0), inverse=False)

    return input, back


def _allowed_families(irx: Irrep, irz: Irrep, ird: Irrep) -> Tuple[bool, bool]:
    """Whether the symmetric / antisymmetric maps ``irx -> irz`` respect parity (module docstring)."""
    p_needed = irx.p * irz.p
    symmetric = ird.p ** ((irx.l + irz.l) % 2) == p_needed
    antisymmetric = ird.p ** ((irx.l + irz.l + 1) % 2) == p_needed and min(irx.l, irz.l) > 0
    return symmetric, antisymmetric


def _symmetric_profile(w: jax.Array) -> jax.Array:
    """Weights ``(l + 1, ...)`` indexed by |m| -> per-component weights ``(2l + 1, ...)``: entry m is ``w[|m|]``."""
    return jnp.concatenate([w[::-1], w[1:]])


def _antisymmetric_profile(w: jax.Array) -> jax.Array:
    """Weights ``(l, ...)`` for |m| = 1..l -> per-component ``(2l + 1, ...)``: entry m is ``sign(m) w[|m| - 1]``."""
    return jnp.concatenate([-w[::-1], jnp.zeros_like(w[:1]), w])


def _embed_components(z: jax.Array, l: int, irz: Irrep) -> jax.Array:
    """Place components ``(mul, 2l + 1)`` (|m| <= l) into zeros of shape ``(mul, irz.dim)``."""
    if l == irz.l:
        return z
    return jnp.zeros(z.shape[:-1] + (irz.dim,), z.dtype).at[:, sl(irz.l, l)].set(z)


# ----------------------------------------------------------------------------------------------------------------
# LinearSHTP
# ----------------------------------------------------------------------------------------------------------------


class LinearSHTP(flax.linen.Module):
    r"""Learned linear combination of :math:`x \otimes Y^l(\hat d)` over all :math:`l`, in :math:`O(L^3)`.

    Equivalent (as a family of linear maps) to :math:`\sum_l w^l\, x \otimes Y^l(\hat d)`, computed in the frame
    of the direction (see the module docstring).

    Attributes:
        irreps_out: output irreps.  With ``mix=False`` only the irreps matter (they act as a filter) and every
            (input block, family) pair gives its own output channels.
        mix: mix the contributions of all input blocks (and both families) into ``mul`` output channels per block
            of ``irreps_out``, normalised by the square root of the fan-in.

    Call with ``input`` (an IrrepsArray of shape ``(irreps.dim,)``) and ``direction`` (a ``1o`` or ``1e`` vector,
    normalised internally).  Parameters are ``'{i_in}_{i_out}_S{ir_in}{ir_out}'`` of shape
    ``(l + 1, mul_in[, mul_out])`` and ``'{i_in}_{i_out}_A{ir_in}{ir_out}'`` of shape ``(l, mul_in[, mul_out])``,
    initialised from a standard normal.
    """

    irreps_out: Irreps
    mix: bool = True

    @flax.linen.compact
    def __call__(self, input: IrrepsArray, direction: IrrepsArray) -> IrrepsArray:
        ird = _check_inputs(input, direction, "LinearSHTP")
        x, back = _into_direction_frame(input, direction)

        irreps_out = Irreps(self.irreps_out)
        if not self.mix:
            irreps_out = irreps_out.regroup()

        out_irreps: List[Tuple[int, Irrep]] = []
        out_chunks: List[Optional[jax.Array]] = []
        for iz, (mulz, irz) in enumerate(irreps_out):
            mixed, fan_in = [], 0
            for ix, ((mulx, irx), chunk) in enumerate(zip(x.irreps, x.chunks)):
                if chunk is None:
                    continue
                l = min(irx.l, irz.l)
                xc = chunk[:, sl(irx.l, l)]  # (mulx, 2l + 1)
                symmetric, antisymmetric = _allowed_families(irx, irz, ird)
                families = []
                if symmetric:
                    families.append(("S", l + 1, _symmetric_profile, xc))
                if antisymmetric:
                    # the antisymmetric maps read component -m to write component m
                    families.append(("A", l, _antisymmetric_profile, xc[:, ::-1]))
                for tag, num_m, profile, source in families:
                    shape = (num_m, mulx, mulz) if self.mix else (num_m, mulx)
                    w = self.param(
                        f"{ix}_{iz}_{tag}{irx}{irz}", flax.linen.initializers.normal(stddev=1.0), shape, xc.dtype
                    )
                    if self.mix:
                        z = jnp.einsum("ui,iuv->vi", source, profile(w))
                        mixed.append(_embed_components(z, l, irz))
                        fan_in += mulx
                    else:
                        z = jnp.einsum("ui,iu->ui", source, profile(w))
                        out_irreps.append((mulx, irz))
                        out_chunks.append(_embed_components(z, l, irz))
            if self.mix:
                total = sum_tensors(mixed, (mulz, irz.dim), empty_return_none=True)
                out_irreps.append((mulz, irz))
                # an output no input can reach stays zero (e3nn-jax fails on it)
                out_chunks.append(None if total is None else total / jnp.sqrt(fan_in))

        out = from_chunks(out_irreps, out_chunks, (), input.dtype).regroup()
        return back(out)


# ----------------------------------------------------------------------------------------------------------------
# shtp: every map as its own channel
# ----------------------------------------------------------------------------------------------------------------


def _symmetric_channels(xc: jax.Array, l: int, irz: Irrep) -> jax.Array:
    """``(mul, 2l + 1) -> (mul * (l + 1), irz.dim)``: channel ``k`` carries the components ``m = ±k`` unchanged."""
    mul = xc.shape[0]
    k = jnp.arange(l + 1)
    z = jnp.zeros((mul, l + 1, irz.dim), xc.dtype)
    z = z.at[:, k, irz.l + k].set(xc[:, l + k])
    z = z.at[:, k[1:], irz.l - k[1:]].set(xc[:, l - k[1:]])
    return z.reshape(mul * (l + 1), irz.dim)


def _antisymmetric_channels(xc: jax.Array, l: int, irz: Irrep) -> jax.Array:
    """``(mul, 2l + 1) -> (mul * l, irz.dim)``.

    Channel ``k - 1`` maps ``x_{+k} -> z_{-k}`` and ``-x_{-k} -> z_{+k}``.
    """
    mul = xc.shape[0]
    k = jnp.arange(1, l + 1)
    z = jnp.zeros((mul, l, irz.dim), xc.dtype)
    z = z.at[:, k - 1, irz.l - k].set(xc[:, l + k])
    z = z.at[:, k - 1, irz.l + k].set(-xc[:, l - k])
    return z.reshape(mul * l, irz.dim)


def shtp(
    input: IrrepsArray,
    direction: IrrepsArray,
    filter_irreps_out: Sequence[Irrep],
) -> IrrepsArray:
    r"""All the SO(2) maps of :math:`x \otimes Y(\hat d)` into the irreps ``filter_irreps_out``, unweighted.

    Every (input channel, output irrep, family, :math:`|m|`) combination is one output channel, so any
    :class:`LinearSHTP` output is a linear combination of these channels.

    Args:
        input: IrrepsArray of shape ``(irreps.dim,)``.
        direction: ``1o`` or ``1e`` vector of shape ``(3,)`` (normalised internally).
        filter_irreps_out: output irreps (a string, Irreps or a sequence of Irrep); multiplicities are ignored.

    Returns:
        IrrepsArray with regrouped irreps.
    """
    ird = _check_inputs(input, direction, "shtp")
    x, back = _into_direction_frame(input, direction)

    if isinstance(filter_irreps_out, str):
        filter_irreps_out = Irreps(filter_irreps_out)
    if isinstance(filter_irreps_out, Irreps):
        filter_irreps_out = [ir for _, ir in filter_irreps_out]
    targets = sorted({Irrep(ir) for ir in filter_irreps_out})

    out_irreps, out_chunks = [], []
    for irz in targets:
        for (_, irx), chunk in zip(x.irreps, x.chunks):
            if chunk is None:
                continue
            l = min(irx.l, irz.l)
            xc = chunk[:, sl(irx.l, l)]
            symmetric, antisymmetric = _allowed_families(irx, irz, ird)
            if symmetric:
                out_chunks.append(_symmetric_channels(xc, l, irz))
                out_irreps.append((out_chunks[-1].shape[0], irz))
            if antisymmetric:
                out_chunks.append(_antisymmetric_channels(xc, l, irz))
                out_irreps.append((out_chunks[-1].shape[0], irz))

    out = from_chunks(out_irreps, out_chunks, (), input.dtype).regroup()
    return back(out)
