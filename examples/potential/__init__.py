"""Building blocks of ``examples/train_potential.py``: an equivariant interatomic potential fitted to energies and
forces.

One concept per module:

``data``        labelled frames: extended-XYZ reading, offline EMT molecular dynamics, per-species reference energies
``graphs``      neighbour lists (periodic or not) and jraph-style padding of several graphs to fixed shapes
``model``       a NequIP-style flax model written against an ``e3nn`` module passed in (e3nn_fast or e3nn_jax)
``training``    loss, optax optimiser with a schedule, jitted train step, evaluation (MAEs) and the training loop
``checkpoint``  save / restore of parameters, optimiser state and metadata with flax.serialization (msgpack)
``timing``      time per training step of the same model built on e3nn_fast and on e3nn_jax
``plots``       learning curves as a PNG
``parallel``    several devices and hosts: data parallel (batch axis), graph parallel (one large cell split by atoms
                with ``e3nn_fast.sharding``), ``jax.distributed`` start-up
"""
