r"""Resampling of 3D voxel images (drop-in for ``e3nn_jax.experimental.voxel_pooling``).

Voxel ``i`` of an axis of ``n`` voxels is taken to cover ``[i - 1/2, i + 1/2]``.  Resizing to ``n'`` voxels keeps the
physical extent, so output voxel ``j`` sits at source coordinate :math:`(j + 1/2)\, n / n' - 1/2`; values there are
interpolated trilinearly or from the nearest voxel, with coordinates outside the image clamped to its border.
"""

from __future__ import annotations

from functools import partial
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

__all__ = ["interpolate_trilinear", "interpolate_nearest", "zoom"]

_INTERPOLATIONS = ("linear", "nearest")


def _clamp_index(i: jax.Array, n: int) -> jax.Array:
    return jnp.clip(i, 0, n - 1)


def interpolate_trilinear(input: jax.Array, x: float, y: float, z: float) -> jax.Array:
    r"""Trilinear interpolation of ``input`` ``[..., nx, ny, nz]`` at the voxel coordinate ``(x, y, z)``.

    Outside the image the border voxels are repeated.  Returns an array of shape ``input.shape[:-3]``.
    """
    nx, ny, nz = input.shape[-3:]
    corners = []
    for coordinate, n in ((x, nx), (y, ny), (z, nz)):
        low = jnp.floor(coordinate).astype(int)
        high = low + 1
        # weight of the low / high neighbour: distance to the other one
        corners.append(
            ((_clamp_index(low, n), high - coordinate), (_clamp_index(high, n), coordinate - low))
        )
    (xs, ys, zs) = corners
    out = 0
    for ix, wx in xs:
        for iy, wy in ys:
            for iz, wz in zs:
                out = out + wx * wy * wz * input[..., ix, iy, iz]
    return out


def interpolate_nearest(input: jax.Array, x: float, y: float, z: float) -> jax.Array:
    r"""Value of the voxel of ``input`` ``[..., nx, ny, nz]`` nearest to ``(x, y, z)`` (clamped to the image)."""
    nx, ny, nz = input.shape[-3:]
    ix = _clamp_index(jnp.round(x).astype(int), nx)
    iy = _clamp_index(jnp.round(y).astype(int), ny)
    iz = _clamp_index(jnp.round(z).astype(int), nz)
    return input[..., ix, iy, iz]


def _source_coordinates(n_src: int, n_dst: int) -> jax.Array:
    """Source coordinates of the ``n_dst`` output voxel centres (see the module docstring)."""
    ratio = n_src / n_dst
    return 0.5 * (ratio - 1) + ratio * jnp.arange(n_dst)


@partial(jax.jit, static_argnums=(1, 2))
def _zoom(input: jax.Array, output_size: Tuple[int, int, int], interpolation: str = "linear") -> jax.Array:
    nx, ny, nz = input.shape[-3:]
    grid = jnp.meshgrid(
        _source_coordinates(nx, output_size[0]),
        _source_coordinates(ny, output_size[1]),
        _source_coordinates(nz, output_size[2]),
        indexing="ij",
    )
    interp = interpolate_trilinear if interpolation == "linear" else interpolate_nearest
    out = jax.vmap(interp, (None, 0, 0, 0), -1)(input, *(g.flatten() for g in grid))
    return out.reshape(*input.shape[:-3], *output_size)


def zoom(
    input: jax.Array,
    *,
    resize_rate: Optional[Tuple[float, float, float]] = None,
    output_size: Optional[Tuple[int, int, int]] = None,
    interpolation: str = "linear",
) -> jax.Array:
    r"""Resize the 3D image(s) ``input``, whose last three axes are x, y and z, keeping their physical extent.

    Args:
        input: the image(s); leading axes (batch, channels, ...) are kept.
        resize_rate: scale factor, one number or one per axis (the new size is rounded); exclusive with
            ``output_size``.
        output_size: the new ``(x, y, z)`` size.
        interpolation: ``"linear"`` (trilinear) or ``"nearest"``.

    Returns:
        the resampled image(s), of shape ``input.shape[:-3] + output_size``.
    """
    if jnp.ndim(input) < 3:
        raise ValueError(f"zoom: input must have at least 3 axes [..., x, y, z], got shape {jnp.shape(input)}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"zoom: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    if (resize_rate is None) == (output_size is None):
        raise ValueError("zoom: give exactly one of resize_rate and output_size")
    nx, ny, nz = input.shape[-3:]
    if resize_rate is not None:
        if isinstance(resize_rate, (float, int)):
            resize_rate = (resize_rate,) * 3
        output_size = (round(nx * resize_rate[0]), round(ny * resize_rate[1]), round(nz * resize_rate[2]))
    if not isinstance(output_size, tuple) or len(output_size) != 3:
        raise ValueError(f"zoom: output_size must be a tuple of 3 ints, got {output_size!r}")
    if any(not isinstance(n, int) or n < 1 for n in output_size):
        raise ValueError(f"zoom: output_size must hold positive ints, got {output_size!r}")
    return _zoom(input, output_size, interpolation)
