"""Experimental layers (drop-in for ``e3nn_jax.experimental``).

Nothing is imported here on purpose: the submodules need dm-haiku and/or flax, so import the one you use, e.g.
``from e3nn_fast.experimental.linear_shtp import LinearSHTP``:

- :mod:`~e3nn_fast.experimental.linear_shtp`: ``LinearSHTP`` (flax) and ``shtp``, the SO(2) / eSCN form of a
  tensor product with the spherical harmonics of a direction.
- :mod:`~e3nn_fast.experimental.transformer`: ``Transformer`` (haiku), an equivariant graph attention layer.
- :mod:`~e3nn_fast.experimental.point_convolution`: ``MessagePassingConvolutionHaiku`` / ``...Flax`` and
  ``radial_basis``.
- :mod:`~e3nn_fast.experimental.voxel_convolution`: ``ConvolutionHaiku`` / ``ConvolutionFlax``, equivariant 3D
  convolutions on voxel grids.
- :mod:`~e3nn_fast.experimental.voxel_pooling`: ``zoom`` and the trilinear / nearest voxel interpolations.
"""
